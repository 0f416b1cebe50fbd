"""Disk space: telling a full disk from other failures, refusing work that will not fit, and the reserve.

`.reserve` (1 MiB under the store's root) is kept free for the last words of a job that hits a full
disk: given up when a checkpoint write fails for lack of room, so the job's failure record still fits,
and made again by a later Store once there is room. Its own module because what counts as full (sqlite
words it its own ways) and how much is kept back change for reasons of their own.
"""

from __future__ import annotations

import contextlib
import errno
import sqlite3
from pathlib import Path

from twophase_core.storage.errors import StoreFull
from twophase_core.storage.files import CheckpointFiles, LocalFiles, free_bytes

RESERVE = ".reserve"
RESERVE_BYTES = 1 << 20
FULL_BELOW = 64 * 1024  # free bytes under which an I/O error is taken for a full disk


def is_full(e: BaseException, root: Path | None = None) -> bool:
    """ENOSPC, sqlite's 'database or disk is full', or (sqlite reports some as 'disk I/O error', e.g.
    growing its -shm file) any I/O error while the disk holding `root` has next to nothing free."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(e, sqlite3.OperationalError) and "full" in str(e):
        return True
    return root is not None and isinstance(e, OSError | sqlite3.OperationalError) and free_bytes(root) < FULL_BELOW


def full(root: Path, doing: str, needed: int | None = None) -> StoreFull:
    """The error for a disk without room for `doing`, naming what is free on it now."""
    return StoreFull(root, doing, free_bytes(root), needed)


def checkpoint_disk(files: CheckpointFiles, root: Path) -> Path:
    """The folder to name when checkpoints do not fit: the store's root, or the storage root elsewhere."""
    if isinstance(files, LocalFiles) and not files.root.is_relative_to(root.resolve()):
        return files.root
    return root


def require_space(files: CheckpointFiles, root: Path, needed: int, doing: str) -> None:
    """StoreFull (before anything is written) if `needed` bytes of checkpoints would not fit on the disk
    that holds them (an object store is not checked)."""
    free = files.free_bytes()
    if needed > 0 and free is not None and free < needed:
        raise full(checkpoint_disk(files, root), doing, needed)


def keep_reserve(root: Path) -> None:
    """Make the reserve if it is missing and the disk has room to spare for it."""
    p = root / RESERVE
    with contextlib.suppress(OSError):
        if p.exists() or free_bytes(root) < 8 * RESERVE_BYTES:
            return
        with open(p, "wb") as f:
            f.write(b"\0" * RESERVE_BYTES)


def release_reserve(root: Path) -> bool:
    """Delete the reserve so a job's last record (its failure) can still be written; True if it was there."""
    try:
        (root / RESERVE).unlink()
        return True
    except OSError:
        return False
