"""One job in its own process: `python -m twophase_core.execution.worker JOB_ID [--cache-dir DIR]`.

Started by `jobs.LocalLauncher` (own session; stdout/stderr go to `jobs/<id>.log` under the
store root), or ahead of its job as a warm worker (`--warm`, see `wait_for_job`): torch, the engine and
the demo's data loaded, waiting on stdin for the job id, so a click in the app is not followed by
seconds of imports. Reads the config from the job record, runs the experiment, and writes to the record:
progress, stage and ETA at most ~5 times a second, a heartbeat (`updated`) at least every second
from a daemon thread (so a killed worker is noticed), and the outcome (done / failed with a one-line
error and the traceback / cancelled). A cancel is read from the record by the same thread and
reaches the engine through its `CancelToken`. On the way out it starts the next queued job.

The same thread watches the index file: if it is deleted or replaced while the job runs (a user's
`rm cache/index/cache.db*`, a `cache clear` or a repair elsewhere), the job stops and is reported
failed, loudly, in the index now at that path, instead of reporting into a file nobody reads. A full
disk is reported as such (the store's reserve is given up so that the failure can be written).

Torch threads: env TWOPHASE_THREADS (default 1: measured faster for these small models on 2 cores).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import stat
import sys
import threading
import time
import traceback
from pathlib import Path
from types import FrameType

from twophase_core.execution.jobs import (
    RESUME_HINT,
    JobManager,
    JobRecord,
    log_path,
    read_record,
    save_record,
    update_record,
)
from twophase_core.execution.placement import resolve_executor
from twophase_core.experiments import registry
from twophase_core.settings import config as conf
from twophase_core.storage.errors import StoreError, StoreFull
from twophase_core.storage.record_types import REPAIR_HINT
from twophase_core.storage.store import Store, default_root

WRITE_EVERY_S = 0.2  # progress writes: at most ~5 a second
HEARTBEAT_S = 1.0  # a write at least this often, even without progress


def _one_line(e: BaseException) -> str:
    from twophase_core.science.train import TrainingDiverged

    msg = " ".join(str(e).split())
    if isinstance(e, TrainingDiverged | conf.ConfigError | StoreError) and msg:
        line = msg
    else:
        line = f"{type(e).__name__}: {msg}" if msg else type(e).__name__
    return line if len(line) <= 500 else line[:497] + "..."


class Monitor(threading.Thread):
    """Daemon thread: flushes progress, beats the heartbeat and picks up a cancel from the record."""

    def __init__(self, store: Store, job_id: str, pid: int, index_id: tuple[int, int] | None = None):
        super().__init__(name=f"twophase-monitor-{job_id}", daemon=True)
        self.store, self.job_id, self.pid = store, job_id, pid
        self.index_id = index_id if index_id is not None else store.index_id()
        self.vanished: str | None = None  # why the index this job reports into is gone
        self._last_error = ""
        self.cancel = threading.Event()
        self._stop_ev = threading.Event()
        self._lock = threading.Lock()
        self._progress, self._stage, self._dirty = 0.0, "starting", True
        self._t0 = time.monotonic()

    def report(self, fraction: float, stage: str) -> None:
        with self._lock:
            self._progress = min(max(float(fraction), self._progress), 1.0)
            self._stage = stage
            self._dirty = True

    def eta(self, fraction: float) -> float | None:
        if fraction < 0.01:
            return None
        elapsed = time.monotonic() - self._t0
        return round(elapsed * (1.0 - fraction) / fraction, 1)

    def index_gone(self) -> bool:
        """The index file this job claimed its record in was deleted or replaced: stop the job."""
        if self.vanished is None and self.store.index_id() != self.index_id:
            self.vanished = (f"the store index {self.store.db_path} was deleted or replaced while job {self.job_id} "
                             "ran, so its record and progress went with it")
            self.cancel.set()
        return self.vanished is not None

    def flush(self) -> None:
        if self.index_gone():
            return
        with self._lock:
            f, stage, self._dirty = self._progress, self._stage, False

        def write(r: JobRecord) -> bool:
            if r.status != "running" or r.pid != self.pid:
                return False
            if r.cancel_requested is not None:
                self.cancel.set()
            r.progress, r.eta_s, r.updated = f, self.eta(f), time.time()
            r.stage = "cancelling" if r.cancel_requested is not None else stage
            return True

        update_record(self.store, self.job_id, write)

    def run(self) -> None:
        last = 0.0
        while not self._stop_ev.wait(WRITE_EVERY_S):
            with self._lock:
                dirty = self._dirty
            if dirty or time.monotonic() - last >= HEARTBEAT_S:
                try:
                    self.flush()
                    last = time.monotonic()
                except Exception as e:  # noqa: BLE001 - a busy or full store must not kill the heartbeat
                    if str(e) != self._last_error:  # once per cause, not 5 times a second into a full disk
                        self._last_error = str(e)
                        with contextlib.suppress(OSError):
                            traceback.print_exc()

    def stop(self) -> None:
        self._stop_ev.set()
        if self.is_alive():
            self.join(timeout=10)


def _claim(store: Store, job_id: str, pid: int) -> JobRecord | None:
    """Mark the job running under this pid; None if it is not ours to run."""
    now = time.time()
    with store.cache.transact():
        rec, bad = read_record(store, job_id)
        if rec is None:
            why = f"skipped {bad} ({REPAIR_HINT})" if bad else f"no job record {job_id!r} in this store"
            print(f"worker: {why}", file=sys.stderr)
            return None
        if rec.status not in ("queued", "running") or rec.pid not in (None, pid):
            print(f"worker: job {job_id} is {rec.status} (pid {rec.pid}); nothing to do", file=sys.stderr)
            return None
        if rec.cancel_requested is not None:
            rec.status, rec.stage, rec.finished_at, rec.eta_s = "cancelled", "cancelled", now, None
            save_record(store, rec)
            return None
        rec.status, rec.pid, rec.updated, rec.stage = "running", pid, now, "starting"
        rec.started = rec.started or now
        save_record(store, rec)
        return rec


def run_job(store: Store, job_id: str) -> int:
    """Run one job to its end; 0: done or cancelled, 1: failed, 2: nothing to run."""
    pid = os.getpid()
    rec = _claim(store, job_id, pid)
    if rec is None:
        return 2
    index_id = store.index_id()  # the index the record was claimed in: watched until the end
    print(f"worker {pid}: {job_id} started", flush=True)
    import torch

    from twophase_core.science.train import ENV_THREADS, configure_threads

    try:
        configure_threads()
    except conf.ConfigError as e:  # the job runs (run_experiment reads the variable again); the log says what was wrong
        print(f"worker: {e}; using 1 thread", file=sys.stderr)
        os.environ[ENV_THREADS] = "1"
        torch.set_num_threads(1)
    from twophase_core.execution.run import run_experiment
    from twophase_core.experiments.result import load_result, result_key, save_result
    from twophase_core.science.train import Cancelled, CancelToken

    terminated: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        terminated.append(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)

    mon = Monitor(store, job_id, pid, index_id)
    mon.start()
    token = CancelToken(poll=lambda: mon.cancel.is_set() or bool(terminated), every_s=0.1)
    status, error, tb = "failed", None, None
    try:
        cfg = registry.config_from_dict(rec.kind, rec.config)
        # TWOPHASE_EXECUTOR=ray: this worker process is the Ray driver of its job (never the app's server)
        executor = resolve_executor(rec.executor)
        run_experiment(cfg, store, progress=mon.report, cancel=token,
                       partial=lambda r: save_result(store, r, partial=True),
                       executor=executor)
        status = "done"
    except Cancelled:
        if mon.vanished:
            error = f"{mon.vanished}; nothing more was saved into it — {RESUME_HINT}"
        elif terminated:
            error = (f"worker process {pid} was stopped by {signal.Signals(terminated[0]).name}; {RESUME_HINT}")
        else:
            status = "cancelled"
    except BaseException as e:  # noqa: BLE001 - every failure is reported on the job
        error, tb = _one_line(e), traceback.format_exc()
        if isinstance(e, StoreFull):
            store.release_reserve()  # room for this record: the store is never left unable to say why
        with contextlib.suppress(OSError):
            print(tb, file=sys.stderr, flush=True)
    finally:
        mon.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if mon.index_gone() and status != "failed":  # (a failure it caused keeps its own message)
        status, error = "failed", f"{mon.vanished}; {RESUME_HINT} (a result already stored is served at once)"
    if status == "done" and load_result(store, rec.kind, rec.hash) is None:
        status, error = "failed", "the experiment ended but its result could not be read back from the store"
    now = time.time()

    def finish(r: JobRecord) -> bool:
        if status != "done" and (r.pid != pid or r.status not in ("running", "failed")):
            return False  # someone else owns the record now
        r.status, r.error, r.traceback, r.eta_s, r.finished_at, r.updated = status, error, tb, None, now, now
        if status == "done":
            r.progress, r.stage, r.eta_s = 1.0, "done", 0.0
        else:
            r.stage = status
        return True

    try:
        if mon.vanished:  # the record went with the old index: write it again, failed, where pages look now
            rec.pid, rec.status = pid, "running"
            finish(rec)
            save_record(store, rec)
        else:
            update_record(store, job_id, finish)
        if status == "done":
            store.delete(result_key(rec.kind, rec.hash, partial=True))
    except Exception:  # noqa: BLE001 - the log still says what happened
        with contextlib.suppress(OSError):
            traceback.print_exc()
    with contextlib.suppress(OSError):
        print(f"worker {pid}: {job_id} {status}" + (f": {error}" if error else ""), flush=True)
    return 0 if status in ("done", "cancelled") else 1


def warm_up(data_dir: Path) -> None:
    """Pay before the job exists what its first seconds would go to (measured on the 2-core machine): importing
    torch (2.6 s), the first optimizer (3.6 s: it imports torch._dynamo), the engine's modules, and the demo's
    data (MNIST-1D, shipped with the package). One step
    of the demo's model runs under a forked RNG, so a job starts from the state a cold worker's would."""
    import torch

    from twophase_core.science.train import configure_threads

    try:
        configure_threads()
    except conf.ConfigError as e:  # run_job says it again in the job's log
        print(f"worker: {e}; using 1 thread", file=sys.stderr)
        torch.set_num_threads(1)
    import twophase_core.execution.run  # noqa: F401 - with the experiment kinds it runs
    import twophase_core.experiments.result  # noqa: F401
    import twophase_core.science.linearised  # noqa: F401
    import twophase_core.science.lockstep  # noqa: F401
    import twophase_core.science.metrics  # noqa: F401
    import twophase_core.science.ntk  # noqa: F401
    from twophase_core.experiments.presets import DEMO_TRAIN
    from twophase_core.science.data import get_dataset
    from twophase_core.science.models import build_model, trainable

    ds = get_dataset(DEMO_TRAIN, cache_dir=data_dir)
    model = build_model(DEMO_TRAIN, ds.input_shape, ds.num_classes)
    opt = torch.optim.SGD(trainable(model), lr=DEMO_TRAIN.lr, momentum=DEMO_TRAIN.momentum,
                          weight_decay=DEMO_TRAIN.weight_decay)
    with torch.random.fork_rng(devices=[]):
        model.train()
        torch.nn.functional.cross_entropy(model(ds.x_train[:DEMO_TRAIN.batch_size]),
                                          ds.y_train[:DEMO_TRAIN.batch_size]).backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            model(ds.x_test)


def _log_into(path: Path) -> None:
    """From here on this process's stdout and stderr (fds 1 and 2, so C code's too) append to the job's log,
    after what it printed while it waited (the launcher gave it an unnamed temporary file until then)."""
    for f in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            f.flush()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        with contextlib.suppress(OSError):
            before = os.fstat(1)
            if stat.S_ISREG(before.st_mode) and before.st_size:
                os.write(fd, os.pread(1, before.st_size, 0))
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)


def wait_for_job(root: Path) -> str | None:
    """A warm worker's wait: `warm_up`, then one line from stdin, the job id; None at EOF (whoever started it is
    gone or stopped it), so a warm worker never outlives its launcher's process. It opens no store and takes no
    lock until it has its job; from then on it is a worker like any other, whose output goes to the job's log."""
    try:
        warm_up(root / "data")
    except Exception:  # noqa: BLE001 - only slower: the job meets the same problem and reports it on its record
        traceback.print_exc()
    job_id = sys.stdin.buffer.readline().decode("utf-8", "replace").strip()
    if not job_id:
        return None
    _log_into(log_path(root, job_id))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)  # the pipe is done with: nothing else is read from it
    os.close(devnull)
    return job_id


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m twophase_core.execution.worker", description=__doc__.splitlines()[0])
    ap.add_argument("job_id", nargs="?")
    ap.add_argument("--cache-dir", default=None, help="the store root (default: $TWOPHASE_CACHE_DIR or ./cache)")
    ap.add_argument("--warm", action="store_true",
                    help="start ahead of the job: load torch, the engine and the demo's data, then read the job id "
                    "from stdin (EOF: exit)")
    args = ap.parse_args(argv)
    if (args.job_id is None) != args.warm:
        ap.error("give a JOB_ID, or --warm to read it from stdin")
    job_id = args.job_id
    if args.warm:
        job_id = wait_for_job(Path(args.cache_dir) if args.cache_dir else default_root())
        if job_id is None:
            return 0
    store = Store(args.cache_dir) if args.cache_dir else Store()
    try:
        if job_id.startswith("sweep-"):  # not a job: the driver of a refined sweep's rounds (execution/refine.py)
            from twophase_core.execution.refine import drive_refine

            rc = drive_refine(store, job_id)
        else:
            rc = run_job(store, job_id)
        try:  # the exit path starts the next queued job
            JobManager(store).pump()
        except Exception:  # noqa: BLE001
            traceback.print_exc()
        return rc
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
