"""The adaptive t0 grid (issue 17): where each outcome asks for a t0, and a refined tiny sweep within its budget."""

import pytest

from twophase_core.execution.refine import proposals, refine_sweep
from twophase_core.experiments import sweep as S
from twophase_core.experiments.presets import preset
from twophase_core.settings import config as conf
from twophase_core.storage.store import Store

GRID = [0, 300, 500, 700, 900, 1200, 1600, 2000]


def test_each_outcome_asks_for_the_t0_it_needs():
    # unresolved between 700 and 900: their geometric middle on the log(1 + t0) axis, by hand sqrt(701 * 901) - 1
    assert proposals(GRID, 3000, {"outcome": "unresolved", "ci_low": 700.0, "ci_high": 900.0}) == ({794}, 3000)
    # still falling at 2000 (1000 iterations before T): t0 = 3000, and T = 4000 so it has as long to grow
    assert proposals(GRID, 3000, {"outcome": "beyond_grid"}) == ({3000}, 4000)
    assert proposals(GRID, 3000, {"outcome": "before_grid"}) == ({int(round((301) ** 0.5 - 1))}, 3000)
    for done in ({"outcome": "found"}, {"outcome": "none"}, None, {"found": True}):
        assert proposals(GRID, 3000, done) == (set(), 3000)
    assert proposals([0, 1, 2], 10, {"outcome": "unresolved", "ci_low": 1.0, "ci_high": 2.0}) == (set(), 10)


@pytest.mark.slow  # trains a tiny sweep three times over: about 20 s here
def test_a_refined_sweep_reuses_its_store_and_stays_within_its_budget(tmp_path):
    base = conf.replace(preset("tiny", "chaos"), t0=(0, 5, 10, 20, 30), t1=(60,))
    sweep = S.Sweep(base, replicates=2)
    store = Store(tmp_path / "cache")
    ref = refine_sweep(sweep, store, budget=1e9)
    assert ref.rounds[0]["t0"] == [0, 5, 10, 20, 30] and ref.spent > 0
    again = refine_sweep(sweep, store, budget=0.0)  # every round is stored now: nothing left to spend
    assert again.spent == 0.0 and [r["t0"] for r in again.rounds] == [r["t0"] for r in ref.rounds]
    tight = refine_sweep(sweep, Store(tmp_path / "other"), budget=1.0)  # the coarse grid, then no more
    assert len(tight.rounds) == 1 and (tight.stopped.startswith("the next round") or len(ref.rounds) == 1)
    assert ref.to_json()["rounds"] == ref.rounds
    with pytest.raises(ValueError):
        refine_sweep(S.Sweep(base, S.parse_vary("chaos", ["t0=0,5|0,10"])), store, 1.0)


@pytest.mark.slow  # trains a tiny sweep twice: about 20 s here
def test_cli_sweep_refine_reports_the_budget_spent(tmp_path, capsys):
    import json

    from twophase_core.interfaces.cli import main

    out = tmp_path / "sweep.json"
    argv = ["sweep", "chaos", "--preset", "tiny", "--replicates", "2", "--t0", "0,5,10,20,30", "--t1", "60",
            "--refine", "5000", "--cache-dir", str(tmp_path / "cache"), "--json", str(out), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    d = json.loads(out.read_text())
    assert d["refine"]["budget"] == 5000 and 0 < d["refine"]["spent"] <= 5000 + d["refine"]["rounds"][0]["units"]
    assert d["refine"]["rounds"][0]["t0"] == [0, 5, 10, 20, 30] and d["base"]["t0"] == d["refine"]["rounds"][-1]["t0"]
    assert "units spent" in capsys.readouterr().out
