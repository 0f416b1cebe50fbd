"""Chaos-Effect metrics between two models: dissimilarity C, loss barrier B, disagreement D.

Models in, floats out. Every function is built so that two bitwise-identical models give exactly 0.0
(not merely a small number): a nonzero value at eps = 0 would mean the measurement itself leaks
nondeterminism, which is the control the whole experiment rests on (docs/science.md, "The Chaos
Effect"). No function modifies its input models or leaves their training flags changed.

One module, past 350 lines on purpose: the three metrics share one evaluation pass per cell
(`pair_metrics` reuses the interpolation path's end points for D and the accuracies), and the
barrier's loop and stacked paths must stay side by side to stay bitwise interchangeable.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import TypedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from twophase_core.science.models import device_of, eval_mode
from twophase_core.settings.config import BN_MODES

Floats = Sequence[float] | np.ndarray  # alphas and losses along a path


class PairMetrics(TypedDict):
    """What `pair_metrics` measures for a (control, branch) pair."""

    C: float
    B: float
    D: float
    alphas: np.ndarray
    losses: np.ndarray
    loss_a: float
    acc_a: float
    loss_b: float
    acc_b: float

PATH_METHODS = ("loop", "stacked")
# Test points per forward pass. Measured on the demo model (MNIST-1D CNN, 1 thread, 2 shared cores): 500 is as fast
# as 1000 on a quiet machine and ~1.7x faster when another process competes for cache and memory bandwidth.
EVAL_BATCH = 500
# Activation memory one vmapped chunk of the stacked path may use (alphas are chunked to stay below it).
STACK_BYTES = 256 * 2**20


# ---------------------------------------------------------------- helpers


def _check_bn(bn: str, train_x: Tensor | None = None, need_data: bool = False) -> None:
    if bn not in BN_MODES:
        raise ValueError(f"unknown bn mode {bn!r}; choose one of {', '.join(BN_MODES)}")
    if need_data and bn == "reset" and train_x is None:
        raise ValueError('bn="reset" recomputes BatchNorm statistics and needs training inputs: pass train_x')


def _bn_layers(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def _trainable(model: nn.Module) -> list[tuple[str, Tensor]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


# ---------------------------------------------------------------- C


def parameter_dissimilarity(a: nn.Module, b: nn.Module) -> float:
    """C = 1 - cos(vec theta_a, vec theta_b) over trainable parameters (BN buffers excluded).

    Computed in float64 as (|a-b|^2 - (|a|-|b|)^2) / (2|a||b|) with |a|-|b| = <a-b, a+b> / (|a|+|b|):
    the naive 1 - <a,b>/(|a||b|) in float32 is pure rounding noise at eps ~ 1e-7, while this form is
    exactly 0.0 for identical models and keeps full relative precision for tiny differences.
    If exactly one model has all-zero parameters the cosine is undefined; we return 1.0 (cos := 0).
    """
    pa, pb = _trainable(a), _trainable(b)
    if [n for n, _ in pa] != [n for n, _ in pb]:
        raise ValueError("models have different trainable parameters; cannot compare them")
    dev = device_of(a)
    na2 = nb2 = d2 = dsum = 0.0
    for (name, ta), (_, tb) in zip(pa, pb, strict=True):
        if ta.shape != tb.shape:
            raise ValueError(f"parameter {name!r} has shape {tuple(ta.shape)} vs {tuple(tb.shape)}")
        xa = ta.detach().to(dev, torch.float64).flatten()
        xb = tb.detach().to(dev, torch.float64).flatten()
        diff = xa - xb  # exact: float32 (or lower) differences are representable in float64
        na2 += float(xa @ xa)
        nb2 += float(xb @ xb)
        d2 += float(diff @ diff)
        dsum += float(diff @ (xa + xb))
    if d2 == 0.0:
        return 0.0
    na, nb = math.sqrt(na2), math.sqrt(nb2)
    if na == 0.0 or nb == 0.0:
        return 1.0
    dn = dsum / (na + nb)  # = |a| - |b| without cancellation
    return max(0.0, (d2 - dn * dn) / (2.0 * na * nb))


# ---------------------------------------------------------------- interpolation


def interpolate(a: nn.Module, b: nn.Module, alpha: float, bn: str = "interpolate") -> nn.Module:
    """A new model alpha*theta_a + (1-alpha)*theta_b (a deepcopy of a; a and b untouched).

    Uses torch.lerp(theta_b, theta_a, alpha), which is exact at the endpoints (alpha=1 gives a bit for
    bit, alpha=0 gives b) and gives exactly theta for identical models at every alpha. Floating
    parameters and floating buffers (BN running mean/var) are interpolated; integer buffers
    (num_batches_tracked) are copied from a. With bn="reset" the BN running statistics are reset to
    their defaults afterwards, since interpolated statistics are meaningless in that mode: the caller
    must recompute them with `recompute_bn_stats` before evaluating.
    """
    _check_bn(bn)
    sd_a, sd_b = _matching_state_dicts(a, b)
    out = copy.deepcopy(a)
    _lerp_into(out, sd_a, sd_b, float(alpha), reset=bn == "reset")
    return out


def _matching_state_dicts(a: nn.Module, b: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    sd_a, sd_b = a.state_dict(), b.state_dict()
    if sd_a.keys() != sd_b.keys():
        raise ValueError("models have different state dict keys; cannot interpolate them")
    for name, ta in sd_a.items():
        tb = sd_b[name]
        if isinstance(ta, Tensor) and ta.shape != tb.shape:
            raise ValueError(f"{name!r} has shape {tuple(ta.shape)} vs {tuple(tb.shape)}")
    return sd_a, sd_b


def _lerp_into(out: nn.Module, sd_a: dict[str, Tensor], sd_b: dict[str, Tensor], alpha: float,
               reset: bool) -> None:
    """Overwrite out's whole state with the interpolant, so a reused model depends on alpha alone."""
    with torch.no_grad():
        for name, t in out.state_dict().items():  # tensors share storage with out's parameters/buffers
            if not isinstance(t, Tensor):
                continue
            ta = sd_a[name].to(t.device, t.dtype)
            if t.is_floating_point():
                t.copy_(torch.lerp(sd_b[name].to(t.device, t.dtype), ta, alpha))
            else:
                t.copy_(ta)
        if reset:
            for m in _bn_layers(out):
                m.reset_running_stats()


def recompute_bn_stats(
    model: nn.Module, train_x: Tensor, bn_batches: int = 10, batch_size: int = 256
) -> None:
    """Recompute BN running statistics in place on the first bn_batches batches of train_x.

    Used by bn="reset": interpolated weights no longer match interpolated statistics. Statistics are
    the cumulative average over batches (momentum=None), so each batch weighs equally, for every
    BatchNorm layer that tracks running statistics. (The butterfly-effect code differs: a 0.1 running average over its
    loader, BatchNorm2d layers only.)
    Only BN layers run in train mode: dropout stays off, so the statistics are deterministic and
    identical models get identical statistics. Training flags and BN momenta are restored afterwards.
    """
    layers = _bn_layers(model)
    if not layers:
        return
    if bn_batches < 1 or batch_size < 1:
        raise ValueError("bn_batches and batch_size must be >= 1")
    if len(train_x) == 0:
        raise ValueError("train_x is empty")
    dev = device_of(model)
    momenta = [m.momentum for m in layers]
    with eval_mode(model), torch.no_grad():
        try:
            model.eval()
            for m in layers:
                m.reset_running_stats()
                m.momentum = None
                m.train()
            for i in range(bn_batches):
                xb = train_x[i * batch_size:(i + 1) * batch_size]
                if len(xb) == 0:
                    break
                model(xb.to(dev))
        finally:
            for m, mom in zip(layers, momenta, strict=True):
                m.momentum = mom


# ---------------------------------------------------------------- evaluation


def _check_eval_set(x: Tensor, y: Tensor | None, batch_size: int) -> int:
    n = len(x)
    if n == 0:
        raise ValueError("cannot evaluate on an empty set")
    if y is not None and len(y) != n:
        raise ValueError(f"x has {n} samples but y has {len(y)}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    return n


def _run(model: nn.Module, x: Tensor, y: Tensor | None, batch_size: int) -> tuple[float, Tensor]:
    """(mean cross-entropy or nan without y, argmax predictions): eval mode, no grad, batches of batch_size.

    The one forward loop behind evaluate, disagreement_rate and the loop path, so that all of them see the
    same logits for the same model, batch for batch, and agree exactly.
    """
    n = len(x)
    dev = device_of(model)
    total, preds = 0.0, []
    with eval_mode(model), torch.no_grad():
        model.eval()
        for i in range(0, n, batch_size):
            out = model(x[i:i + batch_size].to(dev))
            if y is not None:
                yb = y[i:i + batch_size].to(out.device)
                total += float(F.cross_entropy(out.double(), yb, reduction="sum"))
            preds.append(out.argmax(dim=1))
    return (total / n if y is not None else math.nan), torch.cat(preds)


def _accuracy(preds: Tensor, y: Tensor) -> float:
    return int((preds == y.to(preds.device)).sum()) / len(preds)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = EVAL_BATCH) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) in eval mode without grad.

    Per-sample losses are summed in float64 and divided by n, so the value does not depend on the
    batch size beyond float error.
    """
    _check_eval_set(x, y, batch_size)
    loss, preds = _run(model, x, y, batch_size)
    return loss, _accuracy(preds, y)


def interpolation_losses(
    a: nn.Module,
    b: nn.Module,
    x: Tensor,
    y: Tensor,
    alphas: Floats,
    bn: str = "interpolate",
    train_x: Tensor | None = None,
    bn_batches: int = 10,
    batch_size: int = 256,
    eval_batch_size: int = EVAL_BATCH,
    method: str = "loop",
) -> np.ndarray:
    """Test loss L(alpha*theta_a + (1-alpha)*theta_b) for each alpha.

    bn="interpolate": the whole state dict (running statistics included) is interpolated and evaluated
    in eval mode. bn="reset": every interpolated model, the endpoints included, gets its BN statistics
    recomputed on train_x (bn_batches batches of batch_size), so the endpoints are treated exactly like
    the interior. Without BN layers both modes agree.

    method="loop" evaluates one interpolated model after another (the endpoints are then bit for bit the
    losses `evaluate` gives a and b). method="stacked" evaluates all alphas as one stacked model
    (torch.func.vmap over an alpha axis, chunked to stay below STACK_BYTES of activations); it agrees
    with "loop" to ~1e-9 and is exactly constant for identical models, but on the CPU it measured 1.2x-3x
    slower than "loop" (a forward pass on ~1000 points is compute bound, not call bound, and vmapped
    convolutions and BatchNorm are slower than plain ones), so it is meant for accelerators, where it is
    not yet validated. bn="reset" with BatchNorm layers always uses the loop.
    """
    _check_bn(bn, train_x, need_data=True)
    _check_method(method)
    _check_eval_set(x, y, eval_batch_size)
    if method == "stacked" and not (bn == "reset" and _bn_layers(a)):
        return _interpolation_losses_stacked(a, b, x, y, alphas, eval_batch_size)
    return _interpolation_losses_loop(a, b, x, y, alphas, bn, train_x, bn_batches, batch_size, eval_batch_size)


def _check_method(method: str) -> None:
    if method not in PATH_METHODS:
        raise ValueError(f"unknown path method {method!r}; choose one of {', '.join(PATH_METHODS)}")


def _interpolation_losses_loop(
    a: nn.Module,
    b: nn.Module,
    x: Tensor,
    y: Tensor,
    alphas: Floats,
    bn: str = "interpolate",
    train_x: Tensor | None = None,
    bn_batches: int = 10,
    batch_size: int = 256,
    eval_batch_size: int = EVAL_BATCH,
) -> np.ndarray:
    """The sequential path: one working model, overwritten and evaluated for each alpha in turn."""
    return _path_loop(a, b, x, y, alphas, bn, train_x, bn_batches, batch_size, eval_batch_size)[0]


def _path_loop(
    a: nn.Module,
    b: nn.Module,
    x: Tensor,
    y: Tensor,
    alphas: Floats,
    bn: str,
    train_x: Tensor | None,
    bn_batches: int,
    batch_size: int,
    eval_batch_size: int,
    keep_ends: bool = False,
) -> tuple[np.ndarray, dict[str, tuple[float, Tensor]]]:
    """Losses along the path, plus (with keep_ends) the endpoint (loss, predictions) that ARE a's or b's.

    An endpoint counts as a (b) only if it is evaluated exactly as `evaluate(a)` would be: the working model
    then holds a's (b's) state bit for bit, has the same architecture, lives on the same device and its BN
    statistics were not recomputed. pair_metrics uses those to skip two forward passes.
    """
    _check_bn(bn, train_x, need_data=True)
    reset = bn == "reset" and bool(_bn_layers(a))
    sd_a, sd_b = _matching_state_dicts(a, b)
    m = copy.deepcopy(a)  # one working copy, fully overwritten for each alpha (deepcopy is the slow part)
    ends: dict[str, tuple[float, Tensor]] = {}
    candidates: dict[float, tuple[str, nn.Module]] = {}
    if keep_ends and not reset:
        dev = device_of(m)
        candidates = {al: (name, model) for al, name, model in ((1.0, "a", a), (0.0, "b", b))
                      if device_of(model) == dev and _same_architecture(m, model)}
    losses = np.empty(len(alphas), dtype=np.float64)
    for k, alpha in enumerate(alphas):
        _lerp_into(m, sd_a, sd_b, float(alpha), reset=reset)
        if reset:
            assert train_x is not None
            recompute_bn_stats(m, train_x, bn_batches, batch_size)
        losses[k], preds = _run(m, x, y, eval_batch_size)
        c = candidates.get(float(alpha))
        if c is not None and c[0] not in ends and _holds_state(m, c[1].state_dict()):
            ends[c[0]] = (float(losses[k]), preds)
    return losses, ends


def _same_architecture(m: nn.Module, other: nn.Module) -> bool:
    return type(m) is type(other) and repr(m) == repr(other)


def _holds_state(m: nn.Module, sd: dict[str, Tensor]) -> bool:
    mine = m.state_dict()
    if mine.keys() != sd.keys():
        return False
    for k, t in mine.items():
        o = sd[k]
        if isinstance(t, Tensor) != isinstance(o, Tensor):
            return False
        if isinstance(t, Tensor) and (t.dtype != o.dtype or t.device != o.device or not torch.equal(t, o)):
            return False
    return True


def _interpolation_losses_stacked(
    a: nn.Module,
    b: nn.Module,
    x: Tensor,
    y: Tensor,
    alphas: Floats,
    eval_batch_size: int = EVAL_BATCH,
    max_bytes: int = STACK_BYTES,
) -> np.ndarray:
    """bn="interpolate" path with all alphas as one stacked model: functional_call under vmap over alpha.

    Parameters and buffers are stacked as torch.lerp(theta_b, theta_a, alpha) with alpha broadcast over a
    leading axis (the same lerp as `interpolate`, so alpha = 0 and 1 give b and a bit for bit and identical
    models give identical slices); integer buffers are a's. Endpoints are slices of the same stacked
    evaluation as the interior. The model runs in eval mode; alphas are chunked so that one chunk's
    activations stay below max_bytes (estimated from a one-sample probe). Losses accumulate per alpha
    exactly as in `evaluate`: float64 cross-entropy summed batch by batch, divided by n.
    """
    from torch.func import functional_call, vmap

    sd_a, sd_b = _matching_state_dicts(a, b)
    al = np.asarray(alphas, dtype=np.float64).ravel()
    n, k = len(x), len(al)
    losses = np.zeros(k, dtype=np.float64)
    if k == 0:
        return losses
    dev = device_of(a)
    nb = min(eval_batch_size, n)
    with eval_mode(a), torch.no_grad():
        a.eval()
        per_alpha = nb * _activation_bytes(a, x[:1].to(dev))
        chunk = int(min(k, max(1, max_bytes // per_alpha)))

        def forward(state: dict[str, Tensor], xb: Tensor) -> Tensor:
            return functional_call(a, state, (xb,))

        stacked_forward = vmap(forward, in_dims=(0, None))
        for s in range(0, k, chunk):
            w = torch.from_numpy(al[s:s + chunk])
            state = {name: _stacked_lerp(sd_a[name], sd_b[name], w, dev) for name in sd_a
                     if isinstance(sd_a[name], Tensor)}
            for i in range(0, n, eval_batch_size):
                out = stacked_forward(state, x[i:i + eval_batch_size].to(dev))
                yb = y[i:i + eval_batch_size].to(out.device)
                for j in range(out.shape[0]):
                    losses[s + j] += float(F.cross_entropy(out[j].double(), yb, reduction="sum"))
    return losses / n


def _stacked_lerp(ta: Tensor, tb: Tensor, w: Tensor, dev: torch.device) -> Tensor:
    """(len(w), *ta.shape): lerp(tb, ta, w[j]) in ta's dtype for floats (as _lerp_into does), ta repeated otherwise."""
    ta = ta.to(dev)
    if not ta.is_floating_point():
        return ta.expand(len(w), *ta.shape)
    ww = w.to(dev, ta.dtype).reshape(-1, *([1] * ta.dim()))
    return torch.lerp(tb.to(dev, ta.dtype), ta, ww)


def _activation_bytes(model: nn.Module, x1: Tensor) -> int:
    """Bytes of all module outputs for one input (an upper bound on what one sample keeps alive)."""
    total = 0

    def hook(_m: nn.Module, _inp: object, out: object) -> None:
        nonlocal total
        if isinstance(out, Tensor):
            total += out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        model(x1)
    finally:
        for h in handles:
            h.remove()
    return max(total, 1)


def barrier_from_path(losses: Floats, alphas: Floats) -> float:
    """B = max_alpha { L(alpha) - [alpha L(1) + (1-alpha) L(0)] }, >= 0; alphas must include 0 and 1.

    L(1) is the loss of a, L(0) that of b. The linear term is L0 + alpha*(L1 - L0), so a constant path
    gives exactly 0.0; the endpoint terms are 0 by definition.
    """
    lo = np.asarray(losses, dtype=np.float64).ravel()
    al = np.asarray(alphas, dtype=np.float64).ravel()
    if lo.shape != al.shape:
        raise ValueError(f"got {lo.size} losses for {al.size} alphas")
    i0, i1 = np.flatnonzero(al == 0.0), np.flatnonzero(al == 1.0)
    if i0.size == 0 or i1.size == 0:
        raise ValueError("alphas must include the endpoints 0 and 1")
    if np.isnan(lo).any():
        return float("nan")
    l0, l1 = lo[i0[0]], lo[i1[0]]
    excess = lo - (l0 + al * (l1 - l0))
    excess[(al == 0.0) | (al == 1.0)] = 0.0
    return max(0.0, float(excess.max()))


def loss_barrier_path(
    a: nn.Module,
    b: nn.Module,
    x: Tensor,
    y: Tensor,
    n_alpha: int = 30,
    bn: str = "interpolate",
    train_x: Tensor | None = None,
    bn_batches: int = 10,
    batch_size: int = 256,
    eval_batch_size: int = EVAL_BATCH,
    method: str = "loop",
) -> tuple[np.ndarray, np.ndarray, float]:
    """(alphas, losses, barrier) on an even grid of n_alpha points in [0, 1], for storing the path."""
    alphas = _alpha_grid(n_alpha)
    losses = interpolation_losses(a, b, x, y, alphas, bn=bn, train_x=train_x, bn_batches=bn_batches,
                                  batch_size=batch_size, eval_batch_size=eval_batch_size, method=method)
    return alphas, losses, barrier_from_path(losses, alphas)


def _alpha_grid(n_alpha: int) -> np.ndarray:
    if n_alpha < 2:
        raise ValueError("n_alpha must be >= 2 (the grid must contain both endpoints)")
    return np.linspace(0.0, 1.0, n_alpha)


def loss_barrier(
    a: nn.Module,
    b: nn.Module,
    x: Tensor,
    y: Tensor,
    n_alpha: int = 30,
    bn: str = "interpolate",
    train_x: Tensor | None = None,
    method: str = "loop",
) -> float:
    """Loss barrier B on (x, y) with n_alpha evenly spaced alphas in [0, 1].

    The default 30 is this project's choice (docs/science.md); the lmc repository's code defaults to 11.
    """
    return loss_barrier_path(a, b, x, y, n_alpha=n_alpha, bn=bn, train_x=train_x, method=method)[2]


# ---------------------------------------------------------------- D


def disagreement_rate(a: nn.Module, b: nn.Module, x: Tensor, batch_size: int = EVAL_BATCH) -> float:
    """D = fraction of inputs whose predicted class (argmax, eval mode) differs between a and b."""
    n = len(x)
    if n == 0:
        raise ValueError("cannot compute disagreement on an empty set")
    _check_eval_set(x, None, batch_size)
    return _disagreement(_run(a, x, None, batch_size)[1], _run(b, x, None, batch_size)[1])


def _disagreement(pa: Tensor, pb: Tensor) -> float:
    return int((pa != pb.to(pa.device)).sum()) / len(pa)


# ---------------------------------------------------------------- all at once


def pair_metrics(
    a: nn.Module,
    b: nn.Module,
    x: Tensor,
    y: Tensor,
    n_alpha: int = 30,
    bn: str = "interpolate",
    train_x: Tensor | None = None,
    bn_batches: int = 10,
    batch_size: int = 256,
    eval_batch_size: int = EVAL_BATCH,
    method: str = "loop",
) -> PairMetrics:
    """Everything the chaos engine measures for one (control a, branch b) pair, each forward pass done once.

    Returns {"C", "B", "D", "alphas", "losses", "loss_a", "acc_a", "loss_b", "acc_b"}, where C, B, D, the path
    and the (loss, accuracy) pairs are exactly what parameter_dissimilarity, loss_barrier_path,
    disagreement_rate and evaluate return with the same arguments. With method="loop" and bn="interpolate"
    the path's endpoints are a and b bit for bit, so their predictions give D and the accuracies and no
    extra forward pass is needed; otherwise a and b are evaluated once each.
    """
    _check_bn(bn, train_x, need_data=True)
    _check_method(method)
    _check_eval_set(x, y, eval_batch_size)
    alphas = _alpha_grid(n_alpha)
    c = parameter_dissimilarity(a, b)
    ends: dict[str, tuple[float, Tensor]] = {}
    if method == "loop" or (bn == "reset" and _bn_layers(a)):
        losses, ends = _path_loop(a, b, x, y, alphas, bn, train_x, bn_batches, batch_size, eval_batch_size,
                                  keep_ends=True)
    else:
        losses = _interpolation_losses_stacked(a, b, x, y, alphas, eval_batch_size)
    loss_a, pa = ends["a"] if "a" in ends else _run(a, x, y, eval_batch_size)
    loss_b, pb = ends["b"] if "b" in ends else _run(b, x, y, eval_batch_size)
    return {
        "C": c,
        "B": barrier_from_path(losses, alphas),
        "D": _disagreement(pa, pb),
        "alphas": alphas,
        "losses": losses,
        "loss_a": loss_a,
        "acc_a": _accuracy(pa, y),
        "loss_b": loss_b,
        "acc_b": _accuracy(pb, y),
    }
