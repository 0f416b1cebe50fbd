"""The job runner with real worker processes: progress, cancel, kill -9 and resume, dedupe, queue."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from launchers import FailingLauncher
from waiting import gone, wait_for

from twophase_core.execution.jobs import JobManager, JobRecord, save_record
from twophase_core.execution.run import run_experiment
from twophase_core.execution.worker import run_job
from twophase_core.experiments.chaos import ChaosConfig
from twophase_core.experiments.cone import ConeConfig
from twophase_core.experiments.presets import preset
from twophase_core.science.train import Training
from twophase_core.settings import config as conf
from twophase_core.storage.store import Store


def worker_pids(job_id: str, root: Path) -> list[int]:
    """Live worker processes running `job_id` on the store at `root` (from /proc). The store counts: a job's id is
    its config's hash, so a test running beside this one (pytest -n) may run the same job on a store of its own."""
    out = []
    cache_dir = os.fsencode(Path(root).resolve())
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        on_root = any(a == b"--cache-dir" and b == cache_dir for a, b in zip(cmd, cmd[1:], strict=False))
        if b"twophase_core.execution.worker" in cmd and job_id.encode() in cmd and on_root and not gone(int(d.name)):
            out.append(int(d.name))
    return out


def finished(jm: JobManager, job_id: str) -> JobRecord | None:
    rec = jm.get(job_id)
    return rec if rec is not None and rec.finished else None


def fresh_steps(cfg: ChaosConfig, root: Path) -> int:
    """SGD steps a chaos run needs with nothing stored (the engine's own count, on an empty store)."""
    s = Store(root)
    try:
        run = Training(cfg.train, s)
        t0s, t1s = sorted(cfg.t0), sorted(cfg.t1)
        n = run.base().steps_needed(t0s + t1s)
        for t0 in t0s:
            later = [t1 for t1 in t1s if t1 > t0]
            n += sum(run.branch(t0, cfg.eps, cfg.eps_mode, seed).steps_needed(later) for seed in cfg.perturb_seeds)
        return n
    finally:
        s.close()


def long_chaos(iterations: int, **kw) -> ChaosConfig:
    return conf.replace(preset("tiny", "chaos"), iterations=iterations, t1=(30, iterations), **kw)


def assert_same_result(a, b) -> None:
    assert a.kind == b.kind and a.hash == b.hash and a.config == b.config
    assert sorted(a.arrays) == sorted(b.arrays)
    for k in a.arrays:
        np.testing.assert_array_equal(a.arrays[k], b.arrays[k], err_msg=k)
    assert a.meta["sgd_steps"] == b.meta["sgd_steps"]


@pytest.mark.slow
def test_submit_runs_once_in_a_worker_to_the_result_run_experiment_gives(store, tmp_path):
    # long enough (a few seconds) that the 5-per-second progress reports catch it mid-run with an ETA
    cfg = conf.replace(preset("tiny", "chaos"), iterations=400, t1=(30, 400))
    jm = JobManager(store, max_running=2)
    rec = jm.submit(cfg)
    assert rec.id == jm.job_id(cfg) == f"chaos-{conf.config_hash(cfg)}"
    assert rec.status == "running" and rec.pid is not None and rec.pid != os.getpid()
    assert rec.config == conf.to_dict(cfg)
    # the same config again, from this page and from another process's manager: attached, not rerun
    same = [jm.submit(cfg), JobManager(Store(store.root), max_running=2).submit(cfg)]
    assert all(r.id == rec.id and r.status == "running" and r.pid == rec.pid for r in same)
    assert len(store.keys("job/")) == 1
    wait_for("the worker to show in /proc", lambda: worker_pids(rec.id, store.root))
    assert worker_pids(rec.id, store.root) == [rec.pid]

    seen: list[JobRecord] = []

    def poll():
        r = jm.get(rec.id)
        seen.append(r)
        return r if r.finished else None

    final = wait_for("the tiny chaos job to finish", poll)
    assert final.status == "done", final.error
    assert final.progress == 1.0 and final.error is None and final.pid == rec.pid
    progress = [r.progress for r in seen]
    assert progress == sorted(progress), "progress must never go back"
    running = [r for r in seen if r.status == "running" and 0 < r.progress < 1]
    assert running, "progress was never reported between 0 and 1"
    assert any(r.stage.startswith(("base run", "branch", "metrics")) for r in running)
    assert any(r.eta_s is not None and r.eta_s >= 0 for r in running)
    assert wait_for("the worker process to exit", lambda: gone(rec.pid), timeout=10)

    got = jm.result(rec.id)
    assert got is not None
    want = run_experiment(cfg, Store(tmp_path / "reference"))
    assert_same_result(got, want)  # includes sgd_steps: trained exactly once
    assert got.meta["sgd_steps"] == fresh_steps(cfg, tmp_path / "empty")
    assert jm.partial(rec.id) is None  # cleaned up once the final result is stored
    assert f"{rec.id} done" in Path(final.log).read_text()

    # survives a new manager (app restart); a finished config attaches instead of running again
    jm2 = JobManager(Store(store.root))
    assert [r.id for r in jm2.list()] == [rec.id]
    again = jm2.submit(cfg)
    assert again.id == rec.id and again.status == "done" and again.pid == rec.pid
    assert worker_pids(rec.id, store.root) == []


@pytest.mark.slow
def test_cancel_stops_the_worker_and_the_queue_moves_on(store):
    # six rows (one per t0): the first row's cells come after a third of the work (the live curve before)
    long_cfg = conf.replace(preset("tiny", "chaos"), iterations=600, t0=(0, 1, 2, 3, 4, 5), t1=(600,))
    next_cfg = preset("tiny", "chaos")
    jm = JobManager(store, max_running=1)
    first = jm.submit(long_cfg)
    second = jm.submit(next_cfg)
    third = jm.submit(conf.replace(next_cfg, data_seed=2))
    assert first.status == "running" and second.status == "queued" and second.pid is None
    assert third.status == "queued"
    assert [r.id for r in jm.list()] == [third.id, second.id, first.id]  # newest first
    jm.cancel(third.id)  # a queued job is cancelled at once, without a worker
    assert jm.get(third.id).status == "cancelled" and jm.get(third.id).pid is None

    def training():
        a, b = jm.get(first.id), jm.get(second.id)
        assert b.status == "queued", f"the second job must wait for the first (max_running=1), is {b.status}"
        return a.status == "running" and a.progress > 0

    wait_for("the first job to report progress", training)
    jm.pump()  # what a polling page does: still nothing to start
    assert jm.get(second.id).status == "queued"
    def first_row():
        p = jm.partial(first.id)
        return training() and p is not None and p.meta["units_done"] >= 1 and p

    part = wait_for("a partial result with its first row", first_row)
    assert part.meta["partial"] is True and len(part.arrays["train_t"]) > 0  # the base run's curve came along
    assert part.arrays["C"].shape == (1, 6, 1)
    assert np.isfinite(part.arrays["C"][0, 0, 0]) and np.isnan(part.arrays["C"][0, -1, 0])

    jm.cancel(first.id)
    a = wait_for("the cancel to be acknowledged", lambda: finished(jm, first.id), timeout=20)
    assert a.status == "cancelled" and a.error is None
    assert wait_for("the cancelled worker to exit", lambda: gone(first.pid), timeout=10)
    assert worker_pids(first.id, store.root) == []
    assert jm.result(first.id) is None
    assert jm.partial(first.id).meta["units_done"] < 6  # the rows it finished stay available

    # nobody here calls pump(): the cancelled worker starts the queued job on its way out
    b = wait_for("the queued job to finish", lambda: finished(jm, second.id))
    assert b.status == "done", b.error
    assert b.pid is not None and b.pid != first.pid
    assert b.started >= a.finished_at - 0.5
    assert jm.result(second.id) is not None
    assert jm.get(third.id).status == "cancelled" and worker_pids(third.id, store.root) == []


@pytest.mark.slow
def test_killed_worker_is_reported_failed_and_resubmission_resumes(store):
    cfg = long_chaos(500, checkpoint_every=100)
    key = cfg.train.trajectory_key()
    need_fresh = fresh_steps(cfg, store.root.parent / "empty")
    jm = JobManager(store)
    rec = jm.submit(cfg)
    # kill -9 while the base run is under way, past the grid's own checkpoints (0, 20, 30)
    wait_for("base checkpoint 200", lambda: max(store.checkpoints(key), default=0) >= 200, every=0.01)
    os.kill(rec.pid, signal.SIGKILL)
    assert wait_for("the killed worker to exit", lambda: gone(rec.pid), timeout=10)
    failed = wait_for("the dead worker to be reported", lambda: finished(jm, rec.id), timeout=20)
    assert failed.status == "failed"
    assert f"worker process {rec.pid} died without reporting" in failed.error
    assert "killed or out of memory" in failed.error and "submit again to resume" in failed.error
    kept = store.checkpoints(key)
    assert kept and max(kept) >= 200, kept
    assert max(kept) < 500, "the kill came too late: the base run had already finished"
    assert jm.result(rec.id) is None
    # a watched run computes its first cell before the rest of the base run: that branch's steps are kept too
    run = Training(cfg.train, store)
    branch_kept = 0
    for t0 in cfg.t0:
        for seed in cfg.perturb_seeds:
            ck = store.checkpoints(run.branch(t0, cfg.eps, cfg.eps_mode, seed).key)
            branch_kept += max(ck) - t0 if ck else 0
    assert branch_kept == min(t for t in cfg.t1 if t > min(cfg.t0)) - min(cfg.t0)  # the first cell's branch only

    again = jm.submit(cfg)
    assert again.id == rec.id and again.status == "running" and again.pid != rec.pid
    assert again.error is None
    final = wait_for("the resumed job to finish", lambda: finished(jm, rec.id))
    assert final.status == "done", final.error
    steps = jm.result(rec.id).meta["sgd_steps"]
    # the base run resumes from its last checkpoint: none of its saved prefix is trained again
    assert steps == need_fresh - max(kept) - branch_kept, (steps, need_fresh, kept, branch_kept)
    assert steps < need_fresh


def test_diverging_training_fails_with_one_clear_line(store):
    """The worker's job body, run in this process (no torch import to wait for): status failed."""
    cfg = conf.replace(preset("tiny", "chaos"), lr=100.0, width=1.0)  # diverges within the allowed lr
    jm = JobManager(store)
    job_id = jm.job_id(cfg)
    save_record(store, JobRecord(job_id, "chaos", conf.config_hash(cfg), conf.to_dict(cfg), created=time.time(),
                                 updated=time.time()))
    handler = signal.getsignal(signal.SIGINT)
    assert run_job(store, job_id) == 1
    assert signal.getsignal(signal.SIGINT) is handler  # the worker's handlers are undone
    rec = jm.get(job_id)
    assert rec.status == "failed" and rec.pid == os.getpid()
    assert rec.error.startswith("training loss became non-finite at iteration") and "\n" not in rec.error
    assert "TrainingDiverged" in rec.traceback and "Traceback" in rec.traceback
    assert jm.result(job_id) is None
    # a resubmission re-queues it and pumps: here through an executor that cannot start anything
    rec2 = JobManager(store, launcher=FailingLauncher(RuntimeError("no capacity"))).submit(cfg)
    assert rec2.status == "failed" and rec2.error == "could not start a worker: no capacity"
    assert rec2.traceback is None and rec2.pid is None




def test_invalid_config_raises_and_creates_no_record(store):
    bad = conf.replace(preset("tiny", "chaos"), t1=(30, 999))
    jm = JobManager(store)
    with pytest.raises(conf.ConfigError):
        jm.submit(bad)
    assert store.keys("job/") == [] and jm.list() == []
    assert not (store.root / "jobs").exists()


def test_max_running_from_env(store, monkeypatch):
    monkeypatch.setenv("TWOPHASE_MAX_JOBS", "3")
    assert JobManager(store).max_running == 3
    assert JobManager(store, max_running=2).max_running == 2
    monkeypatch.delenv("TWOPHASE_MAX_JOBS")
    assert JobManager(store).max_running == 1
    with pytest.raises(conf.ConfigError):
        JobManager(store, max_running=0)
    assert JobManager(store).get("chaos-unknown") is None


# ---------------------------------------------------------------------------------------------
# Faults: a resubmission right after a kill, shared trajectories, an index that vanishes mid-run


@pytest.mark.slow
def test_resubmitting_right_after_a_kill_starts_a_new_worker(store):
    cfg = long_chaos(500, checkpoint_every=100)
    jm = JobManager(store)
    rec = jm.submit(cfg)
    wait_for("the worker to train", lambda: jm.get(rec.id).progress > 0)
    os.kill(rec.pid, signal.SIGKILL)
    assert wait_for("the killed worker to exit", lambda: gone(rec.pid), timeout=10)
    killed = time.monotonic()
    # from another manager (the CLI, another page), well within the old 5 s heartbeat grace
    again = JobManager(Store(store.root)).submit(cfg)
    assert time.monotonic() - killed < 5.0
    assert again.status == "running" and again.pid not in (None, rec.pid), again
    assert wait_for("the new worker to show in /proc", lambda: worker_pids(rec.id, store.root)) == [again.pid]
    final = wait_for("the restarted job to finish", lambda: finished(jm, rec.id))
    assert final.status == "done" and final.pid == again.pid, final.error


def _cone(iterations: int, **kw) -> ConeConfig:
    return conf.replace(preset("tiny", "cone"), iterations=iterations, checkpoints=(0, 10, 20, 40, iterations), **kw)


@pytest.mark.slow
def test_a_job_waits_for_the_trajectory_lock_and_reads_what_the_holder_trained(store):
    cfg = _cone(200)
    key = cfg.train.trajectory_key()
    jm = JobManager(store)
    with store.trajectory_lock(key):  # this process is "the other job" training the base run
        rec = jm.submit(cfg)
        # the worker says so (and the page with it) once it has asked for the lock and been refused
        wait_for("the job to wait for the lock", lambda: "waiting for another job" in jm.get(rec.id).stage)
        assert store.checkpoints(key) == [] and jm.get(rec.id).status == "running"  # waiting, not training
        Training(cfg.train, store).base().ensure(list(cfg.checkpoints))
    final = wait_for("the waiting job to finish", lambda: finished(jm, rec.id))
    assert final.status == "done", final.error
    assert jm.result(rec.id).meta["sgd_steps"] == 0  # it read the checkpoints the holder wrote


@pytest.mark.slow
def test_a_dead_lock_holder_does_not_block(store, lock_holder):
    cfg = _cone(100)
    key = cfg.train.trajectory_key()
    holder = lock_holder(store.root / "runs" / key / ".lock")
    try:
        jm = JobManager(store)
        rec = jm.submit(cfg)
        wait_for("the job to wait for the lock", lambda: "waiting for another job" in jm.get(rec.id).stage)
        assert store.checkpoints(key) == []  # refused the lock, it has trained nothing
    finally:
        holder.kill()  # kill -9: the kernel drops its lock
        holder.wait()
    final = wait_for("the job to finish once the holder died", lambda: finished(jm, rec.id))
    assert final.status == "done", final.error
    assert jm.result(rec.id).meta["sgd_steps"] == 100


@pytest.mark.slow
def test_two_jobs_sharing_a_base_run_train_it_once(store, monkeypatch):
    monkeypatch.setenv("TWOPHASE_MAX_JOBS", "2")
    a_cfg, b_cfg = _cone(200), _cone(200, n_samples=6)  # one base run, two kernels
    jm = JobManager(store)
    assert jm.max_running == 2
    a = jm.submit(a_cfg)
    wait_for("the first job to train", lambda: jm.get(a.id).progress > 0)
    b = jm.submit(b_cfg)
    assert b.status == "running" and jm.get(a.id).status == "running"  # at the same time
    done = [wait_for(f"job {r.id} to finish", lambda r=r: finished(jm, r.id)) for r in (a, b)]
    assert [r.status for r in done] == ["done", "done"], [r.error for r in done]
    steps = sorted(jm.result(r.id).meta["sgd_steps"] for r in (a, b))
    assert sum(steps) == 200, steps  # the base run once, whoever trained which part


@pytest.mark.slow
def test_a_job_whose_index_is_deleted_mid_run_fails_loudly(store):
    cfg = long_chaos(600)
    jm = JobManager(store)
    rec = jm.submit(cfg)
    wait_for("the worker to train", lambda: jm.get(rec.id).progress > 0)
    for f in (store.root / "index").glob("cache.db*"):
        f.unlink()
    final = wait_for("the job to report the lost index", lambda: finished(jm, rec.id))
    assert final.status == "failed" and final.pid == rec.pid
    assert f"the store index {store.db_path} was deleted or replaced while job {rec.id} ran" in final.error
    assert "submit again to resume" in final.error
    assert wait_for("the worker to exit", lambda: gone(rec.pid), timeout=10)
    assert "was deleted or replaced" in Path(final.log).read_text()
    assert jm.result(rec.id) is None


@pytest.mark.slow
def test_finished_workers_are_reaped_not_left_as_zombies(store):
    """The app's manager starts workers; once they end, pump() collects them (no zombies pile up)."""
    jm = JobManager(store, max_running=2)
    recs = [jm.submit(conf.replace(preset("tiny", "linear"), switch=(s,))) for s in (0, 10)]
    pids = [r.pid for r in recs]
    assert all(r.status == "running" for r in recs) and None not in pids  # both started by this manager
    wait_for("both jobs to finish", lambda: all(finished(jm, r.id) for r in recs), timeout=240)
    assert all(jm.get(r.id).status == "done" for r in recs)
    # both workers have ended (a zombie counts as ended): only now could a missing reap leave a zombie
    wait_for("the workers to exit", lambda: all(gone(pid) for pid in pids), timeout=30)
    jm.pump()
    states = {pid: _state(pid) for pid in pids}
    assert "Z" not in states.values(), states


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def _warm_children(jm: JobManager) -> list:
    return [p for ps in jm.launcher._warm.values() for p in ps]  # type: ignore[attr-defined]


@pytest.mark.slow
def test_a_warm_worker_takes_the_next_job_and_gives_the_cold_workers_bits(store, tmp_path):
    cfg = conf.replace(preset("tiny", "chaos"), iterations=60, t1=(30, 60))
    jm = JobManager(store, warm=1)
    try:
        (ready,) = _warm_children(jm)  # started with the manager, before any submit
        assert ready.poll() is None and not store.keys("job/")
        rec = jm.submit(cfg)
        assert rec.pid == ready.pid  # the job went to the process that was already up
        (spare,) = _warm_children(jm)
        assert spare.pid != ready.pid and spare.poll() is None  # and another one waits for the next click
        final = wait_for("the job on the warm worker to finish", lambda: finished(jm, rec.id))
        assert final.status == "done", final.error
        assert wait_for("the warm worker to exit", lambda: gone(ready.pid), timeout=10)
        log = Path(final.log).read_text()
        assert f"worker for {rec.id}" in log and f"{rec.id} done" in log
        cold = JobManager(Store(tmp_path / "cold"))
        crec = cold.submit(cfg)
        assert wait_for("the cold job to finish", lambda: finished(cold, crec.id)).status == "done"
        assert_same_result(jm.result(rec.id), cold.result(crec.id))
    finally:
        jm.launcher.stop_warm()  # type: ignore[attr-defined]
    assert spare.wait(timeout=10) == 0  # EOF on its pipe: it leaves without a job
    assert len(store.keys("job/")) == 1


def test_a_warm_worker_never_outlives_the_process_that_started_it(tmp_path):
    import subprocess
    import sys

    parent = subprocess.run(
        [sys.executable, "-c", "import os, sys\nfrom twophase_core.execution.jobs import LocalLauncher\n"
         "la = LocalLauncher(warm=1)\nla.prestart(sys.argv[1])\n"
         "print([p.pid for ps in la._warm.values() for p in ps][0], flush=True)\nos._exit(0)\n",
         str(tmp_path / "cache")], capture_output=True, text=True, timeout=60, check=True)
    pid = int(parent.stdout.strip())
    assert wait_for("the orphaned warm worker to exit", lambda: gone(pid), timeout=60)
    assert not (tmp_path / "cache" / "index").exists()  # it never opened the store


def test_no_warm_worker_unless_asked(store):
    jm = JobManager(store)
    assert _warm_children(jm) == []
