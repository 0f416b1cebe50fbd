"""The catalogue of runs: what tells them apart (a name, tags, a note, the settings that differ) and the
one list of every run in a store, jobs and results computed without a job (the CLI's) alike.

A run's name, tags and note live in the store under `runmeta/<run id>` as JSON, beside its job record
and result and never inside them: editing a name must not touch a result's checksum or a job the worker
is writing. A run without a stored name is called after its kind and the preset nearest to its
config plus what differs from it (`chaos · demo · eps=1e-6 · data_seed=5`), from the same helper as its reproduce
command.

Deleting a run removes its job record, result, partial result, metadata and worker log, and never a
checkpoint: checkpoints belong to a training trajectory that other runs share. Nothing here imports
torch or Streamlit.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twophase_core.execution.jobs import JobRecord, log_path, record_key
from twophase_core.experiments import registry
from twophase_core.experiments.reproduce import preset_differences
from twophase_core.experiments.result import result_key
from twophase_core.settings import config as conf
from twophase_core.settings.spec import Spec, format_value
from twophase_core.storage import record_types as R
from twophase_core.storage.store import Store

R.register("runmeta", R.Schema("runmeta/", "run note", lambda: {"name": R.Field(str), "tags": R.Field(list[str]),
                                                                   "note": R.Field(str)}))
META_PREFIX = R.PREFIXES["runmeta"]
SEP = " · "
VALUE_CHARS = 28  # a long list in a name or a table cell is cut here, with an ellipsis


@dataclass
class RunMeta:
    """What a user says about a run; every field optional. `problem` names a stored note that failed its
    checks (this RunMeta is then empty): the run is still listed, and the page says what was skipped."""

    name: str = ""
    tags: tuple[str, ...] = ()
    note: str = ""
    problem: R.RecordProblem | None = field(default=None, compare=False)

    def is_empty(self) -> bool:
        return not (self.name or self.tags or self.note)


def meta_key(run_id: str) -> str:
    return R.key("runmeta", run_id)


def parse_tags(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Tags from 'a, b c' (commas or spaces) or a list: stripped, no duplicates, in the order given."""
    parts = re.split(r"[,\s]+", text) if isinstance(text, str) else [str(t) for t in text]
    out: list[str] = []
    for p in (p.strip() for p in parts):
        if p and p not in out:
            out.append(p)
    return tuple(out)


def load_meta(store: Store, run_id: str) -> RunMeta:
    """The run's name, tags and note; empty where none were saved, and empty naming its `problem` where the
    stored note fails its checks (left in place: `cache check` names it, `cache repair` moves it aside)."""
    d, bad = R.read(store, "runmeta", run_id)
    if d is None:
        return RunMeta(problem=bad)
    return RunMeta(name=d.get("name", "").strip(), tags=parse_tags(d.get("tags", [])), note=d.get("note", ""))


def save_meta(store: Store, run_id: str, meta: RunMeta) -> None:
    """Saved as given; an empty one removes the entry (the run goes back to its default name). A stored note
    that failed its checks is replaced or removed too: the user has just written this run's note anew."""
    if meta.is_empty():
        store.delete(meta_key(run_id))
        return
    store.put_json(meta_key(run_id), {"name": meta.name.strip(), "tags": list(parse_tags(meta.tags)),
                                      "note": meta.note})


# ---------------------------------------------------------------------------------------------
# Settings as short text


def short_value(spec: Spec, value: object, limit: int = VALUE_CHARS) -> str:
    """A setting's value as the CLI writes it, with exponents unpadded (1e-6, not 1e-06) and long lists cut."""
    text = re.sub(r"e([+-]?)0*(\d)", lambda m: f"e{m.group(1).replace('+', '')}{m.group(2)}",
                  format_value(spec, value))
    return text if len(text) <= limit else text[:limit - 1] + "…"


def default_name(cfg: conf.ExperimentConfig) -> str:
    """The kind, the preset nearest to `cfg`, then every setting that differs from it:
    `chaos · demo · eps=1e-6 · data_seed=5` (the demo's three runs are not three runs called "demo")."""
    name, changed = preset_differences(cfg)
    specs = conf.settings_of(type(cfg))
    return SEP.join([type(cfg).kind, name] + [f"{k}={short_value(specs[k][0], v)}" for k, v in changed.items()])


def differing_settings(cfgs: list[conf.ExperimentConfig]) -> list[str]:
    """Settings whose values differ between the configs (of one kind or several), in the order of their
    specs; a setting only some kinds have counts among the configs that have it."""
    names: list[str] = []
    values: dict[str, set[str]] = {}
    for cfg in cfgs:
        for name, v in conf.flat(cfg).items():
            if name not in values:
                names.append(name)
                values[name] = set()
            values[name].add(repr(v))
    return [n for n in names if len(values[n]) > 1]


def settings_text(cfg: conf.ExperimentConfig, names: list[str]) -> dict[str, str]:
    """name -> short text of each named setting of `cfg` ('' for a setting its kind does not have)."""
    specs, flat = conf.settings_of(type(cfg)), conf.flat(cfg)
    return {n: short_value(specs[n][0], flat[n]) if n in flat else "" for n in names}


# ---------------------------------------------------------------------------------------------
# Every run of a store


@dataclass
class RunEntry:
    """One run as the Runs page lists it: a job, or a result stored without one."""

    id: str
    kind: str
    hash: str
    config: conf.ExperimentConfig | None  # the typed config; None for a record of an older schema
    record: JobRecord | None
    meta: RunMeta = field(default_factory=RunMeta)
    created: float | None = None
    seconds: float | None = None  # wall time of the finished run, if known

    @property
    def name(self) -> str:
        if self.meta.name:
            return self.meta.name
        return default_name(self.config) if self.config is not None else self.id

    @property
    def status(self) -> str:
        return self.record.status if self.record is not None else "done"

    @property
    def finished(self) -> bool:
        return self.record is None or self.record.finished

    @property
    def progress(self) -> float:
        return float(self.record.progress) if self.record is not None else 1.0

    @property
    def error(self) -> str:
        return (self.record.error or "") if self.record is not None else ""

    def wall_s(self, now: float | None = None) -> float | None:
        """Seconds from start to end (to now while running); a run served from the store took none."""
        r = self.record
        if r is not None and r.started:
            end = r.finished_at if r.finished and r.finished_at else (now or time.time())
            return max(0.0, end - r.started)
        return self.seconds


def _typed(kind: str, d: object) -> conf.ExperimentConfig | None:
    try:
        return registry.config_from_dict(kind, d)
    except (conf.ConfigError, TypeError):
        return None


def _created(meta: dict[str, Any]) -> float | None:
    try:
        return time.mktime(time.strptime(str(meta.get("created")), "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return None


# (kind, hash) -> a stored result's (config dict, meta dict), or None
ResultInfo = Callable[[str, str], "tuple[dict[str, Any], dict[str, Any]] | None"]


def list_runs(store: Store, records: list[JobRecord], result_info: ResultInfo | None = None) -> list[RunEntry]:
    """Every run in `store`, newest first, each once: the job records given (from `JobManager.list()`, which
    settles dead workers first) and every final result without a job. `result_info(kind, hash)` returns a
    result's (config dict, meta dict) or None; it defaults to reading the result, and a caller that lists
    often passes a cached one (a stored result never changes)."""
    if result_info is None:
        from twophase_core.experiments.result import load_result

        def result_info(kind: str, h: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
            r = load_result(store, kind, h)
            return None if r is None else (r.config, r.meta)

    out: list[RunEntry] = []
    seen = set()
    for rec in records:
        if rec.id in seen or rec.kind not in registry.names():
            continue
        seen.add(rec.id)
        out.append(RunEntry(rec.id, rec.kind, rec.hash, _typed(rec.kind, rec.config), rec,
                            load_meta(store, rec.id), created=rec.created or None))
    for key in store.keys("result/"):
        parts = key.split("/")
        if len(parts) != 3 or parts[1] not in registry.names():
            continue
        kind, h = parts[1], parts[2]
        rid = f"{kind}-{h}"
        if rid in seen:
            continue
        info = result_info(kind, h)
        if info is None:
            continue
        cfg_d, meta = info
        seen.add(rid)
        secs = meta.get("seconds")
        out.append(RunEntry(rid, kind, h, _typed(kind, cfg_d), None, load_meta(store, rid), created=_created(meta),
                            seconds=float(secs) if isinstance(secs, int | float) else None))
    return sorted(out, key=lambda e: e.created or 0.0, reverse=True)


def skipped_notes(entries: list[RunEntry]) -> list[R.RecordProblem]:
    """The stored notes `list_runs` could not use (their runs are listed without them)."""
    return [e.meta.problem for e in entries if e.meta.problem is not None]


def filter_runs(entries: list[RunEntry], kinds: list[str] | None = None, statuses: list[str] | None = None,
                tags: list[str] | None = None, text: str = "") -> list[RunEntry]:
    """Runs of any of `kinds`, any of `statuses`, carrying every tag in `tags`, whose id, name, note, tags or
    settings contain every word of `text` (case-insensitive). Empty filters keep everything."""
    words = text.lower().split()

    def haystack(e: RunEntry) -> str:
        settings = " ".join(f"{k}={v}" for k, v in conf.flat(e.config).items()) if e.config is not None else ""
        return " ".join([e.id, e.name, e.meta.note, " ".join(e.meta.tags), settings, e.error]).lower()

    return [e for e in entries
            if (not kinds or e.kind in kinds) and (not statuses or e.status in statuses)
            and (not tags or all(t in e.meta.tags for t in tags))
            and (not words or all(w in haystack(e) for w in words))]


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s:.1f} s" if s < 90 else f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h"


def runs_table(entries: list[RunEntry], now: float | None = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The Runs page's rows (one per run) and the names of the setting columns: kind, name, status, progress,
    wall time, created, then the settings that differ between these runs (there may be many: they come after
    what every run has, so they never push its status off screen), tags, error, id."""
    varying = differing_settings([e.config for e in entries if e.config is not None])
    rows = []
    for e in entries:
        settings = settings_text(e.config, varying) if e.config is not None else {n: "" for n in varying}
        rows.append({"kind": e.kind, "name": e.name, "status": e.status, "progress": e.progress,
                     "wall time": fmt_seconds(e.wall_s(now)),
                     "created": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.created)) if e.created else "",
                     **settings, "tags": ", ".join(e.meta.tags), "error": e.error, "id": e.id})
    return rows, varying


def delete_run(store: Store, entry: RunEntry) -> list[str]:
    """Remove a finished run: its job record, result, partial result, metadata and worker log (returned, as
    store keys and paths). Checkpoints stay: other runs on the same trajectory read them. A queued or
    running job is refused (cancel it first), so a worker never writes into a run that is gone."""
    if not entry.finished:
        raise ValueError(f"{entry.id} is {entry.status}: cancel it before deleting it")
    keys = [record_key(entry.id), result_key(entry.kind, entry.hash), result_key(entry.kind, entry.hash, partial=True),
            meta_key(entry.id)]
    gone = []
    present = set(store.keys(""))
    for k in keys:
        if k in present:
            store.delete(k)
            gone.append(k)
    log = log_path(store.root, entry.id)
    if log.is_file():
        log.unlink()
        gone.append(str(log))
    return gone
