"""The result store: keys and blobs, nothing about experiments.

Layout under `root`:
- `index/`: the index (`index.py`), holding results, partial results and job records as checksummed
  records (`records.py`) that are checked before anything parses them. Final results always live in
  their own files, so a lost or damaged `cache.db` can be rebuilt from them; nothing is ever unpickled.
- `runs/<trajectory key>/t<iteration>.pt` and `kernels/`: checkpoint files that verify by themselves
  (`checkpoints.py`), possibly elsewhere ($TWOPHASE_STORAGE_ROOT: `files.py`).
- `.reserve`: 1 MiB kept free for the last words of a job that hits a full disk (`space.py`).

This module opens the index, heals it (a damaged index is moved aside, `index.damaged-<time>-<pid>/`,
never emptied in place, and rebuilt from what verifies), reopens it when its file is replaced under a
live Store, and reads and writes blobs, JSON and arrays, each verified before use: one that fails its
check, or does not parse, is named as a `DamagedRecord` and never returned. Checking, repairing and
clearing a store are `upkeep.py`'s (they decide what may be deleted); upkeep uses a Store, never the
reverse. Nothing here imports torch at module level: the app's process reads results without it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np

from twophase_core.storage import scratch, space
from twophase_core.storage.checkpoints import Checkpoints
from twophase_core.storage.errors import StorageSettingError, StoreDamaged, StoreError, StoreFull
from twophase_core.storage.files import (
    ENV_ROOT,
    CheckpointFiles,
    LocalFiles,
    ObjectFiles,
    free_bytes,
    open_storage,
    storage_from_env,
)
from twophase_core.storage.index import Index, Value
from twophase_core.storage.locks import file_lock
from twophase_core.storage.ownership import clean_orphans
from twophase_core.storage.records import pack_arrays, sha_hex, unpack_arrays
from twophase_core.storage.salvage import Rebuilt, index_problem, recoverable

if TYPE_CHECKING:
    import torch

ENV = "TWOPHASE_CACHE_DIR"
log = logging.getLogger("twophase.store")
T = TypeVar("T")
_CORRUPT = object()  # an entry that could not be read (pickled, malformed): damaged, like a bad checksum


class DamagedRecord(StoreError):
    """A record is in the index but cannot be trusted: it is named, left in place, and moved aside by
    `repair` (into `damaged/`), never silently dropped."""

    def __init__(self, key: str, why: str):
        self.key, self.why = key, why
        super().__init__(f"store record {key} is damaged: {why}; `twophase cache check` lists it and "
                         "`twophase cache repair` moves it aside")


def default_root() -> Path:
    """Where results live unless told otherwise: the same folder whatever the working directory.

    $TWOPHASE_CACHE_DIR if set; else `cache/` of the source checkout the package runs from (an
    editable install: `make run`, the CLI, a notebook and the Docker image all share it); else
    (a plain install) the user's cache folder, $XDG_CACHE_HOME/twophase or ~/.cache/twophase.
    """
    env = os.environ.get(ENV)
    if env:
        try:
            return Path(env).expanduser().resolve()
        except RuntimeError as e:  # ~nosuchuser/...
            raise StorageSettingError(ENV, env, f"{e}; give a folder that exists or can be made") from None
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "twophase_core").is_dir():
        return checkout / "cache"
    return (Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "twophase").resolve()


class Store:
    """Checksummed records in an index plus self-verifying checkpoint files under `root`/runs.

    With `heal` (the default) opening removes temp files left by killed writers and moves a damaged
    index aside and rebuilds it; with `heal=False` nothing is changed (for `check`), and anything
    needing a damaged index raises `StoreDamaged`. If the index file is replaced or deleted under a live
    Store (a repair or clear by another process, a user's `rm`), the next access reopens the new one;
    `index_id()` lets a job notice that its index changed while it ran.
    """

    def __init__(self, root: str | Path | None = None, heal: bool = True,
                 storage: CheckpointFiles | str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()
        # checkpoint files: `root/runs`, or a storage root shared with workers on other machines; resolved
        # first, so a bad storage setting is named before anything is made
        if storage is None:
            self.files = storage_from_env(self.root / "runs")
        elif isinstance(storage, LocalFiles | ObjectFiles):
            self.files = storage
        else:
            self.files = open_storage(storage)
        if isinstance(self.files, LocalFiles) and self.files.setting == ENV_ROOT:
            self.files.probe()  # a folder the user named: made (or refused in one line) before the store is
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_dir = self.root / "index"
        self.db_path = self.index_dir / "cache.db"
        self.ckpt = Checkpoints(self.files, self.root, self._legacy_sha, self._forget_legacy)
        self.problem: str | None = None  # why the index could not be used (heal=False only)
        self.healed: Rebuilt | None = None  # what opening (or a later heal) repaired
        self._index: Index | None = None
        self._ident: tuple[int, int] | None = None
        self._reopen_lock = threading.RLock()
        self.cleaned = {"files": 0, "bytes": 0}
        self._damaged_seen: set[str] = set()  # damaged records already logged by this object
        with self.root_lock(), contextlib.suppress(StoreFull):  # on a full disk the index opens on first use
            if heal:
                self.cleaned = clean_orphans(self.files)
                self.heal()
            else:
                self.problem = index_problem(self.db_path, self.index_dir)
                if self.problem is None:
                    self._open()
        space.keep_reserve(self.root)

    # -- the index ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def root_lock(self) -> Iterator[None]:
        """Held while the index is opened, rebuilt, repaired or cleared, by any process (and this object's
        own lock first, so that its threads always take the two in one order)."""
        with self._reopen_lock, file_lock(self.root / ".lock"):
            yield

    def _open(self) -> None:
        """Open (or create) the index (diskcache writes its settings on every open: a full disk fails)."""
        try:
            self._index = Index(self.index_dir)
        except (OSError, sqlite3.OperationalError) as e:
            if space.is_full(e, self.root):
                raise space.full(self.root, "opening its index") from e
            raise
        self._ident = self._db_ident()
        self.problem = None

    def _db_ident(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.db_path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def index_id(self) -> tuple[int, int] | None:
        """Identity (device, inode) of the index file now on disk; None if it is gone."""
        return self._db_ident()

    @property
    def cache(self) -> Index:
        """The index, reopened first if its file was replaced or deleted since it was opened."""
        with self._reopen_lock:
            if self._index is None and self.problem is None:
                with self.root_lock():
                    self._open()  # not opened yet (a clear() on a full disk left it for later)
            if self._index is None:
                raise StoreDamaged(f"the store index {self.db_path} is damaged ({self.problem}); "
                                   "run `twophase cache repair` (it is moved aside and rebuilt)")
            if self._db_ident() != self._ident:
                old, self._index = self._index, None
                try:
                    self.heal()
                finally:  # closed last: while its file is held open, a new index never reuses its inode
                    with contextlib.suppress(Exception):
                        old.close()
            return cast(Index, self._index)  # (heal() reopened it, or raised: mypy still sees the None above)

    def heal(self) -> Rebuilt | None:
        """Make the index on disk usable: moved aside and rebuilt if it is damaged, else opened if it is not
        open or its file was replaced. The rebuild's report, or None."""
        with self.root_lock():
            problem = index_problem(self.db_path, self.index_dir)
            if problem is not None:
                self.healed = self.rebuild(problem)
                return self.healed
            if self._index is None or self._db_ident() != self._ident:
                self._open()
        return None

    def rebuild(self, problem: str) -> Rebuilt:
        """Move the index aside and rebuild it from what verifies there: records in readable rows and in
        entry files (each carries its key and checksum). Checkpoints need nothing: they verify by
        themselves. `problem` says why (logged, and kept in the report)."""
        with self.root_lock():
            if self._index is not None:
                with contextlib.suppress(Exception):
                    self._index.close()
                self._index = None
            aside = stem = self.root / f"index.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
            n = 1
            while aside.exists():  # a second rebuild within the second: never into the first one's copy
                n += 1
                aside = stem.with_name(f"{stem.name}-{n}")
            if self.index_dir.exists():
                os.rename(self.index_dir, aside)
            self._open()
            report: Rebuilt = {"problem": problem, "moved_aside": str(aside) if aside.exists() else None,
                               "recovered": 0, "unverifiable": 0, "refused_pickles": 0}
            if not aside.exists():
                return report
            try:
                got, counts = recoverable(aside)
                for key, value in got.items():
                    self._set(key, value)
                report.update(counts)
                report["recovered"] = len(got)
            finally:
                log.warning("store index %s could not be used (%s): moved to %s and rebuilt with %d verified "
                            "records (%d unverifiable, %d pickled refused); the rest is recomputed on demand",
                            self.db_path, problem, aside, report["recovered"], report["unverifiable"],
                            report["refused_pickles"])
            return report

    def _healing(self, op: Callable[[], T]) -> T:
        """Run `op` on the index; if the file turns out damaged under this live Store (sqlite: not a
        database, malformed), move it aside, rebuild it and run `op` once more."""
        try:
            return op()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) or self.heal() is None:
                raise  # busy, locked, or not damage that a rebuild mends
            return op()

    def _set(self, key: str, value: Value) -> None:
        """Index.set that reports a full disk as StoreFull (the reserve is left for a job's last words)."""
        try:
            self._healing(lambda: self.cache.set(key, value))
        except (OSError, sqlite3.OperationalError) as e:
            if space.is_full(e, self.root):
                raise space.full(self.root, f"writing {key}") from e
            raise

    def _fetch(self, key: str) -> Value | None | object:
        try:
            return self.cache.get(key)
        except (StoreError, sqlite3.DatabaseError):
            raise
        except Exception:  # noqa: BLE001 - pickled, malformed or unreadable: corrupt
            return _CORRUPT

    # -- blobs ------------------------------------------------------------------------------
    def put_blob(self, key: str, blob: bytes) -> None:
        self._set(key, {"sha": sha_hex(blob), "blob": blob})

    def read_blob(self, key: str) -> bytes | None:
        """The blob under `key`, None if there is none; DamagedRecord if it is there but fails its checksum
        or was stored pickled. Reading never changes the store: a damaged record stays where it is until
        `repair` moves it aside, so it is named, never silently dropped."""
        rec = self._healing(lambda: self._fetch(key))
        if rec is None:
            return None
        if rec is _CORRUPT:
            raise DamagedRecord(key, "it cannot be read (pickled or malformed)")
        blob = rec.get("blob") if isinstance(rec, dict) else None
        if not isinstance(blob, bytes) or not isinstance(rec, dict):
            raise DamagedRecord(key, "it is not a checksummed record")
        if sha_hex(blob) != rec.get("sha"):
            raise DamagedRecord(key, "it fails its checksum")
        return blob

    def get_blob(self, key: str) -> bytes | None:
        """The blob, or None if it is missing or damaged (logged once, left in place: never returned)."""
        try:
            return self.read_blob(key)
        except DamagedRecord as e:
            self._warn_damaged(e)
            return None

    def _warn_damaged(self, e: DamagedRecord) -> None:
        if e.key not in self._damaged_seen:
            self._damaged_seen.add(e.key)
            log.warning("%s", e)

    def put_json(self, key: str, obj: object) -> None:
        self.put_blob(key, json.dumps(obj).encode())

    def read_json(self, key: str) -> Any:
        """The JSON value under `key`, None if there is none; DamagedRecord if it is damaged or not JSON."""
        b = self.read_blob(key)
        if b is None:
            return None
        try:
            return json.loads(b.decode())
        except (ValueError, RecursionError):  # (nested past Python's recursion limit: not a record of ours)
            raise DamagedRecord(key, "it is not JSON") from None

    def get_json(self, key: str) -> Any:
        """The JSON value, or None if it is missing or damaged (logged once, left in place)."""
        try:
            return self.read_json(key)
        except DamagedRecord as e:
            self._warn_damaged(e)
            return None

    def put_arrays(self, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.put_blob(key, pack_arrays(arrays, meta))

    def get_arrays(self, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """Arrays and metadata, or None if missing or damaged: a damaged result is recomputed by whoever
        asked, and the new one replaces it; it is never shown."""
        b = self.get_blob(key)
        if b is None:
            return None
        try:
            return unpack_arrays(b)
        except Exception:  # noqa: BLE001
            self._warn_damaged(DamagedRecord(key, "its arrays do not parse"))
            return None

    def delete(self, key: str) -> None:
        self._healing(lambda: self.cache.delete(key))

    def keys(self, prefix: str = "") -> list[str]:
        return self._healing(lambda: self.cache.keys(prefix))

    # -- checkpoint and kernel files (`checkpoints.py`) ----------------------------------------
    def checkpoint_path(self, trajectory: str, t: int) -> Path | str:
        """Where checkpoint t of a trajectory lives: a Path in a folder, a URL in an object store."""
        return self.files.path(trajectory, t)

    def check_storage(self) -> None:
        self.ckpt.check_storage()

    def save_checkpoint(self, trajectory: str, t: int, state: dict[str, Any]) -> None:
        self.ckpt.save(trajectory, t, state)

    def load_checkpoint(self, trajectory: str, t: int,
                        map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
        return self.ckpt.load(trajectory, t, map_location)

    def checkpoints(self, trajectory: str) -> list[int]:
        """Iterations with a checkpoint file for a trajectory (checksums are verified on load)."""
        return self.files.iterations(trajectory)

    def checkpoint_bytes(self, trajectory: str) -> int | None:
        return self.ckpt.latest_bytes(trajectory)

    def save_kernel(self, trajectory: str, name: str, kernel: np.ndarray) -> None:
        self.ckpt.save_kernel(trajectory, name, kernel)

    def load_kernel(self, trajectory: str, name: str) -> np.ndarray | None:
        return self.ckpt.load_kernel(trajectory, name)

    def trajectory_lock(self, trajectory: str,
                        wait: Callable[[], None] | None = None) -> contextlib.AbstractContextManager[None]:
        """Held while a process trains a trajectory: a second process needing it waits (calling `wait()`)
        and then reads the checkpoints the first one wrote. A dead holder's lock is gone with it. (On an
        object store, only among this machine's processes: `object_files.py`.)"""
        return self.files.lock(trajectory, wait)

    def _legacy_sha(self, trajectory: str, t: int) -> str | None:
        """The sha256 an older version kept in the index for a checkpoint file without a header."""
        if self._index is None:
            return None
        try:
            sha = self.cache.get(f"ckpt/{trajectory}/{t}")
        except Exception:  # noqa: BLE001
            return None
        return sha if isinstance(sha, str) else None

    def _forget_legacy(self, trajectory: str, t: int) -> None:
        if self._index is not None:
            with contextlib.suppress(Exception):
                self.cache.delete(f"ckpt/{trajectory}/{t}")

    # -- space (`space.py`) -------------------------------------------------------------------
    def free_bytes(self) -> int:
        return free_bytes(self.root)

    def require_space(self, needed: int, doing: str) -> None:
        """StoreFull (before anything is written) if `needed` bytes of checkpoints would not fit."""
        space.require_space(self.files, self.root, needed, doing)

    def release_reserve(self) -> bool:
        """Give up the 1 MiB reserve so a job's last record still fits; True if it was there. Called by a
        worker reporting StoreFull; a later Store makes it again once the disk has room."""
        return space.release_reserve(self.root)

    def close(self) -> None:
        """Close this thread's connection to the index (the next use opens one again)."""
        if self._index is not None:
            self._index.close()


@contextlib.contextmanager
def task_store(files: CheckpointFiles) -> Iterator[Store]:
    """A store for a task on any machine (Ray): the shared checkpoint files, and a throwaway index in a
    scratch folder, since only the driver writes results into the real one (which may be on a disk this
    machine cannot see). A killed task's scratch is removed by the next task store (`scratch.py`)."""
    if not isinstance(files, LocalFiles | ObjectFiles):  # a bare path would silently be another root
        raise TypeError(f"task_store takes the driver's Store.files, not {type(files).__name__}")
    folder = scratch.make()
    store = Store(folder, storage=files)
    try:
        yield store
    finally:
        store.close()
        shutil.rmtree(folder, ignore_errors=True)
