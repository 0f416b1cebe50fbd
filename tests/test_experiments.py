"""The experiments end to end on tiny configs: exactness, reproducibility, the cache."""


import numpy as np
import pytest
import torch

from twophase_core.execution.run import run_chaos, run_experiment, run_linear
from twophase_core.experiments.presets import preset
from twophase_core.experiments.result import load_result, result_key
from twophase_core.science.train import Training
from twophase_core.settings import config as conf
from twophase_core.storage.store import Store

CHAOS = preset("tiny", "chaos")
CNN_CHAOS = conf.replace(CHAOS, model="cnn", width=0.25, augment=True)


@pytest.mark.parametrize("cfg", [CHAOS, CNN_CHAOS, conf.replace(CNN_CHAOS, bn="reset")],
                         ids=["mlp", "cnn-bn-interpolate", "cnn-bn-reset"])
def test_zero_eps_gives_exactly_zero(store, cfg):
    r = run_chaos(conf.replace(cfg, eps=0.0), store)
    valid = ~np.isnan(r.arrays["C"])
    assert valid.sum() == 4  # every (t0, t1) cell has t1 > t0
    for k in ("C", "B", "D"):
        assert np.all(r.arrays[k][valid] == 0.0), k
    assert np.all(r.arrays["realized_eps_norm"] == 0.0)


def test_nonzero_eps_moves_the_copy_and_records_the_realized_norm(store):
    r = run_chaos(conf.replace(CNN_CHAOS, eps=1e-3), store)
    valid = ~np.isnan(r.arrays["C"])
    assert np.all(r.arrays["C"][valid] > 0)
    P = sum(p.numel() for p in Training(CNN_CHAOS.train, store).new_model().parameters())
    assert r.arrays["realized_eps_norm"][0, 0] == pytest.approx(1e-3 * np.sqrt(P), rel=0.1)


def test_same_config_twice_gives_identical_arrays(tmp_path):
    a = run_chaos(CNN_CHAOS, Store(tmp_path / "a"))
    b = run_chaos(CNN_CHAOS, Store(tmp_path / "b"))
    assert a.hash == b.hash
    for k in a.arrays:
        assert np.array_equal(a.arrays[k], b.arrays[k], equal_nan=True), k


def test_second_request_is_served_from_the_cache_without_training(store, monkeypatch):
    steps = {"n": 0}
    real = Training.step

    def counting(self, *a, **k):
        steps["n"] += 1
        return real(self, *a, **k)

    monkeypatch.setattr(Training, "step", counting)
    first = run_chaos(CHAOS, store)
    assert steps["n"] == 60 + (60 - 0) + (60 - 20)  # base run + one branch per t0: the physical floor
    second = run_chaos(CHAOS, store)
    assert steps["n"] == 160
    assert np.array_equal(first.arrays["C"], second.arrays["C"], equal_nan=True)
    # a different metric setting reuses every checkpoint: no SGD step at all
    run_chaos(conf.replace(CHAOS, n_alpha=7), store)
    assert steps["n"] == 160


def test_corrupt_result_is_recomputed_never_returned(store):
    first = run_chaos(CHAOS, store)
    key = result_key("chaos", first.hash)
    rec = store.cache.get(key)
    blob = bytearray(rec["blob"])
    blob[len(blob) // 3] ^= 0x55
    store.cache.set(key, {"sha": rec["sha"], "blob": bytes(blob)})
    assert load_result(store, "chaos", first.hash) is None
    again = run_chaos(CHAOS, store)
    assert np.array_equal(first.arrays["B"], again.arrays["B"], equal_nan=True)
    assert load_result(store, "chaos", first.hash) is not None


def test_chaos_json_layout(store):
    j = run_chaos(CHAOS, store).to_json()
    assert j["t0"] == [0, 20] and j["t1"] == [30, 60]
    assert len(j["C"]) == 2 and len(j["C"][0]) == 2
    assert all(v is not None for v in j["C"][0])  # t1 > 0
    assert j["config"]["eps"] == CHAOS.eps and len(j["realized_eps_norm"]) == 2


def test_chaos_marks_cells_with_t1_not_after_t0(store):
    cfg = conf.replace(CHAOS, t0=(0, 30), t1=(30, 60))
    j = run_chaos(cfg, store).to_json()
    assert j["C"][1][0] is None and j["C"][1][1] is not None


def test_linear_runs_and_matches_the_model_at_zero_steps(store):
    r = run_linear(preset("tiny", "linear"), store)
    acc = r.arrays["acc_linear"]
    assert acc.shape == (2,) and np.all((acc >= 0) & (acc <= 1))
    assert 0 <= float(r.arrays["acc_full"]) <= 1


def test_taylor_model_is_exact_at_theta_t_and_first_order_nearby(store):
    from twophase_core.science.linearised import Linearised

    run = Training(preset("tiny", "linear").train, store)
    model = run.base().model(30)
    lin = Linearised(model)
    x = run.ds.x_test[:16]
    with torch.no_grad():
        assert torch.equal(lin(lin.theta0, x), model(x))
    direction = {k: torch.randn_like(v) for k, v in lin.theta0.items()}
    errs = []
    for h in (1e-2, 5e-3):
        p = {k: (v.double() + h * direction[k].double()).float() for k, v in lin.theta0.items()}
        with torch.no_grad():
            true = torch.func.functional_call(model, p, (x,))
            errs.append(float((lin(p, x) - true).abs().max()))
    assert errs[1] < errs[0] * 0.5  # the Taylor error shrinks quadratically in h


def test_run_experiment_dispatches_and_validates(store):
    with pytest.raises(conf.ConfigError):
        run_experiment(conf.replace(CHAOS, eps=-1.0), store)


def test_stacked_and_loop_paths_agree_and_stay_exact_at_zero_eps(tmp_path):
    cfg = conf.replace(CHAOS, perturb_seeds=(0, 1), eps=1e-7)
    loop = run_chaos(conf.replace(cfg, lockstep="loop"), Store(tmp_path / "loop"))
    stack = run_chaos(conf.replace(cfg, lockstep="stack"), Store(tmp_path / "stack"))
    assert loop.meta["lockstep"] == "loop" and stack.meta["lockstep"] == "stack"
    for k in ("C", "B", "D"):
        assert np.nanmax(np.abs(loop.arrays[k] - stack.arrays[k])) < 1e-6, k
    zero = run_chaos(conf.replace(cfg, eps=0.0, lockstep="stack"), Store(tmp_path / "stack"))
    for k in ("C", "B", "D"):
        assert np.all(zero.arrays[k][~np.isnan(zero.arrays[k])] == 0.0), k


def test_the_base_runs_training_curve_is_sent_live_and_kept(store):
    """Partial results carry the base run's loss at every step and accuracy at its checkpoints before any
    cell exists; the final result keeps them; a later experiment on the stored run reads them back."""
    from twophase_core.settings import config as conf

    cfg = conf.replace(preset("tiny", "chaos"), iterations=400, t0=(0, 200), t1=(300, 400))
    seen = []
    r = run_chaos(cfg, store, partial=lambda p: seen.append(p))
    first = seen[0]
    assert first.meta["units_done"] == 0 and np.isnan(first.arrays["C"]).all()
    # the first one a page waits on already draws a line: two points at least (the step at t=1, then t=2)
    assert list(first.arrays["train_t"][:2]) == [1, 2] and np.all(np.diff(first.arrays["train_t"]) == 1)
    a = r.arrays
    assert list(a["train_t"]) == list(range(1, 401)) and np.isfinite(a["train_loss"]).all()
    assert list(a["acc_t"]) == [0, 200, 300, 400] and np.all((a["acc"] >= 0) & (a["acc"] <= 1))
    assert np.array_equal(a["acc_base"], a["acc"][2:])  # the same evaluation, measured once
    # the loss of step t is the one the checkpoint at t recorded
    ck = store.load_checkpoint(conf.replace(cfg, iterations=400).train.trajectory_key(), 300)
    assert a["train_loss"][299] == pytest.approx(ck["train_loss"], abs=0)
    # another experiment on the same (stored) base run reads the same curve back from its checkpoints
    lin = run_linear(conf.replace(preset("tiny", "linear"), iterations=400, switch=(200,)), store)
    assert np.array_equal(lin.arrays["train_t"], a["train_t"]) and np.array_equal(lin.arrays["train_loss"],
                                                                                   a["train_loss"])
    assert list(lin.arrays["acc_t"]) == [200, 400] and lin.arrays["acc"][0] == a["acc"][1]


def test_a_watched_run_shows_its_first_cell_before_the_base_run_ends_with_the_same_bits(tmp_path):
    """With a page watching (a partial callback), the smallest t0's first cell comes once the base run reaches
    its t1, before the rest of the base run trains; the result is the unwatched run's, bit for bit."""
    cfg = conf.replace(CNN_CHAOS, lockstep="loop", iterations=300, t0=(0, 100), t1=(50, 200, 300))
    seen = []
    watched = run_chaos(cfg, Store(tmp_path / "watched"), partial=lambda p: seen.append(p))
    alone = run_chaos(cfg, Store(tmp_path / "alone"))
    for k in alone.arrays:
        assert np.array_equal(watched.arrays[k], alone.arrays[k], equal_nan=True), k
    first = next(p for p in seen if np.isfinite(p.arrays["C"]).any())
    assert np.isfinite(first.arrays["C"][0, 0, 0]) and np.isfinite(first.arrays["C"]).sum() == 1  # (t0 0, t1 50)
    assert first.arrays["C"][0, 0, 0] == alone.arrays["C"][0, 0, 0]
    assert first.arrays["train_t"].max() == 50  # the base run had trained only to that t1
    assert watched.meta["sgd_steps"] == alone.meta["sgd_steps"]  # nothing trained twice


def test_the_training_curve_does_not_depend_on_which_process_trained_what(store, tmp_path):
    """A lost checkpoint is retrained from the one before it: the result, curve included, is unchanged."""
    cfg = preset("tiny", "chaos")
    first = run_chaos(cfg, store)
    key = cfg.train.trajectory_key()
    store.delete(result_key("chaos", first.hash))
    store.checkpoint_path(key, 30).unlink()
    again = run_chaos(cfg, store)
    for k in first.arrays:
        assert np.array_equal(first.arrays[k], again.arrays[k], equal_nan=True), k


def test_a_chaos_row_on_the_loop_path_reads_each_checkpoint_once_and_keeps_its_bits(tmp_path, monkeypatch):
    """Each cell trains its branch to t1, then measures it against the base run and resumes it at the next t1:
    the process reads the branch's checkpoint once (which proves the store kept it) and holds it, so it is not
    read again to resume; the row is bit for bit the one computed from the files."""
    cfg = conf.replace(preset("tiny", "chaos"), lockstep="loop", perturb_seeds=(0, 1), t1=(30, 45, 60))
    loads: list[str] = []
    load = Store.load_checkpoint
    monkeypatch.setattr(Store, "load_checkpoint", lambda self, key, t, **kw: (loads.append((key, t)),
                                                                               load(self, key, t, **kw))[1])
    held = run_experiment(cfg, Store(tmp_path / "a"))
    base = cfg.train.trajectory_key()
    branches = [(k, t) for k, t in loads if k != base]
    assert len(branches) == len(set(branches)) == 2 * 2 * 3  # 2 t0 x 2 seeds x 3 t1: each read once, to measure
    monkeypatch.setattr(Training, "kept", lambda self, key, t: None)  # every state from its file
    files = run_experiment(cfg, Store(tmp_path / "b"))
    for k, v in files.arrays.items():
        assert np.array_equal(held.arrays[k], v, equal_nan=True), k
