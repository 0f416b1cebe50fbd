"""Sweeps: expansion (product, replicates, dedup, bad input), shared base runs trained once, the JSON."""

import json

import numpy as np
import pytest

from twophase_core.execution.sweeps import run_sweep
from twophase_core.experiments.presets import preset
from twophase_core.experiments.sweep import MAX_POINTS, Sweep, expand, parse_vary
from twophase_core.interfaces.cli import main
from twophase_core.settings import config as conf


def _sweep(kind="chaos", vary=(), **kw):
    base = preset("tiny", kind)
    return Sweep(base, parse_vary(kind, list(vary)), **kw)


def test_expansion_is_the_product_with_seeds_as_replicates():
    pts = expand(_sweep(vary=["eps=1e-7,1e-6", "lr=0.05,0.1,0.2"], replicates=3))
    assert len(pts) == 2 * 3 * 3
    groups = {p.group for p in pts}
    assert groups == {(("eps", e), ("lr", lr)) for e in (1e-7, 1e-6) for lr in (0.05, 0.1, 0.2)}
    for g in groups:  # replicates differ in data_seed and init_seed together, nothing else
        reps = sorted((p for p in pts if p.group == g), key=lambda p: p.replicate)
        assert [(p.config.train.data_seed, p.config.train.init_seed) for p in reps] == [(0, 0), (1, 1), (2, 2)]
        assert all(p.config.eps == dict(g)["eps"] and p.config.train.lr == dict(g)["lr"] for p in reps)
    assert len({p.hash for p in pts}) == len(pts)


def test_listed_seeds_are_the_replicates_and_duplicates_collapse():
    pts = expand(_sweep(vary=["data_seed=3,4", "eps=1e-7,1e-7"], seeds=("data_seed",)))
    assert len(pts) == 2  # eps listed twice is one setting
    assert {p.config.train.data_seed for p in pts} == {3, 4} and {p.group for p in pts} == {(("eps", 1e-7),)}


def test_steps_in_epochs_and_list_settings_vary():
    pts = expand(_sweep(vary=["t1=30,60|60", "iterations=60,8ep"], replicates=1))
    ipe = conf.iterations_per_epoch(preset("tiny", "chaos").train)
    got = {(p.config.t1, p.config.train.iterations) for p in pts}
    assert got == {((30, 60), 60), ((30, 60), 8 * ipe), ((60,), 60), ((60,), 8 * ipe)}


@pytest.mark.parametrize("vary, needle", [
    (["nope=1,2"], "not a setting"),
    (["eps"], "FIELD=v1,v2"),
    (["eps="], "at least one value"),
    (["eps=-1,1e-7"], "eps="),
    (["model=gpt"], "model="),
    (["batch_size=1000"], "training set"),
])
def test_bad_vary_is_rejected_before_anything_runs(vary, needle):
    with pytest.raises(conf.ConfigError) as e:
        expand(_sweep(vary=vary))
    assert needle in str(e.value)


def test_too_many_points_is_rejected():
    n = int(np.ceil(np.sqrt(MAX_POINTS + 1)))
    vary = [f"data_seed={','.join(map(str, range(n)))}", f"n_alpha={','.join(map(str, range(2, n + 2)))}"]
    with pytest.raises(conf.ConfigError, match="at most"):
        expand(_sweep(vary=vary, seeds=("init_seed",)))


def test_shared_base_run_is_trained_once(store):
    """Three eps on one training run: the base run's steps are paid once, not three times."""
    sweep = _sweep(vary=["eps=1e-7,1e-6,1e-5"])
    res = run_sweep(sweep, store)
    steps = [r.meta["sgd_steps"] for r in res.results.values()]
    cfg = preset("tiny", "chaos")
    T = cfg.train.iterations
    branch = sum(T - t0 for t0 in cfg.t0)  # one branch per t0, trained to the last t1 = T
    assert sum(steps) == T + 3 * branch
    assert max(steps) == T + branch and sorted(steps)[:2] == [branch, branch]
    again = run_sweep(sweep, store)  # every point is served from the store
    for h, r in again.results.items():  # bit for bit, and no second training (the stored meta is returned)
        assert all(np.array_equal(r.arrays[k], res.results[h].arrays[k], equal_nan=True) for k in ("C", "B", "D"))
        assert r.meta["seconds"] == res.results[h].meta["seconds"]


def test_sweep_json_has_runs_groups_bands_and_transitions(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    argv = ["sweep", "chaos", "--preset", "tiny", "--vary", "eps=1e-7,1e-5", "--replicates", "2",
            "--t0", "0,5,10,20,30,40", "--t1", "60", "--cache-dir", str(tmp_path / "cache"), "--json", str(out),
            "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    d = json.loads(out.read_text())
    assert len(d["runs"]) == 4 and all({"varied", "hash", "kind"} <= set(r) for r in d["runs"])
    assert {tuple(sorted(g["varied"])) for g in d["groups"]} == {("eps",)}
    for g in d["groups"]:
        assert g["replicates"] == 2 and g["t0"] == [0, 5, 10, 20, 30, 40] and g["t1"] == [60]
        for m in ("C", "B", "D"):
            mean, lo, hi = (np.array(g[m][k], dtype=float) for k in ("mean", "ci_low", "ci_high"))
            assert mean.shape == lo.shape == hi.shape == (6, 1)
            assert np.all(lo <= mean + 1e-15) and np.all(mean <= hi + 1e-15)
            tr = g["transition"][m]
            assert tr is None and m in g["transition"]["not_found"] or {"t_star", "ci_low", "ci_high",
                                                                      "method"} <= set(tr)
    assert "sweep chaos: 4 runs" in capsys.readouterr().out


def test_cli_sweep_bad_input_is_one_line(capsys):
    assert main(["sweep", "chaos", "--preset", "tiny", "--vary", "widthh=1,2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "widthh" in err[0]
    assert main(["sweep", "chaos", "--preset", "tiny", "--replicates", "0"]) == 2
    assert "--replicates" in capsys.readouterr().err
