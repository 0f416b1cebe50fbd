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
