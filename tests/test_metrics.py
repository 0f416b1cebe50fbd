"""Tests for twophase_core.science.metrics: exact zeros at eps = 0, agreement with hand-written references."""

from __future__ import annotations

import copy
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from twophase_core.science import metrics
from twophase_core.science.metrics import (
    _interpolation_losses_stacked,
    barrier_from_path,
    disagreement_rate,
    evaluate,
    interpolate,
    interpolation_losses,
    loss_barrier,
    loss_barrier_path,
    pair_metrics,
    parameter_dissimilarity,
    recompute_bn_stats,
)

# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine the spinning threads cost 10x."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_mlp(seed: int, d: int = 6, h: int = 12, k: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, k))


def make_bn_net(seed: int, k: int = 3) -> nn.Module:
    """Small conv net with BatchNorm2d and dropout; running stats made non-trivial by train forwards."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(4 * 4 * 4, k),
    )
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 2, 8, 8) * 2 + 0.5)
    net.eval()
    return net


def make_cnn1d(seed: int, k: int = 3) -> nn.Module:
    """The demo's architecture (models.cnn: Conv1d-BatchNorm1d-ReLU x3, linear) at width 1/4, stats made non-trivial."""
    from twophase_core.science.models import cnn

    torch.manual_seed(seed)
    net = cnn((1, 12), k, 0.25, 0.0)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 1, 12) * 1.5 - 0.3)
    net.eval()
    return net


def mlp_data(seed: int = 100, n: int = 200, d: int = 6, k: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g)


def img_data(seed: int = 101, n: int = 120, k: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 8, 8, generator=g), torch.randint(0, k, (n,), generator=g)


def seq_data(seed: int = 102, n: int = 150, k: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 12, generator=g), torch.randint(0, k, (n,), generator=g)


MODELS = [(make_mlp, mlp_data), (make_bn_net, img_data), (make_cnn1d, seq_data)]


def flat(model: nn.Module) -> np.ndarray:
    ps = [p for p in model.parameters() if p.requires_grad]
    return np.concatenate([p.detach().double().numpy().ravel() for p in ps])


def assert_close(got: torch.Tensor, want: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """torch.allclose with a useful message (torch.testing's first call costs ~1.5 s of imports)."""
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=rtol, atol=atol), f"max abs diff {(got - want).abs().max():.3g}"


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(model: nn.Module, snap: dict[str, torch.Tensor]) -> bool:
    sd = model.state_dict()
    return sd.keys() == snap.keys() and all(torch.equal(sd[k], snap[k]) for k in sd)


def hand_model(a: nn.Module, b: nn.Module, alpha: float) -> nn.Module:
    """alpha*a + (1-alpha)*b built with plain tensor arithmetic on the state dicts (integer buffers from a)."""
    sa, sb = a.state_dict(), b.state_dict()
    sd = {k: (alpha * sa[k] + (1 - alpha) * sb[k]) if sa[k].is_floating_point() else sa[k].clone() for k in sa}
    m = copy.deepcopy(a)
    m.load_state_dict(sd)
    return m.eval()


def hand_bn_reset(model: nn.Module, train_x: torch.Tensor, bn_batches: int, batch_size: int) -> nn.Module:
    """The model with each BN layer's running mean and variance set to the average over the batches of the
    mean and unbiased variance of that layer's inputs, computed here from the inputs a hook captures
    (BN layers normalising with batch statistics, dropout off), never through torch's running averages."""
    m = copy.deepcopy(model).eval()
    layers = [mod for mod in m.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)]
    inputs: dict[nn.Module, list[torch.Tensor]] = {mod: [] for mod in layers}
    hooks = [mod.register_forward_hook(lambda mod, inp, _out: inputs[mod].append(inp[0])) for mod in layers]
    for mod in layers:
        mod.train()
    with torch.no_grad():
        for i in range(bn_batches):
            m(train_x[i * batch_size:(i + 1) * batch_size])
    for h in hooks:
        h.remove()
    with torch.no_grad():
        for mod in layers:
            dims = [d for d in range(inputs[mod][0].dim()) if d != 1]  # every axis but the channel's
            mod.running_mean.copy_(torch.stack([z.mean(dims) for z in inputs[mod]]).mean(0))
            mod.running_var.copy_(torch.stack([z.var(dims, unbiased=True) for z in inputs[mod]]).mean(0))
    return m.eval()


def hand_losses(a: nn.Module, b: nn.Module, x, y, alphas, reset: tuple | None = None) -> np.ndarray:
    """Reference path: hand-built interpolants (`hand_model`), BN statistics recomputed by hand when
    `reset` = (train_x, bn_batches, batch_size), the loss from F.cross_entropy on the whole set at once."""
    out = []
    for alpha in alphas:
        m = hand_model(a, b, float(alpha))
        if reset is not None:
            m = hand_bn_reset(m, *reset)
        with torch.no_grad():
            out.append(float(F.cross_entropy(m(x), y)))
    return np.array(out)


def hand_barrier(losses: np.ndarray, alphas: np.ndarray) -> float:
    return float(np.max(losses - (alphas * losses[-1] + (1 - alphas) * losses[0])))


# ----------------------------------------------------------------------------- exactness at eps = 0


@pytest.mark.parametrize("maker, data", MODELS)
def test_identical_models_give_exact_zeros(maker, data):
    a = maker(0)
    b = copy.deepcopy(a)
    x, y = data()
    assert parameter_dissimilarity(a, b) == 0.0
    assert disagreement_rate(a, b, x) == 0.0
    assert loss_barrier(a, b, x, y) == 0.0
    assert loss_barrier(a, b, x, y, method="stacked") == 0.0
    assert loss_barrier(a, b, x, y, bn="reset", train_x=x) == 0.0
    _, losses, barrier = loss_barrier_path(a, b, x, y, bn="reset", train_x=x, bn_batches=3, batch_size=32)
    assert barrier == 0.0
    assert np.all(losses == losses[0])


def test_identical_models_exact_zero_barrier_when_models_in_train_mode():
    a = make_bn_net(1)
    a.train()
    b = copy.deepcopy(a)
    x, y = img_data()
    assert loss_barrier(a, b, x, y) == 0.0
    assert loss_barrier(a, b, x, y, bn="reset", train_x=x) == 0.0
    assert disagreement_rate(a, b, x) == 0.0


# ----------------------------------------------------------------------------- C


def test_dissimilarity_scale_invariant():
    a = make_mlp(0)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(3.0)
    assert abs(parameter_dissimilarity(a, b)) < 1e-12


def test_dissimilarity_matches_numpy_cosine():
    a, b = make_mlp(0), make_mlp(1)
    va, vb = flat(a), flat(b)
    ref = 1.0 - va @ vb / (np.linalg.norm(va) * np.linalg.norm(vb))
    assert parameter_dissimilarity(a, b) == pytest.approx(ref, abs=1e-12)
    assert parameter_dissimilarity(b, a) == pytest.approx(ref, abs=1e-12)


def test_dissimilarity_of_negated_model_is_two():
    a = make_mlp(0)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.neg_()
    assert parameter_dissimilarity(a, b) == pytest.approx(2.0, abs=1e-12)


def test_dissimilarity_tiny_perturbation_is_accurate():
    """A 1e-7 relative kick: compare against exact rational arithmetic on the float64 values."""
    a = make_mlp(0, d=3, h=4, k=2)
    b = copy.deepcopy(a)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(1e-7 * torch.randn(p.shape, generator=g))
    va, vb = flat(a), flat(b)
    assert not np.array_equal(va, vb)
    fa, fb = [Fraction(float(v)) for v in va], [Fraction(float(v)) for v in vb]
    dot = sum(u * v for u, v in zip(fa, fb, strict=True))
    na2, nb2 = sum(u * u for u in fa), sum(v * v for v in fb)
    one_minus_cos2 = 1 - dot * dot / (na2 * nb2)  # exact; 1 - cos = (1 - cos^2) / (1 + cos)
    ref = float(one_minus_cos2) / (1.0 + float(dot) / math.sqrt(float(na2) * float(nb2)))
    got = parameter_dissimilarity(a, b)
    assert ref > 0
    assert got == pytest.approx(ref, rel=1e-6)
    # the naive float32 formula is pure rounding noise here
    assert ref < 1e-12


def test_dissimilarity_ignores_buffers_and_frozen_params():
    a = make_bn_net(0)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for m in b.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(5.0)
                m.running_var.mul_(3.0)
        b[0].weight.requires_grad_(False)
        a[0].weight.requires_grad_(False)
        b[0].weight.add_(1.0)
    assert parameter_dissimilarity(a, b) == 0.0


def test_dissimilarity_rejects_mismatched_models():
    with pytest.raises(ValueError):
        parameter_dissimilarity(make_mlp(0), make_mlp(0, h=5))


# ----------------------------------------------------------------------------- interpolate


def test_interpolate_endpoints_are_bitwise_exact():
    a, b = make_bn_net(0), make_bn_net(1)
    with torch.no_grad():
        b[1].num_batches_tracked.fill_(77)
    sa, sb = snapshot(a), snapshot(b)
    m1 = interpolate(a, b, 1.0)
    m0 = interpolate(a, b, 0.0)
    s1, s0 = m1.state_dict(), m0.state_dict()
    for k in sa:
        assert torch.equal(s1[k], sa[k]), k
        if sa[k].is_floating_point():
            assert torch.equal(s0[k], sb[k]), k
        else:
            assert torch.equal(s0[k], sa[k]), k  # integer buffers come from a
    assert same_state(a, sa) and same_state(b, sb)
    assert m1 is not a and m1[0].weight.data_ptr() != a[0].weight.data_ptr()


def test_interpolate_midpoint_and_identical_models():
    a, b = make_bn_net(0), make_bn_net(1)
    sa, sb = a.state_dict(), b.state_dict()
    sm = interpolate(a, b, 0.3).state_dict()
    for k in sa:
        if sa[k].is_floating_point():
            assert_close(sm[k], 0.3 * sa[k] + 0.7 * sb[k], rtol=1e-6, atol=1e-6)
    c = copy.deepcopy(a)
    for alpha in (0.0, 0.137, 0.5, 0.9, 1.0):
        si = interpolate(a, c, alpha).state_dict()
        assert all(torch.equal(si[k], sa[k]) for k in sa)


def test_interpolate_reset_mode_resets_running_stats():
    a, b = make_bn_net(0), make_bn_net(1)
    m = interpolate(a, b, 0.5, bn="reset")
    assert torch.equal(m[1].running_mean, torch.zeros(4))
    assert torch.equal(m[1].running_var, torch.ones(4))
    assert_close(m[0].weight, 0.5 * a[0].weight + 0.5 * b[0].weight)
    with pytest.raises(ValueError, match="bn"):
        interpolate(a, b, 0.5, bn="bogus")


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_matches_cross_entropy_and_is_batch_size_independent():
    a = make_bn_net(0)
    x, y = img_data(n=250)
    a.eval()
    with torch.no_grad():
        out = a(x)
    ref_loss = float(F.cross_entropy(out.double(), y))
    ref_acc = float((out.argmax(1) == y).double().mean())
    a.train()
    results = [evaluate(a, x, y, batch_size=bs) for bs in (7, 64, 250, 1000)]
    for loss, acc in results:
        assert loss == pytest.approx(ref_loss, abs=1e-6)
        assert acc == ref_acc
    assert a.training  # restored


# ----------------------------------------------------------------------------- B


@pytest.mark.parametrize("maker, data", MODELS)
@pytest.mark.parametrize("method", ["loop", "stacked"])
def test_loss_barrier_matches_hand_loop(maker, data, method):
    a, b = maker(0), maker(1)
    x, y = data()
    alphas = np.linspace(0, 1, 30)
    ref_losses = hand_losses(a, b, x, y, alphas)
    got_alphas, losses, barrier = loss_barrier_path(a, b, x, y, method=method)
    np.testing.assert_array_equal(got_alphas, alphas)
    np.testing.assert_allclose(losses, ref_losses, atol=1e-6, rtol=0)
    assert barrier == pytest.approx(max(0.0, hand_barrier(ref_losses, alphas)), abs=1e-6)
    assert loss_barrier(a, b, x, y, method=method) == barrier


def _relu_pair(c: float = 20.0) -> tuple[nn.Module, nn.Module]:
    """a: h = relu(x), b: h = relu(-x), both with logits (c h, -c h); the midpoint has h = 0."""
    def build(sign: float) -> nn.Module:
        net = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 2))
        with torch.no_grad():
            net[0].weight.fill_(sign)
            net[0].bias.zero_()
            net[2].weight.copy_(torch.tensor([[c], [-c]]))
            net[2].bias.zero_()
        return net

    return build(1.0), build(-1.0)


def test_barrier_positive_on_constructed_pair():
    """Each endpoint is confident on half the data, the midpoint (weights 0) on none: B = ln 2 - L_end."""
    a, b = _relu_pair()
    x = torch.linspace(0.5, 2.0, 40).repeat(2).unsqueeze(1) * torch.tensor([1.0] * 40 + [-1.0] * 40)[:, None]
    y = torch.zeros(80, dtype=torch.long)
    la, _ = evaluate(a, x, y)
    lb, _ = evaluate(b, x, y)
    assert la == pytest.approx(lb, abs=1e-12)
    barrier = loss_barrier(a, b, x, y, n_alpha=31)  # 31 points: the grid contains 0.5
    assert barrier == pytest.approx(math.log(2) - la, abs=1e-6)
    assert barrier > 0.3
    alphas, losses, b30 = loss_barrier_path(a, b, x, y)
    assert b30 == pytest.approx(hand_barrier(hand_losses(a, b, x, y, alphas), alphas), abs=1e-6)
    assert 0 < b30 < barrier
    assert parameter_dissimilarity(a, b) > 0.0


def test_barrier_from_path():
    alphas = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert barrier_from_path([0.7] * 5, alphas) == 0.0
    assert barrier_from_path([1.0, 2.0, 3.0, 4.0, 5.0], alphas) == 0.0  # linear path
    assert barrier_from_path([1.0, 1.5, 4.0, 2.5, 3.0], alphas) == pytest.approx(4.0 - 2.0)
    assert barrier_from_path([1.0, 0.0, 0.0, 0.0, 3.0], alphas) == 0.0  # below the chord: clamped
    # order does not matter; a is alpha = 1
    assert barrier_from_path([3.0, 4.0, 1.0], [1.0, 0.5, 0.0]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="endpoints"):
        barrier_from_path([1.0, 2.0], [0.0, 0.5])
    with pytest.raises(ValueError):
        barrier_from_path([1.0, 2.0, 3.0], [0.0, 1.0])


# ----------------------------------------------------------------------------- bn="reset"


def test_reset_requires_train_x_and_known_mode():
    a, b = make_bn_net(0), make_bn_net(1)
    x, y = img_data()
    with pytest.raises(ValueError, match="train_x"):
        loss_barrier(a, b, x, y, bn="reset")
    with pytest.raises(ValueError, match="train_x"):
        interpolation_losses(a, b, x, y, [0.0, 1.0], bn="reset")
    with pytest.raises(ValueError, match="unknown bn"):
        loss_barrier(a, b, x, y, bn="recompute", train_x=x)


def test_reset_statistics_equal_hand_computed_at_alpha_one():
    """One-BN-layer model: recomputed stats are the batch mean / unbiased var of the pre-BN activations."""
    torch.manual_seed(0)

    def build():
        return nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))

    a, b = build(), build()
    for net in (a, b):
        with torch.no_grad():
            net[1].running_mean.uniform_(-3, 3)
            net[1].running_var.uniform_(2, 5)
        net.eval()
    g = torch.Generator().manual_seed(7)
    train_x = torch.randn(96, 5, generator=g) * 2 + 1
    x, y = torch.randn(50, 5, generator=g), torch.randint(0, 3, (50,), generator=g)
    with torch.no_grad():
        z = a[0](train_x)

    # one batch covering the first 64 inputs: plain mean and unbiased variance
    m = interpolate(a, b, 1.0, bn="reset")
    recompute_bn_stats(m, train_x, bn_batches=1, batch_size=64)
    assert_close(m[1].running_mean, z[:64].mean(0), rtol=1e-5, atol=1e-6)
    assert_close(m[1].running_var, z[:64].var(0, unbiased=True), rtol=1e-5, atol=1e-6)
    assert m[1].momentum == 0.1 and not m.training

    # three batches of 32: cumulative average of the per-batch statistics
    m3 = interpolate(a, b, 1.0, bn="reset")
    recompute_bn_stats(m3, train_x, bn_batches=3, batch_size=32)
    zb = z.reshape(3, 32, 4)
    assert_close(m3[1].running_mean, zb.mean(1).mean(0), rtol=1e-5, atol=1e-6)
    assert_close(m3[1].running_var, zb.var(1, unbiased=True).mean(0), rtol=1e-5, atol=1e-6)

    # the endpoint of the reset path is this recomputed model, evaluated by hand
    ref = copy.deepcopy(a)
    with torch.no_grad():
        ref[1].running_mean.copy_(zb.mean(1).mean(0))
        ref[1].running_var.copy_(zb.var(1, unbiased=True).mean(0))
        ref_loss = float(F.cross_entropy(ref(x), y))
    losses = interpolation_losses(a, b, x, y, [0.0, 0.5, 1.0], bn="reset", train_x=train_x,
                                  bn_batches=3, batch_size=32)
    assert losses[2] == pytest.approx(ref_loss, abs=1e-5)
    # and it differs from the interpolate-mode endpoint, which keeps a's (arbitrary) running stats
    plain = interpolation_losses(a, b, x, y, [1.0])
    assert plain[0] == pytest.approx(evaluate(a, x, y)[0], abs=0)
    assert abs(plain[0] - losses[2]) > 1e-3


def test_reset_treats_endpoints_like_interior():
    """Every point of the path, the endpoints included, gets statistics recomputed on train_x: the losses of
    hand-built interpolants whose statistics were computed by hand from the inputs of each BN layer."""
    a, b = make_bn_net(0), make_bn_net(1)
    x, y = img_data()
    alphas = [0.0, 0.5, 1.0]
    losses = interpolation_losses(a, b, x, y, alphas, bn="reset", train_x=x, bn_batches=2, batch_size=40)
    np.testing.assert_allclose(losses, hand_losses(a, b, x, y, alphas, reset=(x, 2, 40)), atol=1e-5, rtol=0)
    assert abs(losses[2] - evaluate(a, x, y)[0]) > 1e-3  # not a's loss under a's own running statistics


def test_reset_without_batchnorm_equals_interpolate():
    a, b = make_mlp(0), make_mlp(1)
    x, y = mlp_data()
    alphas = np.linspace(0, 1, 7)
    np.testing.assert_array_equal(
        interpolation_losses(a, b, x, y, alphas, bn="reset", train_x=x),
        interpolation_losses(a, b, x, y, alphas),
    )


# ----------------------------------------------------------------------------- D


def test_disagreement_rate_matches_hand_count():
    a, b = make_bn_net(0), make_bn_net(1)
    x, _ = img_data(n=230)
    a.eval()
    b.eval()
    with torch.no_grad():
        ref = float((a(x).argmax(1) != b(x).argmax(1)).double().mean())
    assert 0 < ref < 1
    assert disagreement_rate(a, b, x) == ref
    assert disagreement_rate(a, b, x, batch_size=17) == ref


def test_disagreement_on_constructed_pair():
    a, b = _relu_pair()
    x = torch.tensor([[1.0], [2.0], [-1.0], [-3.0], [0.0]])
    # a predicts class 0 for x > 0 (else a tie -> argmax 0); b for x < 0: they never disagree on argmax
    assert disagreement_rate(a, b, x) == 0.0
    with torch.no_grad():
        b[2].weight.neg_()  # b now predicts class 1 for x < 0
    assert disagreement_rate(a, b, x) == pytest.approx(2 / 5)


# ----------------------------------------------------------------------------- side effects


def test_functions_restore_training_flags_and_leave_models_untouched():
    a, b = make_bn_net(0), make_bn_net(1)
    a.train()
    b.eval()
    b[7].train()  # a mixed-mode submodule must be restored too
    sa, sb = snapshot(a), snapshot(b)
    modes_a = [m.training for m in a.modules()]
    modes_b = [m.training for m in b.modules()]
    x, y = img_data()
    parameter_dissimilarity(a, b)
    interpolate(a, b, 0.4)
    evaluate(a, x, y)
    evaluate(b, x, y)
    loss_barrier(a, b, x, y, n_alpha=4)
    loss_barrier(a, b, x, y, n_alpha=4, bn="reset", train_x=x)
    loss_barrier(a, b, x, y, n_alpha=4, method="stacked")
    disagreement_rate(a, b, x)
    pair_metrics(a, b, x, y, n_alpha=4)
    pair_metrics(a, b, x, y, n_alpha=4, method="stacked")
    pair_metrics(a, b, x, y, n_alpha=4, bn="reset", train_x=x)
    assert [m.training for m in a.modules()] == modes_a
    assert [m.training for m in b.modules()] == modes_b
    assert same_state(a, sa) and same_state(b, sb)
    assert all(p.grad is None for p in a.parameters())


# ----------------------------------------------------------------------------- stacked path (vmap over alpha)


def stack_budget(a: nn.Module, x: torch.Tensor, alpha_chunk: int, eval_batch_size: int) -> int:
    """The max_bytes that makes the stacked path evaluate alpha_chunk alphas at a time."""
    a.eval()
    with torch.no_grad():
        per_alpha = min(eval_batch_size, len(x)) * metrics._activation_bytes(a, x[:1])
    return alpha_chunk * per_alpha + per_alpha // 2


@pytest.mark.parametrize("maker, data", MODELS)
@pytest.mark.parametrize("alpha_chunk, eval_batch_size", [(30, 1000), (1, 45), (7, 64)])
def test_stacked_path_matches_hand_built_models_in_every_chunking(maker, data, alpha_chunk, eval_batch_size):
    """One stacked evaluation (or alpha/sample chunks of it) agrees with hand-built interpolants to float error."""
    a, b = maker(0), maker(1)
    x, y = data()
    max_bytes = stack_budget(a, x, alpha_chunk, eval_batch_size)
    alphas = np.linspace(0, 1, 30)
    ref = hand_losses(a, b, x, y, alphas)
    got = _interpolation_losses_stacked(a, b, x, y, alphas, eval_batch_size=eval_batch_size, max_bytes=max_bytes)
    assert np.all(np.isfinite(ref)) and np.ptp(ref) > 1e-3  # the models really differ along the path
    np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)
    # endpoints are slices of the stacked evaluation, yet still the losses of b and a
    assert got[0] == pytest.approx(evaluate(b, x, y)[0], abs=1e-6)
    assert got[-1] == pytest.approx(evaluate(a, x, y)[0], abs=1e-6)


@pytest.mark.parametrize("maker, data", MODELS)
@pytest.mark.parametrize("alpha_chunk, eval_batch_size", [(30, 1000), (1, 45), (7, 64)])
def test_stacked_path_identical_models_is_exactly_constant(maker, data, alpha_chunk, eval_batch_size):
    a = maker(0)
    x, y = data()
    max_bytes = stack_budget(a, x, alpha_chunk, eval_batch_size)
    a.train()  # the path must not depend on the models' flags
    b = copy.deepcopy(a)
    alphas = np.linspace(0, 1, 30)
    losses = _interpolation_losses_stacked(a, b, x, y, alphas, eval_batch_size=eval_batch_size, max_bytes=max_bytes)
    assert np.all(losses == losses[0])
    assert barrier_from_path(losses, alphas) == 0.0
    assert losses[0] == pytest.approx(evaluate(a, x, y)[0], abs=1e-6)
    assert a.training and b.training


def test_stacked_method_through_public_api():
    a, b = make_bn_net(0), make_bn_net(1)
    x, y = img_data()
    alphas, losses, barrier = loss_barrier_path(a, b, x, y, method="stacked")
    np.testing.assert_allclose(losses, hand_losses(a, b, x, y, alphas), atol=1e-6, rtol=0)
    assert barrier == barrier_from_path(losses, alphas)
    assert loss_barrier(a, b, x, y, method="stacked") == barrier
    # bn="reset" recomputes statistics model by model: the stacked method falls back to the loop, exactly
    np.testing.assert_array_equal(
        interpolation_losses(a, b, x, y, alphas[:5], bn="reset", train_x=x, bn_batches=2, batch_size=40,
                             method="stacked"),
        interpolation_losses(a, b, x, y, alphas[:5], bn="reset", train_x=x, bn_batches=2, batch_size=40),
    )
    with pytest.raises(ValueError, match="method"):
        loss_barrier_path(a, b, x, y, method="vmap")


def test_default_path_is_the_hand_built_one_at_any_batch_size_with_exact_endpoints():
    """The default (loop) path against interpolants built by hand and scored with F.cross_entropy; as the loop
    promises, its endpoints are bit for bit the losses `evaluate` gives b and a."""
    a, b = make_cnn1d(0), make_cnn1d(1)
    x, y = seq_data()
    alphas = np.linspace(0, 1, 9)
    ref = hand_losses(a, b, x, y, alphas)
    assert np.ptp(ref) > 1e-3  # the models really differ along the path
    default = interpolation_losses(a, b, x, y, alphas)
    np.testing.assert_allclose(default, ref, atol=1e-6, rtol=0)
    np.testing.assert_allclose(interpolation_losses(a, b, x, y, alphas, eval_batch_size=11), ref, atol=1e-6, rtol=0)
    assert (default[0], default[-1]) == (evaluate(b, x, y)[0], evaluate(a, x, y)[0])


# ----------------------------------------------------------------------------- pair_metrics


def _individual(a, b, x, y, **kw):
    alphas, losses, barrier = loss_barrier_path(a, b, x, y, **kw)
    return {"C": parameter_dissimilarity(a, b), "B": barrier, "D": disagreement_rate(a, b, x),
            "alphas": alphas, "losses": losses, "ev_a": evaluate(a, x, y), "ev_b": evaluate(b, x, y)}


def _assert_same(pm, ind):
    assert pm["C"] == ind["C"]
    assert pm["B"] == ind["B"]
    assert pm["D"] == ind["D"]
    np.testing.assert_array_equal(pm["alphas"], ind["alphas"])
    np.testing.assert_array_equal(pm["losses"], ind["losses"])
    assert (pm["loss_a"], pm["acc_a"]) == ind["ev_a"]
    assert (pm["loss_b"], pm["acc_b"]) == ind["ev_b"]


@pytest.mark.parametrize("maker, data", MODELS)
@pytest.mark.parametrize("bn", ["interpolate", "reset"])
@pytest.mark.parametrize("method", ["loop", "stacked"])
def test_pair_metrics_equals_individual_functions(maker, data, bn, method):
    a, b = maker(0), maker(1)
    x, y = data()
    kw = dict(n_alpha=7, bn=bn, method=method)
    if bn == "reset":
        kw.update(train_x=x, bn_batches=2, batch_size=40)
    pm = pair_metrics(a, b, x, y, **kw)
    ind = _individual(a, b, x, y, **kw)
    _assert_same(pm, ind)
    assert pm["C"] > 0 and pm["B"] >= 0 and 0 <= pm["D"] <= 1
    assert set(pm) == {"C", "B", "D", "alphas", "losses", "loss_a", "acc_a", "loss_b", "acc_b"}


@pytest.mark.parametrize("maker, data", MODELS)
@pytest.mark.parametrize("method", ["loop", "stacked"])
def test_pair_metrics_identical_models_give_exact_zeros(maker, data, method):
    a = maker(0)
    b = copy.deepcopy(a)
    x, y = data()
    for kw in (dict(), dict(bn="reset", train_x=x, bn_batches=3, batch_size=32)):
        pm = pair_metrics(a, b, x, y, method=method, **kw)
        assert pm["C"] == pm["B"] == pm["D"] == 0.0
        assert np.all(pm["losses"] == pm["losses"][0])
        assert pm["acc_a"] == pm["acc_b"] and pm["loss_a"] == pm["loss_b"]


def test_pair_metrics_runs_each_forward_once(monkeypatch):
    """Loop path with bn="interpolate": the endpoints are a and b, so D and the accuracies cost no extra pass."""
    a, b = make_bn_net(0), make_bn_net(1)
    x, y = img_data()
    calls = []
    real = metrics._run

    def counting(model, *args):
        calls.append(model)
        return real(model, *args)

    monkeypatch.setattr(metrics, "_run", counting)
    pair_metrics(a, b, x, y, n_alpha=6)
    assert len(calls) == 6 and a not in calls and b not in calls
    calls.clear()
    pair_metrics(a, b, x, y, n_alpha=6, bn="reset", train_x=x, bn_batches=1)  # recomputed endpoints are not a, b
    assert len(calls) == 8 and calls[-2] is a and calls[-1] is b


def test_pair_metrics_evaluates_endpoints_that_are_not_the_models():
    """Integer buffers come from a, and a different architecture is not b: then a and b are evaluated directly."""
    a, b = make_bn_net(0), make_bn_net(1)
    x, y = img_data()
    with torch.no_grad():
        b[1].num_batches_tracked.fill_(77)
    _assert_same(pair_metrics(a, b, x, y, n_alpha=5), _individual(a, b, x, y, n_alpha=5))
    c, d = make_mlp(0), make_mlp(1)
    d[1] = nn.Tanh()  # same state dict, different function
    xm, ym = mlp_data()
    _assert_same(pair_metrics(c, d, xm, ym, n_alpha=5), _individual(c, d, xm, ym, n_alpha=5))


def test_pair_metrics_validates_arguments():
    a, b = make_mlp(0), make_mlp(1)
    x, y = mlp_data()
    with pytest.raises(ValueError, match="n_alpha"):
        pair_metrics(a, b, x, y, n_alpha=1)
    with pytest.raises(ValueError, match="train_x"):
        pair_metrics(a, b, x, y, bn="reset")
    with pytest.raises(ValueError, match="method"):
        pair_metrics(a, b, x, y, method="fast")
    with pytest.raises(ValueError, match="empty"):
        pair_metrics(a, b, x[:0], y[:0])
    with pytest.raises(ValueError, match="samples"):
        pair_metrics(a, b, x, y[:-1])
