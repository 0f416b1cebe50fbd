"""What each JSON record the store keeps must hold, checked on read.

The store keeps kinds of JSON record beside results, each registered here by the module that owns it: job
records (`job/<id>`, execution/jobs.py), run notes (`runmeta/<run id>`, interfaces/catalog.py) and sweep
records (`sweep/<id>`, experiments/sweep.py). Anything can end up under
those keys (a flipped byte, an old or foreign writer, a hostile user), so every reader goes through
`read`: a record is used only once `problem` finds nothing wrong with it, and a bad one comes back as a
`RecordProblem` naming kind, id and field, for the caller to show. Nothing here writes or deletes:
`cache check` lists `record_problems` and `cache repair` moves those records aside.

Each kind is described once, as field -> `Field` (the JSON types as a type hint, whether it must be
there, what else the value must satisfy); the job's is derived from JobRecord's own fields and
annotations. A number is an int or a finite float, never a bool; fields this version does not know are
left alone (a newer version may have written them).
"""

from __future__ import annotations

import functools
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twophase_core.storage.store import DamagedRecord, Store

REPAIR_HINT = "run `twophase cache check`; `twophase cache repair` moves it aside"
LATEST_TIME = 253402300799.0  # 9999-12-31 23:59:59 UTC: later times do not fit a date the pages print
Rule = Callable[[Any], str | None]  # why a value of the right type is still wrong, or None


@dataclass(frozen=True)
class Field:
    """One field of a record: the JSON types it may hold (as a type hint), whether it must be there, and
    a rule for what else its value (when not null) must satisfy."""

    hint: object  # a type hint: str, float | None, list[str], dict[str, Any]
    required: bool = False
    rule: Rule | None = None


@dataclass(frozen=True)
class RecordProblem:
    """A stored record that was skipped: its kind, id and key, the field at fault ('' for the whole record,
    e.g. one failing its checksum) and why."""

    kind: str
    id: str
    key: str
    field: str
    why: str

    def __str__(self) -> str:
        what = f"field {self.field} {self.why}" if self.field else self.why
        return f"{NOUNS[self.kind]} {shown(self.id)}: {what}"


def shown(text: str, limit: int = 80) -> str:
    """An id from the store as one safe line: as is when short and printable, else escaped and cut."""
    return text if text.isprintable() and len(text) <= limit else ascii(text[:limit])


def key(kind: str, record_id: str) -> str:
    return PREFIXES[kind] + record_id


# ---------------------------------------------------------------------------------------------
# Types and rules


def _number(v: Any) -> bool:
    """An int or float that is finite as a float (a huge JSON integer is not: it overflows)."""
    if type(v) not in (int, float):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def matches(v: object, hint: object) -> bool:
    """Whether a JSON value has the type `hint` describes (float: any finite number; bool is no number)."""
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return v is None
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return any(matches(v, h) for h in typing.get_args(hint))
    if hint is float:
        return _number(v)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        return type(v) is list and all(matches(x, args[0]) for x in v)
    if origin is dict:
        return type(v) is dict and all(matches(x, args[1]) for x in v.values())
    return type(v) is hint


_NAMES: dict[object, str] = {str: "a string", int: "a whole number", float: "a number", bool: "true or false",
                              list: "a list", dict: "an object", type(None): "null"}


def describe(hint: object) -> str:
    """`hint` as words: 'a number or null', 'a list of strings'."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join(describe(h) for h in typing.get_args(hint))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list and args and args[0] is not Any:
        return f"a list of {describe(args[0]).split(' ', 1)[1]}s"
    return _NAMES.get(origin or hint, str(hint))


def _json_name(v: object) -> str:
    return "a boolean" if type(v) is bool else describe(type(v))


def one_of(allowed: typing.Iterable[str]) -> Rule:
    allowed = tuple(allowed)
    return lambda v: None if v in allowed else f"must be one of {', '.join(allowed)}"


def between(lo: float, hi: float) -> Rule:
    return lambda v: None if lo <= v <= hi else f"must be between {lo:g} and {hi:g}"


def at_least(lo: float) -> Rule:
    return lambda v: None if v >= lo else f"must be {lo:g} or more"


def unix_time(v: float) -> str | None:
    """A Unix time the pages and `twophase jobs` can print as a date (0: never set, as old records hold)."""
    return None if 0 <= v <= LATEST_TIME else "must be a time in seconds since 1970, before the year 10000"


def _problem_of(fields: dict[str, Field], value: object) -> tuple[str, str] | None:
    """(field, why) of the first field of `value` that `fields` refuses; ('', why) if it is no object."""
    if type(value) is not dict:
        return "", f"it is {_json_name(value)}, not an object"
    for name, f in fields.items():
        if name not in value:
            if f.required:
                return name, "is missing"
            continue
        v = value[name]
        if not matches(v, f.hint):
            return name, f"must be {describe(f.hint)}"
        why = f.rule(v) if f.rule is not None and v is not None else None
        if why:
            return name, why
    return None


# ---------------------------------------------------------------------------------------------
# The kinds: each registered by the module that owns its records


@dataclass(frozen=True)
class Schema:
    """A kind of record: where its keys start, what a page calls it, its fields (built on first use, so the
    owner may read its own dataclass) and what else must hold between fields."""

    prefix: str
    noun: str
    fields: Callable[[], dict[str, Field]]
    relations: Callable[[dict[str, Any]], tuple[str, str] | None] | None = None


SCHEMAS: dict[str, Schema] = {}
PREFIXES: dict[str, str] = {}  # kind -> key prefix ('job' -> 'job/'), of every registered kind
NOUNS: dict[str, str] = {}


def register(kind: str, schema: Schema) -> None:
    """Called by the owner of a kind of record (jobs, run notes, sweeps) when it is imported."""
    SCHEMAS[kind], PREFIXES[kind], NOUNS[kind] = schema, schema.prefix, schema.noun


@functools.cache
def schema(kind: str) -> dict[str, Field]:
    """The fields of a record of `kind`."""
    if kind not in SCHEMAS:
        raise KeyError(f"no record kind {kind!r}; known: {', '.join(SCHEMAS)}")
    return SCHEMAS[kind].fields()


def problem_of(fields: dict[str, Field], value: object) -> tuple[str, str] | None:
    """(field, why) of the first field of `value` that `fields` refuses; ('', why) if it is no object."""
    return _problem_of(fields, value)


def problem(kind: str, value: object, record_id: str | None = None) -> tuple[str, str] | None:
    """(field, why) of the first thing wrong with `value` as a record of `kind`, None if it can be trusted.
    With `record_id` (the id in its key), a record's own `id` field, where it has one, must be that id."""
    fields = schema(kind)
    bad = _problem_of(fields, value)
    if bad is not None or type(value) is not dict:  # (anything but an object has a problem)
        return bad
    if "id" in fields and record_id is not None and value["id"] != record_id:
        return "id", f"must be the id in its key, {shown(record_id)}"
    relations = SCHEMAS[kind].relations
    return relations(value) if relations is not None else None


def clean(kind: str, value: dict[str, Any]) -> dict[str, Any]:
    """A record `problem` accepted, with whole numbers in number fields as floats (JSON writes 1.0 as 1)."""
    floats = {n for n, f in schema(kind).items() if f.hint is float or float in typing.get_args(f.hint)}
    return {k: float(v) if k in floats and type(v) is int else v for k, v in value.items()}


# ---------------------------------------------------------------------------------------------
# Reading


def read(store: Store, kind: str, record_id: str) -> tuple[dict[str, Any] | None, RecordProblem | None]:
    """(record, None) for a good record, (None, problem) for a bad one, (None, None) where there is none.
    Reading changes nothing: a bad record stays where it is, to be named by `cache check`."""
    k = key(kind, record_id)
    try:
        value = store.read_json(k)
    except DamagedRecord as e:
        return None, RecordProblem(kind, record_id, k, "", e.why)
    if value is None and k not in store.cache:  # read_json's None is also a stored JSON null
        return None, None
    bad = problem(kind, value, record_id)
    if bad is not None:
        return None, RecordProblem(kind, record_id, k, *bad)
    return clean(kind, value), None


def read_all(store: Store, kind: str) -> tuple[list[dict[str, Any]], list[RecordProblem]]:
    """Every good record of `kind` (in key order) and the problems of the bad ones."""
    good, bad = [], []
    prefix = PREFIXES[kind]
    for k in store.keys(prefix):
        value, p = read(store, kind, k[len(prefix):])
        if value is not None:
            good.append(value)
        elif p is not None:
            bad.append(p)
    return good, bad


def record_problems(store: Store) -> list[RecordProblem]:
    """Every job record, run note and sweep record that a reader would skip, with why."""
    return [p for kind in PREFIXES for p in read_all(store, kind)[1]]


def skipped_text(problems: list[RecordProblem], limit: int = 5) -> str:
    """One line for a page: the skipped records (the first `limit`) and how to set them right."""
    names = "; ".join(str(p) for p in problems[:limit])
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    n = len(problems)
    return (f"Skipped {n} damaged record{'s' if n > 1 else ''} ({names}{more}): run `twophase cache check`; "
            f"`twophase cache repair` moves {'them' if n > 1 else 'it'} aside.")
