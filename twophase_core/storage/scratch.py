"""Scratch folders for task stores (a Ray task's throwaway index), and removing those killed tasks left.

Each lives at `<temp dir>/twophase-tasks-<uid>/<pid>-<random>/` and goes when its task ends; a task that
is killed (Ray cancels it, the OOM killer, kill -9) never gets to remove it, so every new one first
removes the folders of processes that are gone. Only folders of exactly that naming, directly in that
folder and this user's own, are ever removed. Its own module because it is the one place that deletes
outside a store's root.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from twophase_core.storage.errors import StoreError

NAME = re.compile(r"([1-9][0-9]{0,9})-[a-z0-9_]{8}")  # <pid>-<mkdtemp's 8 random characters>


def base() -> Path:
    """This user's folder of task scratch folders, made if missing; StoreError if it is not a folder of
    this user's (a link or someone else's folder at that name is never used)."""
    folder = Path(tempfile.gettempdir()) / f"twophase-tasks-{os.getuid()}"
    try:
        folder.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(folder)
    except OSError as e:
        raise StoreError(f"task scratch folder {folder} cannot be made: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise StoreError(f"{folder} is not a folder of this user's; twophase keeps its task scratch there and "
                         "never uses one it did not make: move it away")
    return folder


def alive(pid: int) -> bool:
    """Whether process `pid` exists (a pid reused since only delays a removal: nothing is lost)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def remove_dead(folder: Path) -> list[Path]:
    """Remove the scratch folders in `folder` whose process is gone; the ones removed."""
    gone = []
    for p in sorted(folder.iterdir()):
        m = NAME.fullmatch(p.name)
        if m and not p.is_symlink() and p.is_dir() and not alive(int(m.group(1))):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone


def make() -> Path:
    """A new scratch folder for this process, once those of processes that are gone are removed."""
    folder = base()
    remove_dead(folder)
    return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=folder))
