"""The geometry of kernels along training (the Cone Effect): distances, the Gram matrix of a
trajectory, curves, projections and the cone angle.

Every view works from the Gram matrix of the kernels alone, so a trajectory of m kernels is reduced
to one m x m matrix once and every view reads it. Costs are stated in N samples, O outputs and m
kernels, like the kernel routines of `ntk`.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from twophase_core.science.cone import cone_angle

_GRAM_BLOCK = 1 << 25  # float64 elements per column block in gram(): 256 MiB


# --------------------------------------------------------------------------------------------
# Kernel geometry: distances and the Gram matrix of a trajectory
# --------------------------------------------------------------------------------------------


def _flat(h: Tensor | np.ndarray) -> Tensor:
    return torch.as_tensor(h).detach().reshape(-1)


def kernel_distance(h1: Tensor | np.ndarray, h2: Tensor | np.ndarray) -> float:
    """S = 1 - <H1,H2>_F / (|H1|_F |H2|_F) (Fort et al. 2020), in float64, in [0, 2].

    Scale-free: it measures a change of kernel shape, not of magnitude. Computed as
    (|a-b|^2 - (|a|-|b|)^2) / (2|a||b|) with |a|-|b| = <a-b, a+b> / (|a|+|b|), the form C uses: exactly
    0.0 for identical kernels and accurate for nearly identical ones, where 1 - cos is rounding noise
    of either sign (about 1e-14 for a 320 x 320 kernel). Rounding below 0 is clipped to 0, as in
    `distance_matrix`. Cost: N^2 O^2 (full).
    """
    a = _flat(h1).double()
    b = _flat(h2).to(a.device).double()
    if a.shape != b.shape:
        raise ValueError(f"kernels differ in size: {tuple(a.shape)} vs {tuple(b.shape)}")
    aa, bb = torch.dot(a, a), torch.dot(b, b)
    if aa == 0 or bb == 0:
        raise ValueError("kernel_distance of a zero kernel is undefined")
    d = a - b
    dn = torch.dot(d, a + b) / (aa.sqrt() + bb.sqrt())
    # |a||b| as sqrt(<a,a><b,b>): for b = -a that is sqrt(x*x) = x exactly, so S(H, -H) is exactly 2
    s = (torch.dot(d, d) - dn * dn) / (2 * (aa * bb).sqrt())
    return float(s.clamp(0.0, 2.0))


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


def cone_angles(
    G: np.ndarray, iters: Sequence[int], windows: Sequence[tuple[int, int]], apex: int = 0
) -> list[float]:
    """cone_angle over each window (first_iter, last_iter), inclusive, in iteration numbers.

    apex is an index into G (default 0, theta_0).
    """
    it = np.asarray(iters)
    return [cone_angle(G, np.flatnonzero((it >= a) & (it <= b)).tolist(), apex) for a, b in windows]
