"""The shared top of a result page: title, settings form, run header with the job panel, and what to
look for while nothing is drawn yet. A page calls `page_run` and draws what it returns."""

from __future__ import annotations

import streamlit as st

from twophase_core.experiments.reproduce import command_for
from twophase_core.interfaces import figures as F

from .export import figure_block
from .form import settings_form
from .job_panel import job_status
from .present import show_figure
from .runs import KIND_TITLES, PAGE_FILES, POLL_S, RunView, ShownRun, config_of, current_run, load_run, split_run_id


def run_header(view: RunView) -> str:
    """Run id, status, shareable link; returns the `twophase ...` command for this run."""
    cfg = config_of(view)
    cmd = command_for(cfg) if cfg is not None else ""
    status = view.record.status if view.record else ("done" if view.result is not None else "unknown")
    if view.partial:
        status = "running (partial result below)"
    c1, c2 = st.columns([3, 2])
    with c1:
        st.markdown(f"**Run** `{view.run_id}` · status **{status}**")
    with c2:
        base = (st.context.url or "").rstrip("/")
        st.caption(f"Link to this view: `{base}?run={view.run_id}`" if base else f"Link: `?run={view.run_id}`")
    shipped = view.result.meta.get("gallery") if view.result is not None else None
    if shipped:  # seeded from the gallery: say so, and how it is checked
        st.caption(f"This result ships with twophase {shipped['version']} (computed {shipped['built']}; nothing "
                   "was trained here). `twophase gallery verify` computes it again and compares.")
    job_status(view)
    return cmd


WAITING = {
    "chaos": "The base run trains; for each t0, a perturbed copy trains next to it on the same minibatches. "
             "The first cell comes as soon as the base run reaches the first t1 (the copy from the smallest t0 "
             "catches up), then the base run finishes and the heatmaps fill in, smallest t0 first. "
             "What to look for: copies perturbed early end up apart (bright cells), copies perturbed late stay "
             "together (dark cells).",
    "cone": "The base run trains and the kernel is computed at every checkpoint; the figures appear when all "
            "kernels are done. What to look for: the kernel first moves fast and far from H(theta_0), then "
            "slowly, inside a narrow cone.",
    "linear": "The base run trains, then one linearised model per switch time t; points appear one by one. "
              "What to look for: switching early costs accuracy, switching late much less.",
}

WAITING_OTHER = "The base run trains first, then the experiment's units of work; the result appears when they are done."


def waiting_hint(view: RunView) -> None:
    """What is being computed and what to look for, while there is nothing to draw yet."""
    if view.record is None:
        st.warning(f"No run or stored result called `{view.run_id}` in this store: it may have been deleted, "
                   "or computed with another store (TWOPHASE_CACHE_DIR).", icon=":material/search_off:")
        st.page_link(PAGE_FILES["runs"], label="See every run", icon=":material/list:")
    elif not view.record.finished:
        st.info(WAITING.get(view.kind, WAITING_OTHER), icon=":material/hourglass_top:")


def no_run_yet(kind: str) -> None:
    st.info(f"No {KIND_TITLES[kind]} run open yet. Pick a preset under Settings and press **Run**, "
            "or go Home and press **Run the demo**.", icon=":material/info:")


def page_run(kind: str, title: str, caption: str) -> tuple[ShownRun, str]:
    """The shared top of a result page: title, settings form, run header; stops until a result exists."""
    st.title(title)
    st.caption(caption)
    run_id, problem = current_run(kind)
    view = load_run(kind, run_id) if run_id else None
    settings_form(kind, run_config=config_of(view) if view else None, run_id=run_id, expanded=run_id is None)
    if problem:
        bad = st.query_params.get("run", "")
        parsed = split_run_id(bad)
        st.warning(f"This link names no {KIND_TITLES[kind]} run: {problem}", icon=":material/link_off:")
        if parsed is not None:
            st.page_link(PAGE_FILES[parsed[0]], label=f"Open it on the {KIND_TITLES[parsed[0]]} page",
                         query_params={"run": bad}, icon=":material/open_in_new:")
        st.page_link(PAGE_FILES["runs"], label="See every run", icon=":material/list:")
        st.stop()
    if view is None:
        no_run_yet(kind)
        st.stop()
    cmd = run_header(view)
    if view.result is None:
        if view.record is not None and not view.record.finished:  # the curve's place, drawn by its fragment as
            st.subheader("Training, live")  # soon as the worker sends the first steps: no page rerun to wait for
            _live_curve(view.run_id, view.kind, (view.record.config.get("train") or {}).get("iterations"))
        waiting_hint(view)
        st.stop()
    shown = view.shown()
    training_curve(shown, cmd)
    return shown, cmd


def training_curve(view: ShownRun, cmd: str) -> None:
    """The base run's loss and accuracy: alone and live while nothing else is computed yet (the page
    stops there), folded away under the figures once there is more to see."""
    a = view.result.arrays
    if not F.has_training_curve(a):
        return
    T = (view.result.config.get("train") or {}).get("iterations")
    if view.partial and F.live_stage(view.kind, a, view.result.meta):
        st.subheader("Training, live")
        _live_curve(view.run_id, view.kind, T)
        waiting_hint(view)
        st.stop()
    with st.expander("The base run: training loss and test accuracy"):
        figure_block(F.training_curve(a, iterations=T), F.training_curve_table(a), "training_curve", view, cmd,
                     "training", show_command=False)


@st.fragment(run_every=POLL_S)
def _live_curve(run_id: str, kind: str, iterations: int | None) -> None:
    """The live curve redrawn alone every poll: a whole page's rerun per training step would keep the browser
    busy rendering the form and header (seconds on a loaded 2-core machine) instead of the curve. It is on the
    page from the job's start, so the first steps need no page rerun; the job panel reruns the page when the
    first cell arrives or the job ends."""
    view = load_run(kind, run_id)
    if view.result is None:
        st.caption("The first training steps appear here within seconds of the job starting.")
        return
    # the figure alone: its exports (CSV, JSON, HTML rebuilt every second) would double the work of each redraw for
    # a curve that is only a snapshot; the finished run's curve has them
    show_figure(F.training_curve(view.result.arrays, iterations=iterations), "fig_training_live")
