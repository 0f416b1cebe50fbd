"""Which run a page shows, and the process-wide job manager.

A run is named by its job id, `<kind>-<config hash>`. The page's run comes from the shareable
`?run=` query parameter, else from this user's last run of that kind (session state). A link that
names a malformed id, or a run of another kind, is not silently ignored: `current_run` says why.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import streamlit as st

from twophase_core.execution.jobs import JobManager, JobRecord, env_warm_workers
from twophase_core.experiments import registry
from twophase_core.experiments.result import Result, load_result
from twophase_core.experiments.sweep import SweepResult
from twophase_core.interfaces import catalog as K
from twophase_core.interfaces import gallery
from twophase_core.settings import config as conf
from twophase_core.storage import record_types as R
from twophase_core.storage.store import Store, default_root

PAGES = {"home": "pages/home.py", "lesson": "pages/lesson.py", "sweeps": "pages/sweeps.py", "runs": "pages/runs.py",
         "compare": "pages/compare.py"}


class _Kinds(Sequence[str]):
    """The experiment kinds as the registry has them now (a plugin loaded later included)."""

    def __getitem__(self, i: Any) -> Any:
        return registry.names()[i]

    def __len__(self) -> int:
        return len(registry.names())


class _ByKind(Mapping[str, str]):
    """A kind's title or page file, read from the registry when asked; page files of the other pages too."""

    def __init__(self, pick: Callable[[Any], str], fixed: Mapping[str, str] | None = None):
        self.pick, self.fixed = pick, dict(fixed or {})

    def __getitem__(self, key: str) -> str:
        return self.fixed[key] if key in self.fixed else self.pick(registry.get(key))

    def __iter__(self) -> Iterator[str]:
        return iter([*self.fixed, *registry.names()])

    def __len__(self) -> int:
        return len(self.fixed) + len(registry.names())


KINDS = _Kinds()
PAGE_FILES = _ByKind(lambda e: e.page or "pages/result.py", PAGES)  # a kind without a page: the generic one
KIND_TITLES = _ByKind(lambda e: e.title)
POLL_S = 1.0


@st.cache_resource(show_spinner=False)
def _job_manager(root: str) -> JobManager:
    """The store's job manager; an empty store first gets the gallery's results (shown at once, nothing trained,
    unless TWOPHASE_GALLERY=0). Its launcher keeps a warm worker ready (TWOPHASE_WARM_WORKERS, default 1): torch
    loads in that process, never in this one, and a click trains at once."""
    store = Store(root)
    if gallery.wanted():
        gallery.seed(store)
    return JobManager(store, warm=env_warm_workers())


def job_manager() -> JobManager:
    """One manager per store root (a changed TWOPHASE_CACHE_DIR gets its own)."""
    return _job_manager(str(default_root()))


def start_jobs() -> None:
    """Make the store's manager when a server's first page runs, not at the first click, so the warm worker has
    loaded torch by the time anyone presses a button. A store that cannot be opened is left to the page: it says
    what is wrong where the user looks."""
    try:
        job_manager()
    except Exception:  # noqa: BLE001 - reported by the page that uses the store
        pass


def split_run_id(run_id: str) -> tuple[str, str] | None:
    """(kind, hash) of a well-formed run id, else None."""
    kind, _, h = run_id.partition("-")
    if kind not in KINDS or not re.fullmatch(r"[0-9a-f]{8,64}", h):
        return None
    return kind, h


def current_run(kind: str) -> tuple[str | None, str | None]:
    """(run id to show, problem with the link): the link's run if it is one of this kind, else this
    user's last run of the kind. A bad link is reported, never silently replaced."""
    rid = st.query_params.get("run")
    if rid:
        parsed = split_run_id(rid)
        if parsed is None:
            return None, f"`{rid[:80]}` is not a run id (they look like `{kind}-` followed by 20 hex digits)."
        if parsed[0] != kind:
            return None, (f"`{rid}` is a {KIND_TITLES[parsed[0]]} run; it opens on the "
                          f"{KIND_TITLES[parsed[0]]} page.")
        st.session_state[f"run_{kind}"] = rid
        return rid, None
    rid = st.session_state.get(f"run_{kind}")
    if rid:
        st.query_params["run"] = rid
    return rid, None


def open_run(kind: str, run_id: str, switch: bool = True) -> None:
    """Show `run_id` on its page (sets the URL and this user's last run of that kind)."""
    st.session_state[f"run_{kind}"] = run_id
    if switch:
        st.switch_page(PAGE_FILES[kind], query_params={"run": run_id})
    st.query_params["run"] = run_id


@dataclass
class RunView:
    run_id: str
    kind: str
    record: JobRecord | None
    result: Result | None
    partial: bool

    def shown(self) -> ShownRun:
        """This run as a result page draws it, once its result (final or partial) is there."""
        if self.result is None:
            raise ValueError(f"run {self.run_id} has no result yet")
        return ShownRun(self.run_id, self.kind, self.record, self.result, self.partial)


@dataclass
class ShownRun(RunView):
    """A run with its result there: what a result page draws (`page_run` stops before then)."""

    result: Result


def load_run(kind: str, run_id: str) -> RunView:
    """The record of a job (if it was a job) and its result: final if stored, else the latest partial."""
    jm = job_manager()
    parsed = split_run_id(run_id)
    rec = jm.get(run_id)
    res, partial = None, False
    if parsed is not None:
        res = load_result(jm.store, parsed[0], parsed[1])
        if res is None and rec is not None and not rec.finished:
            res = jm.partial(run_id)
            partial = res is not None
    return RunView(run_id, kind, rec, res, partial)


def config_of(view: RunView) -> conf.ExperimentConfig | None:
    """The typed config of a run: from its result, else from its job record."""
    d = view.result.config if view.result is not None else view.record.config if view.record else None
    if d is None:
        return None
    try:
        return registry.config_from_dict(view.kind, d)
    except conf.ConfigError:  # a record from an older schema: show it, but it cannot fill the form
        return None


def fmt_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


@st.cache_resource(show_spinner=False)
def _result_infos(root: str) -> dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]]:
    return {}


def _result_info(kind: str, h: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A stored result's (config, meta), read once per process: a result never changes under its key."""
    jm = job_manager()
    cache = _result_infos(str(jm.store.root))
    if (kind, h) not in cache:
        r = load_result(jm.store, kind, h)
        if r is None:
            return None
        cache[(kind, h)] = (r.config, {k: v for k, v in r.meta.items() if k in ("created", "seconds")})
    return cache[(kind, h)]


def run_entries() -> list[K.RunEntry]:
    """Every run of the store (jobs, and results computed without one), newest first, each once."""
    jm = job_manager()
    return K.list_runs(jm.store, jm.list(), result_info=_result_info)


def warn_skipped(problems: list[R.RecordProblem]) -> None:
    """One warning naming the stored records a page skipped, and how to repair them; nothing if none."""
    if problems:
        st.warning(R.skipped_text(problems), icon=":material/report:")


def warn_skipped_runs(entries: list[K.RunEntry]) -> None:
    """The job records and run notes skipped while listing `entries` (by `run_entries`), in one warning."""
    warn_skipped(job_manager().skipped + K.skipped_notes(entries))


def run_name(run_id: str, config: conf.ExperimentConfig | None) -> str:
    """A run's name: the one its user gave it, else the nearest preset plus what differs."""
    meta = K.load_meta(job_manager().store, run_id)
    if meta.name:
        return meta.name
    return K.default_name(config) if config is not None else run_id


@st.cache_data(max_entries=16, show_spinner=False)
def _groups(key: str, _res: SweepResult, n_boot: int) -> list[dict[str, Any]]:
    return _res.groups(n_boot=n_boot)


def sweep_groups(res: SweepResult, n_boot: int = 1000) -> list[dict[str, Any]]:
    """`res.groups`, computed once per set of stored points: the bootstrap over replicates takes seconds for the
    demo-sweep and the page reruns at every click. A stored result never changes under its hash, so the sweep and
    the hashes of its stored points are the whole key."""
    key = json.dumps([res.sweep.to_dict(), sorted(res.results)], sort_keys=True, default=str)
    return _groups(key, res, n_boot)
