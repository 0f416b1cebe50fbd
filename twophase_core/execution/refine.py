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

In the app (Sweeps page) the same rounds run as jobs: `submit_refine` writes the sweep's record with a `refine`
entry and starts one driver process (the worker module, given the sweep's id), which runs `refine_sweep` itself
with each round's points queued as ordinary jobs (`drive_refine`); so the budget, its units and the reasons to stop
are the CLI's by construction. The record follows the rounds: `sweep` and `runs` are the round running, `refine`
holds the CLI's JSON entry (budget, spent, rounds, stopped) and the driver's state.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twophase_core.experiments.chaos import ChaosConfig
from twophase_core.experiments.result import load_result
from twophase_core.experiments.sweep import (
    Sweep,
    SweepResult,
    expand,
    load_results,
    load_sweep,
    sweep_key,
    sweep_units,
)
from twophase_core.settings import config as conf
from twophase_core.settings.spec import ConfigError
from twophase_core.storage.store import Store

if TYPE_CHECKING:
    from twophase_core.execution.jobs import JobManager

POLL_S = 0.5  # how often the app's driver looks at its round's jobs
STOPPED = "stopped on the Sweeps page"  # the reason a refine stopped by its user gives


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


def check_refinable(sweep: Sweep, budget: float = 0.0) -> None:
    """A ConfigError unless `sweep` can be refined within `budget`: a chaos sweep that leaves t0, t1 and T to
    the rounds, and a budget of zero or more units."""
    if sweep.kind != "chaos":
        raise ConfigError("--refine", sweep.kind, f"adds t0 to a chaos sweep; a {sweep.kind} sweep has no t0")
    fixed = {"t0", "t1", "iterations"} & {k for k, _ in sweep.vary}
    if fixed:
        raise ConfigError("--refine", sorted(fixed), "sets t0, t1 and iterations itself: do not vary them")
    if not (isinstance(budget, int | float) and math.isfinite(budget) and budget >= 0):
        raise ConfigError("--refine", budget, "give a budget in progress units (SGD steps), 0 or more")


def refine_sweep(sweep: Sweep, store: Store, budget: float, metric: str = "C",
                 run: Callable[[Sweep], SweepResult] | None = None, max_rounds: int = 8,
                 on_round: Callable[[Refined], None] | None = None) -> Refined:
    """Run `sweep` (a chaos sweep), then rounds with the t0 its groups' outcomes ask for, within `budget` units.
    `run` runs one round (default: `execution.sweeps.run_sweep` on `store`, locally); `on_round` is told what
    was done after each round (its `stopped` still empty)."""
    from twophase_core.execution.sweeps import run_sweep

    check_refinable(sweep, budget)
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
        if on_round is not None:
            on_round(out)
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


# ---------------------------------------------------------------------------------------------
# As jobs (the app): one driver process runs the rounds, each round's points are ordinary jobs


class RoundStopped(Exception):
    """A point of the round running failed, was cancelled or lost its job: the rounds cannot go on."""


def cli_entry(refine: Mapping[str, Any]) -> dict[str, Any]:
    """The `refine` entry of the CLI's sweep JSON, from a sweep record's `refine`."""
    return {k: refine[k] for k in ("budget", "spent", "rounds", "stopped")}


def _update(store: Store, sweep_id: str, fn: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
    """Read-modify-write of the sweep's record (the page and the driver both write it)."""
    with store.cache.transact():
        rec = load_sweep(store, sweep_id)
        if rec is None or not isinstance(rec.get("refine"), dict):
            return None  # gone, or replaced by a plain sweep: nothing of ours to write
        fn(rec)
        store.put_json(sweep_key(sweep_id), rec)
        return rec


def refine_state(jm: JobManager, rec: Mapping[str, Any]) -> str:
    """What the record's refine is doing: running, done, failed, cancelled (by its user), or lost (its driver ended
    without saying)."""
    ref = rec.get("refine") or {}
    state = str(ref.get("state", "done"))
    if state == "running" and ref.get("pid") is not None and not jm.launcher.alive(int(ref["pid"])):
        fresh = load_sweep(jm.store, str(rec["id"])) or rec  # it may have finished since `rec` was read
        state = str((fresh.get("refine") or {}).get("state", "done"))
        return "lost" if state == "running" else state
    return state


def stop_refine(jm: JobManager, sweep_id: str) -> dict[str, Any] | None:
    """Ask the sweep's refine driver to stop: it ends after cancelling its round's points, and says so on the record
    (state `cancelled`); the points queued or running now are cancelled at once too. Rounds already finished stay,
    and submitting the sweep again reuses every stored point."""
    from twophase_core.execution.sweeps import cancel_sweep

    rec = _update(jm.store, sweep_id, lambda r: r["refine"].update(stop_requested=time.time()))
    if rec is not None:
        cancel_sweep(jm, rec)
    return rec


def _stop_requested(store: Store, sweep_id: str) -> bool:
    rec = load_sweep(store, sweep_id)
    return rec is not None and isinstance(rec.get("refine"), dict) and rec["refine"].get("stop_requested") is not None


def submit_refine(jm: JobManager, sweep: Sweep, budget: float, metric: str = "C") -> dict[str, Any]:
    """Record the sweep with a `refine` entry and start its driver (`drive_refine`, in the worker module);
    a driver of this sweep still running is attached to. The driver queues each round's points as jobs."""
    from twophase_core.execution.sweeps import sweep_record

    check_refinable(sweep, budget)
    points = expand(sweep)
    sid = sweep.id()
    old = load_sweep(jm.store, sid)
    if old is not None and isinstance(old.get("refine"), dict) and refine_state(jm, old) == "running":
        return old
    rec = {**sweep_record(sweep, points, old),
           "refine": {"budget": float(budget), "spent": 0.0, "rounds": [], "stopped": "", "metric": metric,
                      "start": sweep.to_dict(), "state": "running", "pid": None, "error": None}}
    jm.store.put_json(sweep_key(sid), rec)
    try:
        pid = jm.launcher.launch(sid, jm.cache_dir)
    except Exception as e:  # noqa: BLE001 - said on the sweep, not raised into the page
        why = f"could not start the refine driver: {e}"
        return _update(jm.store, sid, lambda r: r["refine"].update(state="failed", error=why, stopped=why)) or rec

    def started(r: dict[str, Any]) -> None:
        if r["refine"].get("state") == "running" and r["refine"].get("pid") is None:
            r["refine"]["pid"] = pid

    return _update(jm.store, sid, started) or rec


def drive_refine(store: Store, sweep_id: str, jm: JobManager | None = None, poll_s: float = POLL_S) -> int:
    """Run the record's refine: `refine_sweep` with each round's points queued as jobs and waited for; the
    record follows each round. 0: done, 1: a round could not finish (said in the record), 2: nothing to run."""
    from twophase_core.execution.jobs import JobManager

    rec = load_sweep(store, sweep_id)
    ref = (rec or {}).get("refine")
    if rec is None or not isinstance(ref, dict):
        print(f"refine: no sweep record {sweep_id!r} with a refine in this store", flush=True)
        return 2
    jm = jm if jm is not None else JobManager(store)
    rounds = [0]

    def run(s: Sweep) -> SweepResult:
        points = expand(s)
        rounds[0] += 1
        if _stop_requested(store, sweep_id):
            raise RoundStopped(STOPPED)
        if _update(store, sweep_id, lambda r: r.update(sweep=s.to_dict(), runs=[p.run_id for p in points])) is None:
            raise RoundStopped("the sweep's record is gone or was replaced by a sweep without --refine")
        for p in sorted(points, key=lambda p: p.config.train.trajectory_key()):
            jm.submit(p.config)
        while True:
            if _stop_requested(store, sweep_id):  # (its own round's points: submitted after the page looked, maybe)
                for p in points:
                    job = jm.get(p.run_id)
                    if job is not None and job.status in ("queued", "running"):
                        jm.cancel(p.run_id)
                raise RoundStopped(STOPPED)
            results = load_results(store, points)
            if len(results) == len(points):
                return SweepResult(s, points, results, {"points": len(points), "executor": "jobs"})
            for p in points:
                job = jm.get(p.run_id) if p.hash not in results else None
                if job is not None and job.status in ("queued", "running"):
                    continue
                if p.hash in results or load_result(store, conf.kind_of(p.config), p.hash) is not None:
                    continue  # (stored since the look above)
                what = "has no job" if job is None else job.status + (f": {job.error}" if job.error else "")
                raise RoundStopped(f"round {rounds[0]}: point {p.run_id} {what}")
            jm.pump()
            time.sleep(poll_s)

    def told(done: Refined) -> None:
        _update(store, sweep_id, lambda r: r["refine"].update(spent=round(done.spent, 1), rounds=done.rounds,
                                                              shown=done.result.sweep.to_dict()))

    try:
        out = refine_sweep(Sweep.from_dict(ref["start"]), store, float(ref["budget"]), str(ref.get("metric", "C")),
                           run=run, on_round=told)
    except Exception as e:  # noqa: BLE001 - every failure is said on the sweep
        if not isinstance(e, RoundStopped):
            traceback.print_exc()
        err = str(e)
        why = f"stopped: {err}"
        state = "cancelled" if err == STOPPED else "failed"
        _update(store, sweep_id, lambda r: r["refine"].update(state=state, error=err, stopped=why))
        print(f"refine {sweep_id}: {why}", flush=True)
        return 1
    _update(store, sweep_id, lambda r: r["refine"].update(out.to_json(), state="done",
                                                          shown=out.result.sweep.to_dict()))
    print(f"refine {sweep_id}: {len(out.rounds)} rounds, {out.spent:.0f} of {out.budget:.0f} units ({out.stopped})",
          flush=True)
    return 0


def shown_record(rec: dict[str, Any], store: Store) -> dict[str, Any]:
    """The record as the page draws it: while a refine round runs, the last finished round (whose points are
    stored), so the groups do not vanish while the new grid's points train."""
    ref = rec.get("refine")
    if not isinstance(ref, dict) or not isinstance(ref.get("shown"), dict) or ref["shown"] == rec["sweep"]:
        return rec
    points = expand(Sweep.from_dict(rec["sweep"]))
    if all(load_result(store, conf.kind_of(p.config), p.hash) is not None for p in points):
        return rec
    shown = Sweep.from_dict(ref["shown"])
    return {**rec, "sweep": ref["shown"], "runs": [p.run_id for p in expand(shown)]}
