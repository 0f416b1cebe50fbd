"""Shared fixtures: every test gets its own result store; torch stays on one thread."""

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
# the app keeps a warm worker (torch loaded, ~300 MB) per store; tests that render the app would start one
# each: only tests/test_jobs.py's warm-worker tests (which ask for it) and the bench use them
os.environ.setdefault("TWOPHASE_WARM_WORKERS", "0")


# Under pytest-xdist (make test: -n auto --dist loadfile --no-loadscope-reorder) each file runs whole in one worker
# (test_ray.py's session head starts once, test_browser.py's server and Chromium once, module fixtures are computed
# once), and the files are handed out in collection order: these, the longest, first, so that none of them starts
# last while the other worker has nothing left. Outside a worker the order stays pytest's own.
LONGEST_FIRST = ("test_ray.py", "test_browser.py", "test_jobs.py", "test_local_pool.py", "test_refine.py")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: within a file, the same order


@pytest.fixture
def store(tmp_path, monkeypatch):
    from twophase_core.storage.store import Store

    monkeypatch.setenv("TWOPHASE_CACHE_DIR", str(tmp_path / "cache"))
    s = Store(tmp_path / "cache")
    yield s
    s.close()


@pytest.fixture
def with_results(stored, monkeypatch):
    """The module's `stored` results as the app's store: {kind: run id(s)}."""
    root, ids = stored
    monkeypatch.setenv("TWOPHASE_CACHE_DIR", str(root))
    return ids


@pytest.fixture
def lock_holder():
    """hold(path): another process takes the file lock at `path` (as a job training that trajectory would)
    and keeps it until the test kills it (kill -9: the kernel drops the lock) or ends."""
    import subprocess
    import sys

    procs = []

    def hold(path):
        p = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                              "from twophase_core.storage.locks import file_lock\n"
                              "with file_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n"
                              "    time.sleep(120)\n", str(path)], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield hold
    for p in procs:
        p.kill()
        p.wait()


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server on this machine (moto's, in a thread), so an object-store storage root is
    tested for real without any network: the options fsspec's s3fs needs to reach it."""
    server_mod = pytest.importorskip("moto.server", reason="moto is a test dependency (make test installs it)")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield {"endpoint_url": f"http://{host}:{port}", "key": "test", "secret": "test"}
    server.stop()


@pytest.fixture
def s3_root(s3_server, monkeypatch, request):
    """A fresh bucket set as this test's storage root ($TWOPHASE_STORAGE_ROOT, $TWOPHASE_STORAGE_OPTIONS):
    (url, options, fs)."""
    import json
    import re
    import uuid

    import fsspec

    from twophase_core.storage.files import ENV_OPTIONS, ENV_ROOT

    bucket = re.sub(r"[^a-z0-9-]", "-", f"tp-{request.node.name.lower()}")[:40].strip("-") + "-" + uuid.uuid4().hex[:8]
    fs = fsspec.filesystem("s3", **s3_server)
    fs.mkdir(bucket)
    url = f"s3://{bucket}/checkpoints"
    monkeypatch.setenv(ENV_ROOT, url)
    monkeypatch.setenv(ENV_OPTIONS, json.dumps(s3_server))
    return url, s3_server, fs


PLUGINS = Path(__file__).resolve().parent / "plugins"  # experiment kinds from outside the package


@pytest.fixture
def plugin_kind(monkeypatch):
    """tests/plugins/param_norm.py's kind ('pnorm') loaded in this process (as $TWOPHASE_PLUGINS loads it in every
    other), and forgotten after the test so no other test sees it."""
    import sys

    from twophase_core.experiments import registry

    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))
    monkeypatch.setattr(registry, "_PLUGINS", list(registry._PLUGINS))
    sys.modules.pop("param_norm", None)
    registry.load_plugin("param_norm", str(PLUGINS))
    yield registry.get("pnorm")
    sys.modules.pop("param_norm", None)
