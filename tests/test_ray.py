"""Ray as an executor, on a real local cluster of the tests' own (`RayHead`: one head per test session, on free
ports, in its own temp folder, joined by its address and stopped alone: any other Ray on the machine is left be).

Checks what scale-out must never change: chaos, cone and linear results through Ray equal the local
executor's (bit for bit where the arithmetic is the same); a sweep whose points share a base run
trains it once; a task whose process is killed is retried and gives the same result; a cancelled run
keeps its checkpoints and a resubmission ends with the same result; a storage root in another folder
or in an object store (S3, a local S3-compatible server) serves tasks in other processes. And an address
that cannot work is one line naming TWOPHASE_RAY_ADDRESS, never a traceback or a wait of minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from waiting import free_port, gone, set_when, wait_for

from twophase_core.execution import on_ray as ray_exec
from twophase_core.execution.on_ray import ENV_ADDRESS, check_address
from twophase_core.experiments.presets import preset
from twophase_core.settings import config as conf
from twophase_core.settings.spec import ConfigError
from twophase_core.storage.store import Store

RAY = str(Path(sys.executable).parent / "ray")
NO_RAY = "ray is not installed (pip install -e '.[ray]'; make test installs it)"
HAVE_RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason=NO_RAY)
# every port `ray start --head` would otherwise take at a fixed default (6379, 8265, 10001, 52365...) or pick
# itself: each gets a free one, so a second cluster on this machine (a user's, another checkout's tests) never
# collides; workers bind ports the OS assigns (--min/max-worker-port=0)
PORT_FLAGS = ("port", "node-manager-port", "object-manager-port", "dashboard-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port")
STOP_ORDER = {"raylet": 0, "gcs_server": 2}  # which processes of a head end first; any other: 1


def _free_ports(n: int) -> list[int]:
    """`n` different ports that nothing listens on now."""
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def _pids() -> Iterator[int]:
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            yield int(d.name)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _refers_to(pid: int, folder: Path) -> bool:
    """Whether process `pid`'s command line or one of its open files names `folder`: the GCS, raylet and
    their helpers get it as arguments; workers, whose command line Ray rewrites to `ray::<task>`, write
    their output to log files in it. A zombie has neither, so it never counts."""
    if re.search(re.escape(os.fsencode(folder)) + rb"(?=/|\0|$)", _cmdline(pid)):
        return True
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # gone, or not ours to read
        return False
    for fd in fds:
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target == str(folder) or target.startswith(f"{folder}/"):
                return True
    return False


@dataclass(frozen=True)
class RayHead:
    """A Ray head node of the tests' own: free ports and a temp folder of its own, so that stopping it (the
    processes that name that folder, `pids`) stops nothing else, where Ray's own stop command would stop
    every Ray of this user on the machine."""

    temp_dir: Path
    port: int
    token: str

    @property
    def address(self) -> str:
        """Its GCS address: never 'auto', which joins whatever cluster runs on this machine."""
        return f"127.0.0.1:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        """What a driver needs to join it: token authentication with its own token. Left to itself Ray reads the
        user's ~/.ray/auth_token (any ray.init() on the machine may write one): a head started while that file
        exists demands the token, and a driver that does not know to send it is refused."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    @classmethod
    def start(cls, num_cpus: int = 2) -> RayHead:
        # short, under /tmp: Ray's unix socket paths inside it must stay within 107 characters
        temp_dir = Path(tempfile.mkdtemp(prefix="tp-ray-", dir="/tmp"))
        flags = [*PORT_FLAGS, *(["ray-client-server-port"] if ray_exec._installed("grpc") else [])]
        ports = dict(zip(flags, _free_ports(len(flags)), strict=True))
        head = cls(temp_dir, ports["port"], secrets.token_hex(32))
        # its processes' temp files (a killed task's scratch index among them) go with its folder
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_USAGE_STATS_ENABLED": "0",
                                                                             "TMPDIR": str(temp_dir), **head.auth}
        r = subprocess.run([RAY, "start", "--head", f"--num-cpus={num_cpus}", "--include-dashboard=false",
                            "--disable-usage-stats", f"--temp-dir={temp_dir}", "--min-worker-port=0",
                            "--max-worker-port=0", *(f"--{flag}={port}" for flag, port in ports.items())],
                           capture_output=True, text=True, env=env, timeout=180)
        if r.returncode != 0:
            head.stop()
            pytest.fail(f"ray start --head failed: {r.stderr[-2000:]}")
        return head

    def pids(self) -> set[int]:
        """Its live processes (never this one, which keeps a driver's log open in the folder)."""
        return {pid for pid in _pids() if pid != os.getpid() and _refers_to(pid, self.temp_dir)}

    def running(self, task: str) -> list[int]:
        """Its workers running `task` now (an idle worker is titled ray::IDLE). Ray's state API
        (ray.util.state.list_tasks) would say it too, but it needs the dashboard, which ray[default] brings."""
        title = f"ray::{task}".encode()
        return [pid for pid in _pids() if _cmdline(pid).split(b"\0")[0].strip() == title
                and _refers_to(pid, self.temp_dir)]

    def stop(self, grace_s: float = 10) -> None:
        """Its processes in the order Ray's CLI stops a node: the raylet (its workers and agents end with it), the
        others, the GCS last (a raylet whose GCS is gone waits a minute for it); then its temp folder goes."""
        for stage in (0, 1, 2):
            _end({pid for pid in self.pids() if STOP_ORDER.get(_program(pid), 1) == stage}, grace_s)
        assert not self.pids(), sorted(self.pids())
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _program(pid: int) -> str:
    """The file name of the program process `pid` runs (as its command line starts), e.g. 'raylet'."""
    return Path(os.fsdecode(_cmdline(pid).split(b"\0")[0])).name


def _end(pids: set[int], grace_s: float) -> None:
    """SIGTERM to `pids`, SIGKILL to those alive after `grace_s`; back once every one has exited."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
        for pid in pids:
            if not gone(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        try:
            wait_for(f"processes {sorted(pids)} to exit on {sig.name}", lambda: all(gone(pid) for pid in pids),
                     wait_s, every=0.1)
            return
        except pytest.fail.Exception:
            if sig == signal.SIGKILL:
                raise


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayHead]:
    """One head of the tests' own for the whole session; drivers join it by its address
    ($TWOPHASE_RAY_ADDRESS), and it alone is stopped at the end. Every test on it is marked slow: it takes
    about 8 s to start, so the quick loop (-m 'not slow') starts none."""
    if not HAVE_RAY:
        pytest.skip(NO_RAY)
    head = RayHead.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            for k, v in {ENV_ADDRESS: head.address, **head.auth}.items():
                mp.setenv(k, v)
            yield head
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        head.stop()


CHAOS = conf.replace(preset("tiny", "chaos"), t0=(0, 10, 20, 40), perturb_seeds=(0, 1))


@pytest.fixture(scope="module")
def chaos_here(tmp_path_factory):
    """CHAOS run by the local executor on a store of its own (checkpoints beside it), once for the module: the
    reference that three tests compare the Ray executor's result with."""
    from twophase_core.execution.run import run_chaos

    root = tmp_path_factory.mktemp("chaos-here")
    return run_chaos(CHAOS, Store(root / "cache", storage=root / "cache" / "runs"))


@pytest.mark.slow
def test_chaos_through_ray_equals_local_bit_for_bit(ray_cluster, tmp_path, chaos_here):
    from twophase_core.execution.run import run_chaos

    local = chaos_here
    seen: list[tuple[float, str]] = []
    remote = run_chaos(CHAOS, Store(tmp_path / "ray"), executor="ray", progress=lambda f, s: seen.append((f, s)))
    assert remote.meta["executor"] == "ray" and local.meta.get("executor", "local") == "local"
    on_ray = [f for f, s in seen if "Ray" in s]
    assert len(set(on_ray)) >= 2 and on_ray == sorted(on_ray)  # the rows' progress reaches the bar from the tasks
    assert max(on_ray) > 0.9
    for k in ("C", "B", "D", "acc_branch", "path", "realized_eps_norm", "acc_base"):
        assert np.array_equal(local.arrays[k], remote.arrays[k], equal_nan=True), k


@pytest.mark.slow
def test_ray_sweep_trains_a_shared_base_run_once(ray_cluster, tmp_path):
    from twophase_core.execution.sweeps import run_sweep
    from twophase_core.experiments.sweep import Sweep, load_results, parse_vary

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
def killing_one_running(head: RayHead, task: str) -> Iterator[list[int]]:
    """While the block runs, kill -9 the first worker of `head` seen running `task` (seen again 0.2 s later:
    still that task, training); yields the list of killed pids."""
    killed: list[int] = []
    done = threading.Event()

    def killer() -> None:
        while not done.is_set() and not killed:
            for pid in head.running(task)[:1]:
                time.sleep(0.2)  # let it start training
                if pid in head.running(task):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.1)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    try:
        yield killed
    finally:
        done.set()
        th.join(timeout=5)


@pytest.mark.slow
def test_a_killed_task_is_retried_with_the_same_result(ray_cluster, tmp_path):
    """Kill the worker process of a running row task: Ray retries it, the row resumes from checkpoints."""
    from twophase_core.execution.run import run_chaos

    cfg = conf.replace(CHAOS, t0=(0, 5), iterations=1000, t1=(500, 1000), perturb_seeds=(0,))
    expected = run_chaos(cfg, Store(tmp_path / "ref"))
    with killing_one_running(ray_cluster, "_unit_task") as killed:
        got = run_chaos(cfg, Store(tmp_path / "kill"), executor="ray")
    assert killed, "no row task was seen running"
    for k in ("C", "B", "D", "path"):
        assert np.array_equal(expected.arrays[k], got.arrays[k], equal_nan=True), k


@pytest.mark.slow
def test_cancel_keeps_checkpoints_and_a_resubmission_gives_the_same_result(ray_cluster, tmp_path):
    from twophase_core.execution.run import run_chaos
    from twophase_core.science.train import Cancelled, CancelToken, Training

    cfg = conf.replace(CHAOS, iterations=400, t0=(0, 50, 100, 200), t1=(300, 400), perturb_seeds=(0,))
    store = Store(tmp_path / "c")
    token = CancelToken()
    seen: list[str] = []

    def progress(frac: float, stage: str) -> None:
        seen.append(stage)
        if "Ray tasks: 1 done" in stage:  # cancelled with the other rows still out there (never a race)
            token.set()

    with pytest.raises(Cancelled):
        run_chaos(cfg, store, progress=progress, cancel=token, executor="ray")
    assert store.checkpoints(Training(cfg.train, store).base().key)  # the base run's checkpoints stay
    assert not any("Ray tasks: 2 done" in st for st in seen)
    again = run_chaos(cfg, store, executor="ray")
    fresh = run_chaos(cfg, Store(tmp_path / "fresh"))
    assert np.array_equal(again.arrays["C"], fresh.arrays["C"], equal_nan=True)


@pytest.mark.slow
def test_cli_executor_ray_a_cone_sweep_and_kernels_as_tasks(ray_cluster, tmp_path, capsys):
    from twophase_core.execution.run import run_cone
    from twophase_core.interfaces.cli import main

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


@pytest.mark.slow
def test_a_file_url_storage_root_serves_the_ray_tasks(ray_cluster, tmp_path, monkeypatch, chaos_here):
    from twophase_core.execution.run import run_chaos
    from twophase_core.storage.files import ENV_ROOT as ENV_STORAGE

    plain = chaos_here
    shared = tmp_path / "shared"
    monkeypatch.setenv(ENV_STORAGE, shared.as_uri())
    got = run_chaos(CHAOS, Store(tmp_path / "cache"), executor="ray")
    assert (shared / CHAOS.train.trajectory_key()).is_dir() and not (tmp_path / "cache" / "runs").exists()
    assert len(list(shared.rglob("t*.pt"))) > len(list((shared / CHAOS.train.trajectory_key()).glob("t*.pt")))
    for k in ("C", "B", "D", "path"):
        assert np.array_equal(plain.arrays[k], got.arrays[k], equal_nan=True), k


@pytest.mark.slow
def test_a_submitted_job_runs_its_rows_on_ray_with_its_worker_as_the_driver(ray_cluster, tmp_path):
    from twophase_core.execution.jobs import JobManager

    env = {**os.environ, "TWOPHASE_CACHE_DIR": str(tmp_path / "cache"), ENV_ADDRESS: ray_cluster.address}
    r = subprocess.run([sys.executable, "-m", "twophase_core", "submit", "chaos", "--preset", "tiny", "--executor",
                        "ray", "--wait", "--quiet"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    job_id = r.stdout.strip().splitlines()[0]
    jm = JobManager(Store(tmp_path / "cache"))
    assert jm.get(job_id).executor == "ray" and jm.result(job_id).meta["executor"] == "ray"


@pytest.mark.slow
def test_a_linear_run_splits_into_one_task_per_switch_time(ray_cluster, tmp_path):
    from twophase_core.execution.run import run_linear

    cfg = conf.replace(preset("tiny", "linear"), switch=(0, 10, 20, 40))
    local = run_linear(cfg, Store(tmp_path / "local"))
    seen: list[tuple[float, str]] = []
    remote = run_linear(cfg, Store(tmp_path / "ray"), executor="ray", progress=lambda f, s: seen.append((f, s)))
    assert remote.meta["executor"] == "ray"
    on_ray = [f for f, s in seen if "Ray" in s]
    assert len(set(on_ray)) >= 2 and on_ray == sorted(on_ray)  # the switch tasks' progress reaches the bar
    for k in ("acc_linear", "acc_at_switch", "acc_full", "train_loss"):
        assert np.array_equal(local.arrays[k], remote.arrays[k], equal_nan=True), k


@pytest.mark.slow
def test_an_s3_storage_root_serves_the_ray_tasks(ray_cluster, tmp_path, chaos_here, s3_root):
    """Checkpoints in a bucket, written and read by task processes that see nothing of the driver's disk
    but the bucket: the same bits as a plain local run."""
    from twophase_core.execution.run import run_chaos

    url, _, fs = s3_root
    plain = chaos_here
    got = run_chaos(CHAOS, Store(tmp_path / "cache"), executor="ray")
    assert not (tmp_path / "cache" / "runs").exists()
    keys = {o[len(url) - 5:].strip("/").split("/")[0] for o in fs.find(url)}
    assert CHAOS.train.trajectory_key() in keys and len(keys) > 1 + len(CHAOS.t0)  # base and the tasks' branches
    for k in ("C", "B", "D", "path"):
        assert np.array_equal(plain.arrays[k], got.arrays[k], equal_nan=True), k


@pytest.mark.slow
def test_a_ray_sweep_spreads_every_point_into_its_units_and_matches_the_local_sweep(ray_cluster, tmp_path):
    """Two base runs (replicates), two points each: a prepare task per base run, the rows of all four
    points as tasks, one assembling task per point; the results are the local sweep's, bit for bit."""
    from twophase_core.execution.sweeps import run_sweep
    from twophase_core.experiments.sweep import Sweep, parse_vary

    base = conf.replace(preset("tiny", "chaos"), perturb_seeds=(0,))
    sweep = Sweep(base, parse_vary("chaos", ["eps=1e-6,1e-5"]), replicates=2)
    remote = run_sweep(sweep, Store(tmp_path / "r"), executor="ray")
    local = run_sweep(sweep, Store(tmp_path / "l"))
    assert len(remote.results) == 4 and set(remote.results) == set(local.results)
    T = base.train.iterations
    for h, r in remote.results.items():
        assert r.meta["executor"] == "ray" and r.meta["sgd_steps"] == sum(T - t0 for t0 in base.t0)  # rows only
        for k in ("C", "B", "D", "path", "acc_base", "train_loss", "acc"):
            assert np.array_equal(r.arrays[k], local.results[h].arrays[k], equal_nan=True), k


@pytest.mark.slow
def test_linear_and_cone_sweeps_on_ray_match_the_local_ones(ray_cluster, tmp_path):
    from twophase_core.execution.sweeps import run_sweep
    from twophase_core.experiments.sweep import Sweep, parse_vary

    for kind, vary in (("linear", "bn_stats=recompute,checkpoint"), ("cone", "n_samples=6,8")):
        sweep = Sweep(preset("tiny", kind), parse_vary(kind, [vary]))
        remote = run_sweep(sweep, Store(tmp_path / f"r{kind}"), executor="ray")
        local = run_sweep(sweep, Store(tmp_path / f"l{kind}"))
        assert len(remote.results) == 2
        for h, r in remote.results.items():
            for k, v in local.results[h].arrays.items():
                assert np.array_equal(v, r.arrays[k], equal_nan=True), (kind, k)


@pytest.mark.slow
def test_a_cancelled_ray_sweep_stops_and_a_resubmission_gives_the_same_result(ray_cluster, tmp_path):
    from twophase_core.execution.sweeps import run_sweep
    from twophase_core.experiments.sweep import Sweep, parse_vary
    from twophase_core.science.train import Cancelled, CancelToken

    base = conf.replace(preset("tiny", "chaos"), iterations=1500, t0=(0, 500, 1000), t1=(1200, 1500),
                     perturb_seeds=(0,))
    sweep = Sweep(base, parse_vary("chaos", ["eps=1e-6,1e-5"]))
    store = Store(tmp_path / "c")
    token = CancelToken()
    key = base.train.trajectory_key()

    set_when(token, "two checkpoints of the base run", lambda: len(store.checkpoints(key)) >= 2)
    with pytest.raises(Cancelled):
        run_sweep(sweep, store, executor="ray", cancel=token)
    kept = store.checkpoints(key)
    assert len(kept) >= 2  # what was trained stays
    again = run_sweep(sweep, store, executor="ray")
    fresh = run_sweep(sweep, Store(tmp_path / "fresh"))
    for h, r in fresh.results.items():
        assert np.array_equal(again.results[h].arrays["C"], r.arrays["C"], equal_nan=True)


@pytest.mark.slow
def test_a_killed_unit_task_inside_a_sweep_graph_is_retried_with_the_same_result(ray_cluster, tmp_path):
    """Kill the process of a running unit task (a chaos row of a sweep point): Ray retries it, it resumes
    from the checkpoints in the storage root, and the sweep's results are the local sweep's."""
    from twophase_core.execution.sweeps import run_sweep
    from twophase_core.experiments.sweep import Sweep, parse_vary

    base = conf.replace(CHAOS, t0=(0, 5), iterations=1000, t1=(500, 1000), perturb_seeds=(0,))
    sweep = Sweep(base, parse_vary("chaos", ["eps=1e-6,1e-5"]))
    with killing_one_running(ray_cluster, "_unit_task") as killed:
        got = run_sweep(sweep, Store(tmp_path / "kill"), executor="ray")
    assert killed, f"no unit task was seen running; results: {sorted(got.results)}"
    local = run_sweep(sweep, Store(tmp_path / "local"))
    for h, r in local.results.items():
        for k in ("C", "B", "D", "path"):
            assert np.array_equal(r.arrays[k], got.results[h].arrays[k], equal_nan=True), k


@pytest.mark.slow
def test_a_ray_sweep_moves_its_bar_with_the_tasks_progress(ray_cluster, tmp_path):
    """The bar and ETA move while the base run and the rows train, not only when a point is done."""
    from twophase_core.execution.sweeps import run_sweep
    from twophase_core.experiments.sweep import Sweep, parse_vary

    base = conf.replace(CHAOS, iterations=2000, t0=(0, 1000), t1=(1500, 2000), perturb_seeds=(0,))
    seen: list[tuple[float, str]] = []
    run_sweep(Sweep(base, parse_vary("chaos", ["eps=1e-6,1e-5"])), Store(tmp_path / "s"), executor="ray",
              progress=lambda f, st: seen.append((f, st)))
    fracs = [f for f, _ in seen]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0
    before_any_point = {round(f, 3) for f, st in seen if st.startswith("0 of 2 points")}
    assert len(before_any_point) >= 2 and max(before_any_point) > 0.1, seen


def _core(head: RayHead) -> set[int]:
    """The GCS server and raylet of `head`: its processes that live as long as it does."""
    return {pid for pid in head.pids() if _program(pid) in ("gcs_server", "raylet")}


@pytest.mark.slow
def test_stopping_a_second_head_leaves_the_first_running_and_serving(ray_cluster):
    """Two clusters on one machine (as a user's and the tests', or two checkouts' test runs): the stop that
    ends the session's head, run on another head, ends every process of that one and none of the first."""
    ray = ray_exec.connect()
    core = _core(ray_cluster)
    assert len(core) == 2, sorted(ray_cluster.pids())
    other = RayHead.start(num_cpus=1)
    try:
        theirs = other.pids()
        assert len(_core(other)) == 2 and not theirs & ray_cluster.pids() and other.port != ray_cluster.port
    finally:
        other.stop()
    assert all(gone(pid) for pid in theirs) and not other.temp_dir.exists()
    assert _core(ray_cluster) == core  # the first head's GCS and raylet are the same processes, alive
    assert ray.get(ray.remote(lambda: os.getpid()).remote()) in ray_cluster.pids()  # a task runs on its workers


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """installed(*modules): only these are importable, as far as ray_exec's checks can tell."""
    def only(*modules: str) -> None:
        monkeypatch.setattr(ray_exec, "_installed", lambda module: module in modules)

    return only


@pytest.mark.parametrize("address", ["", "auto", "local", "127.0.0.1:6379", "head-1.example.org:1", "ray_head:6379",
                                     "[::1]:65535", "ray://10.0.0.5:10001", " 127.0.0.1:6379 "])
def test_check_address_accepts_every_form_ray_joins(installed, address):
    installed("ray", "grpc")
    assert check_address(address) is None


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:0", "host:65536", ":6379", "host:", "http://host:1",
                                     "ray://host", "ray://", "a b:1", "host:port", "host:-1", "127.0.0.1:６３７９",
                                     "-host:1", "auto:x"])
def test_a_malformed_address_is_one_config_error_naming_the_variable_and_the_forms_allowed(installed, address):
    installed("ray", "grpc")
    with pytest.raises(ConfigError) as e:
        check_address(address)
    assert (e.value.field, e.value.value) == (ENV_ADDRESS, address.strip())
    assert "host:port" in e.value.allowed and "'auto'" in e.value.allowed and "\n" not in str(e.value)


def test_a_ray_client_address_without_the_client_extra_says_to_install_it_or_give_the_gcs_address(installed):
    installed("ray")
    with pytest.raises(ConfigError) as e:
        check_address("ray://127.0.0.1:1")
    assert e.value.field == ENV_ADDRESS and "pip install 'ray[client]'" in e.value.allowed
    assert "host:port" in e.value.allowed
    assert check_address("127.0.0.1:1") is None  # a GCS address needs no client


def test_without_ray_every_address_says_to_install_the_ray_extra(installed):
    installed()
    for address in ("", "auto", "127.0.0.1:6379", "ray://127.0.0.1:1"):
        with pytest.raises(ConfigError) as e:
            check_address(address)
        assert e.value.field == ENV_ADDRESS and "pip install 'twophase[ray]'" in e.value.allowed


def test_check_address_without_an_argument_reads_the_environment(installed, monkeypatch):
    installed("ray")
    monkeypatch.setenv(ENV_ADDRESS, " 127.0.0.1:0 ")
    with pytest.raises(ConfigError) as e:
        check_address()
    assert e.value.value == "127.0.0.1:0"
    monkeypatch.setenv(ENV_ADDRESS, "auto")
    assert check_address() is None


def test_connect_checks_the_address_before_importing_or_reaching_ray(installed, monkeypatch):
    """Cheap and offline: a bad address is refused before Ray is imported (an import that fails would
    be a traceback) or anything is connected to."""
    installed("ray")
    monkeypatch.setitem(sys.modules, "ray", None)  # importing it would raise ImportError
    with pytest.raises(ConfigError, match=r"pip install 'ray\[client\]'"):
        ray_exec.connect("ray://127.0.0.1:1")


def test_the_cli_with_a_ray_client_address_and_no_client_extra_is_one_line_and_exit_2(installed, tmp_path,
                                                                                       monkeypatch, capsys):
    """The issue's reproduction: TWOPHASE_RAY_ADDRESS=ray://127.0.0.1:1 twophase chaos --executor ray."""
    from twophase_core.interfaces.cli import main

    installed("ray")
    monkeypatch.setenv(ENV_ADDRESS, "ray://127.0.0.1:1")
    assert main(["chaos", "--preset", "tiny", "--executor", "ray", "--cache-dir", str(tmp_path / "c"), "--quiet"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"twophase: error: {ENV_ADDRESS}='ray://127.0.0.1:1' is invalid: ")
    assert "pip install 'ray[client]'" in err[0] and not (tmp_path / "c").exists()  # nothing written


@pytest.mark.slow
@needs_ray
def test_an_address_where_no_cluster_listens_is_one_line_and_exit_2_in_seconds(tmp_path):
    """Nothing listens at the address: one line from the CLI, at once (Ray itself retries such an address
    for about 14 minutes). A sweep joins Ray before it trains anything."""
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, ENV_ADDRESS: address, "TWOPHASE_CACHE_DIR": str(tmp_path / "c")}
    t = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "twophase_core", "sweep", "chaos", "--preset", "tiny", "--executor",
                        "ray", "--quiet"], capture_output=True, text=True, env=env, timeout=120)
    took = time.monotonic() - t
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.splitlines() == [f"twophase: error: {ENV_ADDRESS}={address!r} is invalid: no Ray cluster answers "
                                     "there (Connection refused): start one (ray start --head) or give the address "
                                     "it printed"]
    assert took < 60, took


@needs_ray
def test_a_cluster_that_accepts_but_never_answers_gets_one_ray_attempt_and_ends_in_one_line(monkeypatch):
    """Something listens at the address but is no GCS: the TCP probe passes, Ray gets one connection attempt
    (RAY_gcs_server_port_wait_time_s=1; measured: 42 s, where its default 20 attempts take about 14 min) and its
    ConnectionError becomes one line. ray.init is stood in for, as the real one would take those 42 s."""
    import ray

    key, seen = "RAY_gcs_server_port_wait_time_s", []

    def init(**kw: object) -> None:
        seen.append(os.environ.get(key))
        raise ConnectionError("Failed to connect to Ray cluster at 127.0.0.1:1. Check that Ray...\nmore")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv(key, raising=False)
    with socket.create_server(("127.0.0.1", 0)) as srv:
        address = f"127.0.0.1:{srv.getsockname()[1]}"
        with pytest.raises(ConfigError) as e:
            ray_exec.connect(address)
        assert seen == ["1"] and key not in os.environ  # bounded while ray.init ran, restored after
        assert str(e.value).startswith(f"{ENV_ADDRESS}={address!r} is invalid: no Ray cluster could be joined "
                                       "(Failed to connect to Ray cluster at 127.0.0.1:1): ")
        monkeypatch.setenv(key, "7")
        with pytest.raises(ConfigError):
            ray_exec.connect(address)
    assert seen == ["1", "7"]  # a budget the user set stands


@pytest.mark.slow
def test_a_plugin_kind_runs_its_units_as_ray_tasks_and_gives_the_local_bits(ray_cluster, tmp_path, plugin_kind):
    """A kind defined outside the package (tests/plugins/param_norm.py): its units run as tasks that load the
    plugin from the folder the driver found it in, and the result equals the local one."""
    from twophase_core.execution.run import run_experiment

    cfg = preset("tiny", "pnorm")
    local = run_experiment(cfg, Store(tmp_path / "local"))
    remote = run_experiment(cfg, Store(tmp_path / "ray"), executor="ray")
    assert remote.meta["executor"] == "ray"
    for k in ("t", "norm", "acc", "train_loss"):
        assert np.array_equal(local.arrays[k], remote.arrays[k]), k


@pytest.mark.slow
def test_an_own_model_and_dataset_by_import_path_run_as_ray_tasks_with_the_local_bits(ray_cluster, tmp_path,
                                                                                       monkeypatch):
    """A model and a dataset named MODULE:CALLABLE from a folder on the driver's path only (tests/plugins, never
    installed): the tasks find the module where the driver did, and the result equals the local one."""
    from conftest import PLUGINS

    from twophase_core.execution.run import run_experiment
    from twophase_core.settings import plugins

    monkeypatch.syspath_prepend(str(PLUGINS))
    cfg = conf.replace(preset("tiny", "chaos"), model="model_data:with_width", dataset="model_data:blobs")
    try:
        local = run_experiment(cfg, Store(tmp_path / "local"))
        remote = run_experiment(cfg, Store(tmp_path / "ray"), executor="ray")
    finally:
        plugins.forget()
    assert remote.meta["executor"] == "ray" and remote.hash == local.hash
    for k in ("C", "B", "D", "acc_branch", "realized_eps_norm", "acc_base"):
        assert np.array_equal(local.arrays[k], remote.arrays[k], equal_nan=True), k
