"""Background jobs: one OS process per experiment, everything about it kept in the result store.

A job is keyed by its config (`f"{kind}-{config_hash}"`), so submitting a config that is queued,
running or finished attaches to that job instead of starting it again. Its record lives under
`job/<id>` in the store and every change to it is a read-modify-write inside
`store.cache.transact()`, so the page process and the worker never lose each other's updates.

The worker (`python -m twophase_core.execution.worker JOB_ID --cache-dir DIR`, see worker.py) runs in its
own session, writes progress and a heartbeat (`updated`) to the record, and on exit starts the
next queued job (`pump`). A "running" job whose process is gone is reported as failed at once (the
executor's `alive` is the authority: a heartbeat a few seconds old does not keep a killed worker
"running"); submitting it again starts a new worker that resumes from the checkpoints it left (the
engine never retrains a stored checkpoint). Two jobs needing the same trajectory train it once: the
engine holds a lock per trajectory (see `Store.trajectory_lock`), whatever the executor.

`submit` refuses (StoreFull, nothing created) a job whose checkpoints would not fit on the store's
disk, estimated from the size of the trajectory's checkpoints already there; a first run of a model
is checked by the engine before it trains.

Processes are started by a `Launcher`; `LocalLauncher` is the only one here, and a
backend implements the `Launcher` protocol (launch, alive, kill, reap, exit_status). Nothing here imports torch.

Past 350 lines on purpose: the manager and its executors share one record protocol (claim, heartbeat,
reconcile), and splitting them would put the two halves of each handshake in different files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from twophase_core.execution.placement import check_placement, resolve_executor
from twophase_core.experiments import registry
from twophase_core.experiments.result import Result, load_result
from twophase_core.settings import config as conf
from twophase_core.settings.spec import Spec, from_env
from twophase_core.storage import record_types as R
from twophase_core.storage.errors import human
from twophase_core.storage.store import Store

STATUSES = ("queued", "running", "done", "failed", "cancelled")
FINISHED = ("done", "failed", "cancelled")
ENV_MAX_JOBS = "TWOPHASE_MAX_JOBS"
ENV_WARM = "TWOPHASE_WARM_WORKERS"  # the app's warm workers (default 1; 0: none)
STALE_S = 5.0  # a running record with no pid and no heartbeat for this long: its worker never started
CANCEL_GRACE_S = 15.0  # a worker that ignores a cancel this long is killed
WORKER_MODULE = "twophase_core.execution.worker"  # started as `python -m WORKER_MODULE JOB_ID --cache-dir DIR`
RESUME_HINT = "finished checkpoints are kept — submit again to resume"


@dataclass
class JobRecord:
    id: str
    kind: str
    hash: str
    config: dict[str, Any]
    status: str = "queued"  # queued | running | done | failed | cancelled
    progress: float = 0.0  # 0..1
    stage: str = ""
    eta_s: float | None = None
    pid: int | None = None
    created: float = 0.0
    started: float | None = None
    updated: float = 0.0  # the worker's heartbeat while running
    error: str | None = None  # one line
    # beyond docs/jobs-api.md: what a page may show on demand
    traceback: str | None = None
    log: str | None = None  # the worker's stdout/stderr (under the store root)
    cancel_requested: float | None = None  # when cancel() asked a running worker to stop
    finished_at: float | None = None
    executor: str | None = None  # "ray": the worker drives Ray tasks; None: $TWOPHASE_EXECUTOR, else local

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def record_key(job_id: str) -> str:
    return R.key("job", job_id)


def log_path(root: str | Path, job_id: str) -> Path:
    return Path(root) / "jobs" / f"{job_id}.log"


JOB_TIMES = ("created", "started", "updated", "cancel_requested", "finished_at")


def _job_fields() -> dict[str, R.Field]:
    """A job record's fields, from JobRecord's own (type hints as the JSON types), with what else they hold."""
    import typing

    from twophase_core.execution.placement import EXECUTORS

    hints = typing.get_type_hints(JobRecord)
    rules: dict[str, R.Rule] = {"kind": R.one_of(registry.names()), "status": R.one_of(STATUSES),
                                "progress": R.between(0, 1), "eta_s": R.at_least(0), "pid": R.at_least(1),
                                "executor": R.one_of(EXECUTORS), **dict.fromkeys(JOB_TIMES, R.unix_time)}
    return {f.name: R.Field(hints[f.name], f.default is dataclasses.MISSING
                            and f.default_factory is dataclasses.MISSING, rules.get(f.name))
            for f in dataclasses.fields(JobRecord)}


def _job_id_is_its_kind_and_hash(d: Mapping[str, object]) -> tuple[str, str] | None:
    return None if d["id"] == f"{d['kind']}-{d['hash']}" else ("id", "must be the job's kind and hash joined by '-'")


R.register("job", R.Schema("job/", "job", _job_fields, _job_id_is_its_kind_and_hash))


def read_record(store: Store, job_id: str) -> tuple[JobRecord | None, R.RecordProblem | None]:
    """(record, None), (None, why it was skipped) for a record that fails its checks, or (None, None)."""
    d, bad = R.read(store, "job", job_id)
    return (None if d is None else JobRecord.from_dict(d)), bad


def load_record(store: Store, job_id: str) -> JobRecord | None:
    """The job's record, None if there is none or it fails its checks (left in place: `cache check` names it)."""
    return read_record(store, job_id)[0]


def save_record(store: Store, rec: JobRecord) -> None:
    store.put_json(record_key(rec.id), asdict(rec))


def update_record(store: Store, job_id: str, fn: Callable[[JobRecord], bool | None]) -> JobRecord | None:
    """Atomic read-modify-write across processes: `fn` edits the record; returning False skips the write.
    A record that cannot be read is never written (None): it stays as found, for `cache check` to name."""
    with store.cache.transact():
        rec = load_record(store, job_id)
        if rec is None:
            return None
        if fn(rec) is not False:
            save_record(store, rec)
        return rec


# ---------------------------------------------------------------------------------------------
# Launchers: what starts a job's worker process (not to be confused with the executor, local or
# ray, which says where the worker then runs the experiment's units)


class Launcher(Protocol):
    """Starts and watches workers; another backend (a batch scheduler) implements the same five calls.

    The worker claims its record only if the record's pid is None or its own `os.getpid()`, so a
    backend whose `launch` returns some other handle must also make the worker see that value.
    """

    def launch(self, job_id: str, cache_dir: str) -> int:
        """Start `python -m twophase_core.execution.worker job_id --cache-dir cache_dir`; return its pid."""
        ...

    def alive(self, pid: int) -> bool:
        """Whether the worker is still running: False is final (the job is marked failed at once)."""
        ...

    def kill(self, pid: int) -> None: ...

    def reap(self) -> None:
        """Collect the workers of this launcher that have ended (a backend with no children: nothing)."""
        ...

    def exit_status(self, pid: int) -> int | None:
        """The return code of an ended worker this launcher started (-N: signal N), None if unknown."""
        ...


def _proc_state(pid: int) -> str | None:
    """The state letter of /proc/<pid>/stat ('R', 'S', 'Z', ...), '' without /proc, None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    parts = stat.rsplit(")", 1)
    return parts[1].split()[0] if len(parts) == 2 and parts[1].split() else ""


class LocalLauncher:
    """Workers as local OS processes, each in its own session (a page reload never kills them)."""

    def __init__(self, env: dict[str, str] | None = None, python: str | None = None, warm: int = 0):
        self.env = dict(env or {})
        self.python = python or sys.executable
        self.warm = warm  # workers kept started ahead of their job, per store root (the app: env_warm_workers())
        self._children: dict[int, subprocess.Popen] = {}
        self._exited: dict[int, int] = {}
        self._warm: dict[str, list[subprocess.Popen]] = {}  # store root -> waiting warm workers
        self._warm_lock = threading.Lock()  # Streamlit runs sessions in threads that share this launcher

    def _env(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        pkg_parent = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH", "")) if p)
        return env

    def prestart(self, cache_dir: str) -> None:
        """Keep `self.warm` workers waiting for a job on this store root: torch and the engine imported, the
        demo's data loaded (`worker.wait_for_job`). They read their job id from a pipe, so they end when this
        process does, and until then hold no lock and open no store. Nothing happens when `warm` is 0."""
        if self.warm <= 0:
            return
        with self._warm_lock:
            ready = [p for p in self._warm.get(cache_dir, []) if p.poll() is None]
            while len(ready) < self.warm:
                with tempfile.TemporaryFile() as out:  # what it prints while waiting goes to its job's log
                    p = subprocess.Popen([self.python, "-m", WORKER_MODULE, "--warm", "--cache-dir", str(cache_dir)],
                                         stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                         env=self._env(), start_new_session=True, close_fds=True)
                ready.append(p)
            self._warm[cache_dir] = ready

    def _take_warm(self, cache_dir: str) -> subprocess.Popen | None:
        with self._warm_lock:
            ready = self._warm.get(cache_dir, [])
            while ready:
                p = ready.pop(0)
                if p.poll() is None:
                    return p
        return None

    def launch(self, job_id: str, cache_dir: str) -> int:
        log = log_path(cache_dir, job_id)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} worker for {job_id}\n".encode())
            out.flush()
            p = self._take_warm(cache_dir)
            if p is not None and p.stdin is not None:
                try:  # the job id, then EOF: the warm worker takes it from here
                    p.stdin.write(f"{job_id}\n".encode())
                    p.stdin.close()
                except OSError:  # it died just now: start one cold
                    p = None
            else:
                p = None
            if p is None:
                p = subprocess.Popen([self.python, "-m", WORKER_MODULE, job_id, "--cache-dir", str(cache_dir)],
                                     stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self._env(),
                                     start_new_session=True, close_fds=True)
        self._children[p.pid] = p
        self.prestart(cache_dir)  # the next click finds one ready too
        return p.pid

    def stop_warm(self) -> None:
        """End the waiting warm workers (EOF on their pipe: they exit without touching any store)."""
        with self._warm_lock:
            waiting = [p for ps in self._warm.values() for p in ps]
            self._warm.clear()
        for p in waiting:
            with contextlib.suppress(OSError):
                if p.stdin is not None:
                    p.stdin.close()
        for p in waiting:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def exit_status(self, pid: int) -> int | None:
        """Return code of a worker this executor started and that has ended (-N: signal N), else None."""
        self.alive(pid)
        return self._exited.get(pid)

    def alive(self, pid: int) -> bool:
        p = self._children.get(pid)
        if p is not None:
            if p.poll() is None:  # poll() reaps our own zombie
                return True
            self._exited[pid] = p.returncode
            del self._children[pid]
            return False
        if pid in self._exited:
            return False
        state = _proc_state(pid)
        if state in ("Z", "X", "x"):
            try:  # our child from an earlier manager object: reap it
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            return False
        if state is None:
            return False
        if state == "":  # no /proc: ask the kernel
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
            return True
        try:  # a reused pid is not our worker
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return True
        return not cmd or WORKER_MODULE.encode() in cmd

    def reap(self) -> None:
        """Collect every worker of ours that has ended, whatever its job's status: a worker that
        reported done is never asked about again, and unreaped it would stay a zombie under the app."""
        for pid, p in list(self._children.items()):
            if p.poll() is not None:
                self._exited[pid] = p.returncode
                del self._children[pid]

    def kill(self, pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)  # its own session: pgid == pid
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        p = self._children.get(pid)
        if p is not None:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass


# ---------------------------------------------------------------------------------------------
# The manager


def env_warm_workers() -> int:
    """$TWOPHASE_WARM_WORKERS (default 1): workers the app keeps started ahead of a click (0 turns them off)."""
    return int(from_env(ENV_WARM, Spec("int", "warm workers kept ready", lo=0, hi=64), 1))


def env_max_jobs() -> int:
    """$TWOPHASE_MAX_JOBS (default 1), checked like a setting: a bad value names the variable."""
    return int(from_env(ENV_MAX_JOBS, Spec("int", "jobs running at once", lo=1, hi=1024), 1))


class JobManager:
    """Submit, watch, cancel and collect experiment jobs; state lives in `store`, not in this object."""

    def __init__(self, store: Store | None = None, max_running: int | None = None,
                 launcher: Launcher | None = None, warm: int = 0):
        self.store = store if store is not None else Store()
        self.max_running = max_running if max_running is not None else env_max_jobs()
        if not isinstance(self.max_running, int) or self.max_running < 1:
            raise conf.ConfigError("max_running", self.max_running, "must be a whole number >= 1")
        # workers pump the queue when they end: they must use the same limit
        self.launcher: Launcher = launcher or LocalLauncher(env={ENV_MAX_JOBS: str(self.max_running)}, warm=warm)
        self.cache_dir = str(Path(self.store.root).resolve())
        if isinstance(self.launcher, LocalLauncher):  # `warm` workers ready before the first submit
            self.launcher.prestart(self.cache_dir)
        self.skipped: list[R.RecordProblem] = []  # job records the last `list` could not use

    # -- ids and records --------------------------------------------------------------------
    @staticmethod
    def job_id(cfg: conf.ExperimentConfig) -> str:
        return f"{conf.kind_of(cfg)}-{conf.config_hash(cfg)}"

    def get(self, job_id: str) -> JobRecord | None:
        rec = load_record(self.store, job_id)
        if rec is not None and rec.status == "running":
            rec = self._reconcile(job_id)
        return rec

    def list(self) -> list[JobRecord]:
        """Every job, newest first. Records that fail their checks are skipped, never deleted, and named in
        `self.skipped` (refreshed by each call) for the caller to show."""
        out, skipped = [], []
        for key in self.store.keys("job/"):
            job_id = key[len("job/"):]
            rec, bad = read_record(self.store, job_id)
            if rec is not None and rec.status == "running":
                rec = self._reconcile(job_id)
            if rec is not None:
                out.append(rec)
            elif bad is not None:
                skipped.append(bad)
        self.skipped = skipped
        return sorted(out, key=lambda r: r.created, reverse=True)

    def result(self, job_id: str) -> Result | None:
        rec = load_record(self.store, job_id)
        return None if rec is None else load_result(self.store, rec.kind, rec.hash)

    def partial(self, job_id: str) -> Result | None:
        rec = load_record(self.store, job_id)
        return None if rec is None else load_result(self.store, rec.kind, rec.hash, partial=True)

    def log(self, job_id: str) -> str:
        """The worker's output (tracebacks land here too); '' if there is none."""
        p = log_path(self.cache_dir, job_id)
        return p.read_text(errors="replace") if p.is_file() else ""

    # -- submit, cancel, pump ---------------------------------------------------------------
    def submit(self, cfg: conf.ExperimentConfig, executor: str | None = None) -> JobRecord:
        """Queue `cfg` (validated first: ConfigError propagates, nothing is created) and pump. `executor`
        ("local" or "ray") is where its worker runs the work; None: the worker's $TWOPHASE_EXECUTOR.
        A record of this id that fails its checks is replaced by the new one: the user is submitting again."""
        conf.validate(cfg)
        check_placement([cfg.train.device], resolve_executor(executor))  # as the worker will resolve it
        kind, h = conf.kind_of(cfg), conf.config_hash(cfg)
        job_id = f"{kind}-{h}"
        has_result = load_result(self.store, kind, h) is not None
        now = time.time()
        rec = self._reconcile(job_id)
        if not has_result and (rec is None or rec.status not in ("queued", "running")):
            self._check_space(cfg, job_id)
        with self.store.cache.transact():
            rec = load_record(self.store, job_id)
            if rec is not None and rec.status in ("queued", "running"):
                return rec  # attach
            if has_result:
                if rec is None or rec.status != "done":
                    rec = JobRecord(job_id, kind, h, conf.to_dict(cfg), status="done", progress=1.0,
                                    stage="served from the store", eta_s=0.0, created=now, updated=now,
                                    finished_at=now)
                    save_record(self.store, rec)
                return rec
            # new, or failed / cancelled / done-but-result-gone: queue it (the engine resumes)
            rec = JobRecord(job_id, kind, h, conf.to_dict(cfg), status="queued", stage="queued",
                            created=now, updated=now, log=str(log_path(self.cache_dir, job_id)), executor=executor)
            save_record(self.store, rec)
        self.pump()
        return load_record(self.store, job_id) or rec

    def _check_space(self, cfg: conf.ExperimentConfig, job_id: str) -> None:
        """StoreFull if the checkpoints this job would write clearly do not fit (estimated without torch)."""
        if self.store.files.free_bytes() is None:
            return  # checkpoints go to an object store: no disk of ours to fill, and no listing to wait for
        one = self.store.checkpoint_bytes(cfg.train.trajectory_key())
        if one is None:
            return  # no checkpoint of this model yet: the engine checks before it trains
        n = checkpoints_to_write(cfg, self.store)
        self.store.require_space(n * one, f"job {job_id} ({n} checkpoints of about {human(one)})")

    def cancel(self, job_id: str) -> None:
        """A queued job is cancelled at once; a running worker stops at its next step."""
        now = time.time()

        def ask(rec: JobRecord) -> bool:
            if rec.status == "queued":
                rec.status, rec.stage, rec.finished_at, rec.eta_s = "cancelled", "cancelled", now, None
                return True
            if rec.status == "running" and rec.cancel_requested is None:
                rec.cancel_requested, rec.stage = now, "cancelling"
                return True
            return False

        update_record(self.store, job_id, ask)
        self._reconcile(job_id)  # a dead worker cannot acknowledge: settle it now

    def pump(self) -> None:
        """Start queued jobs, oldest first, while fewer than `max_running` run (and reap ended workers)."""
        self.launcher.reap()
        for key in self.store.keys("job/"):
            rec = load_record(self.store, key[len("job/"):])
            if rec is not None and rec.status == "running":
                self._reconcile(rec.id)
        while True:
            with self.store.cache.transact():
                recs = [r for r in (load_record(self.store, k[len("job/"):]) for k in self.store.keys("job/")) if r]
                if sum(r.status == "running" for r in recs) >= self.max_running:
                    return
                queued = sorted((r for r in recs if r.status == "queued"), key=lambda r: r.created)
                if not queued:
                    return
                rec = queued[0]
                now = time.time()
                # launched inside the transaction: two pumping processes never exceed the limit
                try:
                    pid = self.launcher.launch(rec.id, self.cache_dir)
                except Exception as e:  # noqa: BLE001 - reported on the job, not raised into the page
                    rec.status, rec.error, rec.finished_at = "failed", f"could not start a worker: {e}", now
                    rec.stage = "failed"
                else:
                    rec.status, rec.pid, rec.started, rec.updated = "running", pid, now, now
                    rec.stage, rec.progress, rec.eta_s, rec.error, rec.traceback = "starting", 0.0, None, None, None
                    rec.cancel_requested = rec.finished_at = None
                save_record(self.store, rec)

    # -- dead workers -----------------------------------------------------------------------
    def _death_reason(self, rec: JobRecord) -> str:
        code = None
        if rec.pid is not None:
            code = self.launcher.exit_status(rec.pid)
        if code is not None and code > 0:  # (0: reaped elsewhere, Popen cannot tell; a clean exit reports)
            what = f"exited with status {code}; see {log_path(self.cache_dir, rec.id)}"
        elif code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            what = f"{name}: killed or out of memory"
        else:
            what = "killed or out of memory"
        return f"worker process {rec.pid} died without reporting ({what}); {RESUME_HINT}"

    def _reconcile(self, job_id: str) -> JobRecord | None:
        """A running job whose worker is gone (no process, no heartbeat) becomes failed / cancelled."""
        rec = load_record(self.store, job_id)
        if rec is None or rec.status != "running":
            return rec
        now = time.time()
        alive = rec.pid is not None and self.launcher.alive(rec.pid)
        forced = alive and rec.cancel_requested is not None and now - rec.cancel_requested > CANCEL_GRACE_S
        if forced and rec.pid is not None:  # it ignored the cancel (stuck in a long step): stop it the hard way
            self.launcher.kill(rec.pid)
        elif alive or (rec.pid is None and now - rec.updated <= STALE_S):
            return rec  # a dead worker is settled at once: its last heartbeat may be a second old

        def settle(r: JobRecord) -> bool:
            # re-checked under the lock: the worker may have reported in the meantime
            if r.status != "running" or r.pid != rec.pid:
                return False
            if r.cancel_requested is not None:
                r.status, r.stage, r.error = "cancelled", "cancelled", None
            else:
                r.status, r.stage = "failed", "failed"
                r.error = self._death_reason(r) if r.pid is not None else f"the worker never started; {RESUME_HINT}"
            r.eta_s, r.finished_at = None, time.time()
            return True

        return update_record(self.store, job_id, settle)


def checkpoints_to_write(cfg: conf.ExperimentConfig, store: Store) -> int:
    """How many checkpoint files a job would write now (an estimate for the free-space check, no torch).

    The base run's missing checkpoints (those the experiment needs and the `checkpoint_every`
    multiples up to the last), plus those its units write (chaos: every branch checkpoint).
    """
    t = cfg.train
    base_needs = cfg.base_checkpoints()
    top = max(base_needs)
    if t.checkpoint_every:
        base_needs |= set(range(t.checkpoint_every, top + 1, t.checkpoint_every))
    n = len(base_needs - set(store.checkpoints(t.trajectory_key())))
    return n + registry.of(cfg).extra_checkpoints(cfg)
