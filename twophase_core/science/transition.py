"""The transition as a number with an interval: where a chaos metric (or the kernel velocity) falls.

The paper reads the end of the chaotic phase off its figures by eye. Here it is estimated: for R
replicates (independent init_seed and data_seed) of one setting, `values[r, i]` is a metric M at
the final t1 for a perturbation at `t0[i]`. With y = log M and u = log(1 + t0), a decreasing
sigmoid

    y(u) = L + (E - L) / (1 + exp((u - m) / w)),   w > 0

is fitted by least squares to the mean of y over replicates; t* = exp(m) - 1 is where the curve
is halfway between the early level E and the late level L on the log scale. The 95% interval is the
percentile bootstrap over replicates (rows are resampled, everything else is fixed), widened for few
replicates (`expansion`: plain percentiles covered 78% at R = 5), and never narrower than the grid
resolves (`_profile_interval`: every midpoint a sigmoid or a step fits as well). A t* is reported only
when both levels hold two t0 and the sigmoid beats, by AIC with the replicate noise known, the shapes
without a plateau (a straight fall, flat then falling, falling then flat). Otherwise `outcome` says
why there is no number: none, beyond_grid, before_grid or unresolved (docs/transition.md: every rule,
default and measured rate; `transition_rates` measures them again).

numpy and scipy only: the sweep, the app and the CLI call it on arrays, without torch.

Past 350 lines on purpose: the fit, its refusal rules, the model comparison, the bootstrap and the
profile are one definition of t*; every rule is read beside the fit it guards.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import leastsq
from scipy.stats import f as f_dist
from scipy.stats import norm
from scipy.stats import t as student_t

METHOD = "sigmoid-log1p"  # logistic in log(1 + t) fitted to the mean log metric; expanded percentile bootstrap
LEVEL = 0.95
# found: a fall between two seen levels, with t* and its interval. none: no fall (or too little data to judge one).
# beyond_grid: still falling, or not yet fallen, at the last t. before_grid: already falling at the first t, or
# fallen before it. unresolved: a step sharper than the grid: the interval is the two grid points it lies between.
OUTCOMES = ("found", "none", "beyond_grid", "before_grid", "unresolved")
ADVICE = {"beyond_grid": "try larger t0 and T", "before_grid": "try smaller t0",
          "unresolved": "add t0 between these two"}


@dataclass(frozen=True)
class Rules:
    """Credibility thresholds: a fit that breaks one of them is reported as "no transition found"."""

    min_points: int = 5  # t0 columns with a value; the sigmoid has 4 parameters
    min_replicates: int = 2  # one replicate leaves nothing to resample: no interval
    min_fold: float = 2.0  # early level / late level (geometric), i.e. a drop of >= log(2) in log M
    min_drop_se: float = 4.0  # drop in log M over the standard error of the mean curve
    min_side_points: int = 2  # t columns on each side of the midpoint: a level read off one point is an outlier's
    level_margin: float = 0.25  # fitted levels may pass the observed mean curve by this share of its range
    max_boot_fail: float = 0.10  # share of bootstrap fits allowed to fail
    width_min_spacing: float = 0.1  # lower bound of w, as a share of the median spacing of u
    expand: bool = True  # widen the percentile interval for few replicates (see `expansion`)
    min_evidence: float = 2.0  # AIC by which the sigmoid must beat every plateau-less alternative
    resolve: bool = True  # widen the interval to every midpoint a step or sigmoid fits as well (`_profile_interval`)
    inside_share: float = 0.2  # a column is inside the fall when its mean is this share of the drop from both levels
    level_share: float = 0.2  # a t column is on a level when the fitted curve there is within this share of the drop


RULES = Rules()


@dataclass(frozen=True)
class Transition:
    """One estimate. `t_star`, `ci_low`, `ci_high` are None unless `found`; the fit is kept for
    judging it whenever one was made (levels in the metric's own units, geometric means)."""

    found: bool
    t_star: float | None
    ci_low: float | None
    ci_high: float | None
    method: str
    reason: str | None
    axis: str  # "t0" (chaos) or "t" (kernel velocity)
    level: float = LEVEL
    early: float | None = None  # exp(E): the metric before the transition
    late: float | None = None  # exp(L): after it
    fold: float | None = None  # early / late
    midpoint_u: float | None = None  # m, in u = log(1 + t)
    width: float | None = None  # w, in u
    slope: float | None = None  # d log M / d log(1 + t) at the midpoint, -(E - L) / (4 w)
    drop_se: float | None = None  # (E - L) / standard error of the mean curve; inf without replicate noise
    noise_sd: float | None = None  # pooled sd of log M across replicates, within a t column
    floor: float | None = None  # value that exact zeros took on the log scale (None: there were none)
    zeros: int = 0  # cells that were exactly 0
    points: int = 0  # t columns used
    replicates: int = 0  # replicates with at least one value
    n_boot: int = 0
    boot_failed: int = 0  # bootstrap resamples whose fit failed (see docs)
    expansion: float = 1.0  # factor applied to the percentile interval's half-widths in u (1: plain percentile)
    outcome: str = ""  # one of OUTCOMES; "" is filled from `found` ("found" or "none"), for entries written before
    evidence: float | None = None  # AIC of the best plateau-less alternative minus the sigmoid's
    alternative: str | None = None  # that alternative: "straight fall", "flat then falling", "falling then flat"

    def __post_init__(self) -> None:
        if not self.outcome:
            object.__setattr__(self, "outcome", "found" if self.found else "none")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")
        if self.found != (self.outcome == "found"):
            raise ValueError(f"found={self.found} contradicts outcome={self.outcome!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain floats and ints, None for missing; inf (no replicate noise) as None."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Transition:
        """Inverse of `to_dict` (keys it does not know are ignored, so a sweep JSON entry reads back)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def outcome_label(tr: Transition | Mapping[str, Any] | None) -> str:
    """The outcome in a few words for a table cell or a legend: "found", "beyond grid: try larger t0 and T",
    "unresolved: between 700 and 900", "before grid: try smaller t0", "none" (None: none found)."""
    if tr is None:
        return "none"
    d = tr if isinstance(tr, Mapping) else asdict(tr)
    outcome = d.get("outcome") or ("found" if d.get("found") else "none")
    if outcome == "unresolved" and d.get("ci_low") is not None and d.get("ci_high") is not None:
        return f"unresolved: between {d['ci_low']:.4g} and {d['ci_high']:.4g}"
    words = outcome.replace("_", " ")
    return f"{words}: {ADVICE[outcome]}" if outcome in ADVICE else words


def transition_json(estimates: Mapping[str, Transition]) -> dict[str, Any]:
    """The sweep JSON's `transition` entry: per metric the estimate's dict, or None when none was found,
    with the reasons under "not_found" ({metric: reason}); e.g.
    {"C": {"t_star": 41.2, "ci_low": 30.5, "ci_high": 55.0, "method": "sigmoid-log1p", ...}, "B": None,
     "not_found": {"B": "no fall: ..."}}."""
    out: dict[str, Any] = {k: (e.to_dict() if e.found else None) for k, e in estimates.items()}
    out["not_found"] = {k: e.reason for k, e in estimates.items() if not e.found}
    out["outcome"] = {k: e.outcome for k, e in estimates.items()}
    return out


# ---------------------------------------------------------------------------------------------
# The sigmoid: y = L + (E - L) s,  s = 1 / (1 + exp((u - m) / w)), within a box on (m, w)

Box = tuple[np.ndarray, np.ndarray]  # lower and upper bounds of (E, L, m, w)


def _basis(u: np.ndarray, m: np.ndarray | float, w: np.ndarray | float) -> np.ndarray:
    """s = 1 / (1 + exp((u - m) / w)): 1 well before the midpoint, 0 well after it."""
    return 0.5 * (1.0 - np.tanh(0.5 * (u - m) / w))  # the same, without overflow


def _box(u: np.ndarray, y: np.ndarray, rules: Rules) -> Box:
    """Where the fit may go. w: from a share of the median grid spacing (a sharper step is not resolved
    by the grid) to the grid's span in u. m: half a span beyond the grid on either side. E and L: one
    range of the data beyond it on either side. Inside the box the rules then judge the fit; the box
    only keeps the solver from running off (a level fitted to a single tail point diverges otherwise)."""
    span = float(u[-1] - u[0])
    w_min = rules.width_min_spacing * float(np.median(np.diff(u)))
    lo, hi = float(np.nanmin(y)), float(np.nanmax(y))
    ry = max(hi - lo, 1.0)
    return (np.array([lo - ry, lo - ry, u[0] - span / 2, w_min]),
            np.array([hi + ry, hi + ry, u[-1] + span / 2, max(span, 2 * w_min)]))


def _seed_fits(u: np.ndarray, y: np.ndarray, ok: np.ndarray, box: Box) -> np.ndarray:
    """Starting points (E, L, m, w) for many curves at once: on a grid of (m, w) the levels are linear,
    solved in closed form, and the best grid point per curve is kept. y, ok: (B, n)."""
    w_min, w_max = box[0][3], box[1][3]
    ms = np.linspace(u.min(), u.max(), 33)
    ws = np.geomspace(w_min * 1.01, w_max * 0.99, 6)
    mm, ww = (g.ravel() for g in np.meshgrid(ms, ws))
    s = _basis(u[None, :], mm[:, None], ww[:, None])  # (K, n)
    wgt = ok.astype(float)  # (B, n)
    yz = np.where(ok, y, 0.0)
    a = 1.0 - s
    # normal equations of y ~ E s + L (1 - s), per curve and grid point
    ss, sa, aa = wgt @ (s * s).T, wgt @ (s * a).T, wgt @ (a * a).T  # (B, K)
    sy, ay = yz @ s.T, yz @ a.T
    det = ss * aa - sa * sa
    with np.errstate(divide="ignore", invalid="ignore"):
        E = (aa * sy - sa * ay) / det
        L = (ss * ay - sa * sy) / det
        fit = E[:, :, None] * s[None] + L[:, :, None] * a[None]
        sse = np.sum(np.where(ok[:, None, :], (yz[:, None, :] - fit) ** 2, 0.0), axis=2)
    inside = (E > box[0][0]) & (E < box[1][0]) & (L > box[0][1]) & (L < box[1][1])
    sse = np.where(np.isfinite(sse) & (np.abs(det) > 1e-12) & inside, sse, np.inf)
    best = np.argmin(sse, axis=1)
    rows = np.arange(len(best))
    return np.stack([E[rows, best], L[rows, best], mm[best], ww[best]], axis=1)


def _fit(u: np.ndarray, y: np.ndarray, start: np.ndarray, box: Box) -> tuple[np.ndarray, bool]:
    """Levenberg-Marquardt (MINPACK's lmder, via scipy's leastsq: the thinnest wrapper, since the bootstrap
    makes a thousand fits) on unbounded p with (E, L, m, w) = lo + (hi - lo) sigma(p): box bounds
    without a bounded solver. Returns (E, L, m, w) and whether it converged."""
    lo, hi = box
    d = hi - lo
    frac = np.clip((np.asarray(start, dtype=float) - lo) / d, 1e-6, 1 - 1e-6)
    frac = np.where(np.isfinite(frac), frac, 0.5)
    p0 = np.log(frac / (1 - frac))

    def params(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = 0.5 * (1.0 + np.tanh(0.5 * p))  # the logistic function, without overflow
        return lo + d * g, d * g * (1 - g)

    def res(p: np.ndarray) -> np.ndarray:
        (E, L, m, w), _ = params(p)
        return L + (E - L) * _basis(u, m, w) - y

    def jac(p: np.ndarray) -> np.ndarray:
        (E, L, m, w), dx = params(p)
        s = _basis(u, m, w)
        ds = s * (1.0 - s)
        z = (u - m) / w
        return np.stack([s, 1.0 - s, (E - L) * ds / w, (E - L) * ds * z / w], axis=1) * dx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        x, _, _, _, ier = leastsq(res, p0, Dfun=jac, full_output=True, maxfev=400)
    out = params(x)[0]
    return out, bool(ier in (1, 2, 3, 4) and np.all(np.isfinite(out)))


# ---------------------------------------------------------------------------------------------
# Inputs


def log_values(values: np.ndarray, floor: float | None = None) -> tuple[np.ndarray, float | None, int]:
    """log of a non-negative metric, exact zeros at log(floor). Default floor: one decade below the
    smallest positive value in the data (where the heatmaps draw 0), so it is tied to the data and the
    same for every resample. Returns (log values, floor used or None without zeros, number of zeros)."""
    v = np.asarray(values, dtype=float)
    fin = np.isfinite(v)
    if np.any(v[fin] < 0):
        raise ValueError("values must be >= 0 (a distance, barrier or rate); got a negative value")
    zero = fin & (v == 0)
    nz = int(zero.sum())
    if nz == 0:
        with np.errstate(divide="ignore"):
            return np.where(fin, np.log(np.where(fin, v, 1.0)), np.nan), None, 0
    if floor is None:
        pos = v[fin & (v > 0)]
        if not pos.size:
            return np.full(v.shape, np.nan), None, nz  # nothing but zeros: no log scale to speak of
        floor = float(pos.min()) / 10.0
    if not floor > 0:
        raise ValueError(f"floor must be > 0, got {floor}")
    out = np.where(fin, np.log(np.where(fin & (v > 0), v, floor)), np.nan)
    return out, float(floor), nz


def _prepare(t: ArrayLike, values: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    ts = np.asarray(t, dtype=float).ravel()
    v = np.asarray(values, dtype=float)
    if v.ndim == 1:
        v = v[None, :]
    if v.ndim != 2 or v.shape[1] != ts.size:
        raise ValueError(f"values must have shape (replicates, {ts.size}) to match the t grid; got {v.shape}")
    if not np.all(np.isfinite(ts)) or np.any(ts < 0):
        raise ValueError("the t grid must be finite iterations >= 0")
    if np.unique(ts).size != ts.size:
        raise ValueError("the t grid must not repeat a value")
    order = np.argsort(ts)
    return ts[order], v[:, order]


def _pooled_sd(y: np.ndarray) -> float:
    """sd of log M across replicates within a t column, pooled over columns (NaN cells skipped)."""
    ok = np.isfinite(y)
    cnt = ok.sum(axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(y, axis=0)
    dev = np.where(ok, y - mean, 0.0)
    dof = int(np.sum(np.maximum(cnt - 1, 0)))
    return float(math.sqrt(np.sum(dev**2) / dof)) if dof else float("nan")


def _col_means(y: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(y, axis=-2)


# ---------------------------------------------------------------------------------------------
# The estimator


def estimate_transition(t0: ArrayLike, values: ArrayLike, n_boot: int = 1000, seed: int = 0, floor: float | None = None,
                        rules: Rules = RULES, axis: str = "t0") -> Transition:
    """t* of a chaos metric at the final t1 versus t0, with a 95% interval (expanded bootstrap, widened to what
    the grid resolves, inside the grid).

    t0: (n,) iterations >= 0, any order; values: (replicates, n), NaN where a cell has no value, larger
    before the transition than after. Zeros sit at `floor` on the log scale (default: a tenth of the
    smallest positive value). Returns a `Transition`; when any rule of `rules` fails, `found` is False and
    `outcome` (none, beyond_grid, before_grid, unresolved) and `reason` say why (docs/transition.md).
    Deterministic for a given seed.
    """
    t, v = _prepare(t0, values)
    y_all, fl, nz = log_values(v, floor)
    ok_cell = np.isfinite(y_all)
    keep_rep = ok_cell.any(axis=1)
    y = y_all[keep_rep]
    keep_col = np.isfinite(y).any(axis=0)
    y, tt = y[:, keep_col], t[keep_col]
    R, n = y.shape
    base: dict[str, Any] = dict(method=METHOD, axis=axis, floor=fl, zeros=nz, points=n, replicates=R, n_boot=0)

    def none(reason: str, **fit: Any) -> Transition:
        return Transition(False, None, None, None, reason=reason, **{**base, **fit})

    if R == 0 or n == 0:
        if nz and not np.any(np.asarray(v)[np.isfinite(v)] > 0):
            return none("every value is exactly 0: nothing falls")
        return none("no values: every cell is NaN")
    if n < rules.min_points:
        return none(f"too few {axis} points with a value: {n} < {rules.min_points}")
    u = np.log1p(tt)
    ybar = _col_means(y[None])[0]
    box = _box(u, ybar, rules)
    start = _seed_fits(u, ybar[None], np.ones((1, n), bool), box)[0]
    p, conv = _fit(u, ybar, start, box)
    if not conv:
        return none("the sigmoid fit did not converge")
    E, L, m, w = (float(x) for x in p)
    noise = _pooled_sd(y) if R > 1 else float("nan")
    counts = np.isfinite(y).sum(axis=0)
    se = noise / math.sqrt(float(np.mean(counts))) if R > 1 else float("nan")
    drop = E - L
    snr = (drop / se if se > 0 else (math.inf if drop > 0 else -math.inf)) if R > 1 else None
    fit: dict[str, Any] = dict(early=math.exp(E), late=math.exp(L), fold=math.exp(drop) if drop < 700 else math.inf,
                               midpoint_u=m, width=w, slope=-drop / (4 * w), drop_se=snr,
                               noise_sd=noise if R > 1 else None)

    def other(outcome: str, reason: str, **more: Any) -> Transition:
        """A refusal that is not "none": the reason says what to change (ADVICE)."""
        return Transition(False, None, None, None, reason=f"{reason}: {ADVICE[outcome]}", outcome=outcome,
                          **{**base, **fit, **more})

    if drop <= 0:
        return none("no fall: the fitted late level is not below the early level (flat or rising)", **fit)
    if drop < math.log(rules.min_fold):
        return none(f"the fall is too small: early/late = {math.exp(drop):.3g} < {rules.min_fold:g}", **fit)
    if R < rules.min_replicates:
        return none(f"{R} replicate: a bootstrap over replicates needs at least {rules.min_replicates}, "
                    "so no interval is possible", **fit)
    if snr is not None and snr < rules.min_drop_se:
        return none(f"the fall is within replicate noise: {drop:.3g} in log M is {snr:.3g} standard errors "
                    f"< {rules.min_drop_se:g}", **fit)
    sse_flat = float(np.sum((ybar - ybar.mean()) ** 2))
    sse_sig = float(np.sum((L + (E - L) * _basis(u, m, w) - ybar) ** 2))
    gain_flat = _chi2(sse_flat - sse_sig, se, sse_flat) - 2 * 3
    if gain_flat < rules.min_evidence:
        return none(f"no credible fall: a flat curve fits as well (AIC gain of the sigmoid {gain_flat:.3g} "
                    f"< {rules.min_evidence:g})", **fit)
    if m >= u[-1]:
        return other("beyond_grid", f"the midpoint t = {math.expm1(m):.4g} lies beyond the last {axis} "
                     f"({tt[-1]:g}): the fall is not over within the grid", **fit)
    if m <= u[0]:
        return other("before_grid", f"the midpoint t = {math.expm1(m):.4g} lies before the first {axis} "
                     f"({tt[0]:g})", **fit)
    # each level seen: enough t columns where the fitted curve is within level_share of the drop from it
    s = _basis(u, m, w)
    on_early, on_late = int(np.sum(s >= 1 - rules.level_share)), int(np.sum(s <= rules.level_share))
    share = f"within {rules.level_share:.0%} of the fall"
    lo_y, hi_y = float(ybar.min()), float(ybar.max())
    margin = rules.level_margin * (hi_y - lo_y)
    if on_late < rules.min_side_points or L < lo_y - margin:
        return other("beyond_grid", f"still falling at the last {axis}: {on_late} {axis} points lie on the late level "
                     f"({share}), at least {rules.min_side_points} are needed", **fit)
    if on_early < rules.min_side_points or E > hi_y + margin:
        return other("before_grid", f"already falling at the first {axis}: {on_early} {axis} points lie on the early "
                     f"level ({share}), at least {rules.min_side_points} are needed", **fit)
    # the sigmoid against the shapes without a late (or an early) plateau; its SSE the best of the solver's and
    # the profile's (which also tries steps sharper than the box allows)
    ms, prof = _profile(u, ybar, box)
    sse_sig = min(sse_sig, float(prof.min()))
    # AIC with the replicate noise known: chi-square plus twice the parameters (the sigmoid has 4)
    gains = {k: _chi2(sse_alt - sse_sig, se, sse_alt) - 2 * (4 - npar) for k, (sse_alt, npar) in
             _alternatives(u, ybar).items()}
    name, evidence = min(gains.items(), key=lambda kv: kv[1])
    fit.update(evidence=evidence, alternative=name)
    if evidence < rules.min_evidence:
        where = "before_grid" if name == "falling then flat" else "beyond_grid"
        side = "early" if where == "before_grid" else "late"
        return other(where, f"the sigmoid does not beat a {name} curve (AIC gain {evidence:.3g} "
                     f"< {rules.min_evidence:g}): the {side} level is not seen", **fit)
    # a step sharper than the grid: no column's mean lies inside the fall, so t* is only known to lie between two t
    band = rules.inside_share * drop
    inside = (ybar > L + band) & (ybar < E - band)
    if not inside.any():
        a, b = float(tt[u < m][-1]), float(tt[u > m][0])
        return Transition(False, None, a, b, reason=f"a step sharper than the grid: no {axis} lies inside the fall, so "
                          f"t* lies somewhere between {a:g} and {b:g}: {ADVICE['unresolved']}", outcome="unresolved",
                          **{**base, **fit})
    if n_boot < 1:
        return none(f"n_boot={n_boot}: without bootstrap fits there is no interval", **fit)
    mids, failed = _bootstrap(u, y, n_boot, seed, box, rules.min_points, start)
    base["n_boot"] = n_boot
    fit["boot_failed"] = failed
    if failed > rules.max_boot_fail * n_boot:
        return none(f"{failed} of {n_boot} bootstrap fits failed (more than {rules.max_boot_fail:.0%}): the fall "
                    "is not robust to which replicates are drawn", **fit)
    q_lo, q_hi = np.quantile(mids, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    c = expansion(R) if rules.expand else 1.0
    lo_u, hi_u = min(q_lo, m - c * (m - q_lo)), max(q_hi, m + c * (q_hi - m))
    # never narrower than the grid resolves: every midpoint whose best curve (steps included) fits as well
    dof = int(np.sum(np.maximum(counts - 1, 0)))
    hull = _profile_interval(ms, prof, sse_sig, se, dof, n) if rules.resolve else None
    if hull is not None:
        lo_u, hi_u = min(lo_u, hull[0]), max(hi_u, hull[1])
    lo_u, hi_u = max(lo_u, u[0]), min(hi_u, u[-1])  # never before or past the grid
    return Transition(True, math.expm1(m), math.expm1(lo_u), math.expm1(hi_u), reason=None, expansion=c,
                      outcome="found", **{**base, **fit})


def _chi2(d_sse: float, se: float, scale: float) -> float:
    """A difference of sums of squares in units of the mean curve's variance se^2 (inf without replicate noise,
    unless the difference is rounding)."""
    if se > 0:
        return d_sse / se**2
    return math.inf if d_sse > 1e-12 * max(scale, 1.0) else 0.0


def _alternatives(u: np.ndarray, y: np.ndarray) -> dict[str, tuple[float, int]]:
    """Least-squares SSE of the shapes a fall without one of its plateaus takes, in log M versus u: a straight
    fall (a power law in t), flat then falling to the end (a hinge whose late side is a line), and falling then
    flat (the mirror: the early plateau not seen). The hinge's knot is scanned on a fine grid; for a fixed
    knot the shape is linear in its two coefficients, solved in closed form. Returns {name: (SSE, parameters)}."""
    n = u.size
    ones = np.ones(n)
    x = np.stack([ones, u], axis=1)
    line = float(np.sum((y - x @ np.linalg.lstsq(x, y, rcond=None)[0]) ** 2))
    knots = np.linspace(u[0], u[-1], 257)[1:-1]
    out = {"straight fall": (line, 2)}
    for name, g in (("flat then falling", np.maximum(u[None, :] - knots[:, None], 0.0)),
                    ("falling then flat", np.minimum(u[None, :] - knots[:, None], 0.0))):
        out[name] = (float(np.min(_two_term_sse(g, y))), 3)
    return out


def _two_term_sse(g: np.ndarray, y: np.ndarray) -> np.ndarray:
    """SSE of y ~ a + b g_k for every row g_k of g (K, n), by the 2x2 normal equations."""
    n = y.size
    sg, sgg, sy, sgy = g.sum(1), (g * g).sum(1), float(y.sum()), g @ y
    det = n * sgg - sg**2
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (sgg * sy - sg * sgy) / det
        b = (n * sgy - sg * sy) / det
        sse = np.sum((y[None, :] - a[:, None] - b[:, None] * g) ** 2, axis=1)
    flat = float(np.sum((y - y.mean()) ** 2))
    return np.where(np.isfinite(sse) & (np.abs(det) > 1e-12), sse, flat)


def _profile(u: np.ndarray, y: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """The profile of the midpoint: for each m on 301 points across the grid, the smallest SSE of a decreasing
    sigmoid of any width from a step far sharper than the grid (1/1000 of its span) to the box's widest, with
    its best levels (closed form for fixed m and w). Returns (m values, SSE)."""
    span = float(u[-1] - u[0])
    ms = np.linspace(u[0], u[-1], 301)
    ws = np.geomspace(1e-3 * span, float(box[1][3]), 96)  # fine: near a step, m and w trade off closely
    mm, ww = (g.ravel() for g in np.meshgrid(ms, ws, indexing="ij"))
    s = _basis(u[None, :], mm[:, None], ww[:, None])  # (M K, n)
    a = 1.0 - s
    ss, sa, aa = (s * s).sum(1), (s * a).sum(1), (a * a).sum(1)
    sy, ay = s @ y, a @ y
    det = ss * aa - sa * sa
    with np.errstate(divide="ignore", invalid="ignore"):
        E = (aa * sy - sa * ay) / det
        L = (ss * ay - sa * sy) / det
        sse = np.sum((y[None, :] - E[:, None] * s - L[:, None] * a) ** 2, axis=1)
    sse = np.where(np.isfinite(sse) & (np.abs(det) > 1e-12) & (E > L), sse, np.inf).reshape(len(ms), len(ws))
    return ms, sse.min(axis=1)


def _profile_interval(ms: np.ndarray, prof: np.ndarray, best: float, se: float, dof: int,
                      n: int) -> tuple[float, float] | None:
    """The 95% profile set of the midpoint m, in u: every m whose profile SSE is within F(1, dof; 0.95) se^2 of
    the best fit (se^2 scaled up by the fit's own misfit when it exceeds the replicate noise). A step between two
    grid points fits equally well anywhere between them, so the set never claims more than the grid resolves.
    Returns its hull (lo, hi), or None without replicate noise (nothing to add to the bootstrap)."""
    if not se > 0:
        return None
    phi = max(1.0, best / se**2 / max(n - 4, 1))  # misfit beyond the replicate noise widens the set
    thr = float(f_dist.ppf(LEVEL, 1, max(dof, 1))) * se**2 * phi
    keep = ms[prof - best <= thr]
    if not keep.size:
        return None
    step = ms[1] - ms[0]
    return float(keep.min() - step / 2), float(keep.max() + step / 2)

def expansion(replicates: int) -> float:
    """sqrt(R / (R - 1)) t_{R-1, 0.975} / z_0.975: how much wider a 95% interval must be from R replicates.

    A bootstrap over R replicates sees their spread with the divisor R (too narrow by sqrt((R-1)/R))
    and normal tails where Student's apply. The plain percentile interval covered a known midpoint
    in 78% of draws at R = 5 (docs/transition.md); scaling its half-widths in u by this factor (1.58
    at R = 5, 1.29 at R = 8, 1.0 as R grows) is the expanded percentile interval of Hesterberg
    (2015) in its simplest form."""
    if replicates < 2:
        return math.inf
    r = float(replicates)
    return math.sqrt(r / (r - 1)) * float(student_t.ppf((1 + LEVEL) / 2, r - 1) / norm.ppf((1 + LEVEL) / 2))


def _bootstrap(u: np.ndarray, y: np.ndarray, n_boot: int, seed: int, box: Box, min_points: int,
               start: np.ndarray) -> tuple[np.ndarray, int]:
    """Midpoints m of the fits to resampled replicates (rows drawn with replacement). A resample fails
    when fewer than min_points columns keep a value, the fit does not converge, it does not fall, or
    its midpoint leaves the grid. Returns (midpoints of the successful fits, number failed)."""
    if n_boot < 1:
        return np.empty(0), 0
    rng = np.random.default_rng(seed)
    R, n = y.shape
    idx = np.sort(rng.integers(0, R, size=(n_boot, R)), axis=1)
    # the mean curve depends only on which replicates were drawn, not their order: fit each multiset once
    # (126 of them at R = 5)
    uniq, inverse = np.unique(idx, axis=0, return_inverse=True)
    yb = _col_means(y[uniq])  # (distinct resamples, n)
    ok = np.isfinite(yb)
    starts = _seed_fits(u, yb, ok, box)
    mid = np.full(len(uniq), np.nan)  # NaN: failed
    for b in range(len(uniq)):
        k = ok[b]
        if k.sum() < min_points:
            continue
        st = starts[b] if np.all(np.isfinite(starts[b])) else start
        p, conv = _fit(u[k], yb[b, k], st, box)
        if conv and p[0] > p[1] and u[0] < p[2] < u[-1]:
            mid[b] = p[2]
    mids = mid[np.ravel(inverse)]
    return mids[np.isfinite(mids)], int(np.sum(~np.isfinite(mids)))


def estimate_kernel_transition(t: ArrayLike, s: ArrayLike, n_boot: int = 1000, seed: int = 0,
                               floor: float | None = None, rules: Rules = RULES) -> Transition:
    """The cone side: the same fit on the kernel velocity S(theta_t, theta_t+dt) against t.

    t: (n,) iterations of the first checkpoint of each pair; s: (replicates, n). Same definition,
    rules and interval as `estimate_transition`, so the two effects' t* can be set side by side.
    """
    return estimate_transition(t, s, n_boot=n_boot, seed=seed, floor=floor, rules=rules, axis="t")


def estimate_transitions(t0: ArrayLike, values: Mapping[str, ArrayLike], n_boot: int = 1000,
                         seed: int = 0) -> dict[str, Transition]:
    """`estimate_transition` for several metrics on one grid ({"C": (R, n), "B": ..., "D": ...})."""
    return {k: estimate_transition(t0, v, n_boot=n_boot, seed=seed) for k, v in values.items()}


def sigmoid_curve(tr: Transition, t: ArrayLike) -> np.ndarray:
    """The fitted curve exp(y(log(1 + t))) at t, in the metric's units; NaN where no fit was made."""
    ts = np.asarray(t, dtype=float)
    if tr.early is None or tr.late is None or tr.midpoint_u is None or tr.width is None:
        return np.full(ts.shape, np.nan)
    E, L = math.log(tr.early), math.log(tr.late)
    return np.exp(L + (E - L) * _basis(np.log1p(ts), tr.midpoint_u, tr.width))


def replicate_band(values: ArrayLike, n_boot: int = 1000, seed: int = 0, log: bool = False,
                   floor: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over replicates (axis 0) with its 95% percentile-bootstrap band, for every other cell.

    values: (replicates, ...), NaN for missing cells. log=False: the arithmetic mean; log=True: the
    geometric mean, zeros at `floor` as in `log_values` (what `estimate_transition` fits). Returns
    (mean, low, high), each of shape values.shape[1:]; the band equals the mean with one replicate.
    """
    v = np.asarray(values, dtype=float)
    if log:
        v, _, _ = log_values(v, floor)
    R = v.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(v, axis=0)
        if R < 2 or n_boot < 1:
            lo = hi = mean
        else:
            rng = np.random.default_rng(seed)
            boots = np.empty((n_boot,) + v.shape[1:])
            for b in range(0, n_boot, 256):  # chunks keep memory flat on large grids
                idx = rng.integers(0, R, size=(min(256, n_boot - b), R))
                boots[b:b + len(idx)] = np.nanmean(v[idx], axis=1)
            lo, hi = np.nanquantile(boots, [(1 - LEVEL) / 2, (1 + LEVEL) / 2], axis=0)
    if log:
        return np.exp(mean), np.exp(lo), np.exp(hi)
    return np.asarray(mean), np.asarray(lo), np.asarray(hi)
