"""Streamlit helpers shared by the pages: handles, the settings form, job progress, figure export.

Pages stay short: they read state, call the engine through these helpers, and draw. Nothing here
computes science; figures come from `twophase_core.figures`, jobs from `twophase_core.jobs`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

import streamlit as st

from twophase_core import config as C
from twophase_core import figures as F
from twophase_core.jobs import JobManager, JobRecord
from twophase_core.presets import PRESETS, preset
from twophase_core.results import Result, load_result
from twophase_core.store import Store, default_root


def _leave_pages_directory_mode() -> None:
    """A shared link (/chaos?run=...) that is the first request after the server starts reaches a page
    file before app.py ever ran: Streamlit then still treats pages/ as an old-style pages directory and
    runs the page without app.py's navigation. Switch that off and rerun, so app.py builds the app; the
    page keeps its url_path, hence its hash, so the same page and query string come back."""
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without it has no such mode
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


_leave_pages_directory_mode()

KINDS = ("chaos", "cone", "linear")
PAGE_FILES = {"home": "pages/home.py", "chaos": "pages/chaos.py", "cone": "pages/cone.py",
              "linear": "pages/linear.py", "runs": "pages/runs.py"}
KIND_TITLES = {"chaos": "Chaos Effect", "cone": "Cone Effect", "linear": "Linearised training"}
POLL_S = 1.0


# ---------------------------------------------------------------------------------------------
# Process-wide handles (keyed by the store root, so a changed TWOPHASE_CACHE_DIR gets its own)


@st.cache_resource(show_spinner=False)
def _job_manager(root: str) -> JobManager:
    return JobManager(Store(root))


def job_manager() -> JobManager:
    return _job_manager(str(default_root()))


def store() -> Store:
    return job_manager().store


# ---------------------------------------------------------------------------------------------
# Which run a page shows: ?run=<job id> (shareable), else the last one this user opened


def split_run_id(run_id: str) -> tuple[str, str] | None:
    kind, _, h = run_id.partition("-")
    if kind not in KINDS or not re.fullmatch(r"[0-9a-f]{8,64}", h):
        return None
    return kind, h


def current_run(kind: str) -> str | None:
    rid = st.query_params.get("run")
    if rid and split_run_id(rid) and split_run_id(rid)[0] == kind:  # type: ignore[index]
        st.session_state[f"run_{kind}"] = rid
        return rid
    rid = st.session_state.get(f"run_{kind}")
    if rid:
        st.query_params["run"] = rid
    return rid


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


def config_of(view: RunView) -> Any | None:
    d = view.result.config if view.result is not None else view.record.config if view.record else None
    return None if d is None else C.from_dict(C.KINDS[view.kind], d)


# ---------------------------------------------------------------------------------------------
# Settings form: the engine validates; a bad value is shown next to its field and starts nothing


_TRAIN_FIELDS = ("model", "dataset", "width", "lr", "batch_size", "iterations", "init_seed", "data_seed",
                 "momentum", "weight_decay", "device", "data_root")
_STEP_LISTS = {"t0", "t1", "checkpoints", "references", "dts", "switch"}


def _split(text: str) -> list[str]:
    return [s for s in re.split(r"[,\s;]+", str(text).strip()) if s]


def _iterations_per_epoch(train: C.TrainConfig) -> int:
    return C.iterations_per_epoch(train)


def parse_steps(field: str, text: str, train: C.TrainConfig) -> tuple[int, ...]:
    """'0, 500it, 2ep, 2ep50it' -> iterations; a bad token is a ConfigError naming `field`."""
    tokens = _split(text)
    ipe = 1
    if any("ep" in t for t in tokens):
        try:
            ipe = _iterations_per_epoch(train)
        except C.ConfigError as e:
            raise C.ConfigError(field, text, f"epochs need the dataset size, but {e}") from None
    out = []
    for tok in tokens:
        try:
            out.append(C.parse_step(tok, ipe))
        except C.ConfigError as e:
            raise C.ConfigError(field, text, e.allowed) from None
    return tuple(out)


def _float(field: str, text: Any) -> float:
    try:
        return float(str(text).strip())
    except ValueError:
        raise C.ConfigError(field, text, "must be a number, e.g. 0.1 or 1e-7") from None


def _int(field: str, v: Any) -> int:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, int):
        return v
    try:
        return int(str(v).strip())
    except ValueError:
        raise C.ConfigError(field, v, "must be a whole number") from None


def build_config(kind: str, preset_name: str, values: dict[str, Any]) -> Any:
    """The preset's config with the form's values; raises ConfigError naming the form field."""
    cfg = preset(preset_name, kind)
    tr: dict[str, Any] = {
        "model": values["model"], "dataset": values["dataset"], "width": _float("width", values["width"]),
        "lr": _float("lr", values["lr"]), "batch_size": _int("batch_size", values["batch_size"]),
        "init_seed": _int("init_seed", values["init_seed"]), "data_seed": _int("data_seed", values["data_seed"]),
        "momentum": _float("momentum", values["momentum"]),
        "weight_decay": _float("weight_decay", values["weight_decay"]),
        "device": values["device"], "data_root": values["data_root"].strip(),
    }
    train = C.replace(cfg, **tr).train
    its = parse_steps("iterations", values["iterations"], train)
    if len(its) != 1:
        raise C.ConfigError("iterations", values["iterations"], "give one value, e.g. 1200 or 10ep")
    train = C.replace(train, iterations=its[0])
    C.validate_train(train)
    ex: dict[str, Any] = {}
    if kind == "chaos":
        ex = {"t0": parse_steps("t0", values["t0"], train), "t1": parse_steps("t1", values["t1"], train),
              "eps": _float("eps", values["eps"]), "eps_mode": values["eps_mode"], "bn": values["bn"],
              "n_alpha": _int("n_alpha", values["n_alpha"]),
              "perturb_seeds": tuple(_int("perturb_seeds", s) for s in _split(values["perturb_seeds"]))}
    elif kind == "cone":
        ex = {"checkpoints": parse_steps("checkpoints", values["checkpoints"], train),
              "n_samples": _int("n_samples", values["n_samples"]), "kernel": values["kernel"],
              "references": parse_steps("references", values["references"], train),
              "dts": parse_steps("dts", values["dts"], train)}
        w = parse_steps("cone_window", values["cone_window"], train) if values["cone_window"].strip() else (0, 0)
        if len(w) != 2:
            raise C.ConfigError("cone_window", values["cone_window"], "give start, end (or leave empty: 2nd half)")
        ex["cone_window"] = w
    else:
        ex = {"switch": parse_steps("switch", values["switch"], train), "bn_stats": values["bn_stats"]}
    cfg = C.replace(cfg, train=train, **ex)
    C.validate(cfg)
    return cfg


def _steps_text(v: tuple[int, ...]) -> str:
    return ", ".join(str(x) for x in v)


def _widgets(kind: str, base: Any, pkey: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Draw the form's widgets (inside the form), each with an empty slot under it for its error."""
    values: dict[str, Any] = {}
    slots: dict[str, Any] = {}
    tr = base.train

    def put(name: str, col: Any, widget: str, label: str, default: Any, help: str | None = None,
            **kw: Any) -> None:
        k = f"{pkey}.{name}"
        with col:
            if widget == "text":
                values[name] = st.text_input(label, value=str(default), key=k, help=help)
            elif widget == "select":
                opts = list(kw["options"])
                values[name] = st.selectbox(label, opts, index=opts.index(default) if default in opts else 0,
                                            key=k, help=help)
            elif widget == "int":
                values[name] = st.number_input(label, value=int(default), step=1, key=k, help=help)
            else:
                values[name] = st.number_input(label, value=float(default), key=k, help=help, **kw)
            slots[name] = st.empty()

    st.markdown("**Training run**")
    c = st.columns(4)
    put("model", c[0], "select", "model", tr.model, options=C.MODELS)
    put("dataset", c[1], "select", "dataset", tr.dataset, options=C.DATASETS)
    put("width", c[2], "float", "width multiplier", tr.width, format="%.3g", step=0.25)
    put("lr", c[3], "text", "learning rate", f"{tr.lr:g}")
    c = st.columns(4)
    put("batch_size", c[0], "int", "batch size", tr.batch_size)
    put("iterations", c[1], "text", "iterations T", str(tr.iterations), help="'1200', '1200it' or '10ep'")
    put("init_seed", c[2], "int", "init seed", tr.init_seed)
    put("data_seed", c[3], "int", "data seed (SGD noise)", tr.data_seed)
    with st.expander("More training settings"):
        c = st.columns(4)
        put("momentum", c[0], "float", "momentum", tr.momentum, format="%.3g", step=0.05)
        put("weight_decay", c[1], "text", "weight decay", f"{tr.weight_decay:g}")
        put("device", c[2], "select", "device", tr.device, options=C.DEVICES)
        put("data_root", c[3], "text", "data root (cifar10)", tr.data_root)
    steps_help = "comma-separated; '500', '500it', '2ep' or '2ep50it'"
    if kind == "chaos":
        st.markdown("**Perturbation**")
        c = st.columns(2)
        put("t0", c[0], "text", "t0: perturb at", _steps_text(base.t0), help=steps_help)
        put("t1", c[1], "text", "t1: compare at", _steps_text(base.t1), help=steps_help)
        c = st.columns(5)
        put("eps", c[0], "text", "eps", f"{base.eps:g}", help="size of the nudge; 0 is the exactness control")
        put("eps_mode", c[1], "select", "eps mode", base.eps_mode, options=C.EPS_MODES)
        put("perturb_seeds", c[2], "text", "perturbation seeds", _steps_text(base.perturb_seeds),
            help="comma-separated; one heatmap per seed, the mean by default")
        put("bn", c[3], "select", "BatchNorm on the path", base.bn, options=C.BN_MODES)
        put("n_alpha", c[4], "int", "interpolation points", base.n_alpha)
    elif kind == "cone":
        st.markdown("**Kernels**")
        put("checkpoints", st.container(), "text", "checkpoints (must include 0)", _steps_text(base.checkpoints),
            help=steps_help)
        c = st.columns(5)
        put("n_samples", c[0], "int", "inputs n", base.n_samples)
        put("kernel", c[1], "select", "kernel", base.kernel, options=C.KERNELS,
            help="full: (n*O)x(n*O); trace: n x n, summed over logits")
        put("references", c[2], "text", "references tau", _steps_text(base.references), help=steps_help)
        put("dts", c[3], "text", "neighbour steps dt", _steps_text(base.dts), help=steps_help)
        w = "" if base.cone_window == (0, 0) else _steps_text(base.cone_window)
        put("cone_window", c[4], "text", "cone window", w, help="start, end; empty: the second half")
    else:
        st.markdown("**Linearisation**")
        c = st.columns(2)
        put("switch", c[0], "text", "switch times t", _steps_text(base.switch), help=steps_help)
        put("bn_stats", c[1], "select", "BN statistics", base.bn_stats, options=C.LINEAR_BN_STATS)
    return values, slots


def settings_form(kind: str, expanded: bool = True) -> None:
    """Preset picker plus a form; Submit validates with the engine and queues a job (or attaches)."""
    names = list(PRESETS)
    with st.expander("Settings", expanded=expanded):
        preset_name = st.selectbox("Preset", names, key=f"preset_{kind}",
                                   format_func=lambda n: f"{n}: {PRESETS[n][0]}",
                                   help="fills the form below; then change what you like")
        base = preset(preset_name, kind)
        with st.form(f"form_{kind}", border=False):
            values, slots = _widgets(kind, base, f"{kind}.{preset_name}")
            general = st.empty()
            submitted = st.form_submit_button("Run", type="primary", icon=":material/play_arrow:")
    if not submitted:
        return
    try:
        cfg = build_config(kind, preset_name, values)
        rec = job_manager().submit(cfg)
    except C.ConfigError as e:
        if e.field in slots:
            slots[e.field].error(str(e), icon=":material/error:")
            general.warning(f"Nothing was started: fix **{e.field}** above.", icon=":material/warning:")
        else:
            general.error(f"Nothing was started: {e}", icon=":material/error:")
        return
    st.session_state[f"preset_of_{rec.id}"] = preset_name
    open_run(kind, rec.id, switch=False)
    st.rerun()


# ---------------------------------------------------------------------------------------------
# Job progress, polled with a fragment while the job runs


def _fmt_eta(s: float | None) -> str:
    if s is None:
        return "ETA unknown"
    s = max(0.0, float(s))
    return f"ETA {s:.0f} s" if s < 90 else f"ETA {s / 60:.1f} min"


def _partial_mark(jm: JobManager, run_id: str) -> Any:
    p = jm.partial(run_id)
    if p is None:
        return None
    return p.meta.get("rows_done", sum(int(v.size) for v in p.arrays.values()))


def _submit_again(run_id: str, config: dict[str, Any], kind: str, key: str, label: str) -> None:
    if st.button(label, key=key, icon=":material/replay:"):
        job_manager().submit(C.from_dict(C.KINDS[kind], config))
        st.rerun()


def job_status(view: RunView) -> None:
    """Progress bar, stage and ETA with a Cancel button while the job runs; its error (and a resubmit
    button) when it failed. The whole page reruns when the job ends or a partial result grows."""
    if view.record is None:
        return
    rid, kind = view.run_id, view.kind
    mark_key = f"mark_{rid}"
    jm = job_manager()
    if not view.record.finished:
        st.session_state[mark_key] = (view.record.status, _partial_mark(jm, rid))

    @st.fragment(run_every=POLL_S if not view.record.finished else None)
    def panel() -> None:
        jm.pump()
        rec = jm.get(rid)
        if rec is None:
            return
        if not view.record.finished:  # type: ignore[union-attr]
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
            _submit_again(rid, rec.config, kind, f"resubmit_{rid}", "Resubmit (resumes from checkpoints)")
            log = jm.log(rid)
            if log:
                with st.expander("Worker log"):
                    st.code(log[-5000:], language=None)
        elif rec.status == "cancelled":
            st.warning("This run was cancelled; finished checkpoints are kept.", icon=":material/stop_circle:")
            _submit_again(rid, rec.config, kind, f"resubmit_{rid}", "Resubmit (resumes from checkpoints)")

    panel()


# ---------------------------------------------------------------------------------------------
# Run header and figures with their data, HTML and the command that reproduces them


def run_header(view: RunView) -> str:
    """Run id, status, shareable link; returns the `twophase ...` command for this run."""
    cfg = config_of(view)
    cmd = F.reproduce_command(cfg, st.session_state.get(f"preset_of_{view.run_id}")) if cfg is not None else ""
    status = view.record.status if view.record else ("done" if view.result is not None else "unknown")
    if view.partial:
        status = "running (partial result below)"
    c1, c2 = st.columns([3, 2])
    with c1:
        st.markdown(f"**Run** `{view.run_id}` · status **{status}**")
    with c2:
        base = (st.context.url or "").rstrip("/")
        st.caption(f"Link to this view: `{base}?run={view.run_id}`" if base else f"Link: `?run={view.run_id}`")
    job_status(view)
    return cmd


def figure_block(fig: Any, table: F.Table, name: str, view: RunView, command: str, key: str,
                 show_command: bool = True) -> None:
    """The figure, then its data (CSV, JSON), an HTML export and the command that reproduces it."""
    st.plotly_chart(fig, key=f"fig_{key}", config={"displaylogo": False})
    cfg_d = view.result.config if view.result is not None else None
    stem = f"{view.run_id}_{name}"
    c = st.columns(3)
    c[0].download_button("CSV", F.to_csv(table), file_name=f"{stem}.csv", mime="text/csv", key=f"csv_{key}",
                         icon=":material/download:", on_click="ignore", width="stretch")
    c[1].download_button("JSON", F.to_json(table, figure=name, run=view.run_id, command=command, config=cfg_d),
                         file_name=f"{stem}.json", mime="application/json", key=f"json_{key}",
                         icon=":material/download:", on_click="ignore", width="stretch")
    c[2].download_button("HTML", lambda: F.to_html(fig, command), file_name=f"{stem}.html", mime="text/html",
                         key=f"html_{key}", icon=":material/download:", on_click="ignore", width="stretch")
    if show_command and command:
        st.code(command, language="bash", wrap_lines=True)


WAITING = {
    "chaos": "The base run trains first; then, for each t0, a perturbed copy trains next to it on the same "
             "minibatches. The heatmaps appear with the first finished cells (smallest t0 first) and fill in "
             "as the run goes on. "
             "What to look for: copies perturbed early end up apart (bright cells), copies perturbed late stay "
             "together (dark cells).",
    "cone": "The base run trains and the kernel is computed at every checkpoint; the figures appear when all "
            "kernels are done. What to look for: the kernel first moves fast and far from H(theta_0), then "
            "slowly, inside a narrow cone.",
    "linear": "The base run trains, then one linearised model per switch time t; points appear one by one. "
              "What to look for: switching early costs accuracy, switching late much less.",
}


def waiting_hint(view: RunView) -> None:
    """What is being computed and what to look for, while there is nothing to draw yet."""
    if view.record is None:
        st.warning(f"No run or stored result called `{view.run_id}`.", icon=":material/search_off:")
    elif not view.record.finished:
        st.info(WAITING[view.kind], icon=":material/hourglass_top:")


def no_run_yet(kind: str) -> None:
    st.info(f"No {KIND_TITLES[kind]} run open yet. Pick a preset under Settings and press **Run**, "
            "or go Home and press **Run the demo**.", icon=":material/info:")


def page_run(kind: str, title: str, caption: str) -> tuple[RunView, str]:
    """The shared top of a result page: title, settings form, run header; stops until a result exists."""
    st.title(title)
    st.caption(caption)
    run_id = current_run(kind)
    settings_form(kind, expanded=run_id is None)
    if run_id is None:
        no_run_yet(kind)
        st.stop()
    view = load_run(kind, run_id)
    cmd = run_header(view)
    if view.result is None:
        waiting_hint(view)
        st.stop()
    return view, cmd


def fmt_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""
