"""Lockstep copies: the stacked path against the plain loop, its own control, resumption, the chooser."""

import pytest
import torch

from twophase_core.experiments.chaos import ChaosConfig
from twophase_core.experiments.presets import preset
from twophase_core.science import lockstep
from twophase_core.science.train import Cancelled, CancelToken, Training, TrainingDiverged
from twophase_core.settings import config as conf
from twophase_core.storage.store import Store

TINY = preset("tiny", "chaos").train  # synthetic 3x8x8, mlp
CNN = conf.replace(preset("tiny", "chaos"), model="cnn", width=0.25).train  # conv-BN-ReLU
DROPOUT = conf.replace(preset("tiny", "chaos"), model="vgg16_bn_fc", width=1 / 64, dropout=0.5).train
COPIES = [(0.0, 0), (1e-3, 1), (1e-3, 2)]  # (eps, seed): K = 3
T0, NEEDED = 5, [10, 15]


def _max_diff(a: dict, b: dict) -> float:
    """Max abs difference over a state dict (parameters and BN buffers)."""
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _momentum(opt_sd: dict) -> list[torch.Tensor]:
    return [opt_sd["state"][i]["momentum_buffer"] for i in sorted(opt_sd["state"])]


def _branches(run: Training, copies=COPIES, t0=T0):
    return [run.branch(t0, eps, "per-coordinate", seed) for eps, seed in copies]


# The 1/64-wide VGG (one channel per conv, BatchNorm over nearly constant activations) amplifies
# float32 rounding by orders of magnitude per step: after 10 steps the two paths differ by 1e-2 on
# some CPUs while agreeing to 1e-7 after 1 and 2. Two steps still tell shared dropout masks from
# different ones (a different mask changes a gradient at O(1) at once), so that case stops there.
@pytest.mark.parametrize("cfg, needed", [(TINY, NEEDED), (CNN, NEEDED), (DROPOUT, [T0 + 1, T0 + 2])],
                         ids=["mlp", "cnn-bn", "vgg-dropout"])
def test_stacked_agrees_with_the_loop(store, tmp_path, cfg, needed):
    loop_run, stack_run = Training(cfg, store), Training(cfg, Store(tmp_path / "stack"))
    for br in _branches(loop_run):
        br.ensure(needed)
    twins = lockstep.ensure_branches_stacked(stack_run, _branches(stack_run), needed, include_control=False)
    assert stack_run.steps_done == T0 + 3 * (max(needed) - T0)  # base run to t0, then 3 copies
    for a, b in zip(_branches(loop_run), twins, strict=True):
        for t in needed:
            ca = loop_run.store.load_checkpoint(a.key, t)
            cb = stack_run.store.load_checkpoint(b.key, t)
            assert _max_diff(ca["model"], cb["model"]) < 1e-6
            assert any("running" in k for k in ca["model"]) == (cfg.model != "mlp")
            for ma, mb in zip(_momentum(ca["optimizer"]), _momentum(cb["optimizer"]), strict=True):
                assert float((ma - mb).abs().max()) < 1e-5  # a sum of gradients: O(1), rounding ~1e-6
            assert ca["optimizer"]["param_groups"] == cb["optimizer"]["param_groups"]
            assert ca["iteration"] == cb["iteration"] == t
            assert cb["train_loss"] == pytest.approx(ca["train_loss"], abs=1e-6)
    stack_run.store.close()


@pytest.mark.parametrize("cfg", [TINY, CNN], ids=["mlp", "cnn-bn"])
def test_zero_eps_copy_equals_the_stacked_control_bitwise(store, cfg):
    run = Training(cfg, store)
    every = [6, 9, 12, 20]
    brs = lockstep.ensure_branches_stacked(run, _branches(run, [(0.0, 3), (1e-3, 1)]), every, include_control=True)
    control = lockstep.control_branch(run, T0)
    assert control.key not in {b.key for b in brs}
    for t in every:
        c = store.load_checkpoint(control.key, t)
        z = store.load_checkpoint(brs[0].key, t)
        p = store.load_checkpoint(brs[1].key, t)
        assert all(torch.equal(c["model"][k], z["model"][k]) for k in c["model"])
        assert all(torch.equal(a, b) for a, b in zip(_momentum(c["optimizer"]), _momentum(z["optimizer"]), strict=True))
        assert c["train_loss"] == z["train_loss"]
        assert _max_diff(c["model"], p["model"]) > 0  # the perturbed copy does move away


def test_control_key_is_not_trained_twice(store):
    run = Training(TINY, store)
    brs = _branches(run, [(0.0, 0), (1e-3, 1)])  # eps 0, per-coordinate, seed 0: the control itself
    twins = lockstep.ensure_branches_stacked(run, brs, [10], include_control=True)
    assert twins[0].key == lockstep.control_branch(run, T0).key
    assert run.steps_done == T0 + 2 * (10 - T0)


def test_the_paths_never_share_checkpoints(store):
    run = Training(CNN, store)
    brs = _branches(run, [(0.0, 0), (1e-3, 1)])
    twins = lockstep.ensure_branches_stacked(run, brs, [12], include_control=True)
    assert {t.key for t in twins}.isdisjoint({b.key for b in brs} | {run.key})
    assert store.checkpoints(brs[0].key) == []  # the loop path's branches are untouched
    brs[0].ensure([12])  # the loop path: an eps = 0 branch is the base run, bit for bit
    base, zero = run.base().model(12).state_dict(), brs[0].model(12).state_dict()
    assert all(torch.equal(base[k], zero[k]) for k in base)


@pytest.mark.parametrize("cfg", [TINY, CNN], ids=["mlp", "cnn-bn"])
def test_stacked_checkpoints_resume_with_the_plain_path(store, cfg):
    run = Training(cfg, store)
    brs = lockstep.ensure_branches_stacked(run, _branches(run), NEEDED, include_control=False)
    for br in brs:
        s = run.unpack(store.load_checkpoint(br.key, 10))  # Training.unpack reads the stacked format
        assert s.t == 10
        while s.t < 15:
            run.step(s.model, s.opt, s.t)
            s.t += 1
        later = store.load_checkpoint(br.key, 15)
        assert _max_diff(run.pack(s, None)["model"], later["model"]) < 1e-6
        opt_sd = s.opt.state_dict()
        assert opt_sd["param_groups"] == later["optimizer"]["param_groups"]
        for a, b in zip(_momentum(opt_sd), _momentum(later["optimizer"]), strict=True):
            assert float((a - b).abs().max()) < 1e-5
        done = run.steps_done
        br.ensure([15, 18])  # the plain path extends a stacked trajectory from its last checkpoint
        assert run.steps_done == done + 3
        assert br.model(18) is not None


def test_nothing_is_trained_when_every_checkpoint_exists_and_resume_is_common(store):
    run = Training(TINY, store)
    lockstep.ensure_branches_stacked(run, _branches(run), [10], include_control=True)
    done = run.steps_done
    lockstep.ensure_branches_stacked(run, _branches(run), [10], include_control=True)
    assert run.steps_done == done
    lockstep.ensure_branches_stacked(run, _branches(run), [10, 14], include_control=True)
    assert run.steps_done == done + 3 * 4  # resumed at 10; the eps = 0 seed 0 branch is the control


def test_divergence_and_cancel(store):
    run = Training(conf.replace(ChaosConfig(train=TINY), lr=1e4).train, store)
    with pytest.raises(TrainingDiverged, match=r"iteration \d+"):
        lockstep.ensure_branches_stacked(run, _branches(run, t0=0), [30], include_control=False)
    tok = CancelToken()
    tok.set()
    run = Training(TINY, store)
    with pytest.raises(Cancelled):
        lockstep.ensure_branches_stacked(run, _branches(run, t0=0), [10], include_control=False, cancel=tok)


def test_train_stacked_checks_its_inputs(store):
    run = Training(TINY, store)
    a, b = run.initial(), run.base().state(3)
    with pytest.raises(ValueError, match="one iteration"):
        lockstep.train_stacked(run, [a, b], 5, [5], ["x", "y"])
    with pytest.raises(ValueError, match="keys"):
        lockstep.train_stacked(run, [a], 5, [5], ["x", "y"])
    with pytest.raises(ValueError, match="precedes"):
        lockstep.ensure_branches_stacked(run, _branches(run), [2], include_control=False)


def test_choose_path_returns_a_path_and_caches(store, monkeypatch):
    run = Training(TINY, store)
    monkeypatch.setattr(lockstep, "CALIBRATION_STEPS", 2)
    assert lockstep.choose_path(run, 1) == "loop"
    got = lockstep.choose_path(run, 3)
    assert got in ("loop", "stack")
    assert run.steps_done == 0  # calibration does not count as training
    assert lockstep.choose_path(run, 3) == got
    assert lockstep._cache_key(run, 3, False) in lockstep._CHOICE
    assert lockstep.choose_path(run, 2, with_control=True) in ("loop", "stack")
    assert run.steps_done == 0
