"""Per-sample gradient blocks and their contraction into eNTK kernels, shared by every eNTK path.

A kernel is a sum over parameter blocks of Gram matrices of per-sample gradients. Blocks stay in
the model's dtype (float32 usually) and every product is accumulated in float64: a float32 sum
over the P parameters of ResNet-20 (272k) loses about 2e-6 relative; float32 products over column
slices of at most SLICE entries added in float64 keep the kernel within a few 1e-7 of the float64
truth at float32 GEMM speed (tests/test_ntk.py measures it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

# Parameter blocks with fewer entries than this (BN scales and shifts, biases, early convs) are
# concatenated into one matrix before the GEMM: many thin GEMMs cost call overhead, while copying
# the large blocks would cost memory traffic and a second Jacobian-sized buffer for nothing.
# Diagonal kernel blocks are cut into t <= MAX_TILES row tiles of >= MIN_TILE_ROWS rows and only
# the upper-triangle tile products computed (torch exposes no SYRK): (t+1)/(2t) of the flops; more
# tiles save little more while the GEMMs get thin. Measured, ResNet-20 (P = 272k), N = 32, O = 10,
# 2-core CPU, contraction alone: concatenate all + one GEMM 0.52 s, addmm per block 0.38 s,
# einsum per block 0.38 s, this hybrid 0.38 s with 1 tile, 0.32 s with 2, 0.34 s with 4.
SMALL_BLOCK = 4096
MIN_TILE_ROWS = 128
MAX_TILES = 4
# Columns per float32 GEMM before its product is added to the float64 accumulator.
SLICE = 4096
CPU_BUDGET = 2 << 30

T = TypeVar("T")


def functional(
    model: nn.Module, names: Sequence[str] | None = None
) -> tuple[dict[str, Tensor], Callable[[dict[str, Tensor], Tensor], Tensor]]:
    """(trainable parameters, f(params, one sample) -> flat logits) for torch.func.

    names restricts the differentiated parameters (the rest, frozen parameters and buffers are
    passed as constants and get no Jacobian).
    """
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters (requires_grad=True)")
    if names is not None:
        params = {k: params[k] for k in names}
    consts = {k: p.detach() for k, p in model.named_parameters() if k not in params}
    consts.update(dict(model.named_buffers()))

    def f(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        return functional_call(model, (p, consts), (xi.unsqueeze(0),)).reshape(-1)

    return params, f


def walk(model: nn.Module) -> tuple[list[nn.Module], list[tuple[str, Tensor]]]:
    """(model.modules(), model.named_parameters()) as lists, in their order, by one plain walk.

    torch's generators build every module's name; on a small MLP they cost more than the walk
    itself, and the eNTK's cache keys pay them on every kernel.
    """
    modules: list[nn.Module] = []
    named: list[tuple[str, Tensor]] = []
    seen_m: set[int] = set()
    seen_p: set[int] = set()

    def visit(m: nn.Module, prefix: str) -> None:
        seen_m.add(id(m))
        modules.append(m)
        dot = prefix + "." if prefix else ""
        for k, p in m._parameters.items():
            if p is not None and id(p) not in seen_p:
                seen_p.add(id(p))
                named.append((dot + k, p))
        for k, c in m._modules.items():
            if c is not None and id(c) not in seen_m:
                visit(c, dot + k)

    visit(model, "")
    return modules, named


def per_sample_jacobian(f: Callable, params: dict[str, Tensor], x: Tensor) -> dict[str, Tensor]:
    """vmap over samples of jacrev over outputs: one (N, O, *param.shape) block per parameter."""
    return vmap(jacrev(f), in_dims=(None, 0))(params, x)


def as_matrices(blocks: Sequence[Tensor], kernel: str, dtype: torch.dtype) -> list[Tensor]:
    """(N, O, ...) per-sample gradient blocks as a few 2-D matrices whose row Grams sum to the kernel.

    full: rows are (sample, logit) pairs, (N O, p); trace: rows are samples, (N, O p), since
    H_tr = Jr Jr^T with Jr = J reshaped to (N, O P). Large blocks are reshaped without a copy,
    small ones concatenated (SMALL_BLOCK).
    """
    big: list[Tensor] = []
    small: list[Tensor] = []
    for j in blocks:
        j3 = j.reshape(j.shape[0], j.shape[1], -1)
        (small if j3.shape[-1] < SMALL_BLOCK else big).append(j3)
    if small:
        big.insert(0, torch.cat(small, dim=-1) if len(small) > 1 else small[0])
    if not big:
        return []
    n, o = big[0].shape[:2]
    rows = n * o if kernel == "full" else n
    return [m.reshape(rows, -1).to(dtype) for m in big]


def add_product(out: Tensor, a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """out += sum_g a_g @ b_g^T, out float64. Cost: 2 rows_a rows_b P flops.

    float64 matrices go straight into out; float32 ones are multiplied over column slices of at
    most SLICE and each slice's product added to out in float64.
    """
    for ag, bg in zip(a, b, strict=True):
        if ag.dtype == torch.float64:
            out.addmm_(ag, bg.T)
            continue
        k = ag.shape[1]
        for s in range(0, k, SLICE):
            out.add_(torch.mm(ag[:, s : s + SLICE], bg[:, s : s + SLICE].T))
    return out


def product(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """sum_g a_g @ b_g^T in float64."""
    out = torch.zeros(a[0].shape[0], b[0].shape[0], dtype=torch.float64, device=a[0].device)
    return add_product(out, a, b)


def self_product(a: Sequence[Tensor]) -> Tensor:
    """sum_g a_g @ a_g^T (float64) from its upper-triangle tiles. Cost: about (t+1)/(2t) of 2 rows^2 P flops."""
    rows = a[0].shape[0]
    t = max(1, min(MAX_TILES, rows // MIN_TILE_ROWS))
    if t == 1:
        return symmetrized(product(a, a))
    cuts = [(i * rows) // t for i in range(t + 1)]
    out = torch.empty(rows, rows, dtype=torch.float64, device=a[0].device)
    for i in range(t):
        ri = slice(cuts[i], cuts[i + 1])
        ai = [g[ri] for g in a]
        for j in range(i, t):
            rj = slice(cuts[j], cuts[j + 1])
            tile = product(ai, [g[rj] for g in a])
            if j == i:
                out[ri, rj] = symmetrized(tile)
            else:
                out[ri, rj] = tile
                out[rj, ri] = tile.T
    return out


def symmetrized(h: Tensor) -> Tensor:
    """(H + H^T) / 2: BLAS rounding leaves A A^T asymmetric in the last bit; kernels should be exact.

    A new tensor (callers use the value returned): one add reading H^T in place costs a quarter of
    cloning H^T first (1280 rows: 7 ms against 30 ms), with the same bits (addition commutes).
    """
    return torch.add(h, h.T).mul_(0.5)


def default_budget(device: torch.device) -> int:
    """A quarter of free device memory on CUDA; min(2 GiB, a quarter of available RAM) elsewhere."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 4)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return min(CPU_BUDGET, int(line.split()[1]) * 1024 // 4)
    except OSError:
        pass
    return CPU_BUDGET


# A kernel whose chunk data take at most this many bytes is computed in one chunk without asking
# the OS for free memory (reading /proc/meminfo is a fifth of a small MLP's trace kernel): the default
# budget would be smaller only with under 64 MiB free.
SMALL_JOB_BYTES = 16 << 20


def resolve_budget(budget: int | None, device: torch.device, need: int) -> int:
    """The memory budget in bytes: the caller's, else `need` for a small job, else `default_budget`."""
    if budget is not None:
        return int(budget)
    return need if need <= SMALL_JOB_BYTES else default_budget(device)


def chunk_bounds(n: int, per_sample_bytes: int, budget: int) -> list[tuple[int, int]]:
    """All n samples in one chunk when they fit the budget, else chunks of which two fit it."""
    c = n if n * per_sample_bytes <= budget else max(1, budget // (2 * max(1, per_sample_bytes)))
    return [(s, min(s + c, n)) for s in range(0, n, c)]


def assemble(
    bounds: Sequence[tuple[int, int]],
    rows_per_sample: int,
    chunk: Callable[[int], T],
    self_block: Callable[[T], Tensor],
    cross_block: Callable[[T, T], Tensor],
    device: torch.device,
) -> Tensor:
    """The float64 kernel from chunk pairs: diagonal blocks by self_block, the upper triangle by
    cross_block and its transpose below. chunk(i) builds chunk i's factors; 1 + m(m-1)/2 chunks
    are built for m chunks, never more than two alive at once."""
    if len(bounds) == 1:
        return self_block(chunk(0))
    r = rows_per_sample
    n = bounds[-1][1]
    out = torch.empty(n * r, n * r, dtype=torch.float64, device=device)
    a = chunk(0)
    for i, (si, ei) in enumerate(bounds):
        ri = slice(si * r, ei * r)
        out[ri, ri] = self_block(a)
        nxt = None
        # Columns right to left, so the last chunk built is i+1: the next row block, reused rather
        # than rebuilt.
        for j in range(len(bounds) - 1, i, -1):
            b = chunk(j)
            rj = slice(bounds[j][0] * r, bounds[j][1] * r)
            tile = cross_block(a, b)
            out[ri, rj] = tile
            out[rj, ri] = tile.T
            del tile
            if j == i + 1:
                nxt = b
            del b
        if nxt is None:  # the last row block: nothing follows
            break
        a = nxt
    return out
