"""An adaptive t0 grid: a chaos sweep on a coarse grid first, then t0 added where the estimate asks for them
(`twophase sweep chaos ... --refine BUDGET`, docs/transition.md "Refining the grid").

After each round every group's t* of one metric is read (`science.transition`); its outcome says where a point
helps: between the two t0 an unresolved step lies between, past the last t0 (and T raised so the new t0 has as
long to grow as the last one had) when the fall goes on beyond the grid, between the first two t0 when it began
before them. Rounds go on until every group's outcome is `found`, a round adds nothing, or the next round would
spend more than the budget. A round is an ordinary sweep with a larger grid: the base runs are the same
trajectories (T is not part of a trajectory's key, so a longer T continues its checkpoints) and each branch from
a t0 already run is reused from the store. The budget counts the sweep's progress units (SGD steps of base runs
and branches not yet stored, plus the cells' evaluations), as the progress bar does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twophase_core.experiments.chaos import ChaosConfig
from twophase_core.experiments.sweep import Sweep, SweepResult, expand, load_results, sweep_units
from twophase_core.settings import config as conf
from twophase_core.storage.store import Store


def _between(a: float, b: float) -> int | None:
    """The t0 halfway between a and b on the log(1 + t0) axis, or None when no whole iteration lies strictly
    between them."""
    mid = int(round(math.sqrt((1.0 + a) * (1.0 + b)) - 1.0))
    return mid if a < mid < b else None


def proposals(t0: Sequence[int], T: int, estimate: Mapping[str, Any] | None) -> tuple[set[int], int]:
    """The t0 one group's estimate asks for, and the T they need (T itself when none is raised)."""
    grid = sorted(int(x) for x in t0)
    outcome = (estimate or {}).get("outcome") or ("found" if (estimate or {}).get("found") else "none")
    if outcome == "unresolved" and estimate is not None:
        mid = _between(float(estimate["ci_low"]), float(estimate["ci_high"]))
        return ({mid} if mid is not None else set()), T
    if outcome == "beyond_grid":
        last = grid[-1]
        new = max(last + 1, int(round(1.5 * last)))
        return {new}, max(T, new + (T - last))  # the new t0 as long to grow as the last one had
    if outcome == "before_grid" and len(grid) >= 2:
        mid = _between(grid[0], grid[1])
        return ({mid} if mid is not None else set()), T
    return set(), T


@dataclass
class Refined:
    """What refining did: the final round's result, the budget, the units spent, and each round's grid."""

    result: SweepResult
    budget: float
    spent: float = 0.0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = ""  # why the rounds ended

    def to_json(self) -> dict[str, Any]:
        return {"budget": self.budget, "spent": round(self.spent, 1), "rounds": self.rounds, "stopped": self.stopped}


def refine_sweep(sweep: Sweep, store: Store, budget: float, metric: str = "C",
                 run: Callable[[Sweep], SweepResult] | None = None, max_rounds: int = 8) -> Refined:
    """Run `sweep` (a chaos sweep), then rounds with the t0 its groups' outcomes ask for, within `budget` units.
    `run` runs one round (default: `execution.sweeps.run_sweep` on `store`, locally)."""
    from twophase_core.execution.sweeps import run_sweep

    if sweep.kind != "chaos":
        raise ValueError(f"--refine adds t0 to a chaos sweep; a {sweep.kind} sweep has no t0")
    fixed = {"t0", "t1", "iterations"} & {k for k, _ in sweep.vary}
    if fixed:
        raise ValueError(f"--refine sets {', '.join(sorted(fixed))} itself: do not vary them")
    go = run or (lambda s: run_sweep(s, store))
    current = sweep
    out: Refined | None = None
    spent = 0.0
    rounds: list[dict[str, Any]] = []
    stopped = f"{max_rounds} rounds"
    for _ in range(max_rounds):
        points = expand(current)
        stored = load_results(store, points)  # a point already in the store costs nothing
        cost = sweep_units([p.config for p in points if p.hash not in stored], store)
        if rounds and spent + cost > budget:
            stopped = f"the next round needs {cost:.0f} units, {budget - spent:.0f} are left"
            break
        result = go(current)
        spent += cost
        base = current.base
        assert isinstance(base, ChaosConfig)
        t0 = [int(x) for x in base.t0]
        T = int(base.train.iterations)
        groups = result.groups(n_boot=1000)
        outcomes = {", ".join(f"{k}={v}" for k, v in g["varied"].items()) or "base":
                    ((g.get("estimates") or {}).get(metric) or {}).get("outcome", "none") for g in groups}
        rounds.append({"t0": t0, "T": T, "units": round(cost, 1), "outcomes": outcomes})
        out = Refined(result, budget, spent, rounds)
        add: set[int] = set()
        new_T = T
        for g in groups:
            more, need = proposals(t0, T, (g.get("estimates") or {}).get(metric))
            add |= more
            new_T = max(new_T, need)
        add -= set(t0)
        if all(o == "found" for o in outcomes.values()):
            stopped = "every group found"
            break
        if not add and new_T == T:
            stopped = "no group asks for another t0 (none found, or the grid cannot be split further)"
            break
        t1 = tuple(sorted(set(base.t1) | {new_T}))
        current = Sweep(conf.replace(base, iterations=new_T, t0=tuple(sorted(set(t0) | add)), t1=t1), current.vary,
                        current.seeds, current.replicates)
    assert out is not None  # the first round always runs
    out.stopped = stopped
    return out
