"""The phase diagram: t* over the two settings a sweep varies, cells without a t* never coloured (issue 17)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from twophase_core.experiments import sweep as S
from twophase_core.experiments.presets import preset
from twophase_core.interfaces import figures as F
from twophase_core.science.transition import estimate_transition

G = np.array([0, 25, 60, 140, 320, 700, 1300, 2200])


def _estimate(kind: str, seed: int) -> dict:
    """A known shape's estimate: a sigmoid with both levels seen (found), or a fall still going at the end."""
    u = np.log1p(G)
    rng = np.random.default_rng(seed)
    if kind == "found":
        log_m = -12.0 + 8.0 / (1.0 + np.exp((u - math.log1p(200.0)) / 0.4))
    else:
        log_m = -3.0 - 8.0 * np.maximum(u - u[2], 0) / (u[-1] - u[2])
    return estimate_transition(G, np.exp(log_m[None] + rng.normal(0, 0.5, (5, G.size))), n_boot=100).to_dict()


def test_a_two_setting_sweep_gives_a_grid_of_cells_and_its_figure_colours_only_found_ones():
    sweep = S.Sweep(preset("tiny", "chaos"), S.parse_vary("chaos", ["lr=0.05,0.1", "batch_size=16,32,64"]),
                    replicates=2)
    groups = []
    for lr in (0.05, 0.1):
        for bs in (16, 32):  # batch 64 has no result yet
            kind = "found" if bs == 32 else "beyond"
            groups.append({"varied": {"lr": lr, "batch_size": bs}, "replicates": 5,
                           "estimates": {"C": _estimate(kind, int(lr * 100) + bs)}})
    d = S.phase_diagram(sweep, groups)
    assert d is not None and (d["x"], d["y"]) == ("lr", "batch_size")
    assert d["x_values"] == [0.05, 0.1] and d["y_values"] == [16, 32, 64]
    cells = d["cells"]["C"]
    assert [c["outcome"] for c in cells[1]] == ["found", "found"] and cells[2] == [None, None]
    assert {c["outcome"] for c in cells[0]} == {"beyond_grid"} and cells[0][0]["t_star"] is None
    json.dumps(d)  # JSON-ready
    fig = F.phase_diagram_figure(d, "C")
    z = np.asarray(fig.data[0].z, dtype=float)
    assert np.isfinite(z[1]).all() and np.isnan(z[0]).all() and np.isnan(z[2]).all()  # refusals not coloured
    assert z[1, 0] == math.log10(1 + cells[1][0]["t_star"])
    assert fig.data[0].text[0][0] == "beyond grid" and fig.data[0].text[2][1] == "not run yet"
    table = F.phase_diagram_table(d, "C")
    assert len(table["lr"]) == 6 and table["outcome"][0] == "beyond grid: try larger t0 and T"
    # one varied setting (or three): no diagram
    assert S.phase_diagram(S.Sweep(preset("tiny", "chaos"), S.parse_vary("chaos", ["lr=0.05,0.1"])), groups) is None


@pytest.mark.slow  # trains four tiny runs and opens the app: about 25 s here
def test_the_sweeps_page_draws_the_phase_diagram_of_a_two_setting_sweep(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from twophase_core.execution import sweeps as SJ
    from twophase_core.execution.jobs import JobManager
    from twophase_core.settings import config as conf
    from twophase_core.storage.store import Store

    root = tmp_path / "cache"
    monkeypatch.setenv("TWOPHASE_CACHE_DIR", str(root))
    monkeypatch.setenv("TWOPHASE_WARM_WORKERS", "0")
    monkeypatch.setenv("TWOPHASE_GALLERY", "0")
    base = conf.replace(preset("tiny", "chaos"), t0=(0, 5, 10, 20, 30, 40), t1=(60,))
    sweep = S.Sweep(base, S.parse_vary("chaos", ["eps=1e-7,1e-5", "lr=0.05,0.1"]), replicates=1)
    store = Store(root)
    SJ.run_sweep(sweep, store)
    rec = SJ.submit_sweep(JobManager(store), sweep)  # every point is stored: nothing is started
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=120)
    at.query_params.update({"page": "sweeps", "sweep": rec["id"]})
    at.run()
    assert not at.exception, at.exception
    assert any(h.value == "Phase diagram: t* over eps and lr" for h in at.subheader)
    titles = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert any(t.startswith("Phase diagram: t* of") for t in titles)


def _rec(sweep: S.Sweep, created: float = 1.0) -> dict:
    return {"id": sweep.id(), "sweep": sweep.to_dict(), "runs": [p.run_id for p in S.expand(sweep)],
            "created": created}


def test_a_two_setting_sweep_finds_its_other_side_or_the_sweep_to_run():
    import dataclasses

    from twophase_core.experiments import twin as TW
    from twophase_core.settings import config as conf

    chaos = S.Sweep(preset("tiny", "chaos"), S.parse_vary("chaos", ["lr=0.05,0.1", "batch_size=16,32"]), replicates=2)
    # the cone side: its settings given in the other order, more replicates, its own T: still the same base runs
    cone = S.Sweep(conf.replace(preset("tiny", "cone"), checkpoint_every=10),
                   S.parse_vary("cone", ["batch_size=32,16", "lr=0.1,0.05"]), replicates=3)
    wider = S.Sweep(conf.replace(preset("tiny", "cone"), width=0.5), cone.vary)  # another trajectory
    other_lr = S.Sweep(preset("tiny", "cone"), S.parse_vary("cone", ["lr=0.05,0.2", "batch_size=16,32"]))
    one_axis = S.Sweep(preset("tiny", "cone"), S.parse_vary("cone", ["lr=0.05,0.1"]))
    records = [_rec(s) for s in (wider, other_lr, one_axis, cone, chaos)]  # newest first
    assert TW.find_twin(_rec(chaos), records)["id"] == cone.id()
    assert TW.find_twin(_rec(cone), records)["id"] == chaos.id()
    assert TW.find_twin(_rec(wider), records) is None and TW.find_twin(_rec(one_axis), records) is None
    # a refined chaos sweep's record holds its last round (T raised): matched by the sweep it started from
    rounds = S.Sweep(conf.replace(chaos.base, iterations=90, t0=(0, 20, 30), t1=(30, 60, 90)), chaos.vary,
                     chaos.seeds, 2)
    refined = {**_rec(rounds), "id": chaos.id(), "refine": {"start": chaos.to_dict()}}
    assert TW.find_twin(_rec(cone), [refined])["id"] == chaos.id()
    assert TW.started_from(refined) == chaos
    # drawn on the chaos sweep's axes: x = lr, y = batch_size, whatever order the cone sweep gave them in
    assert [k for k, _ in TW.on_axes_of(cone, chaos).vary] == ["lr", "batch_size"]
    groups = [{"varied": {"lr": lr, "batch_size": bs}, "replicates": 3,
               "estimates": {"S": {"outcome": "none", "t_star": None, "reason": "flat"}}}
              for lr in (0.1, 0.05) for bs in (32, 16)]
    d = S.phase_diagram(TW.on_axes_of(cone, chaos), groups)
    assert (d["x"], d["y"], d["x_values"], d["y_values"]) == ("lr", "batch_size", [0.1, 0.05], [32, 16])
    # none stored: the cone sweep to run, the tiny preset's cone settings on the chaos sweep's training run
    missing = TW.missing_twin(chaos)
    assert missing == S.Sweep(dataclasses.replace(preset("tiny", "cone"), train=chaos.base.train), chaos.vary,
                              chaos.seeds, 2)
    assert TW.signature(missing) == TW.signature(chaos) and TW.find_twin(_rec(chaos), [_rec(missing)]) is not None
    assert TW.missing_twin(cone).kind == "chaos"
    # eps is no cone setting: there is no cone side to run
    assert TW.missing_twin(S.Sweep(preset("tiny", "chaos"), S.parse_vary("chaos", ["eps=1e-7,1e-5", "lr=0.05,0.1"]))) \
        is None


@pytest.mark.slow  # trains four tiny base runs with their chaos and cone points, opens the app twice: about 40 s
def test_the_sweeps_page_draws_the_cone_diagram_beside_the_chaos_one(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from twophase_core.execution import sweeps as SJ
    from twophase_core.execution.jobs import JobManager
    from twophase_core.storage.store import Store

    root = tmp_path / "cache"
    monkeypatch.setenv("TWOPHASE_CACHE_DIR", str(root))
    monkeypatch.setenv("TWOPHASE_WARM_WORKERS", "0")
    monkeypatch.setenv("TWOPHASE_GALLERY", "0")
    vary = ["lr=0.05,0.1", "batch_size=16,32"]
    chaos = S.Sweep(preset("tiny", "chaos"), S.parse_vary("chaos", vary))
    cone = S.Sweep(preset("tiny", "cone"), S.parse_vary("cone", vary))
    store = Store(root)
    SJ.run_sweep(chaos, store)
    SJ.submit_sweep(JobManager(store), chaos)  # every point is stored: nothing is started

    def page(sweep_id: str) -> AppTest:
        at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=120)
        at.query_params.update({"page": "sweeps", "sweep": sweep_id})
        at.run()
        assert not at.exception, at.exception
        return at

    def diagrams(at: AppTest) -> list[str]:
        return [t for t in (json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart"))
                if t.startswith("Phase diagram")]

    at = page(chaos.id())  # no cone side yet: said, with the command that runs it
    assert len(diagrams(at)) == 1
    [note] = [i.value for i in at.info if "No Cone" in i.value or "No cone" in i.value]
    assert "lr and batch_size" in note
    assert any(c.value.startswith("twophase sweep cone") and "--vary lr=0.05,0.1" in c.value
               and "--vary batch_size=16,32" in c.value for c in at.code)
    SJ.run_sweep(cone, store)
    SJ.submit_sweep(JobManager(store), cone)
    for mine, theirs, metric in ((chaos, cone, "S"), (cone, chaos, "C")):
        at = page(mine.id())
        titles = diagrams(at)
        assert len(titles) == 2 and titles[1].startswith(f"Phase diagram: t* of {F.TRANSITION_METRICS[metric]}")
        [link] = [p for p in at.get("page_link") if p.proto.query_string == f"sweep={theirs.id()}"]
