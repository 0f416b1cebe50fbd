"""The structured eNTK of a chain of dense layers, bit for bit, without hooks, probes or autograd.

For an nn.Sequential of nn.Linear layers on vectors and elementwise activations (the registry's
MLP) `ntk_structured`'s factors are the layer inputs u and the logits' cotangents g at each layer
output. `capture` gets the cotangents from one forward with hooks and one backward batched over
the O logits; here the same aten ops are called directly, on tensors of the same shapes and
strides: the forward (F.linear and the activations), then per step backwards matmul(g, W) (what
autograd's batched addmm / mm backward calls) and the activation's own backward op
(threshold_backward for ReLU, tanh_backward, ...; one logit at a time where autograd's batched
backward loops). The Grams are the same GEMMs on the same layouts, each entrywise product and
float64 sum is the same IEEE operation on the same operands, in the same order
(`ntk_structured.self_block`): so the kernel is the structured path's, every bit of it
(tests/test_ntk.py checks with torch.equal), at a fraction of the per-op overhead. A small MLP's
kernel is a few dozen small ops, and hooks, probe tensors and the autograd engine cost more than
its arithmetic. Two exact shortcuts: the products are formed row-major (the input Gram repeated
along the columns, not broadcast over O-entry runs), and the logits' own layer, whose cotangents
are the identity rows e_o with Gram entries exactly 0 or 1 (trace: O), skips that GEMM.

The structured path uses it for such chains on the CPU, for at least two samples in one chunk,
modules without hooks; anything else goes through `ntk_structured.capture`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module

_aten = torch.ops.aten
# Per activation type: (forward, backward(grad, input, output) as autograd's derivative formula
# computes it, torch/csrc/autograd/derivatives.yaml), built from the module at call time; None
# where the module's settings are not covered (in-place SiLU / LeakyReLU).
_Act = tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor, Tensor], Tensor]]


def _per_logit(op: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """op over the O logits one at a time, stacked: autograd's batched backward for ops without a
    batching rule (gelu, silu, leaky_relu, tanh backward), the same loop of the same calls."""
    return lambda g, z, a: torch.stack([op(gi, z) for gi in g])


def _relu(m: nn.Module) -> _Act:  # relu_ (inplace=True) has the same derivative, from the output
    return torch.relu, lambda g, z, a: _aten.threshold_backward(g, a, 0)


def _tanh(m: nn.Module) -> _Act:
    return torch.tanh, lambda g, z, a: torch.stack([_aten.tanh_backward(gi, a) for gi in g])


def _sigmoid(m: nn.Module) -> _Act:
    return torch.sigmoid, lambda g, z, a: _aten.sigmoid_backward(g, a)


def _gelu(m: nn.Module) -> _Act:
    approximate = str(m.approximate)
    return (lambda z: F.gelu(z, approximate=approximate),
            _per_logit(lambda gi, z: _aten.gelu_backward(gi, z, approximate=approximate)))


def _silu(m: nn.Module) -> _Act | None:
    return None if m.inplace else (F.silu, _per_logit(_aten.silu_backward))


def _leaky_relu(m: nn.Module) -> _Act | None:
    slope = float(m.negative_slope)  # type: ignore[arg-type]
    return None if m.inplace else (lambda z: F.leaky_relu(z, slope), _per_logit(
        lambda gi, z: _aten.leaky_relu_backward(gi, z, slope, False)))


ACTIVATIONS: dict[type, Callable[[nn.Module], _Act | None]] = {
    nn.ReLU: _relu, nn.Tanh: _tanh, nn.Sigmoid: _sigmoid, nn.GELU: _gelu, nn.SiLU: _silu, nn.LeakyReLU: _leaky_relu,
}
# Identity maps in eval mode, where every eNTK path runs.
_SKIP = (nn.Identity, nn.Dropout)


@dataclass
class Chain:
    """A model's modules as a dense chain: per step its module and, for a linear layer, its index in
    the plan's layers (-1: no trainable parameter) and whether its weight and bias are trainable."""

    modules: list[nn.Module]  # the model's children
    steps: list[tuple[nn.Module, int, bool, bool]]  # (module, layer index or -1, weight, bias); layer -2: activation
    layers: int


def chain_of(model: nn.Module, layers: list, fallback: list[str]) -> Chain | None:
    """The model as a dense chain, or None. layers, fallback: the structured plan's, whose layers must
    be exactly the chain's linear layers with a trainable parameter, in order, each called once on
    vectors (one position), in the factored order."""
    if type(model) is not nn.Sequential or fallback:
        return None
    index = {id(layer.module): i for i, layer in enumerate(layers)}
    steps: list[tuple[nn.Module, int, bool, bool]] = []
    for m in model:
        if type(m) is nn.Linear:
            i = index.get(id(m), -1)
            if i >= 0:
                layer = layers[i]
                if (layer.kind != "dense" or layer.calls != 1 or layer.positions != 1 or layer.strategy != "factored"
                        or i != sum(s[1] >= 0 for s in steps)):
                    return None
                steps.append((m, i, layer.weight is not None, layer.bias is not None))
            else:
                steps.append((m, -1, False, False))
        elif type(m) is nn.Flatten:
            if m.start_dim != 1 or m.end_dim != -1 or steps:  # only the input's own flattening
                return None
        elif type(m) in ACTIVATIONS:
            steps.append((m, -2, False, False))
        elif type(m) not in _SKIP:
            return None
    if not layers or sum(s[1] >= 0 for s in steps) != len(layers):
        return None
    return Chain(list(model), steps, len(layers))  # not the model: the plan cache holds it weakly


def _hooked(model: nn.Module, chain: Chain) -> bool:
    """Whether a forward or backward hook (global or on a module) could change what the model computes."""
    if (_module._global_forward_hooks or _module._global_forward_pre_hooks or _module._global_backward_hooks
            or _module._global_backward_pre_hooks):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in [model, *chain.modules])


def kernel(model: nn.Module, chain: Chain, x: Tensor, kernel: str, dtype: torch.dtype) -> Tensor | None:
    """The float64 kernel, equal bit for bit to ntk_structured.self_block(capture(model, plan, x,
    kernel), kernel, dtype); None where this path does not apply (the caller's path then runs)."""
    n = x.shape[0]
    children = list(model._modules.values())
    if (n < 2 or x.dim() < 2 or x.device.type != "cpu" or len(children) != len(chain.modules)
            or any(a is not b for a, b in zip(children, chain.modules, strict=True)) or _hooked(model, chain)):
        return None  # (a child swapped for another of the same shapes since the plan was made: not this chain)
    acts: list[_Act | None] = [ACTIVATIONS[type(m)](m) if i == -2 else None for m, i, _, _ in chain.steps]
    if any(i == -2 and act is None for (_, i, _, _), act in zip(chain.steps, acts, strict=True)):
        return None
    with torch.no_grad():
        return _kernel(chain, acts, x, kernel, dtype)


def _kernel(chain: Chain, acts: list[_Act | None], x: Tensor, kernel: str, dtype: torch.dtype) -> Tensor:
    n = x.shape[0]
    a = x if x.dim() == 2 else x.flatten(1)
    us: list[Tensor] = []
    saved: list[tuple[Tensor, Tensor]] = []  # per step: (input, output)
    ones = a.new_ones(n, 1)
    for (m, i, w, b), act in zip(chain.steps, acts, strict=True):
        if act is not None:
            z, a = a, act[0](a)
            saved.append((z, a))
            continue
        if i >= 0:  # the input factor [u, 1] (weight and bias), u (weight), 1 (bias)
            us.append(torch.cat([a, ones], dim=1) if w and b else a.clone() if w else ones)
        saved.append((a, a))
        lin = cast(nn.Linear, m)
        a = F.linear(a, lin.weight, lin.bias)
    o = a.shape[1]
    # The logits' cotangents at each step's output, batched over the logits: (O, n, width), as
    # capture's backward pass gets them; at the output the identity rows e_o, broadcast over samples.
    first = next(s for s, step in enumerate(chain.steps) if step[1] >= 0)
    last = len(chain.steps) - 1
    identity_out = chain.steps[last][1] == chain.layers - 1
    g = x if identity_out else torch.eye(o, dtype=a.dtype, device=a.device).unsqueeze(1).expand(o, n, o)
    gs: list[Tensor] = []
    for s in range(last, first - 1, -1):
        m, i, _, _ = chain.steps[s]
        act = acts[s]
        if act is not None:
            g = act[1](g, *saved[s])
            continue
        if i >= 0:
            gs.append(g)  # (at the output with identity_out: not used)
        weight = cast(nn.Linear, m).weight
        if s == last and s > first:  # e_o^T W is row o of W exactly (products with 0 and 1, one nonzero term)
            wt = weight.unsqueeze(1).expand(o, n, weight.shape[1])
            g = wt if type(chain.steps[s - 1][0]) is nn.ReLU else wt.contiguous()  # (a select needs no copy)
        elif s > first:  # torch.matmul(g, W) as autograd calls it: one mm over the O n rows
            g = g.reshape(o * n, -1).mm(weight).view(o, n, -1)
    gs.reverse()
    full = kernel == "full"
    r = o if full else 1
    h = torch.zeros(n * r, n * r, dtype=torch.float64, device=x.device)
    for layer, (u, g) in enumerate(zip(us, gs, strict=True)):
        if u.dtype != dtype:
            u = u.to(dtype)
        xg = u.mm(u.t())  # (u @ u.T: torch.matmul calls mm for two matrices)
        if identity_out and layer == chain.layers - 1:
            # the logits' own layer: its cotangents' Gram is exactly delta_op (full) or O (trace)
            h.add_(torch.kron(xg, torch.eye(o, dtype=dtype, device=x.device)) if full else xg.mul_(o))
            continue
        gt = g.transpose(0, 1)
        if gt.dtype != dtype:
            gt = gt.to(dtype)
        if full:  # y * x[:, None, :, None], with x repeated along the columns
            y = gt.reshape(n * o, -1)
            yy = y.mm(y.t())
            yy.view(n, o, n * o).mul_(xg.unsqueeze(2).expand(n, n, o).reshape(n, 1, n * o))
            h.add_(yy)
        else:
            y = gt.reshape(n, -1)
            h.add_(xg.mul_(y.mm(y.t())))
    return torch.add(h, h.T).mul_(0.5)  # blocks.symmetrized
