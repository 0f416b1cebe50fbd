"""The job panel: progress bar, stage and ETA with Cancel while a job runs; its error, log and a
resubmit button when it failed; a note when it was cancelled. Polled with a fragment, so only the
panel reruns each second, and the whole page reruns when the job ends or its partial result grows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from twophase_core.execution.jobs import JobManager
from twophase_core.experiments import registry
from twophase_core.interfaces import figures as F
from twophase_core.settings import config as conf
from twophase_core.storage.errors import StoreError

from .runs import KIND_TITLES, POLL_S, RunView, job_manager


def _fmt_eta(s: float | None) -> str:
    if s is None:
        return "ETA unknown"
    s = max(0.0, float(s))
    return f"ETA {s:.0f} s" if s < 90 else f"ETA {s / 60:.1f} min"


LIVE_ARRAYS = ("train_t", "train_loss", "acc_t", "acc")  # the base run's live curve: redrawn by its own fragment


def _partial_mark(jm: JobManager, run_id: str) -> Any:
    """What must rerun the page when it changes: units done and the values computed so far (a new cell), not the
    live curve's steps (the page's live fragment draws those, and a page rerun per step swamps a slow browser)."""
    p = jm.partial(run_id)
    if p is None or F.live_stage(p.kind, p.arrays, p.meta):  # the curve alone: the live fragment draws it
        return None
    values = [np.asarray(v) for k, v in p.arrays.items() if k not in LIVE_ARRAYS]
    return p.meta.get("units_done"), sum(int(np.isfinite(v).sum()) for v in values if v.dtype.kind in "fiu")


def _submit_again(config: dict[str, Any], kind: str, key: str, label: str) -> None:
    if st.button(label, key=key, icon=":material/replay:"):
        try:
            job_manager().submit(registry.config_from_dict(kind, config))
        except (conf.ConfigError, StoreError) as e:
            st.error(f"Nothing was started: {e}", icon=":material/error:")
            return
        st.rerun()


def job_status(view: RunView) -> None:
    """Progress bar, stage and ETA with a Cancel button while the job runs; its error (and a resubmit
    button) when it failed. The whole page reruns when the job ends or a partial result grows."""
    record = view.record
    if record is None:
        return
    rid, kind = view.run_id, view.kind
    mark_key = f"mark_{rid}"
    jm = job_manager()
    if not record.finished:
        st.session_state[mark_key] = (record.status, _partial_mark(jm, rid))

    @st.fragment(run_every=POLL_S if not record.finished else None)
    def panel() -> None:
        jm.pump()
        rec = jm.get(rid)
        if rec is None:
            return
        if not record.finished:
            mark = (rec.status, _partial_mark(jm, rid) if rec.status == "running" else None)
            old = st.session_state.get(mark_key)
            if rec.finished or (old is not None and mark[1] != old[1]):
                st.session_state[mark_key] = mark
                st.rerun()
        if rec.status in ("queued", "running"):
            c1, c2 = st.columns([6, 1], vertical_alignment="bottom")
            with c1:
                if rec.status == "queued":
                    st.progress(0.0, text="queued: waiting for a free worker (one job runs at a time)")
                else:
                    pct = 100 * rec.progress
                    st.progress(min(max(rec.progress, 0.0), 1.0),
                                text=f"{rec.stage or 'running'} · {pct:.0f}% · {_fmt_eta(rec.eta_s)}")
            with c2:
                if st.button("Cancel", key=f"cancel_{rid}", icon=":material/stop:",
                             disabled=rec.cancel_requested is not None):
                    jm.cancel(rid)
                    st.rerun()
            others = [r for r in jm.list() if not r.finished and r.id != rid]
            if others:
                st.caption("Also in the queue: " + ", ".join(f"{KIND_TITLES[r.kind]} ({r.status})" for r in others)
                           + " · see **Runs**")
        elif rec.status == "failed":
            st.error(f"This run failed: {rec.error or 'no reason given'}", icon=":material/error:")
            _submit_again(rec.config, kind, f"resubmit_{rid}", "Resubmit (resumes from checkpoints)")
            log = jm.log(rid)
            if log:
                with st.expander("Worker log"):
                    st.code(log[-5000:], language=None)
        elif rec.status == "cancelled":
            st.warning("This run was cancelled; finished checkpoints are kept.", icon=":material/stop_circle:")
            _submit_again(rec.config, kind, f"resubmit_{rid}", "Resubmit (resumes from checkpoints)")

    panel()
