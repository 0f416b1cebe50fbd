"""Empirical neural tangent kernels: three named ways to compute them, and an automatic choice.

Kernel routines state their cost, neural-tangents style, in N samples, O outputs (logits) and P
trainable parameters; [FP] / [BP] is one forward / backward pass of one sample, F the
multiply-adds of one sample's forward.

- "structured": per-layer factors (`ntk_structured`): for layers linear in their weights the kernel
  is built from Grams of layer inputs and output cotangents, never from whole per-sample Jacobians.
  Fastest on small and mid-sized networks. For a chain of dense layers (an MLP) `ntk_dense` computes
  the same kernel, bit for bit, by the same ops without hooks or autograd.
- "jacobian": per-sample Jacobians from torch.func (vmap over samples of jacrev over outputs),
  contracted as plain matrix products, because a GEMM is the fastest thing a CPU or GPU does.
- "ntvp": NTK-vector products (one vjp and one jvp per kernel column), memory O(P + activations)
  per column; for models whose Jacobian does not fit even in chunks.

`empirical_ntk(..., method="auto")` picks one per model, kernel and N (`choose_method`, cached).
The structured and Jacobian paths accumulate float32 products in float64 (`ntk_blocks`); ntvp
sums over parameters inside its jvp, in the model's dtype. The geometry of kernels along
training lives in `ntk_geometry` and is re-exported here.

Past 350 lines on purpose: the three paths, their cost model and the choice between them are one
contract (same kernel, same layout, same float64 accumulation), kept side by side so that a change
to one path is checked against the others in one place.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Hashable

import torch
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp, vmap

from twophase_core.science.models import device_of, eval_mode
from twophase_core.settings.config import KERNELS

from . import dense, structured
from .blocks import (
    as_matrices,
    assemble,
    chunk_bounds,
    default_budget,
    functional,
    per_sample_jacobian,
    product,
    resolve_budget,
    self_product,
    symmetrized,
    walk,
)
from .geometry import (  # noqa: F401  (the public kernel-geometry API, importable from ntk)
    cone_angle,
    cone_angles,
    distance_matrix,
    gram,
    kernel_distance,
    neighbour_curves,
    normalized_gram,
    project,
    reference_curves,
)

METHODS = ("structured", "jacobian", "ntvp")
# Methods whose modelled cost is within this factor of the cheapest are timed on the first call
# for an architecture and N; the rest are never run. Modelled / measured, N = 32 to 40, one thread:
# MLP structured 0.1 / 0.1-0.2 of jacobian, demo CNN 0.64 / 0.6, ResNet-20 0.77 / 1.0-1.1. With 1.5
# ResNet-20 (a near tie) is timed, and the demo's cone job is spared a calibration that would cost
# more than it saves.
CALIBRATE_WITHIN = 1.5
# Calibration times each candidate in interleaved rounds (the order alternating) and keeps the
# minimum; one round only when it took longer than this many seconds (first-call costs matter little).
CALIBRATION_ONE_ROUND_S = 5.0
# While the two fastest are within CLOSE of each other, up to CALIBRATION_MAX_ROUNDS rounds.
CLOSE = 1.1
CALIBRATION_MAX_ROUNDS = 4
# Another path is chosen over Jacobian contraction only when this much faster: at a near tie the
# order flips with machine noise (ResNet-20 on a CPU is one), and the reference path should win it.
JACOBIAN_MARGIN = 1.03
_CHOICE: dict[tuple[Hashable, ...], str] = {}
TIMINGS: dict[tuple[Hashable, ...], dict[str, float]] = {}


# --------------------------------------------------------------------------------------------
# Jacobians
# --------------------------------------------------------------------------------------------


def jacobian(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Per-sample Jacobians d f_o(x_k) / d theta, one (N, O, *param.shape) block per parameter.

    Cost: N [FP] + N O [BP] (batched by vmap); memory N O P.
    Model in eval mode for the call; trainable parameters only.
    """
    with eval_mode(model):
        params, f = functional(model)
        return per_sample_jacobian(f, params, x.to(device_of(model)))


# --------------------------------------------------------------------------------------------
# The three paths (model in eval mode; each returns the float64-accumulated kernel)
# --------------------------------------------------------------------------------------------


def _work(model: nn.Module, float64: bool) -> tuple[torch.dtype, int]:
    """(dtype of the matrices multiplied, bytes per entry the budget must count)."""
    work = torch.float64 if float64 else torch.float32
    return work, max([p.element_size() for _, p in walk(model)[1]] + [work.itemsize])


def _jacobian_kernel(model: nn.Module, x: Tensor, kernel: str, budget: int | None, float64: bool) -> Tensor:
    params, f = functional(model)
    with torch.no_grad():
        o = f(params, x[0]).numel()
    p = sum(t.numel() for t in params.values())
    work, itemsize = _work(model, float64)
    per_sample = o * p * itemsize
    bounds = chunk_bounds(x.shape[0], per_sample, resolve_budget(budget, x.device, x.shape[0] * per_sample))

    def chunk(i: int) -> list[Tensor]:
        s, e = bounds[i]
        return as_matrices(list(per_sample_jacobian(f, params, x[s:e]).values()), kernel, work)

    return assemble(bounds, o if kernel == "full" else 1, chunk, self_product, product, x.device)


def _structured_kernel(model: nn.Module, x: Tensor, kernel: str, budget: int | None, float64: bool) -> Tensor:
    pl = structured.plan(model, x, x.shape[0], kernel)  # (its forward takes one sample)
    work = torch.float64 if float64 else torch.float32
    itemsize = max(pl.itemsize, work.itemsize)  # = _work(model, float64), from the plan's cache
    per_sample = structured.per_sample_bytes(pl, itemsize)
    bounds = chunk_bounds(x.shape[0], per_sample, resolve_budget(budget, x.device, x.shape[0] * per_sample))
    if len(bounds) == 1 and pl.chain is not None:  # the same kernel, bit for bit, without hooks or autograd
        h = dense.kernel(model, pl.chain, x, kernel, work)
        if h is not None:
            return h

    def chunk(i: int) -> structured.Factors:
        s, e = bounds[i]
        return structured.capture(model, pl, x[s:e], kernel)

    return assemble(bounds, pl.outputs if kernel == "full" else 1, chunk,
                    lambda a: structured.self_block(a, kernel, work),
                    lambda a, b: structured.cross_block(a, b, kernel, work), x.device)


def _ntvp_products(model: nn.Module, x: Tensor) -> tuple[Callable[[Tensor], Tensor], int]:
    """(V -> H V for a batch of (B, N, O) vectors by vmap over one vjp + one jvp each, O)."""
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    consts = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
    consts.update(dict(model.named_buffers()))

    def f(p: dict[str, Tensor]) -> Tensor:
        return functional_call(model, (p, consts), (x,))

    out, pullback = vjp(f, params)  # type: ignore[misc]  # torch types 3 items, even without has_aux

    def column(v: Tensor) -> Tensor:
        (jt_v,) = pullback(v.reshape(out.shape).to(out.dtype))
        return jvp(f, (params,), (jt_v,))[1]

    return vmap(column), out[0].numel()


def _ntvp_kernel(model: nn.Module, x: Tensor, kernel: str, budget: int | None, float64: bool) -> Tensor:
    n = x.shape[0]
    products, o = _ntvp_products(model, x)
    _, itemsize = _work(model, float64)
    p = sum(t.numel() for t in model.parameters() if t.requires_grad)
    per_column = itemsize * (2 * p + 4 * n * _activations(model, x[:1]))
    b = default_budget(x.device) if budget is None else int(budget)
    batch = max(1, min(n * o, b // max(1, per_column)))
    eye = torch.eye(n * o, dtype=x.dtype, device=x.device)
    h = torch.empty(n * o, n * o, dtype=torch.float64, device=x.device)
    for s in range(0, n * o, batch):
        cols = products(eye[s : s + batch].reshape(-1, n, o))
        h[:, s : s + batch] = cols.reshape(-1, n * o).T.double()
    h = symmetrized(h)
    if kernel == "trace":
        h = h.reshape(n, o, n, o).diagonal(dim1=1, dim2=3).sum(-1)
    return h


def _activations(model: nn.Module, x1: Tensor) -> int:
    """Elements of every leaf module's output for one sample (the memory one forward keeps)."""
    total = [0]

    def hook(m: nn.Module, i: tuple, out: object) -> None:
        if isinstance(out, Tensor):
            total[0] += out.numel()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(x1)
    finally:
        for h in handles:
            h.remove()
    return total[0]


_PATHS: dict[str, Callable[..., Tensor]] = {
    "structured": _structured_kernel, "jacobian": _jacobian_kernel, "ntvp": _ntvp_kernel,
}


# --------------------------------------------------------------------------------------------
# The choice
# --------------------------------------------------------------------------------------------


def modelled_costs(model: nn.Module, x: Tensor, kernel: str = "full",
                   memory_budget_bytes: int | None = None, float64: bool = False) -> dict[str, float]:
    """Modelled cost of each path on this model, kernel and N (inf where a path does not apply).

    In multiply-adds of a large GEMM, weighted as in `ntk_structured` (W_PASS for layer passes):
    structured: `ntk_structured.cost`; jacobian: W_PASS N F (1 + 2 O) per Jacobian build (times
    (1 + m(m-1)/2) / m for m chunks) plus its Gram, N^2 O^2 P / 2 (full) or N^2 O P / 2 (trace);
    ntvp: W_PASS N O columns of N (F + 2F + 2F). F: multiply-adds of one sample's forward through
    the dense and convolutional layers (P where they cannot be found). The model must be in eval mode.
    """
    x = x.to(device_of(model))
    n = x.shape[0]
    budget = default_budget(x.device) if memory_budget_bytes is None else int(memory_budget_bytes)
    _, itemsize = _work(model, float64)
    p = sum(t.numel() for t in model.parameters() if t.requires_grad)
    try:
        pl: structured.Plan | None = structured.plan(model, x[:1], n, kernel)
    except structured.NotStructured:
        pl = None
    if pl is None:
        with torch.no_grad():
            o = model(x[:1]).numel()
        fwd = float(p)
    else:
        o, fwd = pl.outputs, float(max(pl.macs, 1))
    m = len(chunk_bounds(n, o * p * itemsize, budget))
    builds = (1 + m * (m - 1) / 2) / m
    w = structured.W_PASS
    return {
        "structured": float("inf") if pl is None else structured.cost(pl, n, kernel),
        "jacobian": w * n * fwd * (1 + 2 * o) * builds + structured.gram_cost(n, o, p, kernel),
        "ntvp": w * 5.0 * n * n * o * fwd,
    }


def _key(model: nn.Module, x: Tensor, kernel: str, budget: int | None, float64: bool) -> tuple[Hashable, ...]:
    """The architecture (module types, parameter shapes and flags), the input shape, N, the device,
    torch's thread count and the settings. Kept cheap (no names): it is paid on every auto call."""
    modules, named = walk(model)
    return (
        tuple(map(type, modules)),
        tuple((p.shape, p.dtype, p.requires_grad) for _, p in named),
        x.shape, x.dtype, x.device.type, torch.get_num_threads(), kernel, budget, float64,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _choose(model: nn.Module, x: Tensor, kernel: str, budget: int | None, float64: bool) -> tuple[str, Tensor | None]:
    """(method, the kernel if the choice computed it with that method). Model in eval mode."""
    key = _key(model, x, kernel, budget, float64)
    if key in _CHOICE:
        return _CHOICE[key], None
    b = default_budget(x.device) if budget is None else int(budget)
    costs = modelled_costs(model, x, kernel, budget, float64)
    kernels: dict[str, Tensor] = {}
    candidates = [k for k in METHODS if costs[k] <= CALIBRATE_WITHIN * min(costs.values())]
    if "structured" in candidates:
        # Hooks see only what runs through a layer's forward: a weight also used elsewhere (through
        # torch.nn.functional, say) would be missed silently, so the structured kernel is checked
        # once against plain autograd, which shares no code with it.
        kernels["structured"] = _PATHS["structured"](model, x, kernel, b, float64)
        if not _agrees_with_autograd(model, x, kernel, kernels["structured"], float64):
            warnings.warn(f"structured eNTK disagrees with autograd on {type(model).__name__}; "
                          "not using it for this model", RuntimeWarning, stacklevel=3)
            costs["structured"] = float("inf")
            del kernels["structured"]
            candidates = [k for k in METHODS if costs[k] <= CALIBRATE_WITHIN * min(costs.values())]
    times = {k: float("nan") for k in candidates}
    if len(candidates) > 1:
        times = {k: float("inf") for k in candidates}
        for k in candidates:  # warm-up on two samples: first-call costs must not decide
            _PATHS[k](model, x[:2], kernel, b, float64)
        for rnd in range(CALIBRATION_MAX_ROUNDS):
            t_round = time.perf_counter()
            for k in candidates if rnd % 2 == 0 else candidates[::-1]:
                _sync(x.device)
                t = time.perf_counter()
                kernels[k] = _PATHS[k](model, x, kernel, b, float64)
                _sync(x.device)
                times[k] = min(times[k], time.perf_counter() - t)
            first, second = sorted(times.values())[:2]
            if time.perf_counter() - t_round > CALIBRATION_ONE_ROUND_S or (rnd >= 1 and second > CLOSE * first):
                break
    choice = min(candidates, key=lambda k: times[k] * (1.0 if k == "jacobian" else JACOBIAN_MARGIN))
    _CHOICE[key] = choice
    TIMINGS[key] = times | {f"modelled_{k}": v for k, v in costs.items()}
    return choice, kernels.get(choice)


def _agrees_with_autograd(model: nn.Module, x: Tensor, kernel: str, h: Tensor, float64: bool) -> bool:
    """Whether v^T H v = |J^T v|^2 for a random v (1e-3 relative; 1e-8 when model and products are float64).

    J^T v is one plain backward over the batch (no torch.func, whose first use costs about a second):
    a weight the hooks missed would be missing from H but not from J^T v. Cost: one [FP] + one [BP]
    over the N samples (full), or O [BP] (trace, v^T H_tr v = sum_o |J^T (v e_o^T)|^2).
    """
    n = x.shape[0]
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator(device=x.device).manual_seed(0)
    with torch.enable_grad():
        out = model(x).reshape(n, -1)
        o = out.shape[1]
        if kernel == "full":
            v = torch.randn(n, o, generator=g, device=x.device, dtype=torch.float64)
            seeds = [v.to(out.dtype)]
            quad = v.reshape(-1) @ h.double() @ v.reshape(-1)
        else:
            w = torch.randn(n, generator=g, device=x.device, dtype=torch.float64)
            eye = torch.eye(o, dtype=torch.float64, device=x.device)
            seeds = [(w[:, None] * eye[k]).to(out.dtype) for k in range(o)]
            quad = w @ h.double() @ w
        sq = torch.zeros((), dtype=torch.float64, device=x.device)
        for i, seed in enumerate(seeds):
            grads = torch.autograd.grad(out, params, seed, retain_graph=i + 1 < len(seeds), allow_unused=True)
            sq += sum(gr.double().pow(2).sum() for gr in grads if gr is not None)
    tol = 1e-8 if next(model.parameters()).dtype == torch.float64 and float64 else 1e-3
    return bool((quad - sq).abs() <= tol * sq.abs())


def choose_method(model: nn.Module, x: Tensor, kernel: str = "full", *,
                  memory_budget_bytes: int | None = None, float64: bool = False) -> str:
    """The path `empirical_ntk(..., method="auto")` uses for this model, kernel and N: one of METHODS.

    The cost model `modelled_costs` keeps the paths within CALIBRATE_WITHIN of the cheapest; the
    structured kernel, if kept, is checked once against plain autograd. If more than one path
    remains, each is timed on x after a warm-up on two samples (interleaved rounds, the minimum:
    two, up to CALIBRATION_MAX_ROUNDS while the two fastest are within CLOSE, one when a round takes
    over CALIBRATION_ONE_ROUND_S) and the fastest kept, Jacobian contraction winning ties within
    JACOBIAN_MARGIN: 2 m - 1 to 4 m - 1 extra kernels for m candidates, once. Cached per
    (architecture, input shape, N, device, thread count, kernel, settings) for the process, so after
    the first `empirical_ntk` call with the same arguments this costs nothing; the timings and
    modelled costs are in `TIMINGS`.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    with eval_mode(model):
        return _choose(model, x.to(device_of(model)), kernel, memory_budget_bytes, float64)[0]


def empirical_ntk(
    model: nn.Module,
    x: Tensor,
    kernel: str = "full",
    method: str = "auto",
    *,
    memory_budget_bytes: int | None = None,
    float64: bool = False,
) -> Tensor:
    """Empirical NTK H[(k,o),(l,p)] = <d f_o(x_k)/d theta, d f_p(x_l)/d theta> over trainable parameters.

    kernel "full": (N O, N O), sample-major (row k*O + o). kernel "trace": (N, N), summed (not
    averaged) over logits, H_tr[k,l] = sum_o H[(k,o),(l,o)], without forming the full kernel.
    Model in eval mode for the call (BN running stats, no dropout), each module's flag restored.
    method: "auto" (`choose_method`) or one of METHODS:

    - "structured" (`ntk_structured`): one batched [FP] and O activation-only [BP] over the N
      samples, then per dense layer on vectors N^2 d_in + N^2 O^2 d_out (full) / N^2 O d_out
      (trace); per convolution with S output positions the cheaper of the factored order,
      N^2 S (S d_in + S O d_out + O^2 d_out) (full), and explicit gradients,
      N O S d_in d_out + N^2 O^2 d_in d_out / 2 (a bias is one more input column of ones); BN
      scales and shifts N^2 O^2 C / 2 per layer of C channels; any other parameter as "jacobian".
      Memory: the factors, about O times one forward's activations per sample.
    - "jacobian": N [FP] + N O [BP] (vmap over samples, jacrev over outputs), then N^2 O^2 P / 2
      (full) or N^2 O P / 2 (trace) multiply-adds by symmetry across chunk pairs and tiles.
      Memory N O P.
    - "ntvp": N O kernel columns H e_j = J (J^T e_j), each one vjp and one jvp over the N samples:
      about N^2 O [FP + BP + FP]; memory O(P + N activations) per column, columns batched to the budget.

    Chunking (structured, jacobian): when the N samples' factors or Jacobians exceed
    memory_budget_bytes, samples are chunked so that two chunks fit, at the price of rebuilding
    them (1 + m(m-1)/2 builds for m chunks). Default budget: a quarter of free GPU memory, or
    min(2 GiB, a quarter of available RAM). Plus the kernel, (N O)^2 in float64 while it is summed.

    Products of float32 blocks are accumulated in float64 (structured, jacobian). Returns float32 on
    the model's device (float64 with float64=True: blocks then multiplied in float64, for precision
    studies).
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if method != "auto" and method not in METHODS:
        raise ValueError(f"method must be 'auto' or one of {METHODS}, got {method!r}")
    x = x.to(device_of(model))
    if x.shape[0] == 0:
        raise ValueError("empirical_ntk needs at least one sample")
    with eval_mode(model):
        h: Tensor | None = None
        if method == "auto":
            method, h = _choose(model, x, kernel, memory_budget_bytes, float64)
        if h is None:
            h = _PATHS[method](model, x, kernel, memory_budget_bytes, float64)
    return h if float64 else h.float()


# --------------------------------------------------------------------------------------------
# Oracle and baseline
# --------------------------------------------------------------------------------------------


def ntk_vector_product(model: nn.Module, x: Tensor, v: Tensor) -> Tensor:
    """H v for the full kernel without forming H or the Jacobian: J (J^T v) by one vjp and one jvp.

    v: (N, O) (or flat N O), sample-major like the full kernel; returns the same shape.
    Cost: one batched [FP] + [BP] (vjp) plus one [FP] with tangents (jvp) over the N samples,
    memory O(P + activations), independent of O. Cheaper than `empirical_ntk` when only a few
    products are needed (kernel regression by conjugate gradients, power iteration, or P so large
    that even one chunk's Jacobian does not fit); the whole (N O)^2 kernel this way (method="ntvp")
    takes N O products, where the other paths usually win.
    """
    with eval_mode(model):
        x = x.to(device_of(model))
        products, o = _ntvp_products(model, x)
        hv = products(v.reshape(1, x.shape[0], o))
    return hv.reshape(v.shape)


def ntk_reference(model: nn.Module, x: Tensor, kernel: str = "full") -> Tensor:
    """The independent oracle: per-sample, per-logit torch.autograd.grad, then the Gram matrix.

    Deliberately naive (no torch.func, no chunking, no symmetry) so it shares no code path with
    empirical_ntk. Gradients are stacked and contracted in float64; returns float64.
    Cost: N [FP] + N O [BP] run one at a time; contraction N^2 O^2 P; memory N O P (float64).
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    device = device_of(model)
    x = x.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    rows: list[Tensor] = []
    with eval_mode(model), torch.enable_grad():
        for k in range(x.shape[0]):
            out = model(x[k : k + 1]).reshape(-1)
            for o in range(out.numel()):
                grads = torch.autograd.grad(
                    out[o], params, retain_graph=o + 1 < out.numel(), allow_unused=True
                )
                flat = [torch.zeros_like(q) if g is None else g for g, q in zip(grads, params, strict=True)]
                rows.append(torch.cat([g.reshape(-1) for g in flat]).double())
    jmat = torch.stack(rows)
    h = jmat @ jmat.T
    if kernel == "trace":
        n = x.shape[0]
        o = h.shape[0] // n
        h = h.reshape(n, o, n, o).diagonal(dim1=1, dim2=3).sum(-1)
    return h
