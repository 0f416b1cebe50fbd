"""The cone angle, seen from a chosen apex, against a null model: how wide would the same walk look if it had no
preferred direction?

A cone angle alone has no scale: 31 degrees seen from H(theta_0) and 59 seen from the window's first kernel are
the same trajectory, and a walk whose early steps are long looks narrow from its start whatever its late steps
do. So beside the measured angle we report the angle of random walks with the same number and lengths of steps
(the increments |u_{i+1} - u_i| of the unit-normalised kernels, read from G), in independent uniformly random
directions of the kernel's own dimension, seen from the same apex over the same window. A trajectory inside a
cone is one whose angle lies well below that null's range. Definitions and the demo's numbers: docs/science.md,
"The cone against a null".

Everything here works on the normalised Gram matrix G alone (numpy, no torch), so pages, the gallery and sweep
summaries compute it from stored results.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

APEXES = ("start", "window")  # H(theta_0), the first checkpoint; or the window's first kernel
DEFAULT_APEX = "start"  # the paper's picture: the cone seen from where training started
NULL_DRAWS = 200
NULL_SEED = 0


def cone_angle(G: np.ndarray, window: Sequence[int], apex: int = 0) -> float:
    """Largest angle (degrees) between increments u_i - u_apex over a window of checkpoints.

    u_i are the unit-normalised kernels; seen from u_apex the kernels of a window subtend this cone: wide while
    the kernel still turns (early), narrow after the transition. Uses only G: <d_i, d_j> = G_ij - G_i,apex -
    G_apex,j + 1. window holds indices into G; the apex and increments of zero length (no direction) are
    skipped; 0 if fewer than two remain. Cost: w^2 for a window of w checkpoints.
    """
    g = np.asarray(G, dtype=np.float64)
    idx = [int(i) for i in dict.fromkeys(window) if int(i) != apex]
    if len(idx) < 2:
        return 0.0
    ga = g[idx, apex]
    ip = g[np.ix_(idx, idx)] - ga[:, None] - ga[None, :] + g[apex, apex]
    return _widest(ip)


def _widest(ip: np.ndarray) -> float:
    """The largest angle between vectors given by their inner products (zero-length ones skipped)."""
    norm2 = np.diag(ip).copy()
    keep = norm2 > 1e-15
    if keep.sum() < 2:
        return 0.0
    ip, nrm = ip[np.ix_(keep, keep)], np.sqrt(norm2[keep])
    cos = np.clip(ip / np.outer(nrm, nrm), -1.0, 1.0)
    return float(np.degrees(np.arccos(cos.min())))


def step_lengths(G: np.ndarray) -> np.ndarray:
    """|u_{i+1} - u_i| between consecutive unit-normalised kernels: sqrt(2 - 2 G_{i,i+1})."""
    g = np.asarray(G, dtype=np.float64)
    return np.sqrt(np.clip(2.0 - 2.0 * np.diag(g, 1), 0.0, None))


def random_directions_gram(m: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    """The Gram matrix of m independent uniformly random unit vectors in R^dim, in O(m^2) whatever dim.

    Gaussian vectors' Gram X X^T is Wishart(dim, I_m); Bartlett's decomposition draws it as A A^T with A lower
    triangular, A_ii = sqrt(chi2(dim - i)), A_ij ~ N(0, 1) below the diagonal. Normalising rows gives unit
    vectors with uniformly random directions, since a Gaussian vector's direction is uniform."""
    if dim < m:
        raise ValueError(f"need dim >= m ({dim} < {m})")
    a = np.tril(rng.standard_normal((m, m)), -1)
    a[np.diag_indices(m)] = np.sqrt(rng.chisquare(dim - np.arange(m)))
    w = a @ a.T
    d = np.sqrt(np.diag(w))
    return w / np.outer(d, d)


def walk_gram(lengths: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Gram matrix of the positions P_0 = 0, P_k = sum_{i<k} l_i e_i of a walk with steps l_i e_i, from the
    steps' Gram matrix (the unit directions e_i's inner products)."""
    steps = directions * np.outer(lengths, lengths)
    c = np.cumsum(np.cumsum(steps, axis=0), axis=1)  # <P_a, P_b> = sum_{i<a, j<b} <s_i, s_j>
    m = len(lengths) + 1
    out = np.zeros((m, m))
    out[1:, 1:] = c
    return out


@dataclass(frozen=True)
class ConeReport:
    """The cone angle over a window seen from an apex, and the null's angles over the same window and apex."""

    apex: str  # "start" (H(theta_0)) or "window" (the window's first kernel)
    apex_iteration: int
    window: tuple[int, int]  # iterations, inclusive
    angle_deg: float
    null_mean_deg: float
    null_low_deg: float  # 2.5 % and 97.5 % of the null's angles
    null_high_deg: float
    null_draws: int
    dim: int  # the walk's dimension: the kernel's number of entries

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["window"] = list(self.window)
        return d


def window_indices(iters: Sequence[int], window: tuple[int, int]) -> list[int]:
    return [i for i, t in enumerate(iters) if window[0] <= int(t) <= window[1]]


def apex_index(iters: Sequence[int], window: tuple[int, int], apex: str) -> int:
    if apex not in APEXES:
        raise ValueError(f"apex must be one of {', '.join(APEXES)}, not {apex!r}")
    return 0 if apex == "start" else window_indices(iters, window)[0]


def cone_report(G: np.ndarray, iters: Sequence[int], window: tuple[int, int], dim: int, apex: str = DEFAULT_APEX,
                draws: int = NULL_DRAWS, seed: int = NULL_SEED) -> ConeReport:
    """The measured angle and the null's (`draws` random walks with the trajectory's step lengths in R^dim,
    seeded: the same numbers every time)."""
    g = np.asarray(G, dtype=np.float64)
    a = apex_index(iters, window, apex)
    idx = [i for i in window_indices(iters, window) if i != a]
    angle = cone_angle(g, idx, a)
    lengths = step_lengths(g)
    rng = np.random.default_rng(seed)
    null = np.empty(draws)
    for k in range(draws):
        p = walk_gram(lengths, random_directions_gram(len(lengths), max(dim, len(lengths)), rng))
        null[k] = cone_angle(p, idx, a)
    return ConeReport(apex, int(iters[a]), (int(window[0]), int(window[1])), angle, float(null.mean()),
                      float(np.quantile(null, 0.025)), float(np.quantile(null, 0.975)), draws, int(dim))
