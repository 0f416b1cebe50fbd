"""The eNTK by structured derivatives: per-layer factors instead of whole per-sample Jacobians.

A layer whose output is linear in its weights, y_s = W u_s + b at positions s (one position for a
dense layer on vectors, the output pixels of a convolution with u_s its unfolded input patch),
has per-sample weight gradient sum_s g_s u_s^T, where g_s is the cotangent d f_o / d y_s. Its
kernel contribution is therefore

    H_W[(k,o),(l,p)] = sum_{s,t} <u_ks, u_lt> <g_kos, g_lpt>,

built from two Gram matrices (of the layer inputs and of the output cotangents) without the
d_out x d_in weight gradients: for a dense layer on vectors (one position) it is the input Gram
times the cotangent Gram, entry by entry. BatchNorm in eval mode is the per-channel affine map
gamma * xhat + beta with fixed statistics: its per-sample gradients, sums over positions of the
cotangent times xhat (gamma) or of the cotangent (beta), have one entry per channel and are formed
explicitly. A bias is a weight on a constant input 1: u_s gets a column of ones. Every other
trainable parameter falls back to its per-sample Jacobian (torch.func). All contributions are
summed in float64.

Cotangents come from forward hooks, not from a torch.func rewrite: one batched forward through the
unmodified model, where each supported layer's hook records its input factor and adds a zero probe
to its output, then one backward pass batched over the O logits asks autograd for d f_o / d probe
only, so no weight gradient is ever computed and any module tree (residual blocks, shared modules)
works as written. A vmap(jacrev) over probes would vmap every forward op over samples, which is
what makes the Jacobian path slow on small networks. Samples must not interact in eval mode (BatchNorm with
running statistics; a BN layer without them raises NotStructured).

Per weight layer the contraction order is chosen from the modelled costs (multiply-adds weighted
by measured efficiency) of two orders: "factored" (input Gram, then cotangents; always for dense
layers on vectors) and "gradients" (form sum_s g_s u_s^T by one batched GEMM, then its Gram: the
cheaper order for convolutions with many positions and few input channels).

Past 350 lines on purpose: layer discovery, factor capture, both contraction orders and their cost
model describe the same per-layer factorisation and change together.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from twophase_core.science.ntk import dense
from twophase_core.science.ntk.blocks import (
    add_product,
    as_matrices,
    functional,
    per_sample_jacobian,
    self_product,
    symmetrized,
    walk,
)

# Bytes one factored layer's intermediate may take between two chunks (rows of chunk a are cut to fit).
FACTOR_BYTES = 64 << 20
# Cost weights: modelled time of one multiply-add relative to one in a large float32 GEMM, measured
# on a 2-core CPU, one thread (ResNet-20 and the demo CNN's layers, N = 32, O = 10): layer passes
# (many small ops) about 4x, the factored order with positions (full: thin batched GEMMs and
# intermediates of N^2 S O d_out, memory-bound) about 6x, forming per-sample gradients by bmm about
# 2x, a trace Gram (N rows, K = O p) about 4x. Only ratios matter: near ties are timed (ntk.choose_method).
W_PASS = 4.0
W_FACTORED_FULL = 6.0
W_FORM = 2.0
W_GRAM_TRACE = 4.0


class NotStructured(ValueError):
    """The structured path does not apply to this model (samples interact in eval mode)."""


@dataclass
class Layer:
    """One supported module: its trainable weight / bias names and, per call, its shapes."""

    module: nn.Module
    kind: str  # "dense", "conv" or "bn"
    weight: str | None
    bias: str | None
    positions: int = 0  # S, summed over calls
    d_in: int = 0  # weight columns: in_features, C_in * kernel size; channels for BN
    d_out: int = 0  # weight rows: out_features, C_out; channels for BN
    strategy: str = "explicit"  # weights: "factored" or "gradients"; BN is always explicit
    calls: int = 0

    @property
    def cols(self) -> int:
        """Columns of the per-position gradient [W | b]: the bias is a weight on a constant input 1."""
        return (self.weight is not None) * self.d_in + (self.bias is not None)


@dataclass
class Plan:
    """How the structured path handles a model: layers, fallback parameters, forward MACs per sample."""

    layers: list[Layer]
    fallback: list[str]
    outputs: int
    macs: int  # multiply-adds of one sample's forward through the supported layers
    activations: int  # elements of every supported layer's output for one sample
    explicit_params: int = 0  # per-sample gradient entries formed explicitly (BN, "gradients" layers, fallback)
    factor_elems: int = 0  # per-sample elements of the kept factors
    chain: dense.Chain | None = None  # the model as a chain of dense layers (`ntk_dense`), if it is one
    itemsize: int = 4  # the largest parameter's bytes per entry


_PLANS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Plan]] = weakref.WeakKeyDictionary()


@dataclass
class Factors:
    """One chunk of n samples: explicit per-sample gradient blocks and the factored layers' (u, g)."""

    n: int
    outputs: int
    device: torch.device
    explicit: list[Tensor] = field(default_factory=list)  # (n, O, p)
    factored: list[tuple[Tensor, Tensor]] = field(default_factory=list)  # u (n, S, d_in), g (n, O, S, d_out)


def _conv_ok(m: nn.Module) -> bool:
    """A 1-D or 2-D convolution that unfold reproduces: one group, zero padding given as numbers."""
    return (isinstance(m, nn.Conv1d | nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"
            and not isinstance(m.padding, str))


def _kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward:
        return "dense"
    if _conv_ok(m) and type(m).forward in (nn.Conv1d.forward, nn.Conv2d.forward):
        return "conv"
    if isinstance(m, _BatchNorm) and type(m).forward is _BatchNorm.forward:
        return "bn"
    return None


def _check_bn(m: nn.Module) -> None:
    if isinstance(m, _BatchNorm) and (m.running_mean is None or m.running_var is None):
        raise NotStructured(f"{type(m).__name__} without running statistics couples samples in eval mode")


def _patches(m: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
    """Unfolded input patches of a convolution, (n, S, C_in * kernel size), channel-major like its weight."""
    padding = m.padding
    assert not isinstance(padding, str)  # _conv_ok: padding given as numbers
    if isinstance(m, nn.Conv1d):
        u = F.unfold(x.unsqueeze(2), (1, m.kernel_size[0]), dilation=(1, m.dilation[0]),
                     padding=(0, padding[0]), stride=(1, m.stride[0]))
    else:
        u = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=padding, stride=m.stride)
    return u.transpose(1, 2)


def _xhat(m: _BatchNorm, x: Tensor) -> Tensor:
    """The normalised input of an eval-mode BN layer, (n, C, S)."""
    x3 = x.reshape(x.shape[0], x.shape[1], -1)
    mean, var = _running(m)
    return (x3 - mean[:, None]) * torch.rsqrt(var[:, None] + m.eps)


def _running(m: _BatchNorm) -> tuple[Tensor, Tensor]:
    """A BN layer's running mean and variance (`_check_bn` refused layers without them)."""
    mean, var = m.running_mean, m.running_var
    assert mean is not None and var is not None
    return mean, var


def _bn_affine(m: _BatchNorm, x: Tensor) -> Tensor:
    """Eval-mode BatchNorm as x * scale + shift per channel (equal to the module's output up to rounding)."""
    mean, var = _running(m)
    scale = torch.rsqrt(var + m.eps)
    shift = -mean * scale
    if m.weight is not None:
        scale = scale * m.weight
        shift = shift * m.weight
    if m.bias is not None:
        shift = shift + m.bias
    view = (1, -1) + (1,) * (x.dim() - 2)
    return x * scale.reshape(view) + shift.reshape(view)


def _input_factor(layer: Layer, x: Tensor) -> Tensor:
    if layer.kind == "dense":  # a copy: a later in-place op on the input must not change it
        return x.reshape(x.shape[0], -1, x.shape[-1]).clone()
    if layer.kind == "conv":
        return _patches(cast("nn.Conv1d | nn.Conv2d", layer.module), x)
    return _xhat(cast(_BatchNorm, layer.module), x)


def _out_factor(layer: Layer, g: Tensor) -> Tensor:
    """Cotangents (n, O, *out) as (n, O, S, d_out) (dense, conv) or (n, O, C, S) (BN)."""
    n, o = g.shape[:2]
    if layer.kind == "dense":
        return g.reshape(n, o, -1, g.shape[-1])
    g4 = g.reshape(n, o, g.shape[2], -1)
    return g4.transpose(2, 3) if layer.kind == "conv" else g4


def plan(model: nn.Module, x1: Tensor, n: int, kernel: str) -> Plan:
    """Find the supported layers by one forward of one sample, and choose each weight's contraction order.

    x1: the inputs (one sample is run). Parameters shared between modules, of modules whose hook never
    fired (used through torch.nn.functional by a parent) or of unsupported modules fall back to
    per-sample Jacobians.
    The model must already be in eval mode. Cached per model object, input shape, N, kernel and
    trainable-parameter set (its forward is a sixth of a small MLP's whole kernel).
    """
    key = (tuple(x1.shape[1:]), x1.dtype, x1.device, n, kernel,
           tuple((k, p.shape, p.dtype, p.requires_grad) for k, p in walk(model)[1]))
    cached = _PLANS.get(model, {}).get(key)
    if cached is None:
        cached = _plan(model, x1, n, kernel)
        _PLANS.setdefault(model, {})[key] = cached
    return cached


def _plan(model: nn.Module, x1: Tensor, n: int, kernel: str) -> Plan:
    names = {id(p): k for k, p in model.named_parameters() if p.requires_grad}
    owners: dict[int, int] = {}
    for m in model.modules():
        _check_bn(m)
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    layers: list[Layer] = []
    for m in model.modules():
        kind = _kind(m)
        own = {k: p for k, p in m.named_parameters(recurse=False) if id(p) in names}
        if kind is None or not own or set(own) - {"weight", "bias"}:
            continue
        if any(owners[id(p)] > 1 for p in own.values()):
            continue
        w, b = own.get("weight"), own.get("bias")
        layers.append(Layer(m, kind, names[id(w)] if w is not None else None, names[id(b)] if b is not None else None))
    out_numel: dict[int, int] = {}

    def hook(layer: Layer):
        def fn(mod: nn.Module, inputs: tuple, output: Tensor) -> None:
            u = _input_factor(layer, inputs[0])
            layer.calls += 1
            if layer.kind == "bn":
                layer.d_in = layer.d_out = u.shape[1]
                layer.positions += u.shape[2]
            else:
                layer.positions += u.shape[1]
                layer.d_in, layer.d_out = u.shape[2], output.shape[-1] if layer.kind == "dense" else output.shape[1]
            out_numel[id(layer)] = out_numel.get(id(layer), 0) + output[0].numel()
        return fn

    handles = [layer.module.register_forward_hook(hook(layer)) for layer in layers]
    try:
        with torch.no_grad():
            outputs = model(x1[:1]).numel()
    finally:
        for h in handles:
            h.remove()
    layers = [layer for layer in layers if layer.calls > 0]
    covered = {k for layer in layers for k in (layer.weight, layer.bias) if k is not None}
    fallback = [k for k in names.values() if k not in covered]
    macs = sum(layer.positions * layer.d_in * layer.d_out for layer in layers if layer.kind != "bn")
    pl = Plan(layers, fallback, outputs, macs, sum(out_numel.values()))
    o = outputs
    for layer in layers:
        if layer.kind == "bn":
            pl.explicit_params += ((layer.weight is not None) + (layer.bias is not None)) * layer.d_out
            continue
        s, c, do = layer.positions, layer.cols, layer.d_out
        layer.strategy = "factored" if factored_cost(n, o, s, c, do, kernel) <= gradient_cost(
            n, o, s, c, do, kernel) else "gradients"
        if layer.strategy == "gradients":
            pl.explicit_params += c * do
        else:
            pl.factor_elems += s * c + o * s * do
    pl.explicit_params += sum(dict(model.named_parameters())[k].numel() for k in fallback)
    pl.chain = dense.chain_of(model, layers, fallback)
    pl.itemsize = max((p.element_size() for p in model.parameters()), default=1)
    return pl


def factored_cost(n: int, o: int, s: int, d_in: int, d_out: int, kernel: str) -> float:
    """Modelled cost of one weight's kernel block in the factored order (input Gram first).

    One position: N^2 d_in + N^2 O^2 d_out (full) or N^2 d_in + N^2 O d_out (trace) multiply-adds.
    S positions, full: N^2 S^2 d_in + N^2 S^2 O d_out + N^2 O^2 S d_out, weighted by W_FACTORED_FULL;
    trace: N^2 S^2 (d_in + O d_out + 1).
    """
    if s == 1:
        return n * n * (d_in + (o * o if kernel == "full" else o) * d_out)
    if kernel == "full":
        return W_FACTORED_FULL * n * n * s * (s * d_in + s * o * d_out + o * o * d_out)
    return n * n * s * s * (d_in + o * d_out + 1)


def gradient_cost(n: int, o: int, s: int, d_in: int, d_out: int, kernel: str) -> float:
    """Modelled cost of one weight's kernel block via explicit per-sample gradients.

    N O S d_in d_out multiply-adds to form them (weighted by W_FORM), then their Gram (`gram_cost`).
    """
    return W_FORM * n * o * s * d_in * d_out + gram_cost(n, o, d_in * d_out, kernel)


def gram_cost(n: int, o: int, p: int, kernel: str) -> float:
    """Modelled cost of the Gram of n O per-sample gradients of p entries: N^2 O^2 p / 2 (full),
    N^2 O p / 2 (trace, weighted by W_GRAM_TRACE: N rows of O p entries make a thin GEMM)."""
    if kernel == "full":
        return n * n * o * o * p / 2
    return W_GRAM_TRACE * n * n * o * p / 2


def capture(model: nn.Module, pl: Plan, x: Tensor, kernel: str) -> Factors:
    """One chunk's factors: a batched forward with hooks, a backward to the probes, fallback Jacobians.

    Cost: one [FP] over the chunk, O [BP] over the chunk (batched) computing activation cotangents only
    (no weight gradients), per "gradients" layer a batched GEMM of n O S d_in d_out, fallback
    parameters n [FP] + n O [BP] by vmap(jacrev). The model must be in eval mode.
    """
    n = x.shape[0]
    o = pl.outputs
    calls: dict[int, list[tuple[Tensor, Tensor]]] = {id(layer): [] for layer in pl.layers}

    def hook(layer: Layer):
        def fn(mod: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
            probe = torch.zeros_like(output, requires_grad=True)
            calls[id(layer)].append((_input_factor(layer, inputs[0].detach()), probe))
            if layer.kind == "bn":  # the same map as one per-channel affine: autograd batches its backward
                # over the logits, not native BN's (a loop of O calls)
                output = _bn_affine(cast(_BatchNorm, mod), inputs[0])
            return output + probe
        return fn

    handles = [layer.module.register_forward_hook(hook(layer)) for layer in pl.layers]
    try:
        with torch.enable_grad():
            out = model(x).reshape(n, -1)
    finally:
        for h in handles:
            h.remove()
    probes = [z for layer in pl.layers for _, z in calls[id(layer)]]
    eye = torch.eye(o, dtype=out.dtype, device=out.device)
    # One backward pass batched over the O logits (autograd vmaps over the cotangents). Measured,
    # N = 32, one thread, capture alone: MLP 0.8 ms, demo CNN 14 ms, ResNet-20 4.2 s, against
    # 1.6 ms / 16 ms / 6.0 s for O separate passes and 0.7 ms / 18 ms / 8.7 s for one pass over the
    # batch replicated O times.
    got = torch.autograd.grad(out, probes, eye[:, None, :].expand(o, n, o), is_grads_batched=True,
                              allow_unused=True)
    stacked = [torch.zeros(n, o, *z.shape[1:], dtype=z.dtype, device=z.device) if g is None
               else g.transpose(0, 1) for g, z in zip(got, probes, strict=True)]
    del out
    fac = Factors(n, o, x.device)
    i = 0
    for layer in pl.layers:
        us, gs = [], []
        for u, _ in calls[id(layer)]:
            us.append(u)
            gs.append(_out_factor(layer, stacked[i]))
            i += 1
        cat = 2 if layer.kind != "bn" else 3
        u = torch.cat(us, dim=cat - 1) if len(us) > 1 else us[0]
        g = torch.cat(gs, dim=cat) if len(gs) > 1 else gs[0]
        if layer.kind == "bn":
            if layer.weight is not None:
                fac.explicit.append((g * u[:, None]).sum(-1))
            if layer.bias is not None:
                fac.explicit.append(g.sum(-1))
            continue
        if layer.bias is not None:  # [u, 1]: the bias gradient sum_s g_s rides along with the weight's
            ones = u.new_ones(*u.shape[:2], 1)
            u = torch.cat([u, ones], dim=2) if layer.weight is not None else ones
        if layer.strategy == "factored":
            fac.factored.append((u, g))
        else:  # per-sample gradients sum_s g_s [u_s, 1]^T
            gt = g.permute(0, 1, 3, 2).reshape(n, o * layer.d_out, -1)  # (n, O d_out, S) @ (n, S, cols)
            fac.explicit.append(torch.bmm(gt, u).reshape(n, o, -1))
    if pl.fallback:
        p, f = functional(model, pl.fallback)
        fac.explicit.extend(per_sample_jacobian(f, p, x).values())
    return fac


def _factored_block(u_a: Tensor, g_a: Tensor, u_b: Tensor, g_b: Tensor, kernel: str) -> Tensor:
    """One weight's contribution between two chunks, in the factors' dtype: (na O, nb O) or (na, nb)."""
    na, o, s, d_out = g_a.shape
    nb = g_b.shape[0]
    if s == 1:
        x = u_a[:, 0] @ u_b[:, 0].T
        if kernel == "trace":
            return x * (g_a.reshape(na, -1) @ g_b.reshape(nb, -1).T)
        y = (g_a.reshape(na * o, d_out) @ g_b.reshape(nb * o, d_out).T).reshape(na, o, nb, o)
        return (y * x[:, None, :, None]).reshape(na * o, nb * o)
    m = (u_a.reshape(na * s, -1) @ u_b.reshape(nb * s, -1).T).reshape(na, s, nb, s)
    if kernel == "trace":
        q = g_a.permute(0, 2, 1, 3).reshape(na * s, -1) @ g_b.permute(0, 2, 1, 3).reshape(nb * s, -1).T
        return (q.reshape(na, s, nb, s) * m).sum((1, 3))
    out = g_a.new_empty(na, o, nb, o)
    rows = max(1, FACTOR_BYTES // max(1, nb * s * o * d_out * g_a.element_size()))
    for r0 in range(0, na, rows):
        r1 = min(na, r0 + rows)
        # r[k, s, l, p, c] = sum_t m[k, s, l, t] g_b[l, p, t, c]; then sum over (s, c) with g_a[k, o, s, c]
        r = torch.einsum("kslt,lptc->kslpc", m[r0:r1], g_b)
        out[r0:r1] = torch.einsum("kosc,kslpc->kolp", g_a[r0:r1], r)
    return out.reshape(na * o, nb * o)


def self_block(fac: Factors, kernel: str, dtype: torch.dtype) -> Tensor:
    """The float64 kernel block of one chunk with itself, symmetrized once at the end."""
    mats = as_matrices(fac.explicit, kernel, dtype)
    r = fac.outputs if kernel == "full" else 1
    h = self_product(mats) if mats else torch.zeros(fac.n * r, fac.n * r, dtype=torch.float64, device=fac.device)
    for u, g in fac.factored:
        u, g = u.to(dtype), g.to(dtype)
        h.add_(_factored_block(u, g, u, g, kernel))
    return symmetrized(h)


def cross_block(a: Factors, b: Factors, kernel: str, dtype: torch.dtype) -> Tensor:
    """The float64 kernel block between two chunks."""
    r = a.outputs if kernel == "full" else 1
    h = torch.zeros(a.n * r, b.n * r, dtype=torch.float64, device=a.device)
    ma = as_matrices(a.explicit, kernel, dtype)
    if ma:
        add_product(h, ma, as_matrices(b.explicit, kernel, dtype))
    for (ua, ga), (ub, gb) in zip(a.factored, b.factored, strict=True):
        h.add_(_factored_block(ua.to(dtype), ga.to(dtype), ub.to(dtype), gb.to(dtype), kernel))
    return h


def per_sample_bytes(pl: Plan, itemsize: int) -> int:
    """Memory one sample's factors take: kept factors, explicit gradients and transient cotangents."""
    return itemsize * (pl.factor_elems + pl.outputs * (pl.explicit_params + pl.activations))


def cost(pl: Plan, n: int, kernel: str) -> float:
    """Modelled cost of the whole structured kernel for n samples (for the method choice), in
    multiply-adds of a large GEMM: W_PASS N F (1 + O) for the forward and the O activation-only
    backward passes, each weight's block, the Gram of the explicit gradients, fallback Jacobians."""
    o = pl.outputs
    total = W_PASS * n * pl.macs * (1 + o)
    for layer in pl.layers:
        if layer.kind == "bn":
            continue
        s, c, do = layer.positions, layer.cols, layer.d_out
        if layer.strategy == "factored":
            total += factored_cost(n, o, s, c, do, kernel)
        else:
            total += W_FORM * n * o * s * c * do
    total += gram_cost(n, o, pl.explicit_params, kernel)
    if pl.fallback:
        total += W_PASS * 2 * n * o * pl.macs
    return total
