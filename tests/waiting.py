"""What several test files share: a free port, waiting on a condition (never on a timer), a process gone."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

TIMEOUT = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, cond: Callable[[], Any], timeout: float = TIMEOUT, every: float = 0.05) -> Any:
    """Poll `cond()` until it returns something truthy; fail with `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def gone(pid: int) -> bool:
    """The process has exited (a zombie counts as gone; reaping is left to whoever started it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    """Until the Streamlit server at `url` answers its health check (fails at once if it exited)."""
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout}s")


def set_when(token: Any, what: str, cond: Callable[[], Any], timeout: float = 120) -> None:
    """In a daemon thread: wait for `cond()` (see `wait_for`), then `token.set()` (a CancelToken), also when the
    wait fails, so the run it cancels never hangs."""
    import threading

    def run() -> None:
        try:
            wait_for(what, cond, timeout=timeout)
        finally:
            token.set()

    threading.Thread(target=run, daemon=True).start()


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server the test started; kill it if it has not ended 15 s later."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
