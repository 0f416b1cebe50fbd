"""The result store: keys and blobs, nothing about experiments.

Layout under `root`:
- `index/`: a diskcache `Cache` (eviction policy 'none': a result is never silently dropped) holding
  results, partial results and job records as checksummed records. Its `SafeDisk` never unpickles:
  a record is framed as bytes (magic, its key, its sha256, the blob), checked before anything parses
  it, and final results always live in their own files, so a lost or damaged `cache.db` can be
  rebuilt from them. A pickled entry (planted, or from an older version) is refused unread.
- `runs/<trajectory key>/t<iteration>.pt`: checkpoints, one file each, written atomically with their
  sha256 in a header, so each verifies without the index; loaded with `weights_only=True`. They may
  live elsewhere, on a shared filesystem or an object store ($TWOPHASE_STORAGE_ROOT: `storage.py`,
  which also holds their format and the per-trajectory lock).
- `.reserve`: 1 MiB kept free for the last words of a job that hits a full disk.

Every blob is verified before use: one that fails its check, or does not parse, is deleted and
reported missing, so the caller recomputes it and never shows it. A damaged index is moved aside
(`index.damaged-<time>-<pid>/`, never emptied in place) and rebuilt from what verifies on disk.
Nothing here imports torch at module level: the app's process reads results without it.

Past 700 lines, knowingly: opening, healing, checking and repairing read each other's invariants
and were fault-tested together. What they build on lives beside it: the record format (`records.py`),
reading a damaged index without writing to it (`index_salvage.py`), locks (`locks.py`) and where
checkpoint files live (`storage.py`).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import os
import re
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import diskcache
import numpy as np
from diskcache.core import MODE_PICKLE, MODE_RAW

from twophase_core.storage.errors import StorageSettingError, StoreError
from twophase_core.storage.files import (
    CKPT_MAGIC,
    ENV_ROOT,
    KERNEL_MAGIC,
    CheckpointFiles,
    Entry,
    LocalFiles,
    ObjectFiles,
    Scan,
    frame_checkpoint,
    free_bytes,
    has_header,
    iteration_of,
    open_storage,
    storage_from_env,
    verify_checkpoint,
)
from twophase_core.storage.locks import file_lock, is_locked
from twophase_core.storage.records import REC_MAGIC, SafeDisk, pack_arrays, sha_hex, unframe_record, unpack_arrays
from twophase_core.storage.salvage import inspect_index, key_text, salvage_rows, tree_bytes, unreferenced

__all__ = ["StoreError", "StorageSettingError"]  # re-exported: callers of the store know one module

ENV = "TWOPHASE_CACHE_DIR"
RESERVE_BYTES = 1 << 20
ORPHAN_AGE_S = 1.0  # an unlocked temp file older than this is left over from a killed writer
log = logging.getLogger("twophase.store")
T = TypeVar("T")
_CORRUPT = object()  # an entry that could not be read (pickled, malformed): damaged, like a bad checksum

# The store's own files under its root, by exact name (anything else there is not its own, and stays)
DAMAGED_DIR = "damaged"  # records moved aside by repair: <time>-<key>.rec and .why
INDEX_FILES = ("cache.db", "cache.db-wal", "cache.db-shm", "cache.db-journal")
VAL_NAME = re.compile(r"[0-9a-f]{28}\.val")  # diskcache's entry files, under two levels of 2-hex folders
LOG_NAME = re.compile(r"[a-z]+-[0-9a-f]{20}\.log")  # a worker's log: jobs/<job id>.log
LOG_HEADER = b"--- "  # its first line, written by the job runner before the worker starts
ASIDE_NAME = re.compile(r"[0-9]{8}-[0-9]{6}-[A-Za-z0-9._-]{1,120}(-[0-9]+)?\.(rec|why)")


def _plain(p: Path) -> bool:
    """A plain file, not a link (nothing is deleted through one)."""
    try:
        return stat.S_ISREG(os.lstat(p).st_mode)
    except OSError:
        return False


def _starts_with(p: Path, prefix: bytes) -> bool:
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        return f.read(len(prefix)) == prefix


def _size(p: Path) -> int:
    try:
        return os.lstat(p).st_size
    except OSError:
        return 0


def _remove_empty_folders(folder: Path) -> None:
    """Remove `folder` and the folders under it that are empty (real folders only, deepest first)."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()


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


# ---------------------------------------------------------------------------------------------
# Errors


class StoreFull(StoreError):
    """The disk holding the store has no room: named with its root and its free space."""

    def __init__(self, root: Path, doing: str, needed: int | None = None):
        self.root, self.free, self.needed = root, free_bytes(root), needed
        if needed is None:  # the disk said ENOSPC
            what = f"is full ({human(self.free)} free) {doing}"
        else:  # an estimate said it would not fit
            what = f"has {human(self.free)} free, too little: {doing} needs about {human(needed)}"
        super().__init__(f"the disk holding the store {root} {what}; free some space (or `twophase cache clear`) "
                         "and try again")


class StoreDamaged(StoreError):
    """The index cannot be read and was not repaired (the store was opened with heal=False)."""


class DamagedRecord(StoreError):
    """A record is in the index but cannot be trusted: it is named, left in place, and moved aside by
    `repair` (into `damaged/`), never silently dropped."""

    def __init__(self, key: str, why: str):
        self.key, self.why = key, why
        super().__init__(f"store record {key} is damaged: {why}; `twophase cache check` lists it and "
                         "`twophase cache repair` moves it aside")


def human(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


FULL_BELOW = 64 * 1024  # free bytes under which an I/O error is taken for a full disk


def _is_full(e: BaseException, root: Path | None = None) -> bool:
    """ENOSPC, sqlite's 'database or disk is full', or (sqlite reports some as 'disk I/O error', e.g.
    growing its -shm file) any I/O error while the disk holding `root` has next to nothing free."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(e, sqlite3.OperationalError) and "full" in str(e):
        return True
    return root is not None and isinstance(e, OSError | sqlite3.OperationalError) and free_bytes(root) < FULL_BELOW


# ---------------------------------------------------------------------------------------------
# The store


class Store:
    """Checksummed records in a diskcache index plus self-verifying checkpoint files under `root`/runs.

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
        self.problem: str | None = None  # why the index could not be used (heal=False only)
        self._storage_checked = False
        self.healed: dict[str, Any] | None = None  # what opening repaired
        self._cache: diskcache.Cache | None = None
        self._ident: tuple[int, int] | None = None
        self._reopen_lock = threading.RLock()
        self.cleaned = {"files": 0, "bytes": 0}
        self._damaged_seen: set[str] = set()  # damaged records already logged by this object
        with self._root_lock(), contextlib.suppress(StoreFull):  # on a full disk the index opens on first use
            self.cleaned = self._clean_orphans() if heal else {"files": 0, "bytes": 0}
            problem = self._index_problem()
            if problem is not None and heal:
                self.healed = self._rebuild(problem)
            elif problem is not None:
                self.problem = problem
            else:
                self._open()
        self._keep_reserve()

    # -- the index ----------------------------------------------------------------------------
    def _root_lock(self) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.root / ".lock")

    def _open(self) -> None:
        """Open (or create) the index (diskcache writes its settings on every open: a full disk fails)."""
        try:
            self._cache = diskcache.Cache(str(self.index_dir), eviction_policy="none", timeout=60, disk=SafeDisk)
        except (OSError, sqlite3.OperationalError) as e:
            if _is_full(e, self.root):
                raise StoreFull(self.root, "opening its index") from e
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
    def cache(self) -> diskcache.Cache:
        """The index, reopened first if its file was replaced or deleted since it was opened."""
        with self._reopen_lock:
            if self._cache is None and self.problem is None:
                with self._root_lock():
                    self._open()  # not opened yet (a clear() on a full disk left it for later)
            if self._cache is None:
                raise StoreDamaged(f"the store index {self.db_path} is damaged ({self.problem}); "
                                   "run `twophase cache repair` (it is moved aside and rebuilt)")
            if self._db_ident() != self._ident:
                old, self._cache = self._cache, None
                try:
                    with self._root_lock():
                        problem = self._index_problem()
                        if problem is not None:
                            self.healed = self._rebuild(problem)
                        else:
                            self._open()
                finally:  # closed last: while its file is held open, a new index never reuses its inode
                    with contextlib.suppress(Exception):
                        old.close()
            return self._cache  # type: ignore[return-value]

    def _index_problem(self) -> str | None:
        """Why the index on disk cannot be trusted, or None (also None when there is none yet)."""
        db = self.db_path
        if not db.exists():
            leftovers = list(self.index_dir.rglob("*.val")) if self.index_dir.is_dir() else []
            return f"cache.db is missing but {len(leftovers)} entry files remain" if leftovers else None
        try:
            size = db.stat().st_size
            wal = db.with_name("cache.db-wal")
            if size == 0 and not (wal.exists() and wal.stat().st_size > 0):
                return "cache.db is empty (0 bytes): cut short"
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)
            try:
                rows = con.execute("PRAGMA quick_check").fetchall()
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            finally:
                con.close()
        except sqlite3.OperationalError:
            return None  # busy, locked, cannot open: not damage (opening will say what is wrong)
        except sqlite3.DatabaseError as e:  # not a database, malformed
            return f"{type(e).__name__}: {e}"
        except OSError:
            return None
        if rows != [("ok",)]:
            return "quick_check: " + "; ".join(str(r[0]) for r in rows[:3])
        if tables and not {"Cache", "Settings"} <= tables:
            return f"cache.db is not a store index (tables {sorted(tables)})"
        return None

    def _rebuild(self, problem: str) -> dict[str, Any]:
        """Move the index aside and rebuild it from what verifies there: records in readable rows and
        in entry files (each carries its key and checksum). Checkpoints need nothing: they verify by
        themselves. Called with the root lock held."""
        if self._cache is not None:
            with contextlib.suppress(Exception):
                self._cache.close()
            self._cache = None
        aside = self.root / f"index.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        if self.index_dir.exists():
            os.rename(self.index_dir, aside)
        self._open()
        report: dict[str, Any] = {"problem": problem, "moved_aside": str(aside) if aside.exists() else None,
                                  "recovered": 0, "unverifiable": 0, "refused_pickles": 0}
        if not aside.exists():
            return report
        try:
            self._recover_from(aside, report)
        finally:
            log.warning("store index %s could not be used (%s): moved to %s and rebuilt with %d verified records "
                        "(%d unverifiable, %d pickled refused); the rest is recomputed on demand", self.db_path,
                        problem, aside, report["recovered"], report["unverifiable"], report["refused_pickles"])
        return report

    def _recover_from(self, aside: Path, report: dict[str, Any]) -> None:
        """Copy into the fresh index every record of the moved-aside one that verifies."""
        got: dict[str, tuple[str, bytes] | str] = {}
        rows, read_error = salvage_rows(aside / "cache.db")
        for key, raw, mode, value in rows:
            if not raw or mode == MODE_PICKLE:
                report["refused_pickles"] += 1
            elif not isinstance(key, str):
                report["unverifiable"] += 1
            elif mode == MODE_RAW and isinstance(value, str) and key.startswith("ckpt/"):
                got[key] = value  # a checksum of an older checkpoint file (verified again on load)
            elif mode == MODE_RAW and isinstance(value, bytes):
                try:
                    k, sha, blob = unframe_record(value)
                except ValueError:
                    report["unverifiable"] += 1
                    continue
                if sha_hex(blob) == sha and k in (key, ""):
                    got[key] = (sha, blob)
                else:
                    report["unverifiable"] += 1
        for f in sorted(aside.rglob("*.val")):
            try:
                k, sha, blob = unframe_record(f.read_bytes())
            except (OSError, ValueError):
                report["unverifiable"] += 1
                continue
            if k and sha_hex(blob) == sha:
                got.setdefault(k, (sha, blob))
            else:
                report["unverifiable"] += 1
        for key, val in got.items():
            self._set(key, val if isinstance(val, str) else {"sha": val[0], "blob": val[1]})
        report["recovered"] = len(got)
        if read_error:
            report["read_error"] = read_error

    def _healing(self, op: Callable[[], T]) -> T:
        """Run `op` on the index; if the file turns out damaged under this live Store (sqlite: not a
        database, malformed), move it aside, rebuild it and run `op` once more."""
        try:
            return op()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError):
                raise
            with self._reopen_lock, self._root_lock():
                problem = self._index_problem()
                if problem is None:
                    raise
                self.healed = self._rebuild(problem)
            return op()

    def _set(self, key: str, value: Any) -> None:
        """cache.set that reports a full disk as StoreFull (the reserve is left for a job's last words)."""
        try:
            self._healing(lambda: self.cache.set(key, value))
        except (OSError, sqlite3.OperationalError) as e:
            if _is_full(e, self.root):
                raise StoreFull(self.root, f"writing {key}") from e
            raise

    def _fetch(self, key: str) -> Any:
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
        if not isinstance(blob, bytes):
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

    def put_json(self, key: str, obj: Any) -> None:
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
        return self._healing(lambda: [k for k in self.cache.iterkeys() if type(k) is str and k.startswith(prefix)])

    # -- checkpoint files -------------------------------------------------------------------
    def checkpoint_path(self, trajectory: str, t: int) -> Path | str:
        """Where checkpoint t of `run` lives: a Path in a folder, a URL in an object store."""
        return self.files.path(trajectory, t)

    def check_storage(self) -> None:
        """Before any training: can checkpoints be written where they go? (An object store is sent a test
        object, so a wrong bucket, endpoint or credential is named now, not at the first checkpoint.)"""
        if not self._storage_checked:
            self.files.probe()
            self._storage_checked = True

    @staticmethod
    def serialize(state: dict[str, Any]) -> bytes:
        """torch.save bytes of a checkpoint (its size is what one checkpoint costs on disk)."""
        import torch  # here, not at the top: the app's process reads results and never needs torch

        buf = io.BytesIO()
        torch.save(state, buf)
        return buf.getvalue()

    def save_checkpoint(self, trajectory: str, t: int, state: dict[str, Any]) -> None:
        """Atomic write of a self-verifying file; a full disk leaves no temp file and raises StoreFull."""
        self._write_file(trajectory, t, frame_checkpoint(self.serialize(state)),
                         f"writing checkpoint {t} of {trajectory}")

    def _write_file(self, trajectory: str, name: int | str, data: bytes, doing: str) -> None:
        try:
            self.files.write(trajectory, name, data)
        except OSError as e:
            where = self._checkpoint_disk()
            if _is_full(e, where):
                self.release_reserve()
                raise StoreFull(where, doing) from e
            raise

    # -- kernels: one checkpoint's eNTK, beside its checkpoints -------------------------------
    def save_kernel(self, trajectory: str, name: str, kernel: np.ndarray) -> None:
        """Write once, self-verifying, like a checkpoint (`storage.py`)."""
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(kernel), allow_pickle=False)
        self._write_file(trajectory, f"kernels/{name}", frame_checkpoint(buf.getvalue(), KERNEL_MAGIC),
                         f"writing kernel {name} of {trajectory}")

    def load_kernel(self, trajectory: str, name: str) -> np.ndarray | None:
        """The kernel, or None if it is missing or a damaged one of ours (then it is removed and recomputed)."""
        data = self._read_owned(trajectory, f"kernels/{name}", KERNEL_MAGIC, "kernel")
        if data is None:
            return None
        payload = verify_checkpoint(data, KERNEL_MAGIC)
        try:
            if payload is not None:
                return np.load(io.BytesIO(payload), allow_pickle=False)
        except ValueError:
            pass
        self.files.delete(trajectory, f"kernels/{name}")
        return None

    def load_checkpoint(self, trajectory: str, t: int, map_location: Any = "cpu") -> dict[str, Any] | None:
        """The checkpoint, or None if it is missing or a damaged one of ours (then it is removed, and whoever
        asked trains it again). A file of that name twophase did not write is never used nor touched:
        StoreError says where it is. An object store that cannot be reached raises StoreError too: its
        checkpoints are not damaged."""
        data = self._read_owned(trajectory, t, CKPT_MAGIC, "checkpoint")
        if data is None:
            return None
        payload = verify_checkpoint(data)
        if payload is None and not data.startswith(CKPT_MAGIC):
            payload = data  # a file from before checkpoints carried their checksum: _read_owned verified it
        if payload is None:
            self.drop_checkpoint(trajectory, t)
            return None
        import torch

        try:
            return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
        except Exception:  # noqa: BLE001
            self.drop_checkpoint(trajectory, t)
            return None

    def _read_owned(self, trajectory: str, name: int | str, magic: bytes, what: str) -> bytes | None:
        """A file's bytes if it is twophase's (its header, or an old checkpoint whose checksum the index
        holds), None if there is none; StoreError if it cannot be read or is someone else's."""
        try:
            data = self.files.read(trajectory, name)
        except OSError as e:
            raise StoreError(f"{what} {self.files.path(trajectory, name)} cannot be read ({e.strerror or e}); twophase "
                             "leaves it alone: fix its permissions or move it away") from None
        if data is None or data.startswith(magic):
            return data
        if isinstance(name, int) and self._legacy_sha(trajectory, name) == sha_hex(data):
            return data
        raise StoreError(f"{self.files.path(trajectory, name)} is not a {what} twophase wrote (no twophase header); "
                         "it is "
                         "left as it is: move it away, and the run computes its own")

    def _legacy_sha(self, trajectory: str, t: int) -> str | None:
        if self._cache is None:
            return None
        try:
            sha = self.cache.get(f"ckpt/{trajectory}/{t}")
        except Exception:  # noqa: BLE001
            return None
        return sha if isinstance(sha, str) else None

    def drop_checkpoint(self, trajectory: str, t: int) -> None:
        """Remove a damaged checkpoint of ours (its caller checked its header), so it is trained again."""
        self.files.delete(trajectory, t)
        if self._cache is not None:
            with contextlib.suppress(Exception):
                self.cache.delete(f"ckpt/{trajectory}/{t}")

    def checkpoints(self, trajectory: str) -> list[int]:
        """Iterations with a checkpoint file for `run` (checksums are verified on load)."""
        return self.files.iterations(trajectory)

    def checkpoint_bytes(self, trajectory: str) -> int | None:
        """Size of the latest checkpoint file of `run` (what one more costs: a run's checkpoints all hold
        the same tensors), None if it has none."""
        its = self.checkpoints(trajectory)
        return self.files.size(trajectory, its[-1]) if its else None

    def trajectory_lock(self, trajectory: str,
                        wait: Callable[[], None] | None = None) -> contextlib.AbstractContextManager[None]:
        """Held while a process trains `run`: a second process needing it waits (calling `wait()`) and
        then reads the checkpoints the first one wrote. A dead holder's lock is gone with it. (On an
        object store, only among this machine's processes: `storage.py`.)"""
        return self.files.lock(trajectory, wait)

    # -- space --------------------------------------------------------------------------------
    def free_bytes(self) -> int:
        return free_bytes(self.root)

    def require_space(self, needed: int, doing: str) -> None:
        """Raise StoreFull (before anything is written) if `needed` bytes of checkpoints would not fit
        (on the disk that holds them; an object store is not checked)."""
        free = self.files.free_bytes()
        if needed > 0 and free is not None and free < needed:
            raise StoreFull(self._checkpoint_disk(), doing, needed)

    def _checkpoint_disk(self) -> Path:
        """The folder to name when checkpoints do not fit: the store, or the storage root elsewhere."""
        if isinstance(self.files, LocalFiles) and not self.files.root.is_relative_to(self.root.resolve()):
            return self.files.root
        return self.root

    def _keep_reserve(self) -> None:
        p = self.root / ".reserve"
        with contextlib.suppress(OSError):
            if p.exists() or self.free_bytes() < 8 * RESERVE_BYTES:
                return
            with open(p, "wb") as f:
                f.write(b"\0" * RESERVE_BYTES)

    def release_reserve(self) -> bool:
        """Delete the reserve so a job's last record (its failure) can still be written; True if it was there.

        Called when a checkpoint write hits a full disk and by a worker reporting StoreFull; a later
        Store recreates it once the disk has room."""
        try:
            (self.root / ".reserve").unlink()
            return True
        except OSError:
            return False

    # -- housekeeping: only what twophase can tell is its own -------------------------------
    def _temps(self, scan: Scan | None = None) -> list[Entry]:
        """Temp files of our checkpoint writers, live or killed (named as ours and beginning as ours do), in a
        folder storage root. An object store has none, and is not listed for them: opening a store never
        waits on the network."""
        if not isinstance(self.files, LocalFiles):
            return []
        scan = scan if scan is not None else self.files.scan()
        return [e for e in scan.of("temp") if has_header(self.files.head(e), "temp")]

    def _orphans(self, temps: list[Entry]) -> list[Entry]:
        """Temp files no live writer holds: left by kill -9 during a write."""
        now = time.time()
        return [e for e in temps if now - e.mtime >= ORPHAN_AGE_S
                and not is_locked(Path(self.files.path(e.trajectory, e.name)))]

    def _clean_orphans(self) -> dict[str, int]:
        n = size = 0
        if self.files.deletion_refused() is None:
            for e in self._orphans(self._temps()):
                self.files.remove(e)
                n, size = n + 1, size + e.size
        return {"files": n, "bytes": size}

    def info(self) -> dict[str, Any]:
        """Counts and sizes; on a full disk or a damaged index (not opened) they are read read-only."""
        scan = self.files.scan()
        ckpts = scan.of("checkpoint")
        try:
            results, volume = len(self.keys("result/")), self.cache.volume()
        except StoreError:
            results = inspect_index(self.db_path, self.index_dir)["results"]
            volume = tree_bytes(self.index_dir) if self.index_dir.is_dir() else 0
        return {
            "root": str(self.root),
            "storage": self.files.url,
            "results": results,
            "checkpoints": len(ckpts),
            "bytes": volume + sum(e.size for e in ckpts + scan.of("kernel")),
            "temp_files": len(self._temps(scan)),  # being written now (orphans are removed when a store opens)
            "orphan_temp_files_removed": self.cleaned["files"],
            "orphan_temp_bytes_removed": self.cleaned["bytes"],
            "damaged_index_copies": [str(p) for p in self._damaged_copies()],
            "healed": self.healed,
            "free_bytes": self.free_bytes(),
        }

    def _damaged_copies(self) -> list[Path]:
        return sorted(p for p in self.root.glob("index.damaged-*") if p.is_dir() and not p.is_symlink())

    def _sort_files(self, scan: Scan, legacy: dict[str, str]) -> dict[str, list[Any]]:
        """Checkpoint and kernel files read whole and sorted: `verified`, `legacy` (an old checkpoint whose
        checksum the index holds), `bad` (ours: our header, but failing its checksum) and `foreign`
        ((entry, why): no twophase header, or unreadable: never touched)."""
        out: dict[str, list[Any]] = {"verified": [], "legacy": [], "bad": [], "foreign": []}
        for e in scan.of("checkpoint") + scan.of("kernel"):
            magic = CKPT_MAGIC if e.what == "checkpoint" else KERNEL_MAGIC
            try:
                data = self.files.read(e.trajectory, e.name)
            except OSError as ex:
                out["foreign"].append((e, f"cannot be read ({ex.strerror or ex})"))
                continue
            if data is None:
                continue  # gone since the listing (a clear, a repair elsewhere)
            if verify_checkpoint(data, magic) is not None:
                out["verified"].append(e)
            elif data.startswith(magic):
                out["bad"].append(e)
            elif e.what == "checkpoint" and legacy.get(f"ckpt/{e.trajectory}/{iteration_of(e.name)}") == sha_hex(data):
                out["legacy"].append(e)
            else:
                out["foreign"].append((e, f"not a {e.what} twophase wrote (no twophase header)"))
        return out

    def _left_alone(self, scan: Scan, foreign: list[tuple[Entry, str]]) -> list[str]:
        """What twophase found in its places but will not touch, with why (shown by check and clear)."""
        out = list(scan.left_alone) + [f"{self.files.path(e.trajectory, e.name)}: {why}" for e, why in foreign]
        refused = self.files.deletion_refused()
        if refused:
            out.append(refused)
        parents = {self.root}
        if isinstance(self.files, LocalFiles):
            parents.add(self.files.root.parent)
        for parent in sorted(parents):
            for p in sorted(parent.glob(".clearing-*")):
                out.append(f"{p}: set aside by `cache clear` of an earlier twophase version, which could take files "
                           "that were not its own; look inside, then remove it yourself")
        return out

    def check(self) -> dict[str, Any]:
        """Verify everything without changing anything; a JSON-ready report (`ok`, `problems`, counts).

        Works on any store: the index is read through a read-only connection (a damaged, missing or
        full-disk index is reported, not opened for writing), every checkpoint and kernel file is read and
        checked. `ok` says whether anything twophase can repair is wrong; what is not twophase's is listed
        under `left_alone` and never counts as a problem (repair would not touch it)."""
        problems: list[str] = []
        index = inspect_index(self.db_path, self.index_dir)
        if index["problem"] is None:
            index["problem"] = self._index_problem() if self.db_path.exists() else None
        if index["problem"]:
            problems.append(f"index: {index['problem']}")
        if index["damaged"]:
            named = "; ".join(f"{d['key']} ({d['why']})" for d in index["damaged"][:5])
            more = f" and {len(index['damaged']) - 5} more" if len(index["damaged"]) > 5 else ""
            problems.append(f"index: {len(index['damaged'])} damaged records: {named}{more} (repair moves them aside)")
        if index.get("unreferenced_files"):
            problems.append(f"index: {index['unreferenced_files']} entry files no record points to")
        scan = self.files.scan()
        files = self._sort_files(scan, index.pop("legacy_shas"))
        ckpt = {"runs": len({e.trajectory for e in scan.of("checkpoint")}), "files": len(scan.of("checkpoint")),
                "verified": sum(e.what == "checkpoint" for e in files["verified"]),
                "legacy": len(files["legacy"]),
                "bad": [str(self.files.path(e.trajectory, e.name)) for e in files["bad"] if e.what == "checkpoint"]}
        kernels = {"files": len(scan.of("kernel")), "verified": sum(e.what == "kernel" for e in files["verified"]),
                   "bad": [str(self.files.path(e.trajectory, e.name)) for e in files["bad"] if e.what == "kernel"]}
        if ckpt["bad"]:
            problems.append(f"checkpoints: {len(ckpt['bad'])} fail their checksum")
        if kernels["bad"]:
            problems.append(f"kernels: {len(kernels['bad'])} fail their checksum")
        temps = self._temps(scan)
        orphans = self._orphans(temps)
        if orphans:
            problems.append(f"{len(orphans)} orphan temp files")
        left = self._left_alone(scan, files["foreign"])
        return {"root": str(self.root), "storage": self.files.url, "ok": not problems, "problems": problems,
                "index": index, "checkpoints": ckpt, "kernels": kernels,
                "temp_files": {"in_use": len(temps) - len(orphans), "orphans": len(orphans),
                               "orphan_bytes": sum(e.size for e in orphans)},
                "left_alone": left, "damaged_index_copies": [str(p) for p in self._damaged_copies()],
                "free_bytes": self.free_bytes()}

    def repair(self, dry_run: bool = False) -> dict[str, Any]:
        """Fix what `check` finds; a JSON-ready report of what was done (or, dry, would be) and the check after.

        A damaged or missing index is moved aside and rebuilt (never emptied in place); damaged records are
        moved aside into `damaged/`; checkpoints and kernels of ours that fail their checksum are removed
        (recomputed on demand); orphan temp files of ours are removed. Nothing that is not twophase's is
        touched. Works on a full disk as far as deleting goes.
        """
        done: dict[str, Any] = {"root": str(self.root), "dry_run": dry_run}
        before = self.check()
        with self._root_lock():
            refused = self.files.deletion_refused()
            orphans = [] if refused else self._orphans(self._temps())
            done["orphan_temp_files_removed"] = len(orphans)
            legacy = inspect_index(self.db_path, self.index_dir)["legacy_shas"]
            files = self._sort_files(self.files.scan(), legacy)
            bad = [] if refused else files["bad"]
            done["checkpoints_removed"] = [str(self.files.path(e.trajectory, e.name)) for e in bad
                                           if e.what == "checkpoint"]
            done["kernels_removed"] = [str(self.files.path(e.trajectory, e.name)) for e in bad if e.what == "kernel"]
            if refused:
                done["refused"] = refused
            if dry_run:
                done["index"] = before["index"]["problem"] and "would be moved aside and rebuilt"
                done["records_moved_aside"] = before["index"]["damaged"]
                return done
            self.release_reserve()  # room to work on a full disk; recreated at the end
            for e in orphans:
                self.files.remove(e)
            problem = self._index_problem()
            if problem is not None:
                done["rebuilt_index"] = self.healed = self._rebuild(problem)
            elif self._cache is None or self._db_ident() != self._ident:
                self._open()
            done["records_moved_aside"] = self._move_damaged_rows()
            done["unreferenced_files_removed"] = self._remove_unreferenced()
            for e in bad:
                if e.what == "checkpoint":
                    self.drop_checkpoint(e.trajectory, int(iteration_of(e.name) or 0))
                else:
                    self.files.remove(e)
        self._keep_reserve()
        done["after"] = self.check()
        return done

    def _remove_unreferenced(self) -> int:
        """Delete index entry files no row points to (a writer killed between file and row) that are records."""
        referenced = {f for (f,) in self.cache._sql("SELECT filename FROM Cache WHERE filename IS NOT NULL")}
        stray = unreferenced(self.index_dir, referenced)
        for p in stray:
            p.unlink(missing_ok=True)
        return len(stray)

    # -- damaged records: named, moved aside, never dropped ---------------------------------
    def move_aside(self, key: str, why: str) -> str:
        """Move a record's stored bytes out of the index into `damaged/` (named by the time and its key) and
        remove it from the index; returns where they went ('' if there is no such record)."""
        with self._root_lock():
            rows = self.cache._sql("SELECT rowid FROM Cache WHERE key = ? AND raw = 1", (key,)).fetchall()
            return self._move_row_aside(rows[0][0], key, why) if rows else ""

    def _move_row_aside(self, rowid: int, name: str, why: str) -> str:
        con = self.cache._sql  # diskcache's connection for this thread
        row = con("SELECT value, filename FROM Cache WHERE rowid = ?", (rowid,)).fetchone()
        if row is None:
            return ""
        value, filename = row
        data = b""
        path = None
        if filename is not None:
            with contextlib.suppress(OSError, ValueError):
                path = Path(SafeDisk(str(self.index_dir))._inside(filename))
                data = path.read_bytes()
        elif isinstance(value, bytes | memoryview):
            data = bytes(value)
        elif value is not None:
            data = str(value).encode()
        folder = self.root / DAMAGED_DIR
        folder.mkdir(exist_ok=True)
        stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{re.sub(r'[^A-Za-z0-9._-]', '_', name)[:120]}"
        dest = folder / f"{stem}.rec"
        n = 1
        while dest.exists():
            n += 1
            dest = folder / f"{stem}-{n}.rec"
        dest.write_bytes(data)
        (folder / f"{dest.stem}.why").write_text(f"{name}: {why}\n")
        con("DELETE FROM Cache WHERE rowid = ?", (rowid,))
        if path is not None:
            path.unlink(missing_ok=True)
        log.warning("store record %s (%s) moved aside to %s", name, why, dest)
        return str(dest)

    def _move_damaged_rows(self) -> list[dict[str, str]]:
        """Move aside every index row that is pickled, points outside the index or fails its checksum."""
        con = self.cache._sql
        moved = []
        for rowid, key, raw, mode in con("SELECT rowid, key, raw, mode FROM Cache").fetchall():
            why = "stored pickled (refused, never read)" if not raw or mode == MODE_PICKLE else None
            if why is None:
                try:
                    val = self.cache.get(key)
                except Exception:  # noqa: BLE001
                    why = "cannot be read"
                else:  # ours are checksummed records, or checksums (str) of old checkpoint files
                    if not isinstance(val, dict | str):
                        why = "not a record"
                    elif isinstance(val, dict) and sha_hex(val["blob"]) != val["sha"]:
                        why = "fails its checksum"
            if why is not None:
                name = key_text(key)
                moved.append({"key": name, "why": why, "to": self._move_row_aside(rowid, name, why)})
        return moved

    # -- clear: what twophase wrote, and nothing else -----------------------------------------
    def _owned_storage(self, legacy: dict[str, str]) -> tuple[list[Entry], list[str]]:
        """Entries of the storage root that are verifiably twophase's and free to delete (no live writer or
        trainer holds them), and what is left alone and why."""
        scan = self.files.scan()
        left = list(scan.left_alone)
        busy = {e.trajectory for e in scan.of("lock") if is_locked(Path(self.files.path(e.trajectory, e.name)))}
        if isinstance(self.files, ObjectFiles):
            busy |= {e.trajectory for e in scan.entries
                     if e.trajectory and is_locked(self.files.lock_path(e.trajectory))}
        owned = []
        for e in scan.entries:
            if e.trajectory in busy:
                continue
            head = self.files.head(e)
            ours = has_header(head, e.what) if e.what != "lock" else e.size == 0
            if not ours and e.what == "checkpoint" and f"ckpt/{e.trajectory}/{iteration_of(e.name)}" in legacy:
                data = self.files.read(e.trajectory, e.name)
                ours = data is not None and sha_hex(data) == legacy[f"ckpt/{e.trajectory}/{iteration_of(e.name)}"]
            if ours:
                owned.append(e)
            else:
                left.append(f"{self.files.path(e.trajectory, e.name)}: not a {e.what} file twophase wrote")
        left += [f"{self.files.path(trajectory, '')}: in use by a running job, left for it"
                 for trajectory in sorted(busy)]
        locks_last = sorted(owned, key=lambda e: e.what == "lock")  # a folder's lock goes after its files
        return locks_last, left

    def _owned_here(self) -> list[Path]:
        """The store's own files under its root: the index (its database and record files), copies of a
        damaged index, moved-aside records and worker logs, each by its exact name and, where it has one,
        its header. The root's `.lock` and `.reserve` stay."""
        out: list[Path] = []
        for folder in (self.index_dir, *self._damaged_copies()):
            if not folder.is_dir() or folder.is_symlink():
                continue
            out += [p for p in (folder / n for n in INDEX_FILES) if _plain(p)]
            out += [p for p in sorted(folder.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*.val"))
                    if VAL_NAME.fullmatch(p.name) and _plain(p) and not p.parent.is_symlink()
                    and not p.parent.parent.is_symlink() and _starts_with(p, REC_MAGIC)]
        jobs = self.root / "jobs"
        if jobs.is_dir() and not jobs.is_symlink():
            out += [p for p in sorted(jobs.iterdir()) if LOG_NAME.fullmatch(p.name) and _plain(p)
                    and _starts_with(p, LOG_HEADER)]
        damaged = self.root / DAMAGED_DIR
        if damaged.is_dir() and not damaged.is_symlink():
            out += [p for p in sorted(damaged.iterdir()) if ASIDE_NAME.fullmatch(p.name) and _plain(p)]
        return out

    def clear(self, dry_run: bool = False) -> dict[str, Any]:
        """Remove every result, job record, log, checkpoint and kernel that twophase wrote, and nothing else:
        never the root, bucket or prefix itself, never a file it cannot tell is its own, never through a link;
        what is left alone is listed. Works on a damaged index and a full disk (it only deletes). A worker
        still running finds its index gone and fails loudly; a trajectory a live job holds is left to it.
        With `dry_run`, lists what would go and changes nothing."""
        report: dict[str, Any] = {"root": str(self.root), "storage": self.files.url, "dry_run": dry_run}
        with self._root_lock():
            legacy = inspect_index(self.db_path, self.index_dir)["legacy_shas"]
            refused = self.files.deletion_refused()
            entries, left = ([], [refused]) if refused else self._owned_storage(legacy)
            if self.root.is_symlink():
                here: list[Path] = []
                left.append(f"store {self.root} is a link; twophase never deletes through one: give its target "
                            f"({self.root.resolve()}) as --cache-dir to clear it there")
            else:
                here = self._owned_here()
            report["removed"] = {what: sum(e.what == what for e in entries)
                                 for what in ("checkpoint", "kernel", "temp", "lock", "probe")}
            report["removed"]["store files"] = len(here)
            report["bytes_removed"] = sum(e.size for e in entries) + sum(_size(p) for p in here)
            report["left_alone"] = left
            if dry_run:
                report["would_remove"] = ([str(self.files.path(e.trajectory, e.name)) for e in entries]
                                          + [str(p) for p in here])
                return report
            if self._cache is not None:
                with contextlib.suppress(Exception):
                    self._cache.close()
                self._cache = None
            for e in entries:
                self.files.remove(e)
            for p in here:  # the database first: no row is left pointing at a deleted file
                p.unlink(missing_ok=True)
            for folder in (self.index_dir, *self._damaged_copies(), self.root / "jobs", self.root / DAMAGED_DIR):
                _remove_empty_folders(folder)
            self.healed = self.problem = None
            with contextlib.suppress(StoreFull):  # a disk still full: the index is created on first use
                self._open()
        self._keep_reserve()
        report["free_bytes"] = self.free_bytes()
        return report

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()


@contextlib.contextmanager
def task_store(files: CheckpointFiles) -> Iterator[Store]:
    """A store for a task on any machine (Ray): the shared checkpoint files, and a throwaway index in a
    temp folder, since only the driver writes results into the real one (which may be on a disk this
    machine cannot see)."""
    if not isinstance(files, LocalFiles | ObjectFiles):  # a bare path would silently be another root
        raise TypeError(f"task_store takes the driver's Store.files, not {type(files).__name__}")
    scratch = tempfile.mkdtemp(prefix="twophase-task-")
    store = Store(scratch, storage=files)
    try:
        yield store
    finally:
        store.close()
        shutil.rmtree(scratch, ignore_errors=True)
