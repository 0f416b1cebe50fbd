"""Ray as an executor: the same units of work as the local runner, spread over a cluster.

A cone experiment is its base run and one task per checkpoint kernel (the Gram matrix and the
projections follow on the driver). A chaos experiment is its base run (trained by the driver,
which saves the checkpoints) and one task per t0 (`experiments.chaos_row_from_store`: the branches
of that t0, stacked with their own control or against the base run, and the row's metrics). A sweep
is one task per point (each an ordinary experiment; points that share a base run serialise on the
store's per-trajectory lock and train it once). Tasks read and write checkpoints under the storage
root, which must be a path every worker sees (one machine, or a shared filesystem:
$TWOPHASE_STORAGE_ROOT, README, "Scale-out on Ray"); they return arrays, and only the driver writes
results into the store's index. The driver is the process that calls these functions (the CLI, or a
job's worker), never the Streamlit server.

Where to run: `TWOPHASE_RAY_ADDRESS` (empty: start a local Ray for this process; `auto`: join the
cluster on this machine; `ray://host:port`: a remote one). On CPU, chaos results are bit for bit
those of the local executor (a test checks it): the same functions, one torch thread per task.
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
        if os.environ.get("TWOPHASE_STORAGE_ROOT"):  # the checkpoint root the driver uses, for every task
            env["TWOPHASE_STORAGE_ROOT"] = os.environ["TWOPHASE_STORAGE_ROOT"]
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


def _chaos_row_task(cfg_dict: dict[str, Any], t0: int, how: str, root: str, board: Any = None,
                    runs_root: str | None = None) -> tuple[int, dict[str, Any]]:
    import ray

    from .experiments import chaos_row_from_store

    last: list[Any] = []

    def report(units: float) -> None:
        last[:] = [board.report.remote(t0, units)]

    row = chaos_row_from_store(cfg_dict, t0, how, root, report if board is not None else None, runs_root)
    if last:
        ray.get(last[0])  # the final count is on the board before the driver sees the row
    return t0, row


def _point_task(cfg_dict: dict[str, Any], kind: str, root: str,
                runs_root: str | None = None) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """One sweep point, computed in the task's process (checkpoints under the storage root); the result
    travels back as arrays and metadata and the driver stores it."""
    from . import config as C
    from .experiments import compute_experiment
    from .store import Store
    from .train import configure_threads

    configure_threads()
    store = Store(root, runs_root=runs_root)
    try:
        r = compute_experiment(C.from_dict(C.KINDS[kind], cfg_dict), store)
        return r.arrays, r.hash, {**r.meta, "config": r.config}
    finally:
        store.close()


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


def chaos_rows(cfg: Any, t0s: Sequence[int], how: str, root: Path | str, cancel: Any = None,
               on_units: Any = None, runs_root: Path | str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(t0, row) for every t0, in the order the tasks finish. The base run must be stored already.
    `on_units(n)` hears the rows' progress as it grows (the units of `experiments._row_units`)."""
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

    task = ray.remote(max_retries=3, **_resources(cfg))(_chaos_row_task)
    rr = str(runs_root) if runs_root is not None else None
    refs = [task.remote(C.to_dict(cfg), int(t0), how, str(root), board, rr) for t0 in t0s]
    for got in _gather(ray, refs, cancel, poll):
        poll()
        yield got


def _kernel_task(cfg_dict: dict[str, Any], t: int, subset: list[int], method: str, root: str,
                 runs_root: str | None) -> tuple[int, Any]:
    from .experiments import cone_kernel_from_store

    return t, cone_kernel_from_store(cfg_dict, t, subset, method, root, runs_root)


def cone_kernels(cfg: Any, its: Sequence[int], subset: list[int], method: str, root: Path | str, cancel: Any = None,
                 on_done: Any = None, runs_root: Path | str | None = None) -> Iterator[tuple[int, Any]]:
    """(t, kernel) for every checkpoint, one task each, as they finish. The base run must be stored."""
    from . import config as C

    ray = connect()
    task = ray.remote(max_retries=3, **_resources(cfg))(_kernel_task)
    rr = None if runs_root is None else str(runs_root)
    refs = [task.remote(C.to_dict(cfg), int(t), subset, method, str(root), rr) for t in its]
    for got in _gather(ray, refs, cancel):
        if on_done is not None:
            on_done()
        yield got


def run_points(configs: Sequence[Any], root: Path | str, cancel: Any = None,
               runs_root: Path | str | None = None) -> Iterator[Any]:
    """Results of whole experiments (sweep points) run as Ray tasks, as they finish."""
    from . import config as C
    from .results import Result

    ray = connect()
    refs = []
    for cfg in configs:
        task = ray.remote(max_retries=3, **_resources(cfg))(_point_task)
        rr = None if runs_root is None else str(runs_root)
        refs.append(task.remote(C.to_dict(cfg), C.kind_of(cfg), str(root), rr))
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
