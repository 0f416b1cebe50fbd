"""Checkpoint files in a folder: on this machine, or on a filesystem every worker mounts at the same
path (NFS, Lustre, ...).

A checkpoint is written to a temp file, fsynced and renamed; a trajectory's lock is a flock beside its
files, so it holds across machines sharing the folder. Nothing is read, written or deleted through a
link, and only entries of twophase's naming (`layout.py`) are listed. Its own module because a folder's
atomicity, locks and links are its own concerns; an object store answers the same calls
(`object_files.py`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from twophase_core.storage.errors import StorageSettingError, StoreError
from twophase_core.storage.layout import (
    ENV_ROOT,
    LOCK_NAME,
    MAGIC_LEN,
    RUN_NAME,
    Entry,
    Scan,
    check_trajectory,
    classify,
    file_name,
    free_bytes,
    iteration_of,
)
from twophase_core.storage.locks import file_lock


class LocalFiles:
    """Checkpoints in a folder (local, or shared by every worker at the same path)."""

    def __init__(self, root: str | Path, setting: str = ENV_ROOT):
        try:
            given = Path(root).expanduser()
        except RuntimeError as e:  # ~nosuchuser/...
            raise StorageSettingError(setting, str(root), f"{e}; give a folder that exists or can be made") from None
        self.setting = setting
        self.given = Path(os.path.abspath(given))  # as named: a link here is refused for deleting
        self.root = self.given.resolve()
        if self.root.exists() and not self.root.is_dir():
            raise StorageSettingError(setting, str(root), "is a file, not a folder: give a folder for checkpoints")

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalFiles({str(self.root)!r})"

    def probe(self) -> None:
        """Before training: the folder can be made and written, so a bad root is named now, not at the
        first checkpoint (a root under /proc, on a read-only disk, without permission)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageSettingError(self.setting, str(self.root), f"cannot be made: {e.strerror or e}") from None
        if not self.root.is_dir() or not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageSettingError(self.setting, str(self.root), "is not a folder this user can write into")

    def path(self, trajectory: str, t: int | str) -> Path:
        """Checkpoint t of `run`, or (t a name) a file of `run` beside its checkpoints (`kernels/...`)."""
        return self.root / trajectory / (file_name(t) if isinstance(t, int) else t)

    def _run_dir(self, trajectory: str) -> Path:
        """The trajectory's folder; StoreError if it is a link (twophase never goes through one)."""
        check_trajectory(trajectory)
        d = self.root / trajectory
        if d.is_symlink():
            raise StoreError(f"{d} is a link, not a folder twophase made; twophase never reads, writes or deletes "
                             "through one: remove the link (its target is left as it is)")
        return d

    def _file(self, trajectory: str, t: int | str) -> Path:
        d = self._run_dir(trajectory)
        name = file_name(t) if isinstance(t, int) else t
        if name.startswith("kernels/") and (d / "kernels").is_symlink():
            raise StoreError(f"{d / 'kernels'} is a link, not a folder twophase made; remove the link")
        return d / name

    def read(self, trajectory: str, t: int | str) -> bytes | None:
        """The file's bytes; None if there is none; StoreError if it is a link or not a file; OSError if it
        cannot be read."""
        path = self._file(trajectory, t)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError:
            if os.path.islink(path) or path.is_dir():
                raise StoreError(f"{path} is {'a link' if os.path.islink(path) else 'a folder'}, not a file twophase "
                                 "wrote: move it away and run again") from None
            raise
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def write(self, trajectory: str, t: int | str, data: bytes) -> None:
        """Temp file (flocked, so no one takes it for an orphan), fsync, rename: all or nothing. Never
        through a link, never over a link or a folder."""
        path = self._file(trajectory, t)
        if os.path.islink(path) or path.is_dir():
            raise StoreError(f"{path} is {'a link' if os.path.islink(path) else 'a folder'}, not a file twophase "
                             "wrote; twophase never writes over one: move it away and run again")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def delete(self, trajectory: str, t: int | str) -> None:
        """Remove a file twophase wrote (its caller has checked that): only a plain file, never a link."""
        with contextlib.suppress(OSError):
            path = self._file(trajectory, t)
            if stat.S_ISREG(os.lstat(path).st_mode):
                path.unlink()

    def iterations(self, trajectory: str) -> list[int]:
        d = self._run_dir(trajectory)
        if not d.is_dir():
            return []
        its = []
        for f in d.iterdir():
            t = iteration_of(f.name)
            if t is not None and f.is_file() and not f.is_symlink():
                its.append(t)
        return sorted(its)

    def size(self, trajectory: str, t: int | str) -> int | None:
        try:
            return self._file(trajectory, t).stat().st_size
        except (OSError, StoreError):
            return None

    def head(self, e: Entry) -> bytes:
        """The first bytes of an entry (its header), read without following a link; b"" if unreadable."""
        try:
            fd = os.open(self.path(e.trajectory, e.name), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return b""
        with os.fdopen(fd, "rb") as f:
            return f.read(MAGIC_LEN)

    def scan(self) -> Scan:
        """Every file of twophase's naming under the root, in real folders only (links are listed as
        left alone, never entered). Other processes write here while it looks: a temp file renamed into
        place, or a folder emptied and removed, between the listing and a look at it is simply not there."""
        entries: list[Entry] = []
        left: list[str] = []
        if not self.root.is_dir():
            return Scan(entries, left)
        for d in _listing(self.root):
            if not RUN_NAME.fullmatch(d.name):
                continue  # not a trajectory folder: someone else's, not even listed
            if d.is_symlink():
                left.append(f"{d}: a link, not a folder twophase made")
                continue
            if not d.is_dir():
                continue
            for f, name in self._walk(d, left):
                what = classify(name)
                try:
                    st = os.lstat(f)
                except FileNotFoundError:
                    continue
                if what is None or not stat.S_ISREG(st.st_mode):
                    left.append(f"{f}: {'not a plain file' if what else 'not named as twophase names its files'}")
                    continue
                entries.append(Entry(d.name, name, what, st.st_size, st.st_mtime))
        return Scan(entries, left)

    @staticmethod
    def _walk(d: Path, left: list[str]) -> Iterator[tuple[Path, str]]:
        """(path, name relative to the trajectory folder) of its files and of its real `kernels/` folder's (a
        folder removed while it is read has none)."""
        for f in _listing(d):
            if f.name == "kernels" and f.is_dir() and not f.is_symlink():
                for g in _listing(f):
                    yield g, f"kernels/{g.name}"
            elif f.name == "kernels" and f.is_symlink():
                left.append(f"{f}: a link, not a folder twophase made")
            else:
                yield f, f.name

    def remove(self, e: Entry) -> None:
        """Delete one owned entry (a plain file, never a link), then its folders if that left them empty."""
        path = self.path(e.trajectory, e.name)
        try:
            if stat.S_ISREG(os.lstat(path).st_mode) and not self._run_dir(e.trajectory).is_symlink():
                path.unlink()
        except FileNotFoundError:
            return
        for folder in (path.parent, self.root / e.trajectory):
            if folder != self.root:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty: anything else in it stays

    def deletion_refused(self) -> str | None:
        """Why nothing may be deleted under this root, or None: a root that is itself a link."""
        if self.given.is_symlink():
            return (f"storage root {self.given} is a link to {self.root}; twophase never deletes through a link: "
                    f"set {ENV_ROOT}={self.root} to work on it there")
        return None

    def lock(self, trajectory: str, wait: Callable[[], None] | None = None) -> contextlib.AbstractContextManager[None]:
        return file_lock(self._run_dir(trajectory) / LOCK_NAME, wait if wait is not None else (lambda: None))

    def lock_path(self, trajectory: str) -> Path:
        return self.root / trajectory / LOCK_NAME

    def free_bytes(self) -> int | None:
        return free_bytes(self.root)


def _listing(d: Path) -> list[Path]:
    """A folder's entries, sorted; none if it was removed meanwhile (another process emptied it)."""
    try:
        return sorted(d.iterdir())
    except FileNotFoundError:
        return []
