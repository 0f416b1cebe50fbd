"""Tests for twophase_core.science.ntk: the eNTK against a per-sample autograd oracle, and the kernel geometry
against explicit numpy / scikit-learn computations."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from torch import nn

from twophase_core.bench.suite import ntk_einsum_baseline
from twophase_core.science import ntk
from twophase_core.science.models import ResNet20, cnn, eval_mode
from twophase_core.science.ntk import blocks as ntk_blocks
from twophase_core.science.ntk import geometry as ntk_geometry
from twophase_core.science.ntk import structured as ntk_structured
from twophase_core.settings.config import KERNELS


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Dropout(0.5), nn.Linear(7, 3))


def _convnet(seed: int = 0) -> nn.Module:
    """Conv + BN with non-trivial running statistics, so train-mode BN would give a different kernel."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 4),
    )
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net


CASES = [(_mlp, (6, 5)), (_convnet, (5, 2, 6, 6))]


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    a, b = a.double(), b.double()
    return torch.allclose(a, b, rtol=rtol, atol=rtol * b.abs().max().item())


@pytest.mark.parametrize("build,shape", CASES)
def test_full_matches_reference_and_baseline(build, shape):
    model = build()  # left in training mode: the kernel must still be the eval-mode one
    x = torch.randn(*shape)
    h = ntk.empirical_ntk(model, x, "full")
    ref = ntk.ntk_reference(copy.deepcopy(model).eval(), x, "full")
    n, o = shape[0], 3 if build is _mlp else 4
    assert h.shape == (n * o, n * o) and h.dtype == torch.float32
    assert _close(h, ref)
    assert _close(ntk_einsum_baseline(model, x, "full"), ref)
    assert torch.equal(h, h.T)


@pytest.mark.parametrize("build,shape", CASES)
def test_trace_is_sum_over_logit_diagonal_blocks(build, shape):
    model = build().eval()
    x = torch.randn(*shape)
    n = shape[0]
    full = ntk.empirical_ntk(model, x, "full").double()
    o = full.shape[0] // n
    by_hand = sum(full[a::o, a::o] for a in range(o))  # rows k*O + a, columns l*O + a
    tr = ntk.empirical_ntk(model, x, "trace")
    assert tr.shape == (n, n)
    assert _close(tr, by_hand)
    assert _close(tr, ntk.ntk_reference(model, x, "trace"))
    assert _close(ntk_einsum_baseline(model, x, "trace"), by_hand)


def test_full_kernel_layout_is_sample_major():
    """Entry (k*O + o, l*O + p) is the inner product of the two explicit per-logit gradients."""
    model = _convnet().eval()
    x = torch.randn(3, 2, 6, 6)
    h = ntk.empirical_ntk(model, x, "full")
    params = list(model.parameters())

    def grad(k: int, o: int) -> torch.Tensor:
        g = torch.autograd.grad(model(x[k : k + 1])[0, o], params)
        return torch.cat([t.reshape(-1) for t in g])

    k, o, k2, o2 = 2, 1, 0, 3
    assert math.isclose(
        h[k * 4 + o, k2 * 4 + o2].item(), torch.dot(grad(k, o), grad(k2, o2)).item(), rel_tol=1e-4
    )


def _per_sample_bytes(model: nn.Module, x: torch.Tensor, kernel: str, method: str) -> int:
    with eval_mode(model):
        if method == "structured":
            return ntk_structured.per_sample_bytes(ntk_structured.plan(model, x[:1], len(x), kernel), 8)
        o = model(x[:1]).numel()
    return o * sum(t.numel() for t in model.parameters()) * 8


@pytest.mark.parametrize("method", ["structured", "jacobian"])
@pytest.mark.parametrize("kernel", ["full", "trace"])
@pytest.mark.parametrize("build,shape", CASES)
def test_chunked_kernel_equals_the_reference_at_every_budget(build, shape, kernel, method):
    model = build().double()
    x = torch.randn(*shape, dtype=torch.float64)
    ref = ntk.ntk_reference(model, x, kernel)
    per_sample = _per_sample_bytes(model, x, kernel, method)
    for budget in (1, 4 * per_sample, 2 * shape[0] * per_sample - 1, None):  # chunks of 1, 2, n-1; the default
        chunked = ntk.empirical_ntk(model, x, kernel, method, memory_budget_bytes=budget, float64=True)
        assert _rel(chunked, ref) < 1e-10, budget
        assert torch.equal(chunked, chunked.T)


def test_every_tiling_of_the_diagonal_blocks_gives_the_reference_kernel(monkeypatch):
    model = _convnet()
    x = torch.randn(5, 2, 6, 6)
    ref = ntk.ntk_reference(model, x, "full")  # float64 from the float32 model's per-sample gradients
    assert _close(ntk.empirical_ntk(model, x, "full"), ref, rtol=1e-5)  # one GEMM
    monkeypatch.setattr(ntk_blocks, "MIN_TILE_ROWS", 6)  # 20 rows -> 3 tiles of 6-7
    assert _close(ntk.empirical_ntk(model, x, "full"), ref, rtol=1e-5)
    monkeypatch.setattr(ntk_blocks, "MIN_TILE_ROWS", 1)
    monkeypatch.setattr(ntk_blocks, "MAX_TILES", 20)  # one tile per row
    assert _close(ntk.empirical_ntk(model, x, "full"), ref, rtol=1e-5)
    monkeypatch.setattr(ntk_blocks, "SMALL_BLOCK", 1)  # every block its own GEMM
    assert _close(ntk.empirical_ntk(model, x, "full"), ref, rtol=1e-5)
    monkeypatch.setattr(ntk_blocks, "SLICE", 5)  # float32 products over many column slices
    assert _close(ntk.empirical_ntk(model, x, "full"), ref, rtol=1e-5)


def test_float64_flag_and_no_grad_context():
    model = _mlp()
    x = torch.randn(4, 5)
    with torch.no_grad():  # callers in an evaluation loop; torch.func ignores the outer no_grad
        h = ntk.empirical_ntk(model, x, float64=True)
    assert h.dtype == torch.float64
    assert _close(h, ntk.ntk_reference(model, x), rtol=1e-5)
    # A float64 model end to end agrees with the float64 oracle to float64 precision.
    model64, x64 = model.double(), x.double()
    h64 = ntk.empirical_ntk(model64, x64, float64=True)
    ref = ntk.ntk_reference(model64, x64)
    assert torch.allclose(h64, ref, rtol=1e-10, atol=1e-10 * ref.abs().max().item())
    assert ntk.empirical_ntk(model64, x64).dtype == torch.float32


def test_frozen_parameters_get_no_jacobian():
    model = _convnet()
    for q in model[0].parameters():
        q.requires_grad_(False)
    x = torch.randn(4, 2, 6, 6)
    h = ntk.empirical_ntk(model, x)
    assert _close(h, ntk.ntk_reference(model, x))
    names = set(ntk.jacobian(model, x))
    assert "0.weight" not in names and "3.weight" in names


def test_modes_restored_and_buffers_untouched():
    model = _convnet()
    model.train()
    model[4].eval()  # a deliberately frozen BN must stay frozen, the rest must stay in training
    before = {name: m.training for name, m in model.named_modules()}
    stats = [b.clone() for b in model.buffers()]
    ntk.empirical_ntk(model, torch.randn(3, 2, 6, 6))
    ntk.ntk_reference(model, torch.randn(2, 2, 6, 6))
    ntk.jacobian(model, torch.randn(2, 2, 6, 6))
    assert {name: m.training for name, m in model.named_modules()} == before
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers(), strict=True))


def test_kernel_is_validated():
    with pytest.raises(ValueError):
        ntk.empirical_ntk(_mlp(), torch.randn(2, 5), "diagonal")


# ----------------------------------------------------------------------------------------------
# The three paths and the automatic choice
# ----------------------------------------------------------------------------------------------


def _bn_stats(net: nn.Module) -> nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net


def _cnn1d() -> nn.Module:
    torch.manual_seed(0)
    return _bn_stats(cnn((2, 12), 5, 0.25, 0.0))  # conv-BN-ReLU x3 (strides 1, 2, 2), linear


def _cnn2d() -> nn.Module:
    torch.manual_seed(0)
    return _bn_stats(cnn((2, 6, 6), 4, 0.25, 0.0))


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return _bn_stats(ResNet20((3, 8, 8), 10, 0.25))  # widths 4/8/16, 1x1-conv + BN shortcuts


MODELS = [(_mlp, (4, 5)), (_cnn1d, (3, 2, 12)), (_cnn2d, (3, 2, 6, 6)), (_resnet, (3, 3, 8, 8))]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("strategy", ["cost model", "factored", "gradients"])
@pytest.mark.parametrize("build,shape", MODELS)
def test_every_path_equals_the_reference_in_float64(build, shape, strategy, monkeypatch):
    """structured (each contraction order for every weight), jacobian and ntvp against the oracle, 1e-10."""
    if strategy != "cost model":
        pick = 0.0 if strategy == "factored" else float("inf")
        monkeypatch.setattr(ntk_structured, "factored_cost", lambda *a: pick)
    model = build().double().train()  # the kernel is the eval-mode one whatever the flags
    x = torch.randn(*shape, dtype=torch.float64)
    for kernel in ("full", "trace"):
        ref = ntk.ntk_reference(model, x, kernel)
        for method in ntk.METHODS if strategy == "cost model" else ["structured"]:
            h = ntk.empirical_ntk(model, x, kernel, method, float64=True)
            assert h.shape == ref.shape and h.dtype == torch.float64
            assert _rel(h, ref) < 1e-10, (kernel, method)
            assert torch.equal(h, h.T)
    assert all(m.training for m in model.modules())


def test_structured_handles_shared_modules_fallback_parameters_and_frozen_weights():
    """A module called twice, a parameter outside any supported layer, a frozen weight with a trainable bias."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(2, 3, 3, padding=1)
            self.mix = nn.Linear(3, 3)
            self.scale = nn.Parameter(torch.tensor([1.5, -0.5, 2.0]))  # no supported module: per-sample Jacobian
            self.norm = nn.LayerNorm(3)  # likewise
            self.head = nn.Linear(3 * 7, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.conv(x)).transpose(1, 2)  # (n, 7, 3)
            h = self.mix(torch.tanh(self.mix(h)))  # the same Linear twice, on 7 positions each
            return self.head((self.norm(h) * self.scale).flatten(1))

    torch.manual_seed(0)
    model = Net().double()
    model.head.weight.requires_grad_(False)
    x = torch.randn(4, 2, 7, dtype=torch.float64)
    with eval_mode(model):
        pl = ntk_structured.plan(model, x[:1], 4, "full")
    assert set(pl.fallback) == {"scale", "norm.weight", "norm.bias"}
    assert {layer.weight for layer in pl.layers} == {"conv.weight", "mix.weight", None}
    for kernel in ("full", "trace"):
        h = ntk.empirical_ntk(model, x, kernel, "structured", float64=True)
        assert _rel(h, ntk.ntk_reference(model, x, kernel)) < 1e-10


ACTIVATIONS = [nn.ReLU, lambda: nn.ReLU(inplace=True), nn.Tanh, nn.Sigmoid, nn.GELU, lambda: nn.GELU("tanh"), nn.SiLU,
               lambda: nn.LeakyReLU(0.1)]


def _dense_chain(seed: int) -> tuple[nn.Module, torch.Tensor]:
    """A random chain of Linear layers and one activation: depth 1 to 4, widths 2 to 70 (one logit or a
    bias alone make the structured plan form gradients: not a chain), bias on or off, now and then a
    flattened 3-D input, a Dropout, a frozen layer or a final activation; n from 2 to 40."""
    g = torch.Generator().manual_seed(seed)

    def r(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    torch.manual_seed(seed)
    widths = [r(2, 30)] + [r(2, 70) for _ in range(r(0, 3))] + [r(2, 12)]
    act = ACTIVATIONS[seed % len(ACTIVATIONS)]
    mods: list[nn.Module] = [nn.Flatten()] if seed % 4 == 1 else []
    for i in range(len(widths) - 1):
        mods.append(nn.Linear(widths[i], widths[i + 1], bias=seed % 3 != 0 or i % 2 == 1))
        if i < len(widths) - 2:
            mods += [act()] + ([nn.Dropout(0.5)] if seed % 5 == 2 else [])
    if seed % 7 == 3:
        mods.append(nn.Tanh())
    model = nn.Sequential(*mods)
    shape = (r(2, 40), widths[0]) if seed % 4 != 1 else (r(2, 40), widths[0] // 2 + 1, 2)
    if seed % 4 == 1:
        model[1] = nn.Linear(shape[1] * 2, widths[1], bias=model[1].bias is not None)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    if seed % 6 == 5 and len(linears) > 1:  # a frozen layer, backpropagated through (or not, the first)
        linears[seed % (len(linears) - 1)].requires_grad_(False)
    return model, torch.randn(*shape)


@pytest.mark.parametrize("seed", range(48))
def test_dense_chains_get_the_structured_kernel_bit_for_bit(seed):
    """ntk_dense (no hooks, no autograd) against the structured path's hooks and batched backward: the
    same kernel to the last bit (as integers, so a -0 would show) for every kernel and work dtype; and
    against the per-sample autograd oracle, which shares no code with either."""
    from twophase_core.science.ntk import dense as ntk_dense

    model, x = _dense_chain(seed)
    n = x.shape[0]
    for kernel in KERNELS:
        with eval_mode(model):
            pl = ntk_structured.plan(model, x, n, kernel)
            assert pl.chain is not None
            for dtype in (torch.float32, torch.float64):
                general = ntk_structured.self_block(ntk_structured.capture(model, pl, x, kernel), kernel, dtype)
                fast = ntk_dense.kernel(model, pl.chain, x, kernel, dtype)
                assert fast is not None
                assert fast.dtype == general.dtype == torch.float64
                assert torch.equal(fast.view(torch.int64), general.view(torch.int64)), (kernel, dtype)
                want = {torch.float32: general.float(), torch.float64: general}[dtype]
                h = ntk.empirical_ntk(model, x, kernel, "structured", float64=dtype == torch.float64)
                assert torch.equal(h, want)  # through the dispatch, the same bits
        assert _rel(h, ntk.ntk_reference(model, x, kernel)) < 1e-5


def test_dense_path_steps_aside_where_it_does_not_apply(monkeypatch):
    """One sample, a forward hook, samples in two chunks, an unsupported module: the general path runs
    (and a hook that changes the output is honoured)."""
    from twophase_core.science.ntk import dense as ntk_dense

    calls = []
    real = ntk_dense._kernel
    monkeypatch.setattr(ntk_dense, "_kernel", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.randn(6, 5)
    h = ntk.empirical_ntk(model, x, "full", "structured")
    assert len(calls) == 1
    ntk.empirical_ntk(model, x[:1], "full", "structured")
    ntk.empirical_ntk(model, x, "full", "structured", memory_budget_bytes=600)  # chunks
    assert len(calls) == 1
    handle = model[1].register_forward_hook(lambda m, i, out: 2 * out)
    try:
        hooked = ntk.empirical_ntk(model, x, "full", "structured")
        assert len(calls) == 1 and not torch.equal(hooked, h)
        assert _rel(hooked, ntk.ntk_reference(model, x)) < 1e-5
    finally:
        handle.remove()
    with eval_mode(model):
        chain = ntk_structured.plan(model, x, 6, "full").chain
        assert chain is not None and ntk_dense.kernel(model, chain, x, "full", torch.float32) is not None
        swapped = copy.deepcopy(model)  # the same names and shapes: the cached chain is not its
        assert ntk_dense.kernel(swapped, chain, x, "full", torch.float32) is None
    for other in (nn.Sequential(nn.Linear(5, 6), nn.Softplus(), nn.Linear(6, 3)),
                  nn.Sequential(nn.Linear(5, 6), nn.Sequential(nn.ReLU(), nn.Linear(6, 3)))):
        with eval_mode(other):
            assert ntk_structured.plan(other, x, 6, "full").chain is None


def test_walk_is_modules_and_named_parameters():
    lin = nn.Linear(3, 3)
    shared = nn.Sequential(lin, nn.ReLU(), lin, nn.Sequential(nn.Linear(3, 2, bias=False), lin))
    shared.extra = nn.Parameter(torch.zeros(2))
    shared.register_parameter("none", None)
    for model in (ResNet20((3, 32, 32), 10, 0.25), _convnet(), shared):
        modules, named = ntk_blocks.walk(model)
        assert [id(m) for m in modules] == [id(m) for m in model.modules()]
        assert [(k, id(p)) for k, p in named] == [(k, id(p)) for k, p in model.named_parameters()]


def test_float32_kernels_are_accumulated_in_float64():
    """ResNet-20 at full width on CIFAR-shaped input: float32 within 5e-7 of the float64 truth."""
    torch.manual_seed(0)
    model = ResNet20((3, 32, 32), 10, 1.0).eval()
    x = torch.randn(2, 3, 32, 32)
    model64 = copy.deepcopy(model).double()
    for kernel in ("full", "trace"):
        truth = ntk.empirical_ntk(model64, x.double(), kernel, "structured", float64=True)
        for method in ("structured", "jacobian"):
            h = ntk.empirical_ntk(model, x, kernel, method)
            assert h.dtype == torch.float32
            assert _rel(h, truth) < 5e-7, (kernel, method, _rel(h, truth))


def test_auto_reports_its_choice_and_returns_that_paths_kernel():
    model = _cnn2d()
    x = torch.randn(5, 2, 6, 6)
    for kernel in ("full", "trace"):
        h = ntk.empirical_ntk(model, x, kernel)  # method="auto"
        chosen = ntk.choose_method(model, x, kernel)
        assert chosen in ntk.METHODS
        assert _close(h, ntk.empirical_ntk(model, x, kernel, chosen), rtol=1e-6)
        assert _close(h, ntk.ntk_reference(model, x, kernel))
    n_choices = len(ntk.TIMINGS)
    ntk.choose_method(model, x, "full")  # cached: nothing is timed again
    assert len(ntk.TIMINGS) == n_choices
    with pytest.raises(ValueError):
        ntk.empirical_ntk(model, x, "full", "einsum")


def test_auto_refuses_a_structured_kernel_that_misses_a_use_of_a_weight():
    """A weight also used through torch.nn.functional is invisible to hooks: auto checks and falls back."""

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.out = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.tanh(self.fc(x)) + nn.functional.linear(x, self.fc.weight))

    torch.manual_seed(0)
    model = Tied()
    x = torch.randn(6, 4)
    ref = ntk.ntk_reference(model, x)
    assert _rel(ntk.empirical_ntk(model, x, method="structured"), ref) > 1e-3  # the hook's blind spot
    with pytest.warns(RuntimeWarning, match="disagrees with autograd"):
        h = ntk.empirical_ntk(model, x)
    assert ntk.choose_method(model, x) != "structured"
    assert _close(h, ref)


def test_bn_without_running_statistics_is_not_structured():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, track_running_stats=False), nn.Flatten(),
                          nn.Linear(3 * 16, 2))
    x = torch.randn(3, 2, 6, 6)
    with pytest.raises(ntk_structured.NotStructured):
        ntk.empirical_ntk(model, x, method="structured")
    assert ntk.choose_method(model, x) != "structured"
    assert _close(ntk.empirical_ntk(model, x), ntk.ntk_reference(model, x))


# ----------------------------------------------------------------------------------------------
# Kernel geometry
# ----------------------------------------------------------------------------------------------


def test_kernel_distance():
    model = _convnet()
    x = torch.randn(4, 2, 6, 6)
    h1 = ntk.empirical_ntk(model, x)
    assert 0.0 <= ntk.kernel_distance(h1, 3.7 * h1) < 1e-6
    with torch.no_grad():
        for q in model.parameters():
            q.add_(0.3 * torch.randn_like(q))
    h2 = ntk.empirical_ntk(model, x)
    a, b = h1.double().numpy().ravel(), h2.double().numpy().ravel()
    by_hand = 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    s = ntk.kernel_distance(h1, h2)
    assert s > 1e-4
    assert math.isclose(s, by_hand, rel_tol=1e-9)
    assert ntk.kernel_distance(h1, -h1) == 2.0


def test_kernel_distance_is_exactly_zero_for_identical_kernels_and_never_negative():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        h = torch.randn(320, 320, generator=g)
        h = h @ h.T
        assert ntk.kernel_distance(h, h) == 0.0
        assert ntk.kernel_distance(h, h.clone()) == 0.0
        assert ntk.kernel_distance(h.numpy(), h.double()) == 0.0
        assert ntk.kernel_distance(h, 1.0000001 * h) >= 0.0  # same direction: rounding, clipped at 0
        tiny = h + 1e-6 * torch.randn(320, 320, generator=g)
        assert ntk.kernel_distance(h, tiny) >= 0.0
    with pytest.raises(ValueError):
        ntk.kernel_distance(torch.zeros(3, 3), torch.eye(3))


def _random_kernels(m: int = 5, n: int = 6, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(m):
        a = torch.randn(n, 2 * n, generator=g)
        out.append(a @ a.T + torch.randn(1, generator=g).abs())  # PSD kernels with shared structure
    return out


def test_gram_normalized_gram_distance_matrix(monkeypatch):
    ks = _random_kernels()
    flat = np.stack([k.double().numpy().ravel() for k in ks])
    r_np = flat @ flat.T
    r = ntk.gram(ks)
    assert r.dtype == np.float64 and r.shape == (5, 5)
    assert np.allclose(r, r_np, rtol=1e-12)
    monkeypatch.setattr(ntk_geometry, "_GRAM_BLOCK", 7)  # forces many column blocks
    assert np.allclose(ntk.gram(iter(ks)), r_np, rtol=1e-12)
    assert np.allclose(ntk.gram([k.numpy() for k in ks]), r_np, rtol=1e-12)

    g = ntk.normalized_gram(r)
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    assert np.allclose(g, unit @ unit.T, atol=1e-12)
    assert np.all(np.diag(g) == 1.0)

    s = ntk.distance_matrix(g)
    assert np.all(np.diag(s) == 0.0) and np.all(s >= 0)
    assert np.allclose(s, 1 - unit @ unit.T, atol=1e-12)
    for i, j in [(0, 1), (2, 4)]:
        assert math.isclose(s[i, j], ntk.kernel_distance(ks[i], ks[j]), rel_tol=1e-9, abs_tol=1e-12)
    tiny = np.array([[1.0, 1.0 + 1e-13], [1.0 + 1e-13, 1.0]])
    assert np.all(ntk.distance_matrix(tiny) == 0.0)


def _unit_vectors(m: int, d: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(m, d)) + 2.0 * rng.normal(size=d)  # a cluster, as kernels along training are
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_project_pca_matches_sklearn():
    u = _unit_vectors(9, 12)
    g = u @ u.T
    coords = ntk.project(g, "pca", dim=3)
    expected = PCA(n_components=3).fit_transform(u)
    assert coords.shape == (9, 3)
    assert np.allclose(np.abs(coords), np.abs(expected), atol=1e-8)
    for k in range(3):  # deterministic signs: the largest |entry| of each axis is positive
        assert coords[np.argmax(np.abs(coords[:, k])), k] > 0


def test_project_pads_beyond_rank():
    u = _unit_vectors(2, 5)
    c = ntk.project(u @ u.T, "pca", dim=3)
    assert c.shape == (2, 3)
    assert np.allclose(c[:, 1:], 0.0)
    assert math.isclose(abs(c[0, 0] - c[1, 0]), np.linalg.norm(u[0] - u[1]), rel_tol=1e-9)
    m = ntk.project(u @ u.T, "mds", dim=3)
    assert m.shape == (2, 3) and np.allclose(m[:, 1:], 0.0)
    assert math.isclose(abs(m[0, 0] - m[1, 0]), np.linalg.norm(u[0] - u[1]), rel_tol=1e-3)


def test_project_mds_preserves_chordal_distances():
    u = _unit_vectors(10, 4)
    g = u @ u.T
    c = ntk.project(g, "mds", dim=3, seed=0)
    assert c.shape == (10, 3) and np.all(np.isfinite(c))
    iu = np.triu_indices(10, 1)
    chord = np.sqrt(np.maximum(2 - 2 * g, 0))[iu]
    emb = np.linalg.norm(c[:, None] - c[None], axis=-1)[iu]
    assert np.corrcoef(chord, emb)[0, 1] > 0.9
    assert np.array_equal(c, ntk.project(g, "mds", dim=3, seed=0))
    with pytest.raises(ValueError):
        ntk.project(g, "tsne")


def _cone_points(angles_deg: list[float], azimuth_deg: list[float] | None = None) -> np.ndarray:
    """Unit vectors u_i = u0 + t_i d_i with unit directions d_i at the given polar angles from -u0."""
    u0 = np.array([0.0, 0.0, 1.0])
    pts = [u0]
    az = azimuth_deg or [0.0] * len(angles_deg)
    for a, phi in zip(np.radians(angles_deg), np.radians(az), strict=True):
        d = np.array([np.sin(a) * np.cos(phi), np.sin(a) * np.sin(phi), -np.cos(a)])
        pts.append(u0 - 2 * (u0 @ d) * d)  # the second intersection of the ray u0 + t d with the sphere
    u = np.stack(pts)
    assert np.allclose(np.linalg.norm(u, axis=1), 1.0)
    return u


def test_cone_angle_known_angle():
    u = _cone_points([40.0, 55.0, 70.0])  # directions in one plane: 40 and 70 degrees are 30 apart
    g = u @ u.T
    assert math.isclose(ntk.cone_angle(g, [0, 1, 2, 3]), 30.0, abs_tol=1e-6)
    assert math.isclose(ntk.cone_angle(g, [1, 2]), 15.0, abs_tol=1e-6)
    assert ntk.cone_angle(g, [0, 2]) == 0.0  # one increment only: no angle
    # Scale does not matter: the angle is of unit-normalised kernels, recovered from raw R.
    scaled = u * np.array([1.0, 3.0, 0.2, 7.0])[:, None]
    g2 = ntk.normalized_gram(scaled @ scaled.T)
    assert math.isclose(ntk.cone_angle(g2, [1, 2, 3]), 30.0, abs_tol=1e-6)


def test_cone_angle_out_of_plane_matches_explicit_vectors():
    u = _cone_points([30.0, 30.0, 45.0], [0.0, 90.0, 200.0])
    g = u @ u.T
    d = u[1:] - u[0]
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    expected = np.degrees(np.arccos(np.clip(d @ d.T, -1, 1))).max()
    assert math.isclose(ntk.cone_angle(g, [1, 2, 3]), expected, abs_tol=1e-6)
    # apex elsewhere: computed from G alone equals the explicit increments from u_2
    d2 = u[[0, 1, 3]] - u[2]
    d2 = d2 / np.linalg.norm(d2, axis=1, keepdims=True)
    expected2 = np.degrees(np.arccos(np.clip(d2 @ d2.T, -1, 1))).max()
    assert math.isclose(ntk.cone_angle(g, [0, 1, 2, 3], apex=2), expected2, abs_tol=1e-6)
    iters = [0, 100, 200, 400]
    assert ntk.cone_angles(g, iters, [(100, 400), (150, 400)]) == pytest.approx(
        [expected, ntk.cone_angle(g, [2, 3])], abs=1e-9
    )


def test_reference_and_neighbour_curves_non_uniform_iters():
    iters = [0, 10, 20, 50, 100, 110]
    m = len(iters)
    s = np.zeros((m, m))
    for i in range(m):
        for j in range(m):
            s[i, j] = abs(iters[i] - iters[j]) / 1000 + (0.5 if i != j else 0)
    refs = ntk.reference_curves(s, iters, [0, 100])
    assert refs.shape == (2, m)
    assert np.array_equal(refs[0], s[0]) and np.array_equal(refs[1], s[4])
    with pytest.raises(ValueError):
        ntk.reference_curves(s, iters, [30])

    (t10, v10), (t50, v50), (t30, v30), (tbig, vbig) = ntk.neighbour_curves(s, iters, [10, 50, 30, 1000])
    assert t10.tolist() == [0, 10, 100] and np.allclose(v10, [s[0, 1], s[1, 2], s[4, 5]])
    assert t50.tolist() == [0, 50] and np.allclose(v50, [s[0, 3], s[3, 4]])
    assert t30.tolist() == [20] and np.allclose(v30, [s[2, 3]])
    assert tbig.size == 0 and vbig.size == 0


def test_ntk_vector_product_equals_the_kernel_times_the_vector():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 3))
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    model.train()
    x = torch.randn(6, 2, 5, 5)
    v = torch.randn(6, 3)
    h = ntk.empirical_ntk(model, x, "full")
    hv = ntk.ntk_vector_product(model, x, v)
    assert hv.shape == v.shape and model.training
    assert torch.allclose(hv.reshape(-1), h @ v.reshape(-1), rtol=1e-4, atol=1e-4)


def test_symmetrized_is_the_mean_with_its_transpose_bit_for_bit():
    h = torch.randn(50, 50, dtype=torch.float64)
    before = h.clone().add_(h.T.clone()).mul_(0.5)  # the formula it replaced
    got = ntk_blocks.symmetrized(h.clone())
    assert torch.equal(got, before) and torch.equal(got, got.T)


@pytest.mark.parametrize("method", ["structured", "jacobian"])
def test_a_small_kernel_skips_the_free_memory_lookup_and_a_large_one_asks(method, monkeypatch):
    asked: list[torch.device] = []

    def budget(device: torch.device) -> int:
        asked.append(device)
        return 1 << 30

    monkeypatch.setattr(ntk_blocks, "default_budget", budget)
    model, x = _mlp(), torch.randn(6, 5)
    small = ntk.empirical_ntk(model, x, "full", method)
    assert asked == []
    monkeypatch.setattr(ntk_blocks, "SMALL_JOB_BYTES", 0)
    assert torch.equal(ntk.empirical_ntk(model, x, "full", method), small) and len(asked) == 1
