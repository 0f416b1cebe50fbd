"""Locks across processes and threads: flock on a file, re-entrant within a thread.

One per trajectory (whoever trains it holds it) and one per store root (opening, repairing,
clearing). Their own module because the store, the checkpoint files and the ownership checks all take
the same kind (`is_locked`: a file a live writer holds is never deleted). The kernel drops a flock when
its holder dies, kill -9 included, so a dead holder never blocks anyone: no lease, no timeout, nothing
to clean up. A lock file is opened without following a link (O_NOFOLLOW): a `.lock` that is a link or
a folder is refused by name, and nothing is ever created outside the store through one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from twophase_core.storage.errors import StoreError

LOCK_POLL_S = 0.1



@dataclass
class _Held:
    """This process's hold on one lock file: a lock for its threads, the descriptor holding the flock, the depth."""

    rlock: threading.RLock = field(default_factory=threading.RLock)
    fd: int | None = None
    depth: int = 0


_LOCKS: dict[str, _Held] = {}  # path -> this process's hold on it
_LOCKS_LOCK = threading.Lock()


@contextlib.contextmanager
def file_lock(path: Path, wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive lock on `path` across processes (flock) and threads, re-entrant in one thread.

    `wait()` is called about every LOCK_POLL_S while blocked and may raise (a cancel) to give up.
    The kernel drops a flock when its holder dies (kill -9 included), so a dead holder never blocks.
    """
    with _LOCKS_LOCK:
        entry = _LOCKS.setdefault(str(path), _Held())
    rlock = entry.rlock
    while not rlock.acquire(timeout=LOCK_POLL_S if wait is not None else -1):
        if wait is not None:  # (without `wait`, acquire blocks until it has the lock)
            wait()
    try:
        if entry.depth == 0:
            fd = _open_lock(path)
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if wait is not None else 0))
                        break
                    except BlockingIOError:  # (LOCK_NB, so only with a `wait`)
                        if wait is not None:
                            wait()
                        time.sleep(LOCK_POLL_S)
            except BaseException:
                os.close(fd)
                raise
            entry.fd = fd
        entry.depth += 1
    except BaseException:
        rlock.release()
        raise
    try:
        yield
    finally:
        entry.depth -= 1
        if entry.depth == 0 and entry.fd is not None:
            os.close(entry.fd)  # closing the descriptor releases the flock
            entry.fd = None
        rlock.release()


def _open_lock(path: Path) -> int:
    """The lock file's descriptor, made if missing; never through a link, never a folder."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError:
        if os.path.islink(path) or path.is_dir():
            what = "a link" if os.path.islink(path) else "a folder"
            raise StoreError(f"{path} is {what}, not a lock file twophase made; twophase never follows one: "
                             "remove it and try again") from None
        raise  # permissions, a full disk: the caller names it


def is_locked(path: Path) -> bool:
    """Another process holds a flock on `path` (a live writer or trainer)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
