"""Ray as an executor: the same units of work as the local runner, spread over a cluster.

A chaos experiment is its base run (trained by the driver, which saves the checkpoints) and one task
per t0 (`experiments.chaos_row_from_store`: the branches of that t0, stacked with their own control
or against the base run, and the row's metrics). A cone experiment is its base run and one task per
checkpoint kernel (written beside the checkpoints; the Gram matrix and the projections follow on the
driver). A linear run is its
base run and one task per switch time. A sweep is one task per point, and points that share a base
run wait for one task that trains it (a Ray dependency: it holds across machines, and no task holds
a CPU while it waits).

Tasks read and write checkpoints in the driver's storage root (`storage.py`): the store's own folder
on one machine; a shared filesystem or an object store (s3://, through fsspec) across machines. Each
task opens a throwaway index of its own; it returns arrays, and only the driver writes results into
the store's index. The driver is the process that calls these functions (the CLI, or a job's
worker), never the Streamlit server.

Where to run: `TWOPHASE_RAY_ADDRESS` (empty: start a local Ray for this process; `auto`: join the
cluster on this machine; `ray://host:port`: a remote one). On CPU, results are bit for bit those of
the local executor (tests check chaos, cone and linear): the same functions, one torch thread per task.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ENV_ADDRESS = "TWOPHASE_RAY_ADDRESS"
ENV_GPUS = "TWOPHASE_RAY_GPUS"  # GPUs per task (fractions share a GPU), used when the config trains on cuda
POLL_S = 0.5  # how often a waiting driver looks at its cancel token


def connect(address: str | None = None) -> Any:
    """The `ray` module, connected (once per process) to `address` or $TWOPHASE_RAY_ADDRESS."""
    import ray

    if not ray.is_initialized():
        addr = address if address is not None else os.environ.get(ENV_ADDRESS, "").strip()
        pkg_parent = str(Path(__file__).resolve().parent.parent)
        env = {"PYTHONPATH": pkg_parent, "TWOPHASE_THREADS": "1", "OMP_NUM_THREADS": "1"}
        ray.init(address=addr or None, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 runtime_env={"env_vars": env}, configure_logging=False)
    return ray


def _resources(cfg: Any) -> dict[str, float]:
    gpus = float(os.environ.get(ENV_GPUS, "1") or 1) if cfg.train.device == "cuda" else 0.0
    return {"num_cpus": 1, "num_gpus": gpus}


class _Board:
    """A tiny actor the tasks tell their progress to (units done so far, per task): the driver reads the
    sum about once a second, so the job's bar and ETA move while rows train on other machines."""

    def __init__(self) -> None:
        self.units: dict[int, float] = {}

    def report(self, t0: int, units: float) -> None:
        self.units[t0] = max(units, self.units.get(t0, 0.0))  # a retried task starts again from 0

    def total(self) -> float:
        return sum(self.units.values())


def _reporting(board: Any, key: int, work: Any) -> Any:
    """Run `work(report)` in a task, telling the board its units under `key`; the final count is on the
    board before the driver sees the result."""
    import ray

    last: list[Any] = []

    def report(units: float) -> None:
        last[:] = [board.report.remote(key, units)]

    out = work(report if board is not None else None)
    if last:
        ray.get(last[0])
    return out


def _chaos_row_task(cfg_dict: dict[str, Any], t0: int, how: str, files: Any,
                    board: Any = None) -> tuple[int, dict[str, Any]]:
    from .experiments import chaos_row_from_store

    return t0, _reporting(board, t0, lambda report: chaos_row_from_store(cfg_dict, t0, how, files, report))


def _linear_task(cfg_dict: dict[str, Any], t: int, files: Any, board: Any = None) -> tuple[int, float]:
    from .experiments import linear_switch_from_store

    return t, _reporting(board, t, lambda report: linear_switch_from_store(cfg_dict, t, files, report))


def _base_task(train_dict: dict[str, Any], needed: list[int], files: Any) -> int:
    """Train (or find) one base run's checkpoints at `needed`: the part several sweep points share."""
    from . import config as C
    from .store import task_store
    from .train import Run, configure_threads

    configure_threads()
    with task_store(files) as store:
        run = Run(C.from_dict(C.TrainConfig, train_dict), store)
        run.base().ensure(needed)
        return run.steps_done


def _point_task(cfg_dict: dict[str, Any], kind: str, files: Any,
                base_done: int | None = None) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """One sweep point, computed in the task's process (checkpoints in the storage root); the result
    travels back as arrays and metadata and the driver stores it. `base_done` is the shared base run's
    task: Ray starts this one only once it has finished."""
    from . import config as C
    from .experiments import compute_experiment
    from .store import task_store
    from .train import configure_threads

    configure_threads()
    with task_store(files) as store:
        r = compute_experiment(C.from_dict(C.KINDS[kind], cfg_dict), store)
    return r.arrays, r.hash, {**r.meta, "config": r.config}


def _gather(ray: Any, refs: list[Any], cancel: Any, poll: Any = None) -> Iterator[Any]:
    """Results as tasks finish, `poll()` between waits; on cancel, every task still running is stopped
    and Cancelled raised."""
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
        if poll is not None:
            poll()
        for ref in done:
            yield ray.get(ref)
        if cancel is not None and cancel.is_set():
            for ref in pending:
                ray.cancel(ref, force=True)
            cancel.check()


def _units_tasks(fn: Any, cfg: Any, keys: Sequence[int], args: tuple[Any, ...], files: Any, cancel: Any,
                 on_units: Any) -> Iterator[Any]:
    """One task `fn(cfg, key, *args, files, board)` per key, results as they finish; `on_units(n)` hears
    the tasks' progress, summed on a small actor and read about once a second."""
    from . import config as C

    ray = connect()
    board = ray.remote(num_cpus=0)(_Board).remote() if on_units is not None else None
    told = [0.0]

    def poll() -> None:
        if board is not None:
            total = ray.get(board.total.remote())
            if total > told[0]:
                on_units(total - told[0])
                told[0] = total

    task = ray.remote(max_retries=3, **_resources(cfg))(fn)
    refs = [task.remote(C.to_dict(cfg), int(k), *args, files, board) for k in keys]
    for got in _gather(ray, refs, cancel, poll):
        poll()
        yield got


def chaos_rows(cfg: Any, t0s: Sequence[int], how: str, files: Any, cancel: Any = None,
               on_units: Any = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(t0, row) for every t0, in the order the tasks finish. The base run must be stored already.
    `on_units(n)` hears the rows' progress as it grows (the units of `experiments._row_units`)."""
    return _units_tasks(_chaos_row_task, cfg, t0s, (how,), files, cancel, on_units)


def linear_switches(cfg: Any, ts: Sequence[int], files: Any, cancel: Any = None,
                    on_units: Any = None) -> Iterator[tuple[int, float]]:
    """(t, accuracy of the model linearised at t) for every switch time, one task each, as they finish.
    The base run must be stored already."""
    return _units_tasks(_linear_task, cfg, ts, (), files, cancel, on_units)


def _kernel_task(cfg_dict: dict[str, Any], t: int, subset: list[int], method: str, files: Any) -> tuple[int, str]:
    from .experiments import cone_kernel_from_store

    return t, cone_kernel_from_store(cfg_dict, t, subset, method, files)


def cone_kernels(cfg: Any, its: Sequence[int], subset: list[int], method: str, files: Any, cancel: Any = None,
                 on_done: Any = None) -> Iterator[tuple[int, str]]:
    """(t, name of its kernel's file) for every checkpoint, one task each, as they finish: the kernels
    go to the storage root (`Store.load_kernel` reads them), not through Ray. The base run must be stored."""
    from . import config as C

    ray = connect()
    task = ray.remote(max_retries=3, **_resources(cfg))(_kernel_task)
    refs = [task.remote(C.to_dict(cfg), int(t), subset, method, files) for t in its]
    for got in _gather(ray, refs, cancel):
        if on_done is not None:
            on_done()
        yield got


def run_points(configs: Sequence[Any], files: Any, cancel: Any = None) -> Iterator[Any]:
    """Results of whole experiments (sweep points) run as Ray tasks, as they finish.

    Points that share a base run (one trajectory key) need it trained once: one task trains it, at
    every checkpoint any of them reads, and those points start when it has finished (a Ray dependency,
    not a lock, so it holds across machines and object stores, and no task sits on a CPU waiting)."""
    from . import config as C
    from .results import Result

    ray = connect()
    groups: dict[str, list[Any]] = {}
    for cfg in configs:
        groups.setdefault(cfg.train.trajectory_key(), []).append(cfg)
    refs = []
    for members in groups.values():
        base = None
        if len(members) > 1:
            needed = sorted(set().union(*(C.base_checkpoints(c) for c in members)))
            train = members[0].train
            base = ray.remote(max_retries=3, **_resources(members[0]))(_base_task).remote(
                C.to_dict(train), needed, files)
        for cfg in members:
            task = ray.remote(max_retries=3, **_resources(cfg))(_point_task)
            refs.append(task.remote(C.to_dict(cfg), C.kind_of(cfg), files, base))
    for arrays, h, meta in _gather(ray, refs, cancel):
        config = meta.pop("config")
        yield Result(meta.pop("kind", C.kind_of(configs[0])), config, h, arrays, meta)


def trivial_overhead(n: int = 50) -> float:
    """Seconds per trivial task through this module's path (submit, schedule, return): the bench's
    `ray_overhead_seconds`."""
    ray = connect()
    noop = ray.remote(num_cpus=1)(_noop)
    ray.get(noop.remote(0))  # warm: a worker process exists
    t = time.perf_counter()
    ray.get([noop.remote(i) for i in range(n)])
    return (time.perf_counter() - t) / n


def _noop(i: int) -> int:
    return i
