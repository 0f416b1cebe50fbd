"""How often the transition estimator calls a transition, and how often its interval holds the truth, on
synthetic curves whose truth is known by construction (docs/transition.md, "Measured rates").

    python -m twophase_core.science.transition_rates --draws 200 --n-boot 1000

Each family is drawn on the demo-sweep's shape of experiment: 8 t0 on a log grid up to T = 3,000, 5 replicates,
Gaussian noise on log M. The curves are written here from their definitions, not from the estimator's code, so the
rates check it from outside. numpy only (and the estimator).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from twophase_core.science.transition import OUTCOMES, Transition, estimate_transition

GRID = np.array([0, 25, 60, 140, 320, 700, 1300, 2200], dtype=float)  # last t0 a few hundred before T = 3,000
REPLICATES = 5


def _logistic(t: np.ndarray, t_mid: float, width: float) -> np.ndarray:
    """1 before t_mid, 0 after, halfway at t_mid, on the log(1 + t) axis with the given width."""
    z = (np.log1p(t) - math.log1p(t_mid)) / width
    return 1.0 / (1.0 + np.exp(np.clip(z, -700, 700)))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


@dataclass(frozen=True)
class Draw:
    """One synthetic experiment: log M per replicate and t0, and the true midpoints (empty: no transition)."""

    log_m: np.ndarray  # (replicates, len(GRID))
    truth: tuple[float, ...]


def _noisy(rng: np.random.Generator, curve: np.ndarray, sd: float | np.ndarray) -> np.ndarray:
    return curve[None, :] + rng.normal(0.0, 1.0, (REPLICATES, GRID.size)) * sd


def flat(rng: np.random.Generator) -> Draw:
    """No fall: a constant level with noise of sd 0.5-1.5."""
    return Draw(_noisy(rng, np.full(GRID.size, -5.0), rng.uniform(0.5, 1.5)), ())


def straight_fall(rng: np.random.Generator) -> Draw:
    """A power law: log M falls in a straight line in log(1 + t0) by 4-12 over the grid, no plateau anywhere."""
    u = np.log1p(GRID)
    return Draw(_noisy(rng, -2.0 - rng.uniform(4, 12) * u / u[-1], rng.uniform(0.5, 1.5)), ())


def flat_then_fall(rng: np.random.Generator) -> Draw:
    """Flat until a knot (t0 20-600), then a straight fall in log-log that goes on past the last t0 (by 4-12)."""
    u = np.log1p(GRID)
    knot = math.log1p(_log_uniform(rng, 20, 600))
    curve = -3.0 - rng.uniform(4, 12) * np.maximum(u - knot, 0) / (u[-1] - knot)
    return Draw(_noisy(rng, curve, rng.uniform(0.5, 1.5)), ())


def sharp_step(rng: np.random.Generator) -> Draw:
    """A step far sharper than the grid (width 0.02 in log(1 + t0)), its midpoint anywhere in t0 80-1,000."""
    t_mid = _log_uniform(rng, 80, 1000)
    curve = -12.0 + rng.uniform(6, 10) * _logistic(GRID, t_mid, 0.02)
    return Draw(_noisy(rng, curve, rng.uniform(0.5, 1.5)), (t_mid,))


def two_step(rng: np.random.Generator) -> Draw:
    """Two falls of similar size (t0 30-80 and 400-900, width 0.3): either midpoint counts as covered."""
    a, b = _log_uniform(rng, 30, 80), _log_uniform(rng, 400, 900)
    curve = -12.0 + 4.5 * _logistic(GRID, a, 0.3) + 4.5 * _logistic(GRID, b, 0.3)
    return Draw(_noisy(rng, curve, rng.uniform(0.5, 1.5)), (a, b))


def _seen_sigmoid(rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """A midpoint (t0 60-600) and width (0.3-0.6) whose curve is within 10% of each level at two t0 or more, so
    both levels are on the grid (drawn again until they are): the transition a referee would accept."""
    while True:
        t_mid, width = _log_uniform(rng, 60, 600), rng.uniform(0.3, 0.6)
        s = _logistic(GRID, t_mid, width)
        if np.sum(s >= 0.9) >= 2 and np.sum(s <= 0.1) >= 2:
            return t_mid, s


def smooth(rng: np.random.Generator) -> Draw:
    """A sigmoid with both levels on the grid (`_seen_sigmoid`), a fall of 6-10 in log M, noise sd 0.5-1.0 (the
    demo-sweep's C and D have 0.83 and 0.92 across replicates, around falls of 12 and 5)."""
    t_mid, s = _seen_sigmoid(rng)
    return Draw(_noisy(rng, -12.0 + rng.uniform(6, 10) * s, rng.uniform(0.5, 1.0)), (t_mid,))


def smooth_noisy(rng: np.random.Generator) -> Draw:
    """The same with noise sd 0.5-1.5: up to 1.6 times the demo-sweep's, where 5 replicates tell a fall of 6 that
    levels off from one that does not less often."""
    t_mid, s = _seen_sigmoid(rng)
    return Draw(_noisy(rng, -12.0 + rng.uniform(6, 10) * s, rng.uniform(0.5, 1.5)), (t_mid,))


def heteroscedastic(rng: np.random.Generator) -> Draw:
    """The smooth sigmoid with noise sd 0.3 on the early level growing to 2 on the late one (the demo's late C
    ranges over decades between replicates)."""
    t_mid, s = _seen_sigmoid(rng)
    return Draw(_noisy(rng, -12.0 + rng.uniform(6, 10) * s, 0.3 * s + 2.0 * (1 - s)), (t_mid,))


FAMILIES: dict[str, Callable[[np.random.Generator], Draw]] = {
    "flat": flat, "straight fall": straight_fall, "flat then fall": flat_then_fall, "sharp step": sharp_step,
    "two-step": two_step, "smooth sigmoid": smooth, "smooth sigmoid, noisy": smooth_noisy,
    "heteroscedastic sigmoid": heteroscedastic,
}


@dataclass(frozen=True)
class Rates:
    """One family's tally: outcomes, and how often an interval (found or unresolved) held a true midpoint."""

    family: str
    draws: int
    outcomes: dict[str, int]
    intervals: int  # draws that gave an interval (found or unresolved)
    covered: int  # of those, how many held a true midpoint
    found_covered: int  # of the found ones, how many held a true midpoint
    reasons: dict[str, int]  # first words of each refusal's reason, counted
    seconds: float

    @property
    def found(self) -> float:
        return self.outcomes.get("found", 0) / self.draws

    @property
    def coverage(self) -> float:
        return self.covered / self.intervals if self.intervals else float("nan")

    @property
    def found_coverage(self) -> float:
        n = self.outcomes.get("found", 0)
        return self.found_covered / n if n else float("nan")


def _covers(tr: Transition, truth: tuple[float, ...]) -> bool:
    return tr.ci_low is not None and tr.ci_high is not None and any(tr.ci_low <= t <= tr.ci_high for t in truth)


def measure(family: str, draws: int, n_boot: int = 1000, seed: int = 0) -> Rates:
    """Draw `draws` experiments of the family (seeded: the same numbers every time) and estimate each."""
    make = FAMILIES[family]
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    intervals = covered = found_covered = 0
    started = time.perf_counter()
    for d in range(draws):
        draw = make(np.random.default_rng([seed, list(FAMILIES).index(family), d]))
        tr = estimate_transition(GRID, np.exp(draw.log_m), n_boot=n_boot, seed=d)
        outcomes[tr.outcome] += 1
        if tr.reason:
            reasons[" ".join(tr.reason.split(":")[0].split()[:6])] += 1
        if tr.ci_low is not None:
            intervals += 1
            hit = _covers(tr, draw.truth)
            covered += hit
            found_covered += hit and tr.found
    return Rates(family, draws, dict(outcomes), intervals, covered, found_covered, dict(reasons),
                 time.perf_counter() - started)


def table(rates: list[Rates]) -> str:
    """The rates as the markdown table docs/transition.md holds."""
    pct = lambda x: "" if math.isnan(x) else f"{100 * x:.1f}%"  # noqa: E731
    head = "| family | draws | " + " | ".join(OUTCOMES) + " | covered (found) | covered (found or unresolved) |"
    lines = [head, "|" + " --- |" * (len(OUTCOMES) + 4)]
    for r in rates:
        outs = " | ".join(pct(r.outcomes.get(o, 0) / r.draws) for o in OUTCOMES)
        lines.append(f"| {r.family} | {r.draws} | {outs} | {pct(r.found_coverage)} | {pct(r.coverage)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draws", type=int, default=200, help="draws per family (default 200)")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples per estimate (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--family", action="append", choices=list(FAMILIES), help="only these (repeatable)")
    ap.add_argument("--reasons", action="store_true", help="also list which rule refused, per family")
    args = ap.parse_args(argv)
    rates = [measure(f, args.draws, args.n_boot, args.seed) for f in (args.family or FAMILIES)]
    print(table(rates))
    print(f"\n{sum(r.seconds for r in rates):.0f} s; grid t0 = {GRID.astype(int).tolist()}, {REPLICATES} replicates")
    if args.reasons:
        for r in rates:
            ranked = sorted(r.reasons.items(), key=lambda kv: -kv[1])
            print(f"\n{r.family}: " + "; ".join(f"{k} ({v})" for k, v in ranked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
