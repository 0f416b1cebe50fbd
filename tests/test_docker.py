"""The Docker image, built and run for real: `make test-docker` (`.ci/run` runs it; plain `make test` does not).

Builds the image with `make docker`, starts it with a named volume for the store, waits for its
HEALTHCHECK, reaches Streamlit through the published port (so it listens on 0.0.0.0 inside), checks
the server does not run as root, computes `twophase chaos --preset tiny` inside, then a CIFAR-10 chaos
run on a small CIFAR-format folder written inside (twophase reads it itself: no torchvision needed), checks
that torchvision either imports or is absent (an ImportError) as /opt/venv/torch-constraint.txt says,
restarts the container and finds the first result served from the volume. Where no daemon answers it starts dockerd
(root only) and stops it afterwards; where it cannot, it skips with the reason, unless
TWOPHASE_REQUIRE_DOCKER=1 (CI), where that is a failure.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.timeout(2400)]

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("TWOPHASE_DOCKER_IMAGE", "twophase")
BUILD_TIMEOUT = 1800
HEALTHY_TIMEOUT = 180
EXEC_TIMEOUT = 600


def _docker() -> str | None:
    return shutil.which("docker") or (shutil.which("/usr/bin/docker"))


def _run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {p.returncode}\nstdout:\n{p.stdout[-4000:]}\n"
                             f"stderr:\n{p.stderr[-4000:]}")
    return p


def _daemon_answers(exe: str) -> tuple[bool, str]:
    p = subprocess.run([exe, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=60)
    return p.returncode == 0, (p.stderr.strip().splitlines() or ["?"])[-1]


def _start_dockerd(exe: str) -> subprocess.Popen | None:
    """Start dockerd (as root, where it is installed and DOCKER_HOST does not point elsewhere); None if not."""
    dockerd = shutil.which("dockerd") or shutil.which("/usr/sbin/dockerd")
    if dockerd is None or os.geteuid() != 0 or os.environ.get("DOCKER_HOST"):
        return None
    log = open("/tmp/twophase-test-dockerd.log", "ab")  # open as long as the daemon runs
    proc = subprocess.Popen([dockerd], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if _daemon_answers(exe)[0]:
            return proc
        time.sleep(1)
    proc.terminate()
    proc.wait(timeout=60)
    return None


@pytest.fixture(scope="module")
def docker():
    exe = _docker()
    why, started = None, None
    if exe is None:
        why = "no docker client (apt-get install docker.io)"
    else:
        ok, err = _daemon_answers(exe)
        if not ok:
            started = _start_dockerd(exe)
            if started is None:
                why = (f"no Docker daemon answers ({err}) and none could be started here (dockerd needs root; "
                       "see /tmp/twophase-test-dockerd.log if it was tried)")
    if why:
        why += "; .ci/run installs docker.io and debootstrap and starts dockerd"
        if os.environ.get("TWOPHASE_REQUIRE_DOCKER") == "1":
            pytest.fail(why)
        pytest.skip(why)
    yield exe
    if started is not None:  # the daemon this test started, and only it
        started.terminate()
        try:
            started.wait(timeout=60)
        except subprocess.TimeoutExpired:
            started.kill()


def _say(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n[docker] {line}", end="", flush=True)


def _wait_healthy(docker: str, name: str, since: float) -> float:
    """Seconds from `since` until Docker's HEALTHCHECK reports healthy; fails on exit or unhealthy."""
    deadline = since + HEALTHY_TIMEOUT
    state: dict = {}
    while time.monotonic() < deadline:
        state = json.loads(_run(docker, "inspect", "--format", "{{json .State}}", name).stdout)
        health = (state.get("Health") or {}).get("Status")
        if health == "healthy":
            return time.monotonic() - since
        if not state.get("Running") or health == "unhealthy":
            break
        time.sleep(0.5)
    raise AssertionError(f"container {name} not healthy after {time.monotonic() - since:.0f}s: "
                         f"{json.dumps(state, indent=1)[-3000:]}")


def _chaos_tiny(docker: str, name: str) -> tuple[dict, float]:
    t = time.monotonic()
    p = _run(docker, "exec", name, "twophase", "chaos", "--preset", "tiny", "--json", "-", timeout=EXEC_TIMEOUT)
    seconds = time.monotonic() - t
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON on stdout:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
    return json.loads(lines[0]), seconds


# a CIFAR-10 folder in torchvision's layout (cifar-10-batches-py), written by the image's own python: five
# training batches and a test batch of 40 random images each, as the format's pickles (protocol 2, bytes keys)
CIFAR_FOLDER = """
import pathlib, pickle, sys
import numpy as np
folder = pathlib.Path(sys.argv[1]) / "cifar-10-batches-py"
folder.mkdir(parents=True)
rng = np.random.default_rng(0)
for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    d = {b"batch_label": name.encode(), b"labels": [int(y) for y in rng.integers(0, 10, 40)],
         b"data": rng.integers(0, 256, size=(40, 3072), dtype=np.uint8), b"filenames": [b"img.png"] * 40}
    (folder / name).write_bytes(pickle.dumps(d, protocol=2))
meta = {b"label_names": [b"class%d" % i for i in range(10)], b"num_cases_per_batch": 40, b"num_vis": 3072}
(folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
"""

# what the image says of its torchvision (the constraint file lists it only where it loads) and what it does
TORCHVISION = """
import json
listed = "torchvision==" in open("/opt/venv/torch-constraint.txt").read()
try:
    import torchvision
    out = {"listed": listed, "version": torchvision.__version__}
except ImportError as e:  # anything else (RuntimeError: operator torchvision::nms does not exist) fails the exec
    out = {"listed": listed, "import_error": f"{type(e).__name__}: {e}"}
print(json.dumps(out))
"""


def _chaos_cifar10(docker: str, name: str) -> tuple[dict, float]:
    """A CIFAR-10 chaos run, small, on a folder written in the container: CNN, 20 steps, t0 0 and 10, t1 20."""
    _run(docker, "exec", name, "python", "-c", CIFAR_FOLDER, "/tmp/cifar")
    t = time.monotonic()
    p = _run(docker, "exec", name, "twophase", "chaos", "--dataset", "cifar10", "--data-root", "/tmp/cifar",
             "--model", "cnn", "--width", "0.25", "--batch-size", "16", "--iterations", "20", "--t0", "0,10",
             "--t1", "20", "--n-alpha", "3", "--quiet", "--json", "-", timeout=EXEC_TIMEOUT)
    return json.loads(p.stdout), time.monotonic() - t


def _check_torchvision(docker: str, name: str, tmp: str) -> str:
    """torchvision imports where the constraint file lists it; elsewhere `import torchvision` is an ImportError
    and --model torchvision:NAME one line. What the image has, in words."""
    tv = json.loads(_run(docker, "exec", name, "python", "-c", TORCHVISION).stdout)
    if tv["listed"]:
        assert "version" in tv, tv
        return f"torchvision {tv['version']} imports"
    assert "import_error" in tv, f"torchvision imports but the constraint file does not list it: {tv}"
    p = _run(docker, "exec", name, "twophase", "chaos", "--preset", "tiny", "--dataset", "cifar10", "--data-root",
             tmp, "--model", "torchvision:resnet18", check=False)
    err = p.stderr.strip()
    assert p.returncode == 2 and len(err.splitlines()) == 1 and "torchvision does not import here" in err, err
    return f"no torchvision ({tv['import_error']}); torchvision:NAME says so in one line"


def test_image_builds_serves_and_keeps_the_store_across_a_restart(docker: str, capsys: pytest.CaptureFixture[str]):
    t = time.monotonic()
    build = subprocess.run(["make", "--no-print-directory", "docker", f"IMAGE={IMAGE}"], cwd=ROOT,
                           capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    build_s = time.monotonic() - t
    assert build.returncode == 0, f"make docker failed:\n{build.stdout[-6000:]}\n{build.stderr[-6000:]}"
    image = json.loads(_run(docker, "image", "inspect", "--format", "{{json .}}", IMAGE).stdout)
    _say(capsys, f"make docker: {build_s:.0f}s, image {IMAGE} {image['Size'] / 1e9:.2f} GB")
    config = image["Config"]
    assert config.get("User") not in ("", "0", "root"), f"the image runs as root: {config.get('User')!r}"
    assert config.get("Healthcheck"), "the image has no HEALTHCHECK"
    assert "/app/cache" in (config.get("Volumes") or {}), config.get("Volumes")

    tag = uuid.uuid4().hex[:10]
    name, volume = f"twophase-test-{tag}", f"twophase-test-{tag}"
    started = False
    try:
        _run(docker, "volume", "create", volume)
        t = time.monotonic()
        _run(docker, "run", "-d", "--name", name, "-v", f"{volume}:/app/cache", "-p", "127.0.0.1::8501", IMAGE)
        started = True
        healthy_s = _wait_healthy(docker, name, t)
        _say(capsys, f"healthy {healthy_s:.1f}s after docker run")

        # the published port reaches Streamlit: it listens on 0.0.0.0 inside the container
        port = _run(docker, "port", name, "8501/tcp").stdout.split()[0].rsplit(":", 1)[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=10) as r:
            assert r.status == 200 and r.read().strip() == b"ok"

        # the server (PID 1) and an exec'd command are not root
        uid = next(ln.split()[1] for ln in _run(docker, "exec", name, "cat", "/proc/1/status").stdout.splitlines()
                   if ln.startswith("Uid:"))
        assert uid != "0", "the Streamlit server runs as root"
        assert _run(docker, "exec", name, "id", "-u").stdout.strip() != "0"

        first, first_s = _chaos_tiny(docker, name)
        assert first["t0"] and first["C"], first
        info = json.loads(_run(docker, "exec", name, "twophase", "cache", "info").stdout)
        assert info["root"] == "/app/cache" and info["results"] >= 1, info
        _say(capsys, f"chaos --preset tiny: {first_s:.1f}s; store {info['results']} result(s), "
                     f"{info['checkpoints']} checkpoint(s)")

        cifar, cifar_s = _chaos_cifar10(docker, name)
        assert cifar["config"]["train"]["dataset"] == "cifar10" and cifar["t0"] == [0, 10], cifar["config"]
        values = [v for k in ("C", "B", "D") for row in cifar[k] for v in row]
        assert len(values) == 6 and all(math.isfinite(v) for v in values), cifar
        assert cifar["C"][0][0] > 0, cifar  # a nudge at t0 = 0 leaves the copies apart at t1 = 20
        _say(capsys, f"chaos on a CIFAR-10 folder (cnn, 20 steps): {cifar_s:.1f}s, C at t0=0: {cifar['C'][0][0]:.2e}")
        _say(capsys, _check_torchvision(docker, name, "/tmp/cifar"))

        t = time.monotonic()
        _run(docker, "restart", name, timeout=120)
        healthy_s = _wait_healthy(docker, name, t)
        _say(capsys, f"restarted, healthy again after {healthy_s:.1f}s")

        again, again_s = _chaos_tiny(docker, name)
        # served from the volume: the stored result itself (its creation time and compute time), not a rerun
        assert again["meta"]["created"] == first["meta"]["created"], (first["meta"], again["meta"])
        assert again["meta"]["seconds"] == first["meta"]["seconds"]
        assert (again["C"], again["B"], again["D"]) == (first["C"], first["B"], first["D"])
        _say(capsys, f"after the restart: served from the store in {again_s:.1f}s (first run {first_s:.1f}s)")
    except BaseException:
        if started:
            logs = subprocess.run([docker, "logs", "--tail", "200", name], capture_output=True, text=True, timeout=60)
            health = subprocess.run([docker, "inspect", "--format", "{{json .State.Health}}", name],
                                    capture_output=True, text=True, timeout=60)
            print(f"docker logs {name}:\n{logs.stdout}{logs.stderr}\nhealth: {health.stdout}", file=sys.stderr)
        raise
    finally:
        subprocess.run([docker, "rm", "-f", "-v", name], capture_output=True, timeout=120)
        subprocess.run([docker, "volume", "rm", "-f", volume], capture_output=True, timeout=120)
