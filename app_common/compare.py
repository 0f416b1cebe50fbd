"""Which runs the Compare page shows: the shareable `?runs=ID1,ID2,...`, checked before anything is drawn.

A bad link is never silently trimmed or ignored: too few or too many runs, a malformed id, runs of
different kinds or a run without a stored result each give one message naming the problem.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import streamlit as st

from twophase_core.experiments.reproduce import command_for

from .runs import KIND_TITLES, RunView, ShownRun, config_of, load_run, run_name, split_run_id

MIN_RUNS, MAX_RUNS = 2, 6


def parse_runs(text: str) -> tuple[list[str], str | None]:
    """(run ids, problem): ids separated by commas or spaces, duplicates dropped, checked for count,
    form and kind."""
    ids = list(dict.fromkeys(s for s in re.split(r"[,\s]+", text or "") if s))
    if not MIN_RUNS <= len(ids) <= MAX_RUNS:
        return ids, (f"Compare takes {MIN_RUNS} to {MAX_RUNS} runs of one kind; this link names {len(ids)}"
                     + (f" (`{ids[0]}`)" if len(ids) == 1 else "") + ".")
    parsed = {i: split_run_id(i) for i in ids}
    bad = [i for i, p in parsed.items() if p is None]
    if bad:
        return ids, (f"`{bad[0][:80]}` is not a run id (they look like `chaos-`, `cone-` or `linear-` followed by "
                     "20 hex digits).")
    kinds = {p[0] for p in parsed.values() if p is not None}
    if len(kinds) > 1:
        return ids, ("These runs are of different kinds (" + ", ".join(KIND_TITLES[k] for k in sorted(kinds))
                     + "); Compare puts runs of one kind side by side.")
    return ids, None


def compare_views() -> tuple[list[ShownRun], str | None]:
    """The runs named by the link, each with its stored result, or the problem with the link."""
    ids, problem = parse_runs(st.query_params.get("runs", ""))
    if problem:
        return [], problem
    kind = ids[0].partition("-")[0]  # (parse_runs checked every id: `split_run_id`'s kind)
    views = [load_run(kind, i) for i in ids]
    missing = [v.run_id for v in views if v.result is None or v.partial]
    if missing:
        return [], (f"No finished result called `{missing[0]}` in this store: it may be unknown, deleted, still "
                    "running, or computed with another store (TWOPHASE_CACHE_DIR).")
    return [v.shown() for v in views], None


def labels_and_commands(views: Sequence[RunView]) -> tuple[list[str], list[str]]:
    """A unique label per run (its name; the id's start where names collide) and each run's command,
    headed by its label as a shell comment."""
    cfgs = [config_of(v) for v in views]
    names = [run_name(v.run_id, c) for v, c in zip(views, cfgs, strict=True)]
    labels = [n if names.count(n) == 1 else f"{n} ({v.run_id[:14]})" for n, v in zip(names, views, strict=True)]
    cmds = [f"# {label}\n{command_for(c)}" if c is not None else f"# {label}: settings of an older version"
            for label, c in zip(labels, cfgs, strict=True)]
    return labels, cmds
