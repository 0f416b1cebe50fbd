"""A sweep's task graph on this machine's cores: the graph Ray runs (`on_ray.run_points`), in a pool of worker
processes that stay up from the first task to the last.

Per base run a prepare task, then its points' units, then each point's assembly (`execution/tasks.py`); the driver
hands a task to the pool as soon as what it needs is done, so every worker has work while any is left, and a base
run shared by several points is trained once (a dependency here, as on Ray). Of the tasks ready, assemblies go
first, then base runs, then units: a base run holds back all of its points' units, so one started only when no unit
was left (as before) kept every other worker idle while it trained (the demo-sweep's last base run: one of its two
cores, 5 s); after the base runs, points finish and are stored one after another. Workers come from a forkserver
that has imported torch, torch._dynamo (which the first optimizer imports: 2.3 s) and the engine once, so no task
waits on an import. Results are bit
for bit those of the in-process runner: the same functions, one torch thread per process. A worker that dies
(killed, out of memory) fails the sweep with one line; the checkpoints already written are kept, and running the
sweep again resumes.
"""

from __future__ import annotations

import heapq
import itertools
import multiprocessing as mp
import multiprocessing.forkserver
import os
import queue
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from twophase_core.execution import tasks
from twophase_core.settings.spec import Spec, from_env

if TYPE_CHECKING:
    from twophase_core.experiments.registry import Plan
    from twophase_core.experiments.result import Result
    from twophase_core.science.train import CancelToken
    from twophase_core.settings.config import ExperimentConfig
    from twophase_core.storage.files import CheckpointFiles

ENV_WORKERS = "TWOPHASE_SWEEP_WORKERS"
POLL_S = 0.2  # how often the driver looks at its cancel token and the workers' progress
PRELOAD = ["torch", "torch._dynamo", "twophase_core.execution.tasks", "twophase_core.experiments.running",
           "twophase_core.science.train", "twophase_core.science.metrics", "twophase_core.science.ntk"]
_PROGRESS: Any = None  # in a worker: the queue its tasks report progress to


WORKERS_SPEC = Spec("int", "processes for a local sweep", lo=1, hi=256)


def env_workers() -> int:
    """$TWOPHASE_SWEEP_WORKERS, else one per core: processes a local sweep runs its tasks in (1: in this one)."""
    return int(from_env(ENV_WORKERS, WORKERS_SPEC, min(os.cpu_count() or 1, 256)))


POOL_MIN_UNITS = 5000.0  # SGD steps and equivalents: less is seconds of work, about what starting the pool takes


def start_early(configs: Sequence[ExperimentConfig], workers: int, auto: bool) -> bool:
    """Start the pool's forkserver now, while the driver still plans the sweep: it imports torch, torch._dynamo
    and the engine (PRELOAD, seconds) on another core while the driver imports torch and counts the work left, and
    `run_points` then forks its workers from it at once. Returns whether it did. With `workers` chosen for the
    sweep (`auto`), only when the points' iterations alone reach POOL_MIN_UNITS: a sweep of a few seconds, which
    stays in the driver, should not pay a forkserver's start on the other core. Non-blocking; a no-op once this
    process has a forkserver."""
    if workers <= 1 or not configs or (auto and sum(c.train.iterations for c in configs) < POOL_MIN_UNITS):
        return False
    mp.get_context("forkserver").set_forkserver_preload(PRELOAD)
    multiprocessing.forkserver.ensure_running()
    return True


def _start_worker(progress: Any) -> None:
    global _PROGRESS
    _PROGRESS = progress


def _reporter(key: Hashable) -> tasks.Report:
    def report(units: float) -> None:
        _PROGRESS.put((key, units))

    return report


def _prepare(key: Hashable, train_dict: dict[str, object], needed: list[int],
             points: list[tuple[str, dict[str, object]]], files: CheckpointFiles,
             plugins: tasks.Plugins) -> dict[str, Plan]:
    return tasks.prepare(train_dict, needed, points, files, plugins, _reporter(key), "local")


def _unit(key: Hashable, kind: str, cfg_dict: dict[str, object], k: int, files: CheckpointFiles,
          plugins: tasks.Plugins, plan: Plan) -> tasks.UnitOut:
    return tasks.unit(kind, cfg_dict, k, files, plugins, plan, _reporter(key))


class WorkerDied(RuntimeError):
    """A process of the pool ended without finishing its task."""


def run_points(configs: Sequence[ExperimentConfig], files: CheckpointFiles, workers: int,
               cancel: CancelToken | None = None, on_units: tasks.Report | None = None) -> Iterator[Result]:
    """Results of whole experiments (sweep points) as their assemblies finish, every point split into its units
    and spread over `workers` processes. `on_units(n)` hears the tasks' progress (SGD steps and their equivalents)
    as it grows."""
    from twophase_core.experiments import registry
    from twophase_core.experiments.result import Result
    from twophase_core.settings import config as conf

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    progress = ctx.Queue()
    plugins = registry.plugins()
    groups = list(conf.by_base_run(configs).values())
    seen: dict[Hashable, float] = {}

    def drain() -> None:
        added = 0.0
        while True:
            try:
                key, units = progress.get_nowait()
            except queue.Empty:
                break
            before = seen.get(key, 0.0)
            if units > before:
                seen[key] = units
                added += units - before
        if added and on_units is not None:
            on_units(added)

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_start_worker, initargs=(progress,))
    running: dict[Future[Any], tuple[str, Any]] = {}
    # tasks whose inputs are done, by rank: assemblies first, then base runs (each holds back its points' units),
    # then units, so points finish (and are stored) one after another once the base runs are trained; at most
    # `workers` in the pool at once
    ready: list[tuple[int, int, str, Any, Callable[..., Any], tuple[Any, ...]]] = []
    order = itertools.count()

    def enqueue(rank: int, what: str, key: Any, fn: Callable[..., Any], *args: Any) -> None:
        heapq.heappush(ready, (rank, next(order), what, key, fn, args))

    def feed() -> None:
        while ready and len(running) < workers:
            _, _, what, key, fn, args = heapq.heappop(ready)
            running[pool.submit(fn, *args)] = (what, key)

    try:
        for g, members in enumerate(groups):
            needed = sorted(set().union(*(c.base_checkpoints() for c in members)))
            points = [(conf.kind_of(c), conf.to_dict(c)) for c in members]
            enqueue(1, "prepare", g, _prepare, ("base", g), conf.to_dict(members[0].train), needed, points, files,
                    plugins)
        units_left: dict[str, list[int]] = {}
        outs: dict[str, dict[int, tasks.UnitOut]] = {}
        plans: dict[str, Plan] = {}
        by_hash = {conf.config_hash(c): c for members in groups for c in members}
        feed()
        while running:
            done, _ = wait(list(running), timeout=POLL_S, return_when=FIRST_COMPLETED)
            drain()
            if cancel is not None and cancel.is_set():
                raise _Stop
            for fut in done:
                what, key = running.pop(fut)
                try:
                    got: Any = fut.result()
                except BrokenProcessPool as e:
                    raise WorkerDied("a sweep worker process ended before its task did (killed, or out of memory?); "
                                     "the checkpoints written so far are kept: run the sweep again to resume") from e
                if what == "prepare":
                    for h, plan in got.items():
                        cfg, plans[h] = by_hash[h], plan
                        kind, d = conf.kind_of(cfg), conf.to_dict(cfg)
                        units_left[h], outs[h] = list(cfg.unit_keys()), {}
                        for k in cfg.unit_keys():
                            enqueue(2, "unit", (h, k), _unit, (h, k), kind, d, k, files, plugins, plan)
                elif what == "unit":
                    h, k = key
                    outs[h][k] = got
                    units_left[h].remove(k)
                    if not units_left[h]:
                        cfg = by_hash[h]
                        keys = list(cfg.unit_keys())
                        enqueue(0, "assemble", h, tasks.assemble, conf.kind_of(cfg), conf.to_dict(cfg), files,
                                plugins, plans[h], keys, [outs[h][k] for k in keys], "local")
                else:
                    arrays, h, meta = got
                    config = meta.pop("config")
                    yield Result(conf.kind_of(by_hash[h]), config, h, arrays, meta)
            feed()
        drain()
    except _Stop:
        _stop(pool)
        if cancel is not None:
            cancel.check()
    except BaseException:
        _stop(pool)
        raise
    finally:
        global last_cpu_seconds
        last_cpu_seconds = _cpu_seconds(pool)
        pool.shutdown(wait=True, cancel_futures=True)
        progress.close()


last_cpu_seconds = 0.0  # CPU time the last pool's workers had used when it ended (the bench reports it)


def _cpu_seconds(pool: ProcessPoolExecutor) -> float:
    """User + system CPU seconds of the pool's live workers, from /proc (0 where there is none): they are the
    forkserver's children, so this process's own accounting never sees them."""
    total = 0.0
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            fields = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
    return total


class _Stop(Exception):
    """Cancelled: the pool is stopped, then the token raises its own exception."""


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop every task at once (a cancel, or a failure elsewhere): kill the pool's processes. What they had
    finished is stored; a half-trained segment is not, and is trained again on the next run."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # no public kill before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.kill()
    for p in procs:
        p.join(timeout=10)
