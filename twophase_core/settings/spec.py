"""How a setting is described, once: type, bounds, allowed values, help, flag and widget.

Every config field (config.py) is declared with `setting(...)`, which stores a `Spec` in the
dataclass field's metadata, as open_lth's hparams do. Everything that shows or reads a setting is
generated from it: the CLI flags and the reproduce command (cli.py), the app's settings form
(app_common/form.py), the table of docs/settings.md (`cli.settings_table`), and the per-field half of
`config.validate` (`check`). One parser turns text into values for both the CLI and the form
(`split_list`, `parse_text`), so '0, 100 2ep' means the same everywhere.

Imports neither torch nor Streamlit.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

# The kinds of value a setting holds; each has one parser, one formatter and one check.
TYPES = ("choice", "int", "float", "bool", "text", "step", "steps", "ints", "window")
MAX_INT = 10**9  # iterations, sizes: a sane maximum, far above any real run
MAX_SEED = 2**32 - 1  # every seed feeds numpy's SeedSequence and torch generators
MAX_TEXT = 4096
MAX_LIST = 1000
_SHOWN = 60  # characters of a bad value echoed back in an error
# what a setting holds, by its type: choice and text a str, int and step an int, float a float, bool a bool,
# steps, ints and window a tuple of ints
SettingValue = str | int | float | bool | tuple[int, ...]


class ConfigError(ValueError):
    """A setting is invalid; the message names the field, the value (cut short) and what is allowed."""

    def __init__(self, field_name: str, value: object, allowed: str):
        self.field = field_name
        self.value = value
        self.allowed = allowed
        super().__init__(f"{field_name}={shown(value)} is invalid: {allowed}")


def shown(value: object) -> str:
    """repr cut to a sane length: a 100,000-character value is not echoed back whole."""
    r = repr(value)
    return r if len(r) <= _SHOWN else f"{r[:_SHOWN - 15]}... ({len(r)} chars)"


@dataclass(frozen=True)
class Spec:
    """What a setting is. `lo`/`hi` bound numbers (open ends where `*_open`); `steps` settings are
    iterations, written as '500', '500it', '2ep' or '2ep50it'; `advanced` settings sit in the form's
    'more settings' part; `aliases` are extra CLI flags kept for old command lines."""

    type: str
    help: str
    label: str = ""
    choices: tuple[str, ...] = ()
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    allow_empty: bool = False
    advanced: bool = False
    aliases: tuple[str, ...] = ()
    hi_text: str = ""  # why the maximum is what it is, for the error message
    plugin: str = ""  # "model" or "dataset": a choice that may also name a plugin (settings/plugins.py)

    def flag(self, name: str) -> str:
        return "--" + name.replace("_", "-")


def setting(default: Any, help: str, type: str, **kw: Any) -> Any:
    """A dataclass field with its `Spec` in the metadata (the one description of the setting)."""
    if type not in TYPES:
        raise ValueError(f"unknown setting type {type!r}")
    spec = Spec(type=type, help=help, **kw)
    if isinstance(default, tuple | list):
        return dataclasses.field(default=tuple(default), metadata={"spec": spec})
    return dataclasses.field(default=default, metadata={"spec": spec})


def spec_of(f: dataclasses.Field) -> Spec:
    return f.metadata["spec"]


# ---------------------------------------------------------------------------------------------
# Steps: users think in epochs, the science counts iterations

# ASCII only: with re.ASCII, \d is [0-9] and \s is ASCII whitespace (not '١' or an ideographic space)
_STEP = re.compile(r"\s*(?:(\d+)\s*ep)?\s*(?:(\d+)\s*(?:it)?)?\s*", re.ASCII)
STEP_HELP = "iterations ('500' or '500it'), epochs ('2ep') or both ('2ep50it')"


def parse_step(text: str | int, iterations_per_epoch: int | None, name: str = "step") -> int:
    """'2000', '2000it', '80ep', '2ep50it' -> iterations. `iterations_per_epoch` None: epochs are an error."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    s = str(text)
    m = _STEP.fullmatch(s) if len(s) <= 40 else None
    if not m or (m.group(1) is None and m.group(2) is None):
        raise ConfigError(name, text, f"write {STEP_HELP}")
    if m.group(1) is not None and iterations_per_epoch is None:
        raise ConfigError(name, text, "epochs need the dataset and batch size; write iterations instead")
    return int(m.group(1) or 0) * (iterations_per_epoch or 0) + int(m.group(2) or 0)


def split_list(text: str) -> list[str]:
    """The one list parser: items separated by commas, semicolons or ASCII whitespace ('0, 100 2ep;5'); other
    whitespace stays inside an item, so a number parser refuses it rather than splitting on it."""
    return [s for s in re.split(r"[,;\s]+", str(text), flags=re.ASCII) if s]


# ---------------------------------------------------------------------------------------------
# Text <-> value


# Plain ASCII forms only: Python's int() and float() also take '1_000', other scripts' digits ('١'),
# 'inf' and 'nan', none of which a reproduce command or the README would ever write.
_INT = re.compile(r"[+-]?[0-9]{1,30}")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NUMBER_TYPES = ("int", "float", "step", "steps", "ints", "window")
_ASCII_WHITESPACE = " \t\n\r\x0b\x0c"


def _int(name: str, tok: str) -> int:
    if not _INT.fullmatch(tok.strip(_ASCII_WHITESPACE)):
        raise ConfigError(name, tok, "must be a whole number, e.g. 3")
    return int(tok)


def _float(name: str, tok: str) -> float:
    if not _FLOAT.fullmatch(tok.strip(_ASCII_WHITESPACE)):
        raise ConfigError(name, tok, "must be a number, e.g. 0.1 or 1e-7")
    v = float(tok)
    if not math.isfinite(v):  # '1e999'
        raise ConfigError(name, tok, "must be a finite number")
    return v


def _plain_ascii(name: str, text: str) -> None:
    """Numbers are typed in ASCII without '_': str.strip and re's \\s would otherwise pass a no-break
    space or other non-ASCII whitespace and let the value through with it silently dropped."""
    if not text.isascii() or "_" in text:
        raise ConfigError(name, text, "write numbers with the ASCII digits 0-9 only (no '_', no other characters)")


_TRUE, _FALSE = ("true", "yes", "1", "on"), ("false", "no", "0", "off")


def parse_text(name: str, spec: Spec, text: object, iterations_per_epoch: int | None = None) -> Any:
    """A value of the setting from what a user typed (CLI argument or form field). An empty entry is
    an error: a cleared field must never fall back to a default silently."""
    if not isinstance(text, str):  # a widget that already gives the value (checkbox, selectbox)
        return text
    s = text.strip()
    if len(s) > MAX_TEXT:
        raise ConfigError(name, text, f"is longer than {MAX_TEXT} characters")
    t = spec.type
    if t in _NUMBER_TYPES:
        _plain_ascii(name, text)
    if t == "text":
        return s
    if not s and not (t == "steps" and spec.allow_empty):
        raise ConfigError(name, text, "empty: give a value (a cleared field does not fall back to a default)")
    if t == "choice":
        return s
    if t == "int":
        return _int(name, s)
    if t == "float":
        return _float(name, s)
    if t == "bool":
        if s.lower() in _TRUE:
            return True
        if s.lower() in _FALSE:
            return False
        raise ConfigError(name, text, "must be true or false")
    if t == "step":
        return parse_step(s, iterations_per_epoch, name)
    items = split_list(s)
    if len(items) > MAX_LIST:
        raise ConfigError(name, text, f"at most {MAX_LIST} values")
    if t == "steps":
        return tuple(parse_step(x, iterations_per_epoch, name) for x in items)
    if t == "ints":
        return tuple(_int(name, x) for x in items)
    if t == "window":
        if len(items) != 2:
            raise ConfigError(name, text, "give two steps: start, end")
        return tuple(parse_step(x, iterations_per_epoch, name) for x in items)
    raise AssertionError(t)


def from_env(name: str, spec: Spec, default: Any) -> Any:
    """A value from environment variable `name`, parsed and checked as if typed into a flag (plain ASCII
    numbers, bounds); `default` when unset or empty. A bad one is a ConfigError naming the variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    v = parse_text(name, spec, raw)
    check(name, spec, v)
    return v


def format_value(spec: Spec, v: object) -> str:
    """The text that `parse_text` reads back as `v` exactly (floats by repr: 0.1 stays 0.1)."""
    if isinstance(v, tuple | list):
        return ",".join(str(x) for x in v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


# ---------------------------------------------------------------------------------------------
# The per-field check (types strictly: no truthy strings, no bools for numbers)


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() and abs(x) >= 1e4 else f"{x:g}"


def bounds_text(spec: Spec) -> str:
    """'>= 1 and <= 10,000,000': the allowed range in words, for errors, help and the README."""
    lo = "" if spec.lo is None else ("> " if spec.lo_open else ">= ") + _num(spec.lo)
    hi = "" if spec.hi is None else ("< " if spec.hi_open else "<= ") + _num(spec.hi)
    return " and ".join(x for x in (lo, hi) if x)


def _in_bounds(spec: Spec, v: float) -> bool:
    if spec.lo is not None and (v <= spec.lo if spec.lo_open else v < spec.lo):
        return False
    return not (spec.hi is not None and (v >= spec.hi if spec.hi_open else v > spec.hi))


def _finite(v: float) -> bool:
    """math.isfinite, but False for an int too large for a float (10**400) instead of OverflowError."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


# A choice that may also name a plugin (model, dataset) is resolved by settings/plugins.py, which puts its `resolve`
# here when imported (config.py imports it, so it is here wherever such a setting exists): this module stays at the
# bottom of the settings layer, importing nothing of the project.
PLUGIN_RESOLVER: list[Callable[[str, str], object]] = []


def check(name: str, spec: Spec, v: object) -> None:
    """Raise ConfigError unless `v` has the setting's type and lies within its bounds and choices."""
    t = spec.type
    why = f" ({spec.hi_text})" if spec.hi_text else ""
    if t == "choice":
        if spec.plugin and isinstance(v, str) and v not in spec.choices and PLUGIN_RESOLVER:
            PLUGIN_RESOLVER[0](spec.plugin, v)  # imported and checked, or a ConfigError naming the setting
        elif not isinstance(v, str) or v not in spec.choices:
            raise ConfigError(name, v, f"choose one of {', '.join(spec.choices)}")
    elif t in ("int", "step"):
        if not _is_int(v):
            raise ConfigError(name, v, "must be a whole number")
        if not _in_bounds(spec, v):
            raise ConfigError(name, v, f"must be a whole number {bounds_text(spec)}{why}")
    elif t == "float":
        if not (isinstance(v, int | float) and not isinstance(v, bool)) or not _finite(v):
            raise ConfigError(name, v, "must be a finite number")
        if not _in_bounds(spec, v):
            raise ConfigError(name, v, f"must be {bounds_text(spec)}{why}")
    elif t == "bool":
        if not isinstance(v, bool):
            raise ConfigError(name, v, "must be true or false (a bool, not a string)")
    elif t == "text":
        if not isinstance(v, str) or len(v) > MAX_TEXT:
            raise ConfigError(name, v, f"must be text of at most {MAX_TEXT} characters")
    else:  # steps, ints, window: tuples of whole numbers
        if not isinstance(v, tuple):
            raise ConfigError(name, v, "must be a list of whole numbers")
        if t == "window" and len(v) != 2:
            raise ConfigError(name, v, "must be two steps: (start, end)")
        if not v and not spec.allow_empty:
            raise ConfigError(name, v, "must not be empty: give at least one value")
        if len(v) > MAX_LIST:
            raise ConfigError(name, v, f"at most {MAX_LIST} values")
        for x in v:
            if not _is_int(x) or not _in_bounds(spec, x):
                raise ConfigError(name, v, f"every value must be a whole number {bounds_text(spec)}, got {shown(x)}")
        if t != "window" and len(set(v)) != len(v):
            raise ConfigError(name, v, "values must be distinct")
