"""Ray as an executor, on a real local cluster (`ray start --head --num-cpus=2`, one per test session).

Checks what scale-out must never change: chaos, cone and linear results through Ray equal the local
executor's (bit for bit where the arithmetic is the same); a sweep whose points share a base run
trains it once; a task whose process is killed is retried and gives the same result; a cancelled run
keeps its checkpoints and a resubmission ends with the same result; a storage root in another folder
or in an object store (S3, a local S3-compatible server) serves tasks in other processes.
"""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from twophase_core import config as C
from twophase_core.presets import preset
from twophase_core.store import Store

pytestmark = pytest.mark.skipif(shutil.which("ray", path=str(Path(sys.executable).parent)) is None,
                                reason="ray is not installed (pip install -e '.[ray]'; make test installs it)")
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    """One head node for the whole session; drivers join it with address 'auto'."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env, timeout=60)
    r = subprocess.run([RAY, "start", "--head", "--num-cpus=2", "--include-dashboard=false",
                        "--disable-usage-stats"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    os.environ["TWOPHASE_RAY_ADDRESS"] = "auto"
    yield "auto"
    import ray

    if ray.is_initialized():
        ray.shutdown()
    subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env, timeout=60)
    os.environ.pop("TWOPHASE_RAY_ADDRESS", None)


CHAOS = C.replace(preset("tiny", "chaos"), t0=(0, 10, 20, 40), perturb_seeds=(0, 1))


def test_chaos_through_ray_equals_local_bit_for_bit(ray_cluster, tmp_path):
    from twophase_core.experiments import run_chaos

    local = run_chaos(CHAOS, Store(tmp_path / "local"))
    seen: list[tuple[float, str]] = []
    remote = run_chaos(CHAOS, Store(tmp_path / "ray"), executor="ray", progress=lambda f, s: seen.append((f, s)))
    assert remote.meta["executor"] == "ray" and local.meta.get("executor", "local") == "local"
    on_ray = [f for f, s in seen if "Ray" in s]
    assert len(set(on_ray)) >= 2 and on_ray == sorted(on_ray)  # the rows' progress reaches the bar from the tasks
    assert max(on_ray) > 0.9
    for k in ("C", "B", "D", "acc_branch", "path", "realized_eps_norm", "acc_base"):
        assert np.array_equal(local.arrays[k], remote.arrays[k], equal_nan=True), k


def test_ray_sweep_trains_a_shared_base_run_once(ray_cluster, tmp_path):
    from twophase_core.sweep import Sweep, load_results, parse_vary, run_sweep

    sweep = Sweep(preset("tiny", "chaos"), parse_vary("chaos", ["eps=1e-7,1e-6,1e-5"]))
    res = run_sweep(sweep, Store(tmp_path / "s"), executor="ray")
    assert set(load_results(Store(tmp_path / "s"), res.points)) == set(res.results)  # stored by the driver
    steps = [r.meta["sgd_steps"] for r in res.results.values()]
    T = preset("tiny", "chaos").train.iterations
    branch = sum(T - t0 for t0 in preset("tiny", "chaos").t0)
    assert sum(steps) == 3 * branch  # no point trained a base step: one task trained it before they started
    key = preset("tiny", "chaos").train.trajectory_key()
    assert Store(tmp_path / "s").checkpoints(key)[-1] == T
    local = run_sweep(sweep, Store(tmp_path / "l"))
    for h, r in local.results.items():
        assert np.array_equal(r.arrays["C"], res.results[h].arrays["C"], equal_nan=True)


@contextlib.contextmanager
def killing_one_running(task: str):
    """While the block runs, kill -9 the first worker process seen running `task` (checked in its
    command line just before: a running task, not an idle worker a finished one left); yields the
    list of killed pids."""
    killed: list[int] = []
    done = threading.Event()

    def killer() -> None:
        while not done.is_set() and not killed:
            out = subprocess.run(["pgrep", "-f", f"ray::{task}"], capture_output=True, text=True).stdout
            pids = [int(p) for p in out.split()]
            if pids:
                time.sleep(0.2)  # let it start training
                try:
                    running = task.encode() in Path(f"/proc/{pids[0]}/cmdline").read_bytes()
                except OSError:
                    running = False
                if running:
                    os.kill(pids[0], 9)
                    killed.append(pids[0])
            time.sleep(0.1)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    try:
        yield killed
    finally:
        done.set()
        th.join(timeout=5)


def test_a_killed_task_is_retried_with_the_same_result(ray_cluster, tmp_path):
    """Kill the worker process of a running row task: Ray retries it, the row resumes from checkpoints."""
    from twophase_core.experiments import run_chaos

    cfg = C.replace(CHAOS, t0=(0, 5), iterations=1000, t1=(500, 1000), perturb_seeds=(0,))
    expected = run_chaos(cfg, Store(tmp_path / "ref"))
    with killing_one_running("_unit_task") as killed:
        got = run_chaos(cfg, Store(tmp_path / "kill"), executor="ray")
    assert killed, "no row task was seen running"
    for k in ("C", "B", "D", "path"):
        assert np.array_equal(expected.arrays[k], got.arrays[k], equal_nan=True), k


def test_cancel_keeps_checkpoints_and_a_resubmission_gives_the_same_result(ray_cluster, tmp_path):
    from twophase_core.experiments import run_chaos
    from twophase_core.train import Cancelled, CancelToken

    cfg = C.replace(CHAOS, iterations=400, t0=(0, 50, 100, 200), t1=(300, 400), perturb_seeds=(0,))
    store = Store(tmp_path / "c")
    token = CancelToken()
    seen: list[str] = []

    def progress(frac: float, stage: str) -> None:
        seen.append(stage)
        if "Ray tasks: 1 done" in stage:  # cancelled with the other rows still out there (never a race)
            token.set()

    with pytest.raises(Cancelled):
        run_chaos(cfg, store, progress=progress, cancel=token, executor="ray")
    run = __import__("twophase_core.train", fromlist=["Run"]).Run(cfg.train, store)
    assert run.store.checkpoints(run.base().key)  # the base run's checkpoints stay
    assert not any("Ray tasks: 2 done" in st for st in seen)
    again = run_chaos(cfg, store, executor="ray")
    fresh = run_chaos(cfg, Store(tmp_path / "fresh"))
    assert np.array_equal(again.arrays["C"], fresh.arrays["C"], equal_nan=True)


def test_cli_executor_ray_a_cone_sweep_and_kernels_as_tasks(ray_cluster, tmp_path, capsys):
    from twophase_core.cli import main
    from twophase_core.experiments import run_cone

    out = tmp_path / "o.json"
    assert main(["chaos", "--preset", "tiny", "--executor", "ray", "--cache-dir", str(tmp_path / "c"),
                 "--json", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["meta"]["executor"] == "ray"
    assert main(["sweep", "cone", "--preset", "tiny", "--executor", "ray", "--cache-dir", str(tmp_path / "c"),
                 "--quiet"]) == 0
    capsys.readouterr()
    # a cone run's kernels as one task per checkpoint, with the path the driver chose: the same kernels
    local = run_cone(preset("tiny", "cone"), Store(tmp_path / "cl"))
    remote = run_cone(preset("tiny", "cone"), Store(tmp_path / "cr"), executor="ray")
    assert remote.meta["entk_method"] in ("structured", "jacobian", "ntvp")
    assert np.allclose(local.arrays["S"], remote.arrays["S"], rtol=0, atol=1e-6)
    kernels = tmp_path / "cr" / "runs" / preset("tiny", "cone").train.trajectory_key() / "kernels"
    assert len(list(kernels.glob("*.npy"))) == len(preset("tiny", "cone").checkpoints)  # written by the tasks
    assert np.array_equal(local.arrays["test_acc"], remote.arrays["test_acc"])


def test_a_file_url_storage_root_serves_the_ray_tasks(ray_cluster, tmp_path, monkeypatch):
    from twophase_core.experiments import run_chaos
    from twophase_core.storage import ENV_ROOT as ENV_STORAGE

    plain = run_chaos(CHAOS, Store(tmp_path / "plain"))
    shared = tmp_path / "shared"
    monkeypatch.setenv(ENV_STORAGE, shared.as_uri())
    got = run_chaos(CHAOS, Store(tmp_path / "cache"), executor="ray")
    assert (shared / CHAOS.train.trajectory_key()).is_dir() and not (tmp_path / "cache" / "runs").exists()
    assert len(list(shared.rglob("t*.pt"))) > len(list((shared / CHAOS.train.trajectory_key()).glob("t*.pt")))
    for k in ("C", "B", "D", "path"):
        assert np.array_equal(plain.arrays[k], got.arrays[k], equal_nan=True), k


def test_a_submitted_job_runs_its_rows_on_ray_with_its_worker_as_the_driver(ray_cluster, tmp_path):
    from twophase_core.jobs import JobManager

    env = {**os.environ, "TWOPHASE_CACHE_DIR": str(tmp_path / "cache"), "TWOPHASE_RAY_ADDRESS": "auto"}
    r = subprocess.run([sys.executable, "-m", "twophase_core", "submit", "chaos", "--preset", "tiny", "--executor",
                        "ray", "--wait", "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    job_id = r.stdout.strip().splitlines()[0]
    jm = JobManager(Store(tmp_path / "cache"))
    assert jm.get(job_id).executor == "ray" and jm.result(job_id).meta["executor"] == "ray"


def test_a_linear_run_splits_into_one_task_per_switch_time(ray_cluster, tmp_path):
    from twophase_core.experiments import run_linear

    cfg = C.replace(preset("tiny", "linear"), switch=(0, 10, 20, 40))
    local = run_linear(cfg, Store(tmp_path / "local"))
    seen: list[tuple[float, str]] = []
    remote = run_linear(cfg, Store(tmp_path / "ray"), executor="ray", progress=lambda f, s: seen.append((f, s)))
    assert remote.meta["executor"] == "ray"
    on_ray = [f for f, s in seen if "Ray" in s]
    assert len(set(on_ray)) >= 2 and on_ray == sorted(on_ray)  # the switch tasks' progress reaches the bar
    for k in ("acc_linear", "acc_at_switch", "acc_full", "train_loss"):
        assert np.array_equal(local.arrays[k], remote.arrays[k], equal_nan=True), k


def test_an_s3_storage_root_serves_the_ray_tasks(ray_cluster, tmp_path, s3_root):
    """Checkpoints in a bucket, written and read by task processes that see nothing of the driver's disk
    but the bucket: the same bits as a plain local run."""
    from twophase_core.experiments import run_chaos

    url, _, fs = s3_root
    plain = run_chaos(CHAOS, Store(tmp_path / "plain", storage=tmp_path / "plain" / "runs"))
    got = run_chaos(CHAOS, Store(tmp_path / "cache"), executor="ray")
    assert not (tmp_path / "cache" / "runs").exists()
    keys = {o[len(url) - 5:].strip("/").split("/")[0] for o in fs.find(url)}
    assert CHAOS.train.trajectory_key() in keys and len(keys) > 1 + len(CHAOS.t0)  # base and the tasks' branches
    for k in ("C", "B", "D", "path"):
        assert np.array_equal(plain.arrays[k], got.arrays[k], equal_nan=True), k


def test_a_ray_sweep_spreads_every_point_into_its_units_and_matches_the_local_sweep(ray_cluster, tmp_path):
    """Two base runs (replicates), two points each: a prepare task per base run, the rows of all four
    points as tasks, one assembling task per point; the results are the local sweep's, bit for bit."""
    from twophase_core.sweep import Sweep, parse_vary, run_sweep

    base = C.replace(preset("tiny", "chaos"), perturb_seeds=(0,))
    sweep = Sweep(base, parse_vary("chaos", ["eps=1e-6,1e-5"]), replicates=2)
    remote = run_sweep(sweep, Store(tmp_path / "r"), executor="ray")
    local = run_sweep(sweep, Store(tmp_path / "l"))
    assert len(remote.results) == 4 and set(remote.results) == set(local.results)
    T = base.train.iterations
    for h, r in remote.results.items():
        assert r.meta["executor"] == "ray" and r.meta["sgd_steps"] == sum(T - t0 for t0 in base.t0)  # rows only
        for k in ("C", "B", "D", "path", "acc_base", "train_loss", "acc"):
            assert np.array_equal(r.arrays[k], local.results[h].arrays[k], equal_nan=True), k


def test_linear_and_cone_sweeps_on_ray_match_the_local_ones(ray_cluster, tmp_path):
    from twophase_core.sweep import Sweep, parse_vary, run_sweep

    for kind, vary in (("linear", "bn_stats=recompute,checkpoint"), ("cone", "n_samples=6,8")):
        sweep = Sweep(preset("tiny", kind), parse_vary(kind, [vary]))
        remote = run_sweep(sweep, Store(tmp_path / f"r{kind}"), executor="ray")
        local = run_sweep(sweep, Store(tmp_path / f"l{kind}"))
        assert len(remote.results) == 2
        for h, r in remote.results.items():
            for k, v in local.results[h].arrays.items():
                assert np.array_equal(v, r.arrays[k], equal_nan=True), (kind, k)


def test_a_cancelled_ray_sweep_stops_and_a_resubmission_gives_the_same_result(ray_cluster, tmp_path):
    from twophase_core.sweep import Sweep, parse_vary, run_sweep
    from twophase_core.train import Cancelled, CancelToken

    base = C.replace(preset("tiny", "chaos"), iterations=1500, t0=(0, 500, 1000), t1=(1200, 1500),
                     perturb_seeds=(0,))
    sweep = Sweep(base, parse_vary("chaos", ["eps=1e-6,1e-5"]))
    store = Store(tmp_path / "c")
    token = CancelToken()
    key = base.train.trajectory_key()

    def cancel_once_the_base_run_is_under_way() -> None:
        end = time.time() + 120
        while time.time() < end and len(store.checkpoints(key)) < 2:
            time.sleep(0.05)
        token.set()

    threading.Thread(target=cancel_once_the_base_run_is_under_way, daemon=True).start()
    with pytest.raises(Cancelled):
        run_sweep(sweep, store, executor="ray", cancel=token)
    kept = store.checkpoints(key)
    assert len(kept) >= 2  # what was trained stays
    again = run_sweep(sweep, store, executor="ray")
    fresh = run_sweep(sweep, Store(tmp_path / "fresh"))
    for h, r in fresh.results.items():
        assert np.array_equal(again.results[h].arrays["C"], r.arrays["C"], equal_nan=True)


def test_a_killed_unit_task_inside_a_sweep_graph_is_retried_with_the_same_result(ray_cluster, tmp_path):
    """Kill the process of a running unit task (a chaos row of a sweep point): Ray retries it, it resumes
    from the checkpoints in the storage root, and the sweep's results are the local sweep's."""
    from twophase_core.sweep import Sweep, parse_vary, run_sweep

    base = C.replace(CHAOS, t0=(0, 5), iterations=1000, t1=(500, 1000), perturb_seeds=(0,))
    sweep = Sweep(base, parse_vary("chaos", ["eps=1e-6,1e-5"]))
    with killing_one_running("_unit_task") as killed:
        got = run_sweep(sweep, Store(tmp_path / "kill"), executor="ray")
    assert killed, f"no unit task was seen running; results: {sorted(got.results)}"
    local = run_sweep(sweep, Store(tmp_path / "local"))
    for h, r in local.results.items():
        for k in ("C", "B", "D", "path"):
            assert np.array_equal(r.arrays[k], got.results[h].arrays[k], equal_nan=True), k


def test_a_ray_sweep_moves_its_bar_with_the_tasks_progress(ray_cluster, tmp_path):
    """The bar and ETA move while the base run and the rows train, not only when a point is done."""
    from twophase_core.sweep import Sweep, parse_vary, run_sweep

    base = C.replace(CHAOS, iterations=2000, t0=(0, 1000), t1=(1500, 2000), perturb_seeds=(0,))
    seen: list[tuple[float, str]] = []
    run_sweep(Sweep(base, parse_vary("chaos", ["eps=1e-6,1e-5"])), Store(tmp_path / "s"), executor="ray",
              progress=lambda f, st: seen.append((f, st)))
    fracs = [f for f, _ in seen]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0
    before_any_point = {round(f, 3) for f, st in seen if st.startswith("0 of 2 points")}
    assert len(before_any_point) >= 2 and max(before_any_point) > 0.1, seen
