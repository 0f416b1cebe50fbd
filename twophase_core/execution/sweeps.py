"""Running a sweep: its points here, one after another, or on Ray as one graph of tasks; or queued as jobs (the app).

What a sweep is, how it expands and how its replicates are summarised is experiments/sweep.py; this module is
where its points run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twophase_core.experiments.result import Result, load_result, save_result
from twophase_core.experiments.sweep import Sweep, SweepResult, expand, load_results, load_sweep, sweep_key, sweep_units
from twophase_core.settings.spec import ConfigError
from twophase_core.storage.store import Store

if TYPE_CHECKING:
    from twophase_core.execution.jobs import JobManager
    from twophase_core.experiments.sweep import Point
    from twophase_core.science.train import CancelToken


def run_sweep(sweep: Sweep, store: Store | None = None, progress: Callable[[float, str], None] | None = None,
              cancel: CancelToken | None = None, executor: str = "local", workers: int | None = 1) -> SweepResult:
    """Every point, then the summary. Locally with `workers` 1: in this process, points sharing a base run one
    after another; with more, the points not yet stored as one graph of tasks over that many processes
    (`local_pool.run_points`); None: one per core ($TWOPHASE_SWEEP_WORKERS), unless the work left is under
    POOL_MIN_UNITS (starting the processes would cost more than they save). On Ray: the same graph on the cluster
    (`on_ray.run_points`: base runs, then every point's units, then each point's result), the bar moving with the
    tasks' progress."""
    from twophase_core.execution.run import run_experiment  # here: the app's process queues sweeps without torch

    store = store if store is not None else Store()
    points = expand(sweep)
    order = sorted(range(len(points)), key=lambda i: points[i].config.train.trajectory_key())
    results: dict[str, Result] = {}
    started = time.time()
    auto = workers is None
    if workers is None:
        from twophase_core.execution.local_pool import env_workers

        workers = env_workers() if executor == "local" else 1
    if executor == "local" and workers > 1:
        from twophase_core.execution.local_pool import POOL_MIN_UNITS, start_early

        results = load_results(store, points)
        todo = [points[i].config for i in order if points[i].hash not in results]
        start_early(todo, workers, auto)  # the workers' imports on another core while this process plans
        total = sweep_units(todo, store) if todo and (auto or progress is not None) else 0.0
        if auto and total < POOL_MIN_UNITS:
            workers, results = 1, {}  # a few seconds of work: starting the pool would cost about as much
    if executor == "local" and workers > 1:
        from twophase_core.execution.local_pool import run_points as run_here

        done_units, finished = [0.0], [0]

        def told(added: float = 0.0) -> None:
            done_units[0] += added
            if progress is not None:
                progress(min((len(points) - len(todo) + (len(todo) * min(done_units[0] / total, 1.0) if total
                                                         else finished[0])) / len(points), 0.999),
                         f"{finished[0]} of {len(todo)} points done on {workers} processes")

        for r in run_here(todo, store.files, workers, cancel, on_units=told if progress is not None else None):
            save_result(store, r)
            results[r.hash] = r
            finished[0] += 1
            told()
        order = []
    elif executor == "ray":
        from twophase_core.execution.on_ray import run_points

        results = load_results(store, points)
        todo = [points[i].config for i in order if points[i].hash not in results]
        if todo:
            store.check_storage()
        stored, finished, units = len(points) - len(todo), [0], [0.0]
        total = sweep_units(todo, store) if todo and progress is not None else 0.0

        def tell(added: float = 0.0) -> None:  # the tasks' units as they grow, and points as they finish
            units[0] += added
            if progress is not None:
                running = min(units[0] / total, 1.0) * len(todo) if total else finished[0]
                progress(min((stored + max(running, finished[0])) / len(points), 0.999),
                         f"{finished[0]} of {len(todo)} points done on Ray")

        for r in run_points(todo, store.files, cancel, on_units=tell if progress is not None else None):
            save_result(store, r)  # only the driver writes the index
            results[r.hash] = r
            finished[0] += 1
            tell()
        order = []
    elif executor != "local":
        raise ConfigError("executor", executor, "choose local or ray")
    for k, i in enumerate(order):
        p = points[i]
        label = ", ".join(f"{a}={b}" for a, b in p.varied.items()) or "base"

        def sub(frac: float, stage: str, k: int = k, label: str = label) -> None:
            if progress is not None:
                progress((k + min(frac, 1.0)) / len(points), f"point {k + 1}/{len(points)} ({label}): {stage}")

        results[p.hash] = run_experiment(p.config, store, progress=sub, cancel=cancel)
    if progress is not None:
        progress(1.0, "done")
    return SweepResult(sweep, points, results, {"seconds": round(time.time() - started, 3),
                                                "points": len(points), "executor": executor, "workers": workers})


def submit_sweep(jm: JobManager, sweep: Sweep) -> dict[str, Any]:
    """Record the sweep and queue its points on the job runner (points sharing a base run queued
    together); a point already computed or queued is attached to, not run again. A stored record of this
    sweep that fails its checks is replaced: the user is submitting the sweep again. (Refining, whose rounds
    run sweeps: `refine.submit_refine`.)"""
    points = expand(sweep)
    rec = sweep_record(sweep, points, load_sweep(jm.store, sweep.id()))
    jm.store.put_json(sweep_key(sweep.id()), rec)
    for p in sorted(points, key=lambda p: p.config.train.trajectory_key()):
        jm.submit(p.config)
    return rec


def sweep_record(sweep: Sweep, points: list[Point], old: dict[str, Any] | None) -> dict[str, Any]:
    """The record the app keeps of a submitted sweep: its settings and its points' run ids; a sweep submitted again
    keeps its first creation time (the Sweeps page lists sweeps by it)."""
    return {"id": sweep.id(), "sweep": sweep.to_dict(), "runs": [p.run_id for p in points],
            "created": old["created"] if old is not None and "created" in old else time.time()}


def cancel_sweep(jm: JobManager, rec: dict[str, Any]) -> int:
    """Cancel the sweep's points still queued or running (how many were asked): a running worker stops at its next
    step and keeps its checkpoints, finished points stay stored, and submitting the sweep again goes on from there.
    A point is a job of its own config: one shared with another sweep, or run alone, stops too."""
    asked = 0
    for rid in rec["runs"]:
        r = jm.get(rid)
        if r is not None and r.status in ("queued", "running") and r.cancel_requested is None:
            jm.cancel(rid)
            asked += 1
    return asked


def sweep_progress(jm: JobManager, rec: dict[str, Any]) -> dict[str, float]:
    """Overall progress of a sweep's jobs: the mean of their progress, and how many are in each state."""
    counts = {s: 0 for s in ("queued", "running", "done", "failed", "cancelled", "missing")}
    total = 0.0
    for rid in rec["runs"]:
        r = jm.get(rid)
        if r is None:
            kind, _, h = rid.partition("-")
            done = load_result(jm.store, kind, h) is not None
            counts["done" if done else "missing"] += 1
            total += 1.0 if done else 0.0
        else:
            counts[r.status] += 1
            total += 1.0 if r.status == "done" else r.progress
    return {"progress": total / max(len(rec["runs"]), 1), "points": len(rec["runs"]), **counts}
