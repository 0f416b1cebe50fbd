"""The Streamlit app through AppTest: every page renders empty and with real stored results, the form
refuses bad values without starting a job, and a link (?page=...&run=...) opens the same view."""

import base64
import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from launchers import FailingLauncher
from streamlit.testing.v1 import AppTest

from twophase_core.execution.jobs import JobManager
from twophase_core.execution.run import run_experiment
from twophase_core.experiments.presets import preset
from twophase_core.experiments.result import Result, load_result
from twophase_core.interfaces import figures as F
from twophase_core.interfaces import gallery
from twophase_core.settings import config as conf
from twophase_core.storage.store import Store

APP = str(Path(__file__).resolve().parent.parent / "app.py")
# each page of an empty store (which the app fills with the gallery, nothing trained): its title and what it says
# instead of figures (None: no such line; the Sweeps page opens the gallery's demo-sweep, the Runs page lists it)
EMPTY = {
    "pages/home.py": ("Two-phase learning dynamics", None),
    "pages/chaos.py": ("Chaos Effect", "No Chaos Effect run open yet"),
    "pages/cone.py": ("Cone Effect", "No Cone Effect run open yet"),
    "pages/linear.py": ("Linearised training", "No Linearised training run open yet"),
    "pages/sweeps.py": ("Sweeps", None),
    "pages/runs.py": ("Runs", None),
    "pages/compare.py": ("Compare runs", "this link names 0"),
}
# the figures of a result page, top to bottom, by the start of their titles (the training curve first, folded)
FIGURES = {
    "chaos": ["The base run", "C: parameter distance", "B: loss barrier", "D: disagreement",
              F.METRICS["C"] + " versus t1", "Where the chaos ends", "Loss along the interpolation path"],
    "cone": ["The base run", "Kernel distance S", "Kernels along training", "Kernel distance to a reference",
             "Kernel velocity", "Test accuracy along training"],
    "linear": ["The base run", "Linearised training from theta_t"],
}
TIMEOUT = 60  # the first run imports torch


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """Real tiny results of the three experiments in one store: {kind: run id}."""
    root = tmp_path_factory.mktemp("app") / "cache"
    store = Store(root)
    ids = {kind: f"{kind}-{run_experiment(preset('tiny', kind), store).hash}" for kind in ("chaos", "cone", "linear")}
    store.close()
    return root, ids


@pytest.fixture
def empty(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("TWOPHASE_CACHE_DIR", str(root))
    yield root
    _stop_workers(root)


def _stop_workers(root: Path) -> None:
    """A failing test may have started a worker: stop the ones recorded in this test's store."""
    for rec in JobManager(Store(root)).list():
        if rec.pid and rec.status == "running":
            try:
                os.killpg(rec.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _app(**query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def _figures(at: AppTest) -> list[dict[str, Any]]:
    """The plotly figures the page drew, as the browser receives them."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _values(v: Any) -> np.ndarray:
    """A figure's array as the browser gets it: a list, or plotly's typed array {dtype, bdata (base64), shape}."""
    if isinstance(v, dict):
        flat = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return flat.reshape([int(n) for n in str(v["shape"]).split(",")]) if "shape" in v else flat
    return np.asarray(v, dtype=float)


def _title(fig: dict[str, Any]) -> str:
    return (fig["layout"].get("title") or {}).get("text", "")


def _figure(at: AppTest, title: str) -> dict[str, Any]:
    """The one figure whose title starts with `title`."""
    [fig] = [f for f in _figures(at) if _title(f).startswith(title)]
    return fig


def _stored(run_id: str) -> Result:
    """The stored result behind a run id, read from the store (not through the app)."""
    kind, h = run_id.split("-")
    r = load_result(Store(), kind, h)
    assert r is not None
    return r


def _sig3(v: float) -> str:
    """v to 3 significant digits, written out (816.5 -> '817', 1337.6 -> '1340'): how the t* tables read."""
    return f"{float(f'{v:.3g}'):g}"


def _text(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "error", "warning", "title", "subheader")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def test_every_page_renders_empty_with_its_title_and_what_to_do(empty):
    at = _app()
    assert [b.label for b in at.button][:2] == ["Start the lesson", "Open the demo"]  # first, above the fold
    for page, (title, says) in EMPTY.items():
        if page != "pages/home.py":
            at.switch_page(page).run()
        assert not at.exception, page
        assert [t.value for t in at.title] == [title], page
        notes = [e.value for e in (*at.info, *at.warning)]
        assert says is None or any(says in n for n in notes), (page, notes)
        if page == "pages/runs.py":  # the gallery's results, each once, and nothing else
            assert sorted(at.dataframe[0].value["id"]) == sorted(e.run_id for e in gallery.read().entries)
        elif page == "pages/home.py":  # one figure: the shipped demo's C, drawn from the package, not the store
            assert [c.key for c in at.get("plotly_chart")] == ["home_glance"]
        elif page != "pages/sweeps.py":
            assert not at.get("plotly_chart"), page
    assert JobManager(Store(empty)).list() == []  # looking starts nothing


@pytest.mark.parametrize("kind", ["chaos", "cone", "linear"])
def test_result_pages_draw_a_stored_result(with_results, kind):
    rid = with_results[kind]
    at = _app(page=kind, run=rid)
    assert not at.exception
    assert rid in _text(at) and "status **done**" in _text(at)
    figs = _figures(at)
    assert len(figs) == len(FIGURES[kind])
    for fig, title in zip(figs, FIGURES[kind], strict=True):
        assert _title(fig).startswith(title), (_title(fig), title)
    assert len(at.get("download_button")) == 3 * len(figs)  # CSV, JSON and HTML for every figure
    # the command that reproduces the figures: the tiny preset, no other flag
    assert {c.value for c in at.code} == {f"twophase {kind} --preset tiny --json out.json"}
    stored = _stored(rid)
    a, meta = stored.arrays, stored.meta
    if kind == "chaos":  # the heatmaps hold the stored values (hover shows them; colour is log10)
        for m, title in (("C", "C: parameter distance"), ("B", "B: loss barrier"), ("D", "D: disagreement")):
            heat = _figure(at, title)["data"][0]
            assert heat["type"] == "heatmap" and np.allclose(_values(heat["customdata"]), a[m][0])
    elif kind == "cone":  # the angle, its null, the kernel count and the final accuracy as stored
        shown = {m.label.split(",")[0]: m for m in at.metric}
        assert shown["Cone angle"].value == f"{meta['cone_angle_deg']:.1f}°"
        assert shown["Kernels"].value == str(len(a["iters"])) and f"{a['test_acc'][-1]:.3f}" in shown["Kernels"].help
        assert shown["Random walk"].value.endswith("°") and "random walks" in shown["Random walk"].help
        assert _figure(at, "Kernel distance S")["data"][0]["type"] == "heatmap"
        # seen from the window's first kernel: the widest angle between explicit increments u_i - u_first, with
        # the unit kernels u_i rebuilt from G (G = U U^T)
        w, v = np.linalg.eigh(a["G"])
        u = v * np.sqrt(np.clip(w, 0, None))
        its, (lo, hi) = a["iters"].tolist(), a["cone_window"].tolist()
        inside = [i for i, t in enumerate(its) if lo <= t <= hi]
        d = u[inside[1:]] - u[inside[0]]
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        widest = np.degrees(np.arccos(np.clip(d @ d.T, -1, 1)).max())
        at.radio(key="cone_apex").set_value("window").run()
        assert {m.label.split(",")[0]: m.value for m in at.metric}["Cone angle"] == f"{widest:.1f}°"
        assert at.query_params.get("apex") == "window"
    else:  # the table under the figure: one row per switch time, the stored accuracies
        [table] = [d.value for d in at.dataframe]
        assert list(table.columns) == ["switch", "acc_linear", "acc_at_switch", "acc_full"]
        assert list(table["switch"]) == a["switch"].tolist()
        assert np.allclose(table["acc_linear"], a["acc_linear"]) and np.allclose(table["acc_full"], a["acc_full"])


def test_chaos_controls_redraw_the_figures_they_name(with_results):
    rid = with_results["chaos"]
    a = _stored(rid).arrays
    at = _app(page="chaos", run=rid)
    assert np.allclose(_values(_figure(at, "C: parameter distance")["data"][0]["z"]), np.log10(a["C"][0]))  # log
    at.toggle(key="chaos_log").set_value(False).run()
    assert not at.exception and at.query_params.get("log") == "0"
    assert np.allclose(_values(_figure(at, "C: parameter distance")["data"][0]["z"]), a["C"][0])  # the values
    cells = at.selectbox(key="chaos_cell")
    cells.select_index(len(cells.options) - 1).run()  # the last cell: t0=20, t1=60
    assert not at.exception and at.query_params.get("cell") == "20,60"
    path = _figure(at, "Loss along the interpolation path, t0=20, t1=60")["data"][0]
    assert np.allclose(_values(path["x"]), a["alphas"]) and np.allclose(_values(path["y"]), a["path"][0, 1, 1])
    at.radio(key="chaos_section_metric").set_value("D").run()
    assert not at.exception
    sections = _figure(at, F.METRICS["D"] + " versus t1")["data"]
    assert [tr["name"] for tr in sections] == ["t0=0", "t0=20"]
    assert np.allclose(_values(sections[0]["y"]), a["D"][0, 0]) and np.allclose(_values(sections[1]["y"]), a["D"][0, 1])


def test_cone_projection_switches_draw_that_projection(with_results):
    rid = with_results["cone"]
    a = _stored(rid).arrays
    at = _app(page="cone", run=rid)
    assert "Cone angle" in " ".join(m.label for m in at.metric)
    for method in ("pca", "mds"):
        for dim in (3, 2):
            at.radio(key="cone_method").set_value(method)
            at.radio(key="cone_dim").set_value(dim).run()
            assert not at.exception, (method, dim)
            assert (at.query_params.get("proj"), at.query_params.get("dim")) == (method, str(dim))
            fig = _figure(at, f"Kernels along training, {F.PROJECTION_LABELS[method]} {dim}-D")
            kernels, xyz = fig["data"][0], a[f"{method}{dim}"]  # one point per checkpoint, as stored
            assert kernels["type"] == ("scatter3d" if dim == 3 else "scatter")
            for k, axis in enumerate("xyz"[:dim]):
                assert np.allclose(_values(kernels[axis]), xyz[:, k]), (method, dim, axis)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("t0", "abc", "t0='abc' is invalid"),
    ("eps", "-1", "eps=-1.0 is invalid"),
    ("t1", "30, 10ep", "got 80"),  # 10 epochs of 8 steps is past T=60: the engine says so
    ("batch_size", "100000", "training set"),
    ("iterations", "99999999999", "iterations=99999999999"),
    ("eps", "", "empty"),  # a cleared field is an error, never the preset's value
])
def test_bad_form_value_shows_the_message_and_starts_nothing(empty, field, value, message):
    at = _app()
    at.switch_page("pages/chaos.py").run()
    at.selectbox(key="preset_chaos").set_value("tiny").run()
    at.text_input(key=f"chaos.tiny.{field}").set_value(value)
    [run] = [b for b in at.button if b.label == "Run"]
    run.click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith(f"{field}=") and message in errors[0]
    assert any(field in w.value for w in at.warning)
    assert JobManager(Store(empty)).list() == []
    assert "run" not in at.query_params


def test_failed_job_shows_its_error_and_offers_resubmit(empty):
    rec = JobManager(Store(empty), launcher=FailingLauncher()).submit(preset("tiny", "chaos"))
    assert rec.status == "failed"
    at = _app(page="chaos", run=rec.id)
    assert not at.exception
    assert any("no room for a worker" in e.value for e in at.error)
    assert any(b.label.startswith("Resubmit") for b in at.button)


def test_link_round_trips_page_and_run(with_results):
    rid = with_results["cone"]
    at = _app(page="cone", run=rid)
    assert not at.exception
    assert [t.value for t in at.title] == ["Cone Effect"]
    assert at.query_params.get("run") == rid and "page" not in at.query_params  # the path names the page now
    assert f"?run={rid}" in _text(at)
    # the same user going to another page and back finds the same run, and the URL says so again
    at.switch_page("pages/home.py").run()
    at.switch_page("pages/cone.py").run()
    assert at.query_params.get("run") == rid and rid in _text(at)
    # a run of another kind in the link is not shown on the wrong page, and the page says where it opens
    at2 = _app(page="chaos", run=rid)
    assert not at2.exception and f"**Run** `{rid}`" not in _text(at2)
    assert any("is a Cone Effect run" in w.value for w in at2.warning)
    assert not at2.get("plotly_chart")


def test_malformed_link_says_so(empty):
    at = _app(page="chaos", run="xyz")
    assert not at.exception
    assert any("is not a run id" in w.value for w in at.warning)


def test_open_run_fills_the_form_and_a_changed_field_starts_a_new_run(with_results):
    """Edit and rerun: the form starts from the open run's settings; the old run is kept."""
    rid = with_results["chaos"]
    at = _app(page="chaos", run=rid)
    assert at.selectbox(key="preset_chaos").value == "this run"
    prefix = f"chaos.{rid}"
    assert at.text_input(key=f"{prefix}.eps").value == repr(preset("tiny", "chaos").eps)
    at.text_input(key=f"{prefix}.eps").set_value("1e-6")
    [run] = [b for b in at.button if b.label == "Run"]
    jm = JobManager(Store())
    before = {r.id for r in jm.list()}
    run.click().run()
    assert not at.exception and not at.error
    new = at.query_params.get("run")
    assert new != rid and new not in before
    rec = jm.get(new)
    assert rec.config["eps"] == 1e-6 and {k: v for k, v in rec.config.items() if k != "eps"} == \
        {k: v for k, v in conf.to_dict(preset("tiny", "chaos")).items() if k != "eps"}
    jm.cancel(new)
    _stop_workers(Store().root)


def test_unknown_run_says_so(empty):
    at = _app(page="chaos", run="chaos-0123456789abcdef0123")
    assert not at.exception
    assert any("No run or stored result" in w.value for w in at.warning)


def test_valid_form_starts_a_job_with_progress_and_cancel(empty):
    at = _app()
    at.switch_page("pages/chaos.py").run()
    at.selectbox(key="preset_chaos").set_value("tiny").run()
    [run] = [b for b in at.button if b.label == "Run"]
    run.click().run()
    assert not at.exception and not at.error
    jm = JobManager(Store(empty))
    [rec] = jm.list()
    assert at.query_params.get("run") == rec.id == jm.job_id(preset("tiny", "chaos"))
    assert rec.status in ("queued", "running", "done")
    if rec.status != "done":  # the worker is slower than this script run, almost always
        assert at.get("progress") and any(b.label == "Cancel" for b in at.button)
        [cancel] = [b for b in at.button if b.key == f"cancel_{rec.id}"]
        cancel.click().run()
        assert not at.exception
        after = jm.get(rec.id)
        assert after.cancel_requested is not None or after.finished
    # submitting the same settings again attaches to the same job
    [run] = [b for b in at.button if b.label == "Run"]
    run.click().run()
    assert [r.id for r in jm.list()] == [rec.id]


@pytest.mark.slow
def test_the_app_process_never_imports_torch(stored):
    """Pages only draw: app_common, every page and a drawn result leave torch out of the process."""
    import subprocess
    import sys

    root, ids = stored
    script = f"""
import sys
import app_common
assert 'torch' not in sys.modules, 'app_common imported torch'
from streamlit.testing.v1 import AppTest
ids = {ids!r}
for page in ("home", "chaos", "cone", "linear", "runs"):
    at = AppTest.from_file({APP!r}, default_timeout=60)
    at.query_params["page"] = page
    if page in ids:
        at.query_params["run"] = ids[page]
    at.run()
    assert not at.exception, (page, at.exception)
    assert 'torch' not in sys.modules, page + ' imported torch'
print('ok')
"""
    env = {**os.environ, "TWOPHASE_CACHE_DIR": str(root)}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=180,
                       cwd=str(Path(APP).parent))
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


@pytest.mark.slow
def test_sweeps_page_shows_groups_transition_and_bands(empty):
    """A sweep whose points are stored (computed here, as the CLI would) draws its transition view."""
    from twophase_core.execution import sweeps as SJ
    from twophase_core.experiments import sweep as S

    base = conf.replace(preset("tiny", "chaos"), t0=(0, 5, 10, 20, 30, 40), t1=(60,))
    sweep = S.Sweep(base, S.parse_vary("chaos", ["eps=1e-7,1e-5"]), replicates=2)
    store = Store(empty)
    SJ.run_sweep(sweep, store)
    rec = SJ.submit_sweep(JobManager(store), sweep)  # every point is stored: nothing is started
    assert all(r.status == "done" for r in JobManager(store).list())
    at = _app(page="sweeps", sweep=rec["id"])
    assert not at.exception
    table = at.table[0].value  # t* per group and metric, as text that fits: 3 significant digits, whole reasons
    assert set(table["metric"]) == {"C", "B", "D"} and len(table) == 6
    full = F.transition_summary_table(S.figure_groups([g for g in S.sweep_result(store, rec).groups(n_boot=1000)
                                                       if g["replicates"]]))
    for k in range(len(table)):
        found = full["found"][k]
        assert table["t*"][k] == (_sig3(full["t_star"][k]) if found else "none")
        assert table["why none was found"][k] == ("" if found else full["reason"][k])
    figs = _figures(at)  # the transition figure and the banded cross-sections, on C first
    assert len(figs) == 2 and _title(figs[0]).startswith(f"Where the chaos ends: {F.METRICS['C']}")
    assert _title(figs[1]).startswith(F.METRICS["C"] + " versus t1") and "95% band" in _title(figs[1])
    assert any("twophase sweep chaos" in c.value and "--vary eps=1e-07,1e-05" in c.value for c in at.code)
    at.radio(key="sweep_metric").set_value("D").run()
    assert not at.exception
    assert _title(_figures(at)[0]).startswith(f"Where the chaos ends: {F.METRICS['D']}")


def test_the_sweeps_page_summarises_a_sweep_once_not_at_every_rerun(empty, monkeypatch):
    """The bootstrap over replicates takes seconds for the demo-sweep: a click (another metric) reuses it."""
    import streamlit as st

    from twophase_core.experiments.sweep import SweepResult

    st.cache_data.clear()
    calls: list[int] = []
    real = SweepResult.groups
    monkeypatch.setattr(SweepResult, "groups", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    at = _app(page="sweeps", sweep=gallery.demo_sweep("chaos").id())  # the gallery's demo-sweep
    assert not at.exception and len(calls) == 1
    at.radio(key="sweep_metric").set_value("D").run()
    assert not at.exception and len(calls) == 1 and _title(_figures(at)[0]).startswith(
        f"Where the chaos ends: {F.METRICS['D']}")


def test_a_running_sweep_has_a_stop_button_that_cancels_its_points(empty):
    """Stop asks every point still running to stop (its worker keeps its checkpoints); then the button goes."""
    from twophase_core.experiments import sweep as S

    sweep = S.Sweep(preset("tiny", "chaos"), replicates=1)
    [point] = S.expand(sweep)
    store = Store(empty)
    store.put_json(S.sweep_key(sweep.id()), {"id": sweep.id(), "sweep": sweep.to_dict(), "created": 1.0,
                                             "runs": [point.run_id]})
    fake, jid = _running_job(store, point.config, point.hash, "base run", 0.3)
    try:
        assert jid == point.run_id
        at = _app(page="sweeps", sweep=sweep.id())
        assert not at.exception and JobManager(store).get(jid).cancel_requested is None
        at.button(key=f"stop_sweep_{sweep.id()}").click().run()
        assert not at.exception and JobManager(store).get(jid).cancel_requested is not None
    finally:
        fake.kill()
        fake.wait()


def test_sweep_form_submits_points_as_jobs_or_names_the_bad_field(empty):
    from twophase_core.experiments import sweep as S

    older = S.Sweep(preset("tiny", "chaos"), replicates=1)  # a sweep already there, open when the form is used
    Store(empty).put_json(S.sweep_key(older.id()), {"id": older.id(), "sweep": older.to_dict(), "created": 1.0,
                                                     "runs": [p.run_id for p in S.expand(older)]})
    at = _app(page="sweeps", sweep=older.id())
    assert at.selectbox(key="sweep_pick").value == older.id()
    at.radio(key="sweep_kind").set_value("chaos").run()
    at.selectbox(key="sweep_preset").set_value("tiny").run()
    at.text_area(key="sweep_vary_chaos_tiny").set_value("epss=1,2\nlr=fast")
    at.text_area(key="sweep_over_chaos_tiny").set_value("iterations=-5\nnonsense")
    at.text_input(key="sweep_reps_tiny").set_value("two")
    [go] = [b for b in at.button if b.label == "Run sweep"]
    go.click().run()
    assert not at.exception
    [error] = [e.value for e in at.error]  # every bad field, not only the first
    for bad in ("other settings=['nonsense']", "iterations='-5'", "replicates='two'", "'epss'", "lr='fast'"):
        assert bad in error, (bad, error)
    assert JobManager(Store(empty)).list() == []
    at.text_area(key="sweep_vary_chaos_tiny").set_value("eps=1e-7,1e-6")
    at.text_area(key="sweep_over_chaos_tiny").set_value("")
    at.text_input(key="sweep_reps_tiny").set_value("2")
    [go] = [b for b in at.button if b.label == "Run sweep"]
    go.click().run()
    assert not at.exception and not at.error
    recs = JobManager(Store(empty)).list()
    new = S.Sweep(preset("tiny", "chaos"), S.parse_vary("chaos", ["eps=1e-7,1e-6"]), replicates=2).id()
    assert len(recs) == 4 and new != older.id()
    assert at.query_params.get("sweep") == new and at.selectbox(key="sweep_pick").value == new  # the new one opens
    for r in recs:
        JobManager(Store(empty)).cancel(r.id)


def test_chaos_page_draws_the_transition_and_bands_over_perturbation_seeds(empty):
    cfg = conf.replace(preset("tiny", "chaos"), perturb_seeds=(0, 1))
    r = run_experiment(cfg, Store(empty))
    at = _app(page="chaos", run=f"chaos-{r.hash}")
    assert not at.exception
    titles = [c.proto.spec for c in at.get("plotly_chart")]
    assert any("Where the chaos ends" in s for s in titles)  # the transition figure
    assert any("95% band over replicates" in s for s in titles)  # cross-sections with their band
    # 2 t0 (the demo has 4): said once in plain words, with the way to the demo-sweep, not 3 rows of refusals
    assert not at.table and any("One run of 2 t0 cannot place t* with an interval" in i.value for i in at.info)
    [link] = [p for p in at.get("page_link") if "demo-sweep" in p.proto.label]
    assert link.proto.page == "sweeps"


def test_the_demo_sweep_is_linked_by_its_id_where_the_store_holds_it(empty):
    from twophase_core.experiments import sweep as S
    from twophase_core.experiments.presets import sweep_replicates

    demo = S.Sweep(preset("demo-sweep", "chaos"), replicates=sweep_replicates("demo-sweep"))
    store = Store(empty)
    store.put_json(S.sweep_key(demo.id()), {"id": demo.id(), "sweep": demo.to_dict(), "created": 1.0,
                                            "runs": [p.run_id for p in S.expand(demo)]})
    r = run_experiment(preset("tiny", "chaos"), store)
    at = _app(page="chaos", run=f"chaos-{r.hash}")
    assert not at.exception
    [link] = [p for p in at.get("page_link") if "demo-sweep" in p.proto.label]
    assert link.proto.query_string == f"sweep={demo.id()}"
    [note] = [i.value for i in at.info if "demo-sweep" in i.value]
    assert f"{len(demo.base.t0)} t0, each run {demo.replicates} times" in note


def test_a_run_with_enough_t0_shows_t_star_or_the_whole_reason(empty):
    from twophase_core.science.transition import estimate_transition

    cfg = conf.replace(preset("tiny", "chaos"), t0=(0, 5, 10, 20, 30), t1=(60,), perturb_seeds=(0, 1))
    r = run_experiment(cfg, Store(empty))
    at = _app(page="chaos", run=f"chaos-{r.hash}")
    assert not at.exception
    [table] = [t.value for t in at.table]
    assert list(table["metric"]) == ["C", "B", "D"]
    for k, m in enumerate(("C", "B", "D")):
        tr = estimate_transition(r.arrays["t0"], r.arrays[m][:, :, -1], n_boot=1000, seed=0)
        assert table["t*"][k] == (_sig3(tr.t_star) if tr.found else "none")
        assert table["why none was found"][k] == ("" if tr.found else tr.reason)  # whole, not cut


def test_a_form_with_several_bad_fields_names_them_all(empty):
    at = _app()
    at.switch_page("pages/chaos.py").run()
    at.selectbox(key="preset_chaos").set_value("tiny").run()
    for field, value in (("t0", "abc"), ("eps", "-1"), ("batch_size", "100000")):
        at.text_input(key=f"chaos.tiny.{field}").set_value(value)
    [run] = [b for b in at.button if b.label == "Run"]
    run.click().run()
    assert not at.exception
    errors = sorted(e.value for e in at.error)
    assert [e.split("=")[0] for e in errors] == ["batch_size", "eps", "t0"] and "training set" in errors[0]
    [warning] = [w.value for w in at.warning if "Nothing was started" in w.value]
    assert all(f"**{f}**" in warning for f in ("t0", "eps", "batch_size"))
    assert JobManager(Store(empty)).list() == []


def test_the_reproduce_command_says_how_twophase_gets_on_path(with_results):
    at = _app(page="linear", run=with_results["linear"])
    [code] = [c.value for c in at.code]
    assert code.startswith("twophase linear")
    assert any(".venv/bin/twophase" in c.value and "source .venv/bin/activate" in c.value and "Docker" in c.value
               for c in at.caption)
    html = F.to_html(F.linear_figure(_stored(with_results["linear"]).arrays), code)
    assert code in html and ".venv/bin/twophase" in html and "source .venv/bin/activate" in html


def test_the_framed_cell_follows_the_largest_barrier_until_the_user_picks_one(empty, tmp_path):
    """A partial result's largest barrier is only the largest so far: the default cell moves as cells come in."""

    from twophase_core.experiments.result import save_result

    cfg = preset("tiny", "chaos")  # t0 0, 20 by t1 30, 60: every cell computed
    full = run_experiment(cfg, Store(tmp_path / "scratch"))
    full.arrays["B"][0] = [[0.1, 0.2], [0.5, 0.3]]
    first = Result(full.kind, full.config, full.hash, {k: v.copy() for k, v in full.arrays.items()},
                   {**full.meta, "partial": True, "units_done": 1})  # cut back to the row of t0 = 0
    first.arrays["B"][0] = [[0.1, 0.2], [np.nan, np.nan]]
    first.arrays["C"][0, 1] = np.nan
    store = Store(empty)
    save_result(store, first, partial=True)
    fake, jid = _running_job(store, cfg, first.hash, "cells", 0.5)
    def framed(at: Any) -> tuple[float, float]:
        frame = _figure(at, "B: loss barrier")["layout"]["shapes"][0]
        return frame["x0"], frame["y0"]

    try:
        at = _app(page="chaos", run=jid)  # partial: the heatmaps alone, the framed cell in the link
        assert not at.exception and at.query_params.get("cell") == "0,60"
        assert framed(at) == (0.5, -0.5)  # t1 = 60 is column 1, t0 = 0 row 0
        assert "Cross-sections: the metric versus t1, one line per t0" not in [s.value for s in at.subheader]
        save_result(store, Result(full.kind, full.config, full.hash, dict(full.arrays),
                                  {**full.meta, "partial": True, "units_done": 2}), partial=True)
        at.run()
        assert at.query_params.get("cell") == "20,30" and framed(at) == (-0.5, 0.5)  # t1 = 30: column 0; t0 = 20
        full.arrays["B"][0] = [[0.1, 0.2], [0.5, 0.9]]
        save_result(store, full)  # complete: the whole page, the picker on the largest barrier
        at.run()
        assert not at.exception and at.selectbox(key="chaos_cell").value == "20,60" and framed(at) == (0.5, 0.5)
        at.selectbox(key="chaos_cell").set_value("0,30").run()  # the user's pick stays
        assert at.selectbox(key="chaos_cell").value == "0,30" and at.query_params.get("cell") == "0,30"
    finally:
        fake.kill()
        fake.wait()


def _running_job(store, cfg, h: str, stage: str, progress: float):
    """(the stand-in worker process, the job id) of a chaos job recorded as running: a live process whose command
    line names the worker, so the job counts as running until the test kills it."""
    import subprocess
    import sys
    import time

    from twophase_core.execution.jobs import JobRecord, save_record

    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "twophase_core.execution.worker"])
    jid, now = f"chaos-{h}", time.time()
    save_record(store, JobRecord(jid, "chaos", h, conf.to_dict(cfg), status="running", stage=stage, progress=progress,
                                 pid=fake.pid, created=now, started=now, updated=now))
    return fake, jid


def test_a_running_job_shows_its_live_training_curve_before_any_cell(empty, tmp_path):
    """What a worker saves before the first cell (the base run's curve) is drawn at once, alone."""

    import numpy as np

    from twophase_core.experiments.result import save_result

    cfg = conf.replace(preset("tiny", "chaos"), iterations=200, t0=(0, 100), t1=(200,))
    first = run_experiment(cfg, Store(tmp_path / "scratch"))  # then cut back to what exists mid-base-run
    first.meta.update(partial=True, units_done=0)
    for k in ("C", "B", "D", "acc_branch", "path"):
        first.arrays[k] = np.full_like(first.arrays[k], np.nan)
    first.arrays["train_t"], first.arrays["train_loss"] = first.arrays["train_t"][:80], first.arrays["train_loss"][:80]
    first.arrays["acc_t"], first.arrays["acc"] = first.arrays["acc_t"][:1], first.arrays["acc"][:1]
    store = Store(empty)
    fake, jid = _running_job(store, cfg, first.hash, "base run", 0.0)
    try:  # before the first steps: the curve's place, which its fragment fills without a page rerun
        at = _app(page="chaos", run=jid)
        assert not at.exception and "Training, live" in [s.value for s in at.subheader]
        assert any("first training steps appear here" in c.value for c in at.caption) and not at.get("plotly_chart")
        save_result(store, first, partial=True)
        at = _app(page="chaos", run=jid)
        assert not at.exception
        assert "Training, live" in [s.value for s in at.subheader]
        assert "Heatmaps over (t0, t1)" not in [s.value for s in at.subheader]
        [chart] = at.get("plotly_chart")
        assert "training loss" in chart.proto.spec
    finally:
        fake.kill()
        fake.wait()


def test_presentation_mode_from_the_link_survives_a_page_switch(empty):
    """?present=1 turns the mode on (the sidebar's toggle shows it), and it stays on, in the link too, on another
    page although the navigation drops the query string: there Next comes before the figure, which is restyled
    for a projector. Without it, or with ?present=0, the usual look."""
    at = _app(present="1")
    assert not at.exception
    assert at.toggle(key="present_mode").value is True and at.query_params.get("present") == "1"
    at.query_params.clear()  # as the navigation does
    at.switch_page("pages/lesson.py").run()
    assert not at.exception
    assert at.query_params.get("present") == "1"
    [fig] = _figures(at)
    assert fig["layout"]["font"]["size"] >= F.MIN_FONT_PX
    def drawn(node: Any) -> list[Any]:  # every element in the order the page draws them
        kids = getattr(node, "children", None)
        return [node] if kids is None else [e for k in sorted(kids) for e in drawn(kids[k])]

    order = [getattr(e, "label", None) or e.type for e in drawn(at.main) if e.type in ("button", "plotly_chart")]
    assert order.index("Next") < order.index("plotly_chart")  # above the fold on a projector
    for off in (_app(present="0"), _app()):  # (AppTest reruns the page alone: the toggle's off is a browser test's)
        assert off.toggle(key="present_mode").value is False and "present" not in off.query_params
        off.switch_page("pages/lesson.py").run()
        [fig] = _figures(off)
        assert (fig["layout"].get("font") or {}).get("size", 12) < F.MIN_FONT_PX  # the usual look


def test_the_page_reruns_for_a_new_cell_not_for_each_live_training_step(monkeypatch):
    """The job panel reruns the whole page when a partial result gains a value (a cell) or a unit, never when
    only the live curve grows: the live curve redraws itself, and a page rerun per step swamps a slow browser."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    from app_common.job_panel import _partial_mark

    def partial(steps: int, cell: bool) -> Result:
        C = np.full((1, 2, 2), np.nan)
        if cell:
            C[0, 0, 1] = 0.5
        acc_t = np.arange(0, steps, 5)
        arrays = {"t0": np.array([0, 10]), "t1": np.array([10, 20]), "C": C, "train_t": np.arange(1, steps + 1),
                  "train_loss": np.ones(steps), "acc_t": acc_t, "acc": np.zeros(len(acc_t))}
        return Result("chaos", {}, "0" * 20, arrays, {"units_done": 0, "partial": True})

    class Partials:
        def __init__(self, p: Result):
            self.p = p

        def partial(self, run_id: str) -> Result:
            return self.p

    early, later = _partial_mark(Partials(partial(3, False)), "x"), _partial_mark(Partials(partial(40, False)), "x")
    assert early == later  # only the live curve grew
    assert early == _partial_mark(Partials(None), "x")  # nor the first steps: the fragment is there from the start
    assert _partial_mark(Partials(partial(40, True)), "x") != later  # the first cell arrived
