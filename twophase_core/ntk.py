"""Empirical neural tangent kernels and the geometry of kernels along training (the Cone Effect).

Kernel routines state their cost, neural-tangents style, in N samples, O outputs (logits) and P
trainable parameters; [FP] / [BP] is one forward / backward pass of one sample.

The eNTK is computed by Jacobian contraction: per-sample Jacobians from torch.func
(vmap over samples of jacrev over outputs), then the contraction as plain matrix products,
because a GEMM is the fastest thing either a CPU or a GPU does. The geometry helpers
(Gram, distances, curves, projections, cone angle) work from the Gram matrix of the kernels
alone, so a trajectory of m kernels is reduced to one m x m matrix once and every view reads it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from .config import KERNELS
from .models import device_of

# Parameter blocks with fewer entries than this (BN scales and shifts, biases, early convs) are
# concatenated into one matrix before the GEMM: many thin GEMMs cost call overhead, while copying
# the large blocks would cost memory traffic and a second Jacobian-sized buffer for nothing.
# Diagonal kernel blocks are cut into t <= _MAX_TILES row tiles of >= _MIN_TILE_ROWS rows and only
# the upper-triangle tile products computed (torch exposes no SYRK): (t+1)/(2t) of the flops; more
# tiles save little more while the GEMMs get thin. Measured, ResNet-20 (P = 272k), N = 32, O = 10,
# 2-core CPU, contraction alone: concatenate all + one GEMM 0.52 s, addmm per block 0.38 s,
# einsum per block 0.38 s, this hybrid 0.38 s with 1 tile, 0.32 s with 2, 0.34 s with 4.
_SMALL_BLOCK = 4096
_MIN_TILE_ROWS = 128
_MAX_TILES = 4
_CPU_BUDGET = 2 << 30
_GRAM_BLOCK = 1 << 25  # float64 elements per column block in gram(): 256 MiB


# --------------------------------------------------------------------------------------------
# Jacobians
# --------------------------------------------------------------------------------------------


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode (BN running stats, no dropout) and restore each flag.

    Flags are restored per module, not with model.train(previous), so a model whose BN layers
    were deliberately frozen in eval mode while the rest trains comes back exactly as it was.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def _functional(model: nn.Module) -> tuple[dict[str, Tensor], Callable[[dict[str, Tensor], Tensor], Tensor]]:
    """(trainable parameters, f(params, one sample) -> flat logits) for torch.func.

    Frozen parameters and buffers are passed as constants, so they get no Jacobian.
    """
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameters (requires_grad=True)")
    consts = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
    consts.update(dict(model.named_buffers()))

    def f(p: dict[str, Tensor], xi: Tensor) -> Tensor:
        return functional_call(model, (p, consts), (xi.unsqueeze(0),)).reshape(-1)

    return params, f


def _jac(f: Callable, params: dict[str, Tensor], x: Tensor) -> dict[str, Tensor]:
    return vmap(jacrev(f), in_dims=(None, 0))(params, x)


def jacobian(model: nn.Module, x: Tensor) -> dict[str, Tensor]:
    """Per-sample Jacobians d f_o(x_k) / d theta, one (N, O, *param.shape) block per parameter.

    Cost: N [FP] + N O [BP] (batched by vmap); memory N O P.
    Model in eval mode for the call; trainable parameters only.
    """
    with eval_mode(model):
        params, f = _functional(model)
        return _jac(f, params, x.to(device_of(model)))


def _matrices(jac: dict[str, Tensor], kernel: str, dtype: torch.dtype) -> list[Tensor]:
    """One chunk's Jacobian as a few 2-D matrices whose row Grams sum to the kernel.

    full: rows are (sample, logit) pairs, (n O, p); trace: rows are samples, (n, O p), since
    H_tr = Jr Jr^T with Jr = J reshaped to (n, O P). Large blocks are reshaped without a copy.
    """
    big: list[Tensor] = []
    small: list[Tensor] = []
    for j in jac.values():
        j3 = j.reshape(j.shape[0], j.shape[1], -1)
        (small if j3.shape[-1] < _SMALL_BLOCK else big).append(j3)
    if small:
        big.insert(0, torch.cat(small, dim=-1) if len(small) > 1 else small[0])
    n, o = big[0].shape[:2]
    rows = n * o if kernel == "full" else n
    return [m.reshape(rows, -1).to(dtype) for m in big]


def _product(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """sum_g a_g @ b_g^T. Cost: 2 rows_a rows_b P flops."""
    out = torch.mm(a[0], b[0].T)
    for ag, bg in zip(a[1:], b[1:], strict=True):
        out.addmm_(ag, bg.T)
    return out


def _self_product(a: Sequence[Tensor]) -> Tensor:
    """sum_g a_g @ a_g^T from its upper-triangle tiles. Cost: about (t+1)/(2t) of 2 rows^2 P flops."""
    rows = a[0].shape[0]
    t = max(1, min(_MAX_TILES, rows // _MIN_TILE_ROWS))
    if t == 1:
        return _symmetrized(_product(a, a))
    cuts = [(i * rows) // t for i in range(t + 1)]
    out = a[0].new_empty(rows, rows)
    for i in range(t):
        ri = slice(cuts[i], cuts[i + 1])
        ai = [g[ri] for g in a]
        for j in range(i, t):
            rj = slice(cuts[j], cuts[j + 1])
            tile = _product(ai, [g[rj] for g in a])
            if j == i:
                out[ri, rj] = _symmetrized(tile)
            else:
                out[ri, rj] = tile
                out[rj, ri] = tile.T
    return out


def _symmetrized(h: Tensor) -> Tensor:
    """(H + H^T) / 2: BLAS rounding leaves A A^T asymmetric in the last bit; kernels should be exact."""
    return h.add_(h.T.clone()).mul_(0.5)


def _default_budget(device: torch.device) -> int:
    """A quarter of free device memory on CUDA; min(2 GiB, a quarter of available RAM) elsewhere."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 4)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return min(_CPU_BUDGET, int(line.split()[1]) * 1024 // 4)
    except OSError:
        pass
    return _CPU_BUDGET


def empirical_ntk(
    model: nn.Module,
    x: Tensor,
    kernel: str = "full",
    *,
    memory_budget_bytes: int | None = None,
    float64: bool = False,
) -> Tensor:
    """Empirical NTK H[(k,o),(l,p)] = <d f_o(x_k)/d theta, d f_p(x_l)/d theta> by Jacobian contraction.

    kernel "full": (N O, N O), sample-major (row k*O + o). kernel "trace": (N, N), summed (not
    averaged) over logits, H_tr[k,l] = sum_o H[(k,o),(l,o)], without forming the full kernel.
    Model in eval mode for the call (BN running stats, no dropout), each module's flag restored.

    Cost: Jacobian N [FP] + N O [BP]; contraction N^2 O^2 P (full) or N^2 O P (trace)
    multiply-adds, about halved by symmetry across chunk pairs and tiles.
    Memory: N O P when the Jacobian (N O P * itemsize bytes) fits memory_budget_bytes, else
    samples are chunked so two chunk Jacobians fit the budget, at the price of recomputing
    Jacobians (1 + m(m-1)/2 chunk Jacobians for m chunks). Default budget: a quarter of free GPU
    memory, or min(2 GiB, a quarter of available RAM). Plus the kernel, (N O)^2.

    Returns float32 on the model's device (float64 with float64=True, for precision studies).
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    device = device_of(model)
    x = x.to(device)
    n = x.shape[0]
    if n == 0:
        raise ValueError("empirical_ntk needs at least one sample")
    acc = torch.float64 if float64 else torch.float32
    with eval_mode(model):
        params, f = _functional(model)
        with torch.no_grad():
            o = f(params, x[0]).numel()
        p = sum(t.numel() for t in params.values())
        itemsize = max([t.element_size() for t in params.values()] + [acc.itemsize])
        per_sample = o * p * itemsize
        budget = _default_budget(device) if memory_budget_bytes is None else int(memory_budget_bytes)
        c = n if n * per_sample <= budget else max(1, budget // (2 * per_sample))
        bounds = [(s, min(s + c, n)) for s in range(0, n, c)]
        r = o if kernel == "full" else 1

        def chunk(i: int) -> list[Tensor]:
            s, e = bounds[i]
            return _matrices(_jac(f, params, x[s:e]), kernel, acc)

        if len(bounds) == 1:
            return _self_product(chunk(0))
        out = torch.empty(n * r, n * r, dtype=acc, device=device)
        a = chunk(0)
        for i, (si, ei) in enumerate(bounds):
            ri = slice(si * r, ei * r)
            out[ri, ri] = _self_product(a)
            nxt = None
            # Columns right to left, so the last chunk computed is i+1: the next row block,
            # reused rather than recomputed, and never more than two chunks alive at once.
            for j in range(len(bounds) - 1, i, -1):
                b = chunk(j)
                rj = slice(bounds[j][0] * r, bounds[j][1] * r)
                tile = _product(a, b)
                out[ri, rj] = tile
                out[rj, ri] = tile.T
                del tile
                if j == i + 1:
                    nxt = b
                del b
            a = nxt
        return out


# --------------------------------------------------------------------------------------------
# Oracle and baseline
# --------------------------------------------------------------------------------------------


def ntk_vector_product(model: nn.Module, x: Tensor, v: Tensor) -> Tensor:
    """H v for the full kernel without forming H or the Jacobian: J (J^T v) by one vjp and one jvp.

    v: (N, O) (or flat N O), sample-major like the full kernel; returns the same shape.
    Cost: one batched [FP] + [BP] (vjp) plus one [FP] with tangents (jvp) over the N samples,
    memory O(P + activations), independent of O. Cheaper than `empirical_ntk` when only a few
    products are needed (kernel regression by conjugate gradients, power iteration, or P so large
    that even one chunk's Jacobian does not fit); building the whole (N O)^2 kernel this way would
    take N O products, which is where Jacobian contraction wins.
    """
    with eval_mode(model):
        params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
        consts = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}
        consts.update(dict(model.named_buffers()))
        x = x.to(device_of(model))
        f = lambda p: functional_call(model, (p, consts), (x,))
        out, pullback = torch.func.vjp(f, params)
        (jt_v,) = pullback(v.reshape(out.shape).to(out.dtype))
        _, hv = torch.func.jvp(f, (params,), (jt_v,))
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


def ntk_einsum_baseline(model: nn.Module, x: Tensor, kernel: str = "full") -> Tensor:
    """vmap(jacrev) then one einsum per parameter block, summed (the neural-tangents tutorial way).

    A benchmark baseline: no symmetry, one contraction per block.
    Cost: N [FP] + N O [BP]; contraction N^2 O^2 P (full) or N^2 O P (trace); memory N O P.
    Returns float32, same layout as empirical_ntk.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    jac = jacobian(model, x)
    h: Tensor | None = None
    for j in jac.values():
        j3 = j.reshape(j.shape[0], j.shape[1], -1)
        term = torch.einsum("Naf,Mbf->NaMb" if kernel == "full" else "Naf,Maf->NM", j3, j3)
        h = term if h is None else h + term
    assert h is not None
    if kernel == "full":
        n, o = h.shape[:2]
        h = h.reshape(n * o, n * o)
    return h


# --------------------------------------------------------------------------------------------
# Kernel geometry: distances and the Gram matrix of a trajectory
# --------------------------------------------------------------------------------------------


def _flat(h: Tensor | np.ndarray) -> Tensor:
    return torch.as_tensor(h).detach().reshape(-1)


def kernel_distance(h1: Tensor | np.ndarray, h2: Tensor | np.ndarray) -> float:
    """S = 1 - <H1,H2>_F / (|H1|_F |H2|_F) (Fort et al. 2020), in float64.

    Scale-free: it measures a change of kernel shape, not of magnitude. Cost: N^2 O^2 (full).
    """
    a = _flat(h1).double()
    b = _flat(h2).to(a.device).double()
    if a.shape != b.shape:
        raise ValueError(f"kernels differ in size: {tuple(a.shape)} vs {tuple(b.shape)}")
    den = torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)
    if den == 0:
        raise ValueError("kernel_distance of a zero kernel is undefined")
    return float(1.0 - torch.dot(a, b) / den)


def gram(kernels: Iterable[Tensor | np.ndarray]) -> np.ndarray:
    """R_ij = <H_i, H_j>_F in float64, the m x m matrix every trajectory view is derived from.

    Each kernel is flattened once and kept in its own dtype; the products run in float64 over
    column blocks of at most 256 MiB, so precision does not cost a float64 copy of everything.
    Cost: m^2 D multiply-adds for m kernels of D entries (D = N^2 O^2 for full kernels);
    memory m D in the kernels' dtype.
    """
    flat = [_flat(h) for h in kernels]
    m = len(flat)
    if m == 0:
        return np.zeros((0, 0))
    dev = flat[0].device
    if any(f.shape != flat[0].shape for f in flat):
        raise ValueError("all kernels must have the same size")
    a = torch.stack([f.to(dev) for f in flat])
    del flat
    d = a.shape[1]
    r = torch.zeros(m, m, dtype=torch.float64, device=dev)
    step = max(1, _GRAM_BLOCK // m)
    for s in range(0, d, step):
        blk = a[:, s : s + step].double()
        r.addmm_(blk, blk.T)
    return r.cpu().numpy()


def normalized_gram(R: np.ndarray) -> np.ndarray:
    """G_ij = R_ij / sqrt(R_ii R_jj): the Gram matrix of the unit-normalised kernels (diagonal 1)."""
    r = np.asarray(R, dtype=np.float64)
    d = np.sqrt(np.diag(r))
    if np.any(~(d > 0)):
        raise ValueError("normalized_gram needs every kernel non-zero (positive diagonal)")
    g = r / np.outer(d, d)
    g = np.clip(0.5 * (g + g.T), -1.0, 1.0)
    np.fill_diagonal(g, 1.0)
    return g


def distance_matrix(G: np.ndarray) -> np.ndarray:
    """S = 1 - G, the kernel distance between every pair of checkpoints (paper Fig. 4).

    Rounding can leave 1 - G slightly negative; those entries are clipped to 0, the diagonal is 0.
    """
    g = np.asarray(G, dtype=np.float64)
    s = np.maximum(1.0 - 0.5 * (g + g.T), 0.0)
    np.fill_diagonal(s, 0.0)
    return s


def _positions(iters: Sequence[int], m: int) -> dict[int, int]:
    pos = {int(t): i for i, t in enumerate(iters)}
    if len(iters) != m or len(pos) != m:
        raise ValueError(f"iters must be {m} distinct iteration numbers, one per checkpoint")
    return pos


def reference_curves(S: np.ndarray, iters: Sequence[int], refs: Sequence[int]) -> np.ndarray:
    """S(theta_t, theta_tau) for every checkpoint t, one row per reference iteration tau (Fig. 5a).

    refs are iteration numbers and must be checkpoints. Returns (len(refs), m), columns in the
    order of iters.
    """
    s = np.asarray(S, dtype=np.float64)
    pos = _positions(iters, s.shape[0])
    missing = [t for t in refs if int(t) not in pos]
    if missing:
        raise ValueError(f"reference iterations {missing} are not checkpoints")
    return s[[pos[int(t)] for t in refs], :].copy()


def neighbour_curves(
    S: np.ndarray, iters: Sequence[int], dts: Sequence[int]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Kernel velocity S(theta_t, theta_{t+dt}) versus t, for each dt (Fig. 5b).

    Iterations may be non-uniform: a curve uses exactly the checkpoint pairs dt iterations apart.
    Returns, per dt, (t values ascending, distances); empty arrays when no pair is dt apart.
    """
    s = np.asarray(S, dtype=np.float64)
    pos = _positions(iters, s.shape[0])
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for dt in dts:
        if dt <= 0:
            raise ValueError(f"dt must be positive, got {dt}")
        ts = sorted(t for t in pos if t + dt in pos)
        vals = [s[pos[t], pos[t + dt]] for t in ts]
        out.append((np.asarray(ts, dtype=np.int64), np.asarray(vals, dtype=np.float64)))
    return out


# --------------------------------------------------------------------------------------------
# Kernel geometry: pictures and the cone
# --------------------------------------------------------------------------------------------


def _fix_signs(c: np.ndarray) -> np.ndarray:
    """Make the largest-magnitude entry of each column positive, so pictures do not flip between runs."""
    for k in range(c.shape[1]):
        i = int(np.argmax(np.abs(c[:, k])))
        if c[i, k] < 0:
            c[:, k] = -c[:, k]
    return c


def _pad(c: np.ndarray, dim: int) -> np.ndarray:
    if c.shape[1] >= dim:
        return c[:, :dim]
    return np.hstack([c, np.zeros((c.shape[0], dim - c.shape[1]))])


def _mds_kwargs(seed: int) -> dict:
    from sklearn.manifold import MDS

    names = inspect.signature(MDS.__init__).parameters
    kw: dict = {"random_state": seed, "n_init": 4, "max_iter": 500}
    if "metric_mds" in names:  # scikit-learn >= 1.8 renamed the arguments
        kw.update(metric="precomputed", metric_mds=True, init="random")
    else:
        kw.update(dissimilarity="precomputed", metric=True)
    return kw


def project(G: np.ndarray, method: str = "pca", dim: int = 3, seed: int = 0) -> np.ndarray:
    """(m, dim) coordinates of the unit-normalised kernels, from their Gram matrix G alone (Fig. 5c).

    "pca": exact PCA of the implicit unit vectors: double-centre G, eigendecompose,
    coordinates = eigenvectors * sqrt(eigenvalues) (what sklearn PCA gives on the vectors).
    "mds": metric MDS (scikit-learn SMACOF) on the chordal distances sqrt(2 - 2G), then rotated
    to its principal axes. Signs fixed so the largest |entry| of each axis is positive; axes
    beyond the rank are zero. Cost: m^3 (pca); SMACOF iterations of m^2 (mds).
    """
    g = np.asarray(G, dtype=np.float64)
    m = g.shape[0]
    if method == "pca":
        c = np.eye(m) - 1.0 / m
        gc = c @ g @ c
        w, v = np.linalg.eigh(0.5 * (gc + gc.T))
        w, v = w[::-1][:dim], v[:, ::-1][:, :dim]
        w = np.where(w > max(w[0], 0.0) * 1e-10 + 1e-14, w, 0.0) if m else w
        return _pad(_fix_signs(v * np.sqrt(w)), dim)
    if method == "mds":
        if m < 2:
            return np.zeros((m, dim))
        from sklearn.manifold import MDS

        d = np.sqrt(np.clip(2.0 - (g + g.T), 0.0, None))
        np.fill_diagonal(d, 0.0)
        k = min(dim, m - 1)
        y = MDS(n_components=k, **_mds_kwargs(seed)).fit_transform(d)
        y = y - y.mean(axis=0)
        _, _, vt = np.linalg.svd(y, full_matrices=False)
        return _pad(_fix_signs(y @ vt.T), dim)
    raise ValueError(f"method must be 'pca' or 'mds', got {method!r}")


def cone_angle(G: np.ndarray, window: Sequence[int], apex: int = 0) -> float:
    """Largest angle (degrees) between increments u_i - u_apex over a window of checkpoints.

    u_i are the unit-normalised kernels; seen from H(theta_apex) (default theta_0) the kernels of a
    window subtend this cone: wide while the kernel still turns (early), narrow after the
    transition. Uses only G: <d_i, d_j> = G_ij - G_i,apex - G_apex,j + 1. window holds indices
    into G; the apex and increments of zero length (no direction) are skipped; 0 if fewer than
    two remain. Cost: w^2 for a window of w checkpoints.
    """
    g = np.asarray(G, dtype=np.float64)
    idx = [int(i) for i in dict.fromkeys(window) if int(i) != apex]
    if len(idx) < 2:
        return 0.0
    ga = g[idx, apex]
    ip = g[np.ix_(idx, idx)] - ga[:, None] - ga[None, :] + 1.0
    norm2 = np.diag(ip).copy()
    keep = norm2 > 1e-15
    if keep.sum() < 2:
        return 0.0
    ip, nrm = ip[np.ix_(keep, keep)], np.sqrt(norm2[keep])
    cos = np.clip(ip / np.outer(nrm, nrm), -1.0, 1.0)
    return float(np.degrees(np.arccos(cos.min())))


def cone_angles(
    G: np.ndarray, iters: Sequence[int], windows: Sequence[tuple[int, int]], apex: int = 0
) -> list[float]:
    """cone_angle over each window (first_iter, last_iter), inclusive, in iteration numbers.

    apex is an index into G (default 0, theta_0).
    """
    it = np.asarray(iters)
    return [cone_angle(G, np.flatnonzero((it >= a) & (it <= b)).tolist(), apex) for a, b in windows]
