"""Ray as an executor: the same units of work as the local runner, spread over a cluster.

An experiment is its base run (trained by the driver, which saves the checkpoints) and one task per unit of
work: each kind's `run_unit` (a chaos row per t0, a cone kernel per checkpoint, written beside it, a linear
switch time; a plugin kind's own), with the plan its units share; the assembly follows on the driver. A sweep is
one graph of all of these across its points: a prepare task per base run (trained once, at every checkpoint its
points read, and each point's plan), the units of every point once their base run is there, and a task per
point that assembles its result (`run_points`). Tasks load the driver's plugins first (`registry.plugins`).

Tasks read and write checkpoints in the driver's storage root (`storage/files.py`): the store's own folder
on one machine; a shared filesystem or an object store (s3://, through fsspec) across machines. Each
task opens a throwaway index of its own; it returns arrays, and only the driver writes results into
the store's index. The driver is the process that calls these functions (the CLI, or a job's
worker), never the Streamlit server.

Where to run: `TWOPHASE_RAY_ADDRESS` (empty: start a local Ray for this process; `auto`: join the
cluster on this machine; `host:port`: a head's GCS address; `ray://host:port`: Ray Client). An address
that cannot work is one line (`check_address`, offline, before anything is written; `connect`, when no
cluster answers there), never a traceback or Ray's minutes of retries. On CPU, results are bit for bit
those of the local executor (tests check chaos, cone and linear): the same functions, one torch thread
per task.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import socket
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

from twophase_core.execution import tasks
from twophase_core.execution.tasks import Plugins, Report
from twophase_core.settings.spec import ConfigError, Spec, from_env

if TYPE_CHECKING:
    import numpy as np
    from ray import ObjectRef

    from twophase_core.experiments.registry import Plan
    from twophase_core.experiments.result import Result
    from twophase_core.science.train import CancelToken
    from twophase_core.settings.config import ExperimentConfig
    from twophase_core.storage.files import CheckpointFiles

ENV_ADDRESS = "TWOPHASE_RAY_ADDRESS"
ENV_GPUS = "TWOPHASE_RAY_GPUS"  # GPUs per task (fractions share a GPU), used when the config trains on cuda
GPUS_SPEC = Spec("float", "GPUs per task", lo=0, lo_open=True, hi=64)
POLL_S = 0.5  # how often a waiting driver looks at its cancel token
PROBE_S = 5.0  # how long connect() waits for a TCP answer at host:port before calling the address unreachable
# Ray's own budget for reaching a GCS that accepts connections but does not answer (node.py reads it at each
# ray.init): one attempt, about 40 s with Ray's fixed 30 s per attempt, instead of its default 20 (about 14 min)
GCS_ATTEMPTS = "1"
_ADDRESS = re.compile(r"(?P<client>ray://)?(?P<host>[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?|\[[0-9A-Fa-f:.]+\])"
                      r":(?P<port>[0-9]{1,5})", re.ASCII)
Out = TypeVar("Out")
# A Ray actor handle (the progress board), or None where nothing listens: its methods are made at run time
# (`board.report.remote(...)`), which Ray's types do not say
Handle = Any
_ADDRESS_HELP = ("give the head's GCS address host:port (ray start --head prints it), ray://host:port for Ray Client, "
                 "'auto' to join the cluster on this machine, or leave it empty to start a local Ray")


def _installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (cheap)."""
    return importlib.util.find_spec(module) is not None


def _address(address: str | None) -> str:
    return (address if address is not None else os.environ.get(ENV_ADDRESS, "")).strip()


def check_address(address: str | None = None) -> None:
    """Raise a one-line ConfigError if `address` (None: $TWOPHASE_RAY_ADDRESS) cannot work: malformed, Ray
    missing, or a ray:// address without Ray Client's extra. It connects to nothing, so callers run it
    before anything is written."""
    value = _address(address)
    m = _ADDRESS.fullmatch(value)
    if value not in ("", "auto", "local") and not (m and 1 <= int(m["port"]) <= 65535):
        raise ConfigError(ENV_ADDRESS, value, _ADDRESS_HELP)
    if not _installed("ray"):
        raise ConfigError(ENV_ADDRESS, value, "--executor ray needs Ray, which is not installed: "
                                              "pip install 'twophase[ray]'")
    if m and m["client"] and not _installed("grpc"):
        raise ConfigError(ENV_ADDRESS, value, "a ray:// address needs Ray Client, which is not installed: "
                                              "pip install 'ray[client]', or give the head's GCS address host:port")


def _probe(address: str) -> None:
    """A one-line ConfigError unless something accepts a TCP connection at `address` (host:port or
    ray://host:port) within PROBE_S: Ray itself would retry a dead address for minutes."""
    m = _ADDRESS.fullmatch(address)
    if m is None:  # '', 'auto', 'local': Ray finds (or starts) the cluster itself
        return
    try:
        socket.create_connection((m["host"].strip("[]"), int(m["port"])), timeout=PROBE_S).close()
    except OSError as e:
        raise ConfigError(ENV_ADDRESS, address, f"no Ray cluster answers there ({e.strerror or e}): start one "
                                                "(ray start --head) or give the address it printed") from None


@contextlib.contextmanager
def _bounded_gcs_wait() -> Iterator[None]:
    """Ray's GCS connection attempts bounded to GCS_ATTEMPTS while ray.init runs, unless the user set
    RAY_gcs_server_port_wait_time_s; restored after."""
    key = "RAY_gcs_server_port_wait_time_s"
    if key in os.environ:
        yield
        return
    os.environ[key] = GCS_ATTEMPTS
    try:
        yield
    finally:
        os.environ.pop(key, None)


def connect(address: str | None = None) -> ModuleType:
    """The `ray` module, connected (once per process) to `address` or $TWOPHASE_RAY_ADDRESS. An address that
    cannot work or where no cluster answers is a one-line ConfigError, in bounded time."""
    addr = _address(address)
    check_address(addr)
    import ray

    if not ray.is_initialized():
        pkg_parent = str(Path(__file__).resolve().parents[2])
        env = {"PYTHONPATH": pkg_parent, "TWOPHASE_THREADS": "1", "OMP_NUM_THREADS": "1"}
        joining = addr not in ("", "local")
        if joining:
            _probe(addr)
        try:
            with _bounded_gcs_wait() if joining else contextlib.nullcontext():
                ray.init(address=addr or None, include_dashboard=False, log_to_driver=False,
                         ignore_reinit_error=True, runtime_env={"env_vars": env}, configure_logging=False)
        except ConnectionError as e:  # Ray's first sentence only: the rest speaks of its own flags
            why = (str(e) or type(e).__name__).splitlines()[0].split(". ")[0].rstrip(".")
            auth = ("; if the cluster uses token authentication (Ray turns it on for `ray start` where "
                    "~/.ray/auth_token exists), set RAY_AUTH_MODE=token and the head's RAY_AUTH_TOKEN"
                    if joining and not os.environ.get("RAY_AUTH_MODE") else "")
            raise ConfigError(ENV_ADDRESS, addr,
                              f"no Ray cluster could be joined ({why}): {_ADDRESS_HELP}{auth}") from None
    return ray


def _resources(cfg: ExperimentConfig) -> dict[str, float]:
    gpus = float(from_env(ENV_GPUS, GPUS_SPEC, 1.0)) if cfg.train.device == "cuda" else 0.0
    return {"num_cpus": 1, "num_gpus": gpus}


class _Board:
    """A tiny actor the tasks tell their progress to (units done so far, per task): the driver reads the
    sum about once a second, so the job's bar and ETA move while rows train on other machines."""

    def __init__(self) -> None:
        self.units: dict[Hashable, float] = {}

    def report(self, key: Hashable, units: float) -> None:
        self.units[key] = max(units, self.units.get(key, 0.0))  # a retried task starts again from 0

    def total(self) -> float:
        return sum(self.units.values())


def _reporting(board: Handle, key: Hashable, work: Callable[[Report | None], Out]) -> Out:
    """Run `work(report)` in a task, telling the board its units under `key`; the final count is on the
    board before the driver sees the result."""
    import ray

    last: list[ObjectRef[None]] = []

    def report(units: float) -> None:
        last[:] = [board.report.remote(key, units)]

    out = work(report if board is not None else None)
    if last:
        ray.get(last[0])
    return out


def _prepare_task(train_dict: dict[str, object], needed: list[int], points: list[tuple[str, dict[str, object]]],
                  files: CheckpointFiles, plugins: Plugins, board: Handle = None,
                  key: str = "") -> dict[str, Plan]:
    """`tasks.prepare` as a Ray task, its progress on the board."""
    return _reporting(board, ("base", key), lambda report: tasks.prepare(
        train_dict, needed, points, files, plugins, report, "ray"))


def _unit_task(kind: str, cfg_dict: dict[str, object], key: int, files: CheckpointFiles, plugins: Plugins,
               plans: dict[str, Plan], h: str, board: Handle = None) -> tuple[object, int]:
    """`tasks.unit` as a Ray task, with the plan its experiment shares (`plans[h]`: inline for a single run, a
    prepare task's result in a sweep); its progress goes to the board."""
    return _reporting(board, (h, key), lambda report: tasks.unit(kind, cfg_dict, key, files, plugins, plans[h],
                                                                 report))


def _assemble_task(kind: str, cfg_dict: dict[str, object], files: CheckpointFiles, plugins: Plugins,
                   plans: dict[str, Plan], h: str, keys: list[int],
                   *results: tuple[object, int]) -> tuple[dict[str, np.ndarray], str, dict[str, Any]]:
    """`tasks.assemble` as a Ray task (its units given as arguments: Ray starts it when they are all done)."""
    return tasks.assemble(kind, cfg_dict, files, plugins, plans[h], keys, results, "ray")


def _gather(ray: ModuleType, refs: Sequence[ObjectRef[Out]], cancel: CancelToken | None,
            poll: Callable[[], None] | None = None,
            upstream: Sequence[ObjectRef[object]] = ()) -> Iterator[tuple[int, Out]]:
    """(index in `refs`, result) as tasks finish, `poll()` between waits; on cancel, every task still
    running (and every `upstream` task they wait on) is stopped and Cancelled raised."""
    index = {ref: i for i, ref in enumerate(refs)}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
        if poll is not None:
            poll()
        for ref in done:
            yield index[ref], ray.get(ref)
        if cancel is not None and cancel.is_set():
            for ref in [*pending, *upstream]:
                ray.cancel(ref, force=True)
            cancel.check()


def _board(ray: ModuleType, on_units: Report | None) -> tuple[Handle, Callable[[], None]]:
    """A progress board for tasks to report to (None without `on_units`), and `poll()`, which passes what
    they added since the last poll to `on_units`."""
    board = ray.remote(num_cpus=0)(_Board).remote() if on_units is not None else None
    told = [0.0]

    def poll() -> None:
        if board is not None and on_units is not None:  # (a board only with on_units)
            total = ray.get(board.total.remote())
            if total > told[0]:
                on_units(total - told[0])
                told[0] = total

    return board, poll


def unit_results(cfg: ExperimentConfig, plan: Plan, files: CheckpointFiles, cancel: CancelToken | None = None,
                 on_units: Report | None = None) -> Iterator[tuple[int, tuple[object, int]]]:
    """(key, (output, SGD steps)) of every unit of one experiment (`cfg.unit_keys()`: chaos rows by t0, cone
    kernels by checkpoint, linear accuracies by switch time), one task each, as they finish; all share `plan`
    (the kind's `plan`). The base run must be stored. `on_units(n)` hears the tasks' progress."""
    from twophase_core.experiments import registry
    from twophase_core.settings import config as conf

    ray = connect()
    board, poll = _board(ray, on_units)
    kind, h, keys = conf.kind_of(cfg), conf.config_hash(cfg), cfg.unit_keys()
    task = ray.remote(max_retries=3, **_resources(cfg))(_unit_task)
    refs = [task.remote(kind, conf.to_dict(cfg), k, files, registry.plugins(), {h: plan}, h, board) for k in keys]
    for i, got in _gather(ray, refs, cancel, poll):
        poll()
        yield keys[i], got


def run_points(configs: Sequence[ExperimentConfig], files: CheckpointFiles, cancel: CancelToken | None = None,
               on_units: Report | None = None) -> Iterator[Result]:
    """Results of whole experiments (sweep points) as their tasks finish, every point split into its units.

    One graph of tasks, no task waiting on another inside it: per base run (trajectory key), a prepare
    task trains it at every checkpoint its points read and makes each point's plan; per point, one
    task per unit (chaos row, cone kernel, linear switch time) starts when that is done; then one task
    assembles the point's result from its units. So a base run is trained once whatever the storage
    (a Ray dependency, not a lock: it holds across machines and object stores), units of all points
    spread over the cluster together, and nothing holds a CPU or GPU while it waits. `on_units(n)` hears
    the tasks' progress (SGD steps and their equivalents, each kind's `unit_cost`) as it grows."""
    from twophase_core.experiments import registry
    from twophase_core.experiments.result import Result
    from twophase_core.settings import config as conf

    ray = connect()
    board, poll = _board(ray, on_units)
    plugins = registry.plugins()
    finals, upstream = [], []
    for members in conf.by_base_run(configs).values():
        needed = sorted(set().union(*(c.base_checkpoints() for c in members)))
        points = [(conf.kind_of(c), conf.to_dict(c)) for c in members]
        prep = ray.remote(max_retries=3, **_resources(members[0]))(_prepare_task).remote(
            conf.to_dict(members[0].train), needed, points, files, plugins, board, members[0].train.trajectory_key())
        upstream.append(prep)
        for cfg in members:
            kind, d, h, keys = conf.kind_of(cfg), conf.to_dict(cfg), conf.config_hash(cfg), cfg.unit_keys()
            unit = ray.remote(max_retries=3, **_resources(cfg))(_unit_task)
            units = [unit.remote(kind, d, k, files, plugins, prep, h, board) for k in keys]
            upstream.extend(units)
            finals.append(ray.remote(max_retries=3, **_resources(cfg))(_assemble_task).remote(
                kind, d, files, plugins, prep, h, keys, *units))
    kinds = [conf.kind_of(c) for members in conf.by_base_run(configs).values() for c in members]  # as `finals`
    for i, (arrays, h, meta) in _gather(ray, finals, cancel, poll, upstream=upstream):
        poll()
        config = meta.pop("config")
        yield Result(kinds[i], config, h, arrays, meta)


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
