"""Shared fixtures: every test gets its own result store; torch stays on one thread."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def store(tmp_path, monkeypatch):
    from twophase_core.store import Store

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
                              "from twophase_core.store import file_lock\n"
                              "with file_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n"
                              "    time.sleep(120)\n", str(path)], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield hold
    for p in procs:
        p.kill()
        p.wait()
