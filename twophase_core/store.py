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
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import diskcache
import numpy as np
from diskcache.core import MODE_PICKLE, MODE_RAW

from .index_salvage import inspect_index, mtime, salvage_rows, size_of, tree_bytes, unreferenced
from .locks import file_lock, is_locked
from .records import (
    SafeDisk,
    pack_arrays,
    sha_hex,
    unframe_record,
    unpack_arrays,
)
from .storage import (
    CKPT_MAGIC,
    KERNEL_MAGIC,
    CheckpointFiles,
    LocalFiles,
    ObjectFiles,
    StoreError,
    frame_checkpoint,
    free_bytes,
    open_storage,
    storage_from_env,
    verify_checkpoint,
)

ENV = "TWOPHASE_CACHE_DIR"
RESERVE_BYTES = 1 << 20
ORPHAN_AGE_S = 1.0  # an unlocked temp file older than this is left over from a killed writer
log = logging.getLogger("twophase.store")
T = TypeVar("T")
_CORRUPT = object()  # an entry that could not be read (pickled, malformed): dropped like a bad checksum


def default_root() -> Path:
    """Where results live unless told otherwise: the same folder whatever the working directory.

    $TWOPHASE_CACHE_DIR if set; else `cache/` of the source checkout the package runs from (an
    editable install: `make run`, the CLI, a notebook and the Docker image all share it); else
    (a plain install) the user's cache folder, $XDG_CACHE_HOME/twophase or ~/.cache/twophase.
    """
    env = os.environ.get(ENV)
    if env:
        return Path(env).expanduser().resolve()
    checkout = Path(__file__).resolve().parent.parent
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
        self.root.mkdir(parents=True, exist_ok=True)
        # checkpoint files: `root/runs`, or a storage root shared with workers on other machines
        if storage is None:
            self.files = storage_from_env(self.root / "runs")
        elif isinstance(storage, LocalFiles | ObjectFiles):
            self.files = storage
        else:
            self.files = open_storage(storage)
        self.index_dir = self.root / "index"
        self.db_path = self.index_dir / "cache.db"
        self.problem: str | None = None  # why the index could not be used (heal=False only)
        self._storage_checked = False
        self.healed: dict[str, Any] | None = None  # what opening repaired
        self._cache: diskcache.Cache | None = None
        self._ident: tuple[int, int] | None = None
        self._reopen_lock = threading.RLock()
        self.cleaned = {"files": 0, "bytes": 0}
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

    def get_blob(self, key: str) -> bytes | None:
        rec = self._healing(lambda: self._fetch(key))
        if rec is None:
            return None
        blob = rec.get("blob") if isinstance(rec, dict) else None
        if not (isinstance(blob, bytes) and sha_hex(blob) == rec.get("sha")):
            self.delete(key)  # pickled, malformed or failing its checksum: never returned
            return None
        return rec["blob"]

    def put_json(self, key: str, obj: Any) -> None:
        self.put_blob(key, json.dumps(obj).encode())

    def get_json(self, key: str) -> Any:
        b = self.get_blob(key)
        if b is None:
            return None
        try:
            return json.loads(b.decode())
        except ValueError:
            self.delete(key)
            return None

    def put_arrays(self, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.put_blob(key, pack_arrays(arrays, meta))

    def get_arrays(self, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        b = self.get_blob(key)
        if b is None:
            return None
        try:
            return unpack_arrays(b)
        except Exception:  # noqa: BLE001
            self.delete(key)
            return None

    def delete(self, key: str) -> None:
        self._healing(lambda: self.cache.delete(key))

    def keys(self, prefix: str = "") -> list[str]:
        return self._healing(lambda: [k for k in self.cache.iterkeys() if type(k) is str and k.startswith(prefix)])

    # -- checkpoint files -------------------------------------------------------------------
    def checkpoint_path(self, run: str, t: int) -> Path | str:
        """Where checkpoint t of `run` lives: a Path in a folder, a URL in an object store."""
        return self.files.path(run, t)

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

    def save_checkpoint(self, run: str, t: int, state: dict[str, Any]) -> None:
        """Atomic write of a self-verifying file; a full disk leaves no temp file and raises StoreFull."""
        self._write_file(run, t, frame_checkpoint(self.serialize(state)), f"writing checkpoint {t} of {run}")

    def _write_file(self, run: str, name: int | str, data: bytes, doing: str) -> None:
        try:
            self.files.write(run, name, data)
        except OSError as e:
            where = self._checkpoint_disk()
            if _is_full(e, where):
                self.release_reserve()
                raise StoreFull(where, doing) from e
            raise

    # -- kernels: one checkpoint's eNTK, beside its checkpoints -------------------------------
    def save_kernel(self, run: str, name: str, kernel: np.ndarray) -> None:
        """Write once, self-verifying, like a checkpoint (`storage.py`)."""
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(kernel), allow_pickle=False)
        self._write_file(run, f"kernels/{name}", frame_checkpoint(buf.getvalue(), KERNEL_MAGIC),
                         f"writing kernel {name} of {run}")

    def load_kernel(self, run: str, name: str) -> np.ndarray | None:
        """The kernel, or None if it is missing, unreadable or fails its checksum (then it is removed)."""
        try:
            data = self.files.read(run, f"kernels/{name}")
        except OSError:
            data = b""
        if data is None:
            return None
        payload = verify_checkpoint(data, KERNEL_MAGIC)
        try:
            if payload is not None:
                return np.load(io.BytesIO(payload), allow_pickle=False)
        except ValueError:
            pass
        self.files.delete(run, f"kernels/{name}")
        return None

    def load_checkpoint(self, run: str, t: int, map_location: Any = "cpu") -> dict[str, Any] | None:
        """The checkpoint, or None if it is missing, unreadable or fails its checksum (then it is removed).
        An object store that cannot be reached raises StoreError: its checkpoints are not damaged."""
        try:
            data = self.files.read(run, t)
        except OSError:
            self.drop_checkpoint(run, t)
            return None
        if data is None:
            return None
        payload = verify_checkpoint(data)
        if payload is None and not data.startswith(CKPT_MAGIC) and self._cache is not None:
            sha = self._legacy_sha(run, t)  # a file from before checkpoints carried their checksum
            payload = data if sha is not None and sha_hex(data) == sha else None
        if payload is None:
            self.drop_checkpoint(run, t)
            return None
        import torch

        try:
            return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
        except Exception:  # noqa: BLE001
            self.drop_checkpoint(run, t)
            return None

    def _legacy_sha(self, run: str, t: int) -> str | None:
        try:
            sha = self.cache.get(f"ckpt/{run}/{t}")
        except Exception:  # noqa: BLE001
            return None
        return sha if isinstance(sha, str) else None

    def drop_checkpoint(self, run: str, t: int) -> None:
        self.files.delete(run, t)
        if self._cache is not None:
            with contextlib.suppress(Exception):
                self.cache.delete(f"ckpt/{run}/{t}")

    def checkpoints(self, run: str) -> list[int]:
        """Iterations with a checkpoint file for `run` (checksums are verified on load)."""
        return self.files.iterations(run)

    def checkpoint_bytes(self, run: str) -> int | None:
        """Size of the latest checkpoint file of `run` (what one more costs: a run's checkpoints all hold
        the same tensors), None if it has none."""
        its = self.checkpoints(run)
        return self.files.size(run, its[-1]) if its else None

    def trajectory_lock(self, run: str,
                        wait: Callable[[], None] | None = None) -> contextlib.AbstractContextManager[None]:
        """Held while a process trains `run`: a second process needing it waits (calling `wait()`) and
        then reads the checkpoints the first one wrote. A dead holder's lock is gone with it. (On an
        object store, only among this machine's processes: `storage.py`.)"""
        return self.files.lock(run, wait)

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

    # -- housekeeping -----------------------------------------------------------------------
    def _temp_files(self) -> list[Path]:
        return self.files.temp_files()

    def _clean_orphans(self) -> dict[str, int]:
        """Remove temp files no live writer holds (left by kill -9 during a checkpoint write)."""
        n = size = 0
        now = time.time()
        for p in self._temp_files():
            try:
                st = p.stat()
                if now - st.st_mtime < ORPHAN_AGE_S or is_locked(p):
                    continue
                p.unlink()
            except OSError:
                continue
            n, size = n + 1, size + st.st_size
        return {"files": n, "bytes": size}

    def info(self) -> dict[str, Any]:
        """Counts and sizes; on a full disk or a damaged index (not opened) they are read read-only."""
        files = self.files.listing()
        temps = self._temp_files()
        try:
            results, volume = len(self.keys("result/")), self.cache.volume()
        except StoreError:
            results = inspect_index(self.db_path, self.index_dir)["results"]
            volume = tree_bytes(self.index_dir) if self.index_dir.is_dir() else 0
        return {
            "root": str(self.root),
            "storage": self.files.url,
            "results": results,
            "checkpoints": len(files),
            "bytes": volume + sum(size for _, _, size in files),
            "temp_files": len(temps),  # being written now (orphans are removed when a store opens)
            "orphan_temp_files_removed": self.cleaned["files"],
            "orphan_temp_bytes_removed": self.cleaned["bytes"],
            "damaged_index_copies": [str(p) for p in self._damaged_copies()],
            "healed": self.healed,
            "free_bytes": self.free_bytes(),
        }

    def _damaged_copies(self) -> list[Path]:
        return sorted(self.root.glob("index.damaged-*"))

    def check(self) -> dict[str, Any]:
        """Verify everything without changing anything; a JSON-ready report (`ok`, `problems`, counts).

        Works on any store: the index is read through a read-only connection (a damaged, missing or
        full-disk index is reported, not opened for writing), every checkpoint file is read and checked.
        """
        problems: list[str] = []
        index = inspect_index(self.db_path, self.index_dir)
        if index["problem"] is None:
            index["problem"] = self._index_problem() if self.db_path.exists() else None
        if index["problem"]:
            problems.append(f"index: {index['problem']}")
        if index["pickled"]:
            problems.append(f"index: {index['pickled']} pickled entries (refused, never read)")
        if index["bad_records"]:
            problems.append(f"index: {index['bad_records']} records fail their checksum")
        if index.get("unreferenced_files"):
            problems.append(f"index: {index['unreferenced_files']} entry files no record points to")
        ckpt = {"runs": 0, "files": 0, "verified": 0, "legacy": 0, "bad": []}
        legacy = index.pop("legacy_shas")
        listing = self.files.listing()
        ckpt["runs"] = len({run for run, _, _ in listing})
        for run, t, _ in listing:
            ckpt["files"] += 1
            try:
                data = self.files.read(run, t)
            except OSError:
                data = None
            if data is None:
                ckpt["bad"].append(str(self.files.path(run, t)))
            elif verify_checkpoint(data) is not None:
                ckpt["verified"] += 1
            elif not data.startswith(CKPT_MAGIC) and legacy.get(f"ckpt/{run}/{t}") == sha_hex(data):
                ckpt["legacy"] += 1
            else:
                ckpt["bad"].append(str(self.files.path(run, t)))
        if ckpt["bad"]:
            problems.append(f"checkpoints: {len(ckpt['bad'])} fail their checksum or cannot be read")
        n_kernels = len(self.files.kernel_listing())
        bad_kernels = [str(self.files.path(run, name)) for run, name in self._bad_kernels()]
        kernels = {"files": n_kernels, "verified": n_kernels - len(bad_kernels), "bad": bad_kernels}
        if kernels["bad"]:
            problems.append(f"kernels: {len(kernels['bad'])} fail their checksum or cannot be read")
        now = time.time()
        temps = self._temp_files()
        orphans = [p for p in temps if now - mtime(p) >= ORPHAN_AGE_S and not is_locked(p)]
        if orphans:
            problems.append(f"{len(orphans)} orphan temp files")
        copies = self._damaged_copies()
        return {"root": str(self.root), "storage": self.files.url, "ok": not problems, "problems": problems,
                "index": index,
                "checkpoints": ckpt, "kernels": kernels,
                "temp_files": {"in_use": len(temps) - len(orphans), "orphans": len(orphans),
                               "orphan_bytes": sum(size_of(p) for p in orphans)},
                "damaged_index_copies": [str(p) for p in copies], "free_bytes": self.free_bytes()}

    def repair(self) -> dict[str, Any]:
        """Fix what `check` finds; a JSON-ready report of what was done and the check after it.

        A damaged or missing index is moved aside and rebuilt (never emptied in place); pickled and
        failing entries are deleted; checkpoints that fail their checksum are removed (recomputed on
        demand); orphan temp files are removed. Works on a full disk as far as deleting goes.
        """
        done: dict[str, Any] = {"root": str(self.root)}
        with self._root_lock():
            self.release_reserve()  # room to work on a full disk; recreated at the end
            done["orphan_temp_files_removed"] = self._clean_orphans()["files"]
            problem = self._index_problem()
            if problem is not None:
                done["rebuilt_index"] = self.healed = self._rebuild(problem)
            elif self._cache is None or self._db_ident() != self._ident:
                self._open()
            done["index_entries_removed"] = self._purge_index()
            referenced = {f for (f,) in self.cache._sql("SELECT filename FROM Cache WHERE filename IS NOT NULL")}
            stray = unreferenced(self.index_dir, referenced)
            for p in stray:
                p.unlink(missing_ok=True)
            done["unreferenced_files_removed"] = len(stray)
            removed = []
            for run, t, _ in self.files.listing():
                try:
                    data = self.files.read(run, t) or b""
                except OSError:
                    data = b""
                ok = verify_checkpoint(data) is not None or (
                    not data.startswith(CKPT_MAGIC) and self._legacy_sha(run, t) == sha_hex(data))
                if not ok:
                    self.drop_checkpoint(run, t)
                    removed.append(str(self.files.path(run, t)))
            done["checkpoints_removed"] = removed
            bad_kernels = self._bad_kernels()
            for run, name in bad_kernels:
                self.files.delete(run, name)
            done["kernels_removed"] = [str(self.files.path(run, name)) for run, name in bad_kernels]
        self._keep_reserve()
        done["after"] = self.check()
        return done

    def _bad_kernels(self) -> list[tuple[str, str]]:
        """(run, name) of every kernel file that fails its checksum or cannot be read."""
        bad = []
        for run, name, _ in self.files.kernel_listing():
            try:
                data = self.files.read(run, name)
            except OSError:
                data = None
            if data is None or verify_checkpoint(data, KERNEL_MAGIC) is None:
                bad.append((run, name))
        return bad

    def _purge_index(self) -> int:
        """Delete index rows that are pickled, point outside the index or fail their checksum."""
        con = self.cache._sql  # diskcache's connection for this thread
        n = 0
        for rowid, key, raw, mode in con("SELECT rowid, key, raw, mode FROM Cache").fetchall():
            bad = not raw or mode == MODE_PICKLE
            if not bad:
                try:
                    val = self.cache.get(key)
                except Exception:  # noqa: BLE001
                    bad = True
                else:  # ours are checksummed records, or checksums (str) of old checkpoint files
                    bad = not isinstance(val, dict | str) or (
                        isinstance(val, dict) and sha_hex(val["blob"]) != val["sha"])
            if bad:
                if raw:
                    self.cache.delete(key)
                con("DELETE FROM Cache WHERE rowid = ?", (rowid,))
                n += 1
        return n

    def clear(self) -> dict[str, Any]:
        """Remove every result, job record, log and checkpoint; works on a damaged index and a full
        disk (it deletes files, it never needs to write into the old index). A worker still running
        finds its index gone and fails loudly."""
        before = tree_bytes(self.root)
        with self._root_lock():
            if self._cache is not None:
                with contextlib.suppress(Exception):
                    self._cache.close()
                self._cache = None
            self.files.clear()
            for p in (self.index_dir, self.root / "jobs", *self._damaged_copies()):
                name = p.name
                if p.exists():  # renamed beside itself: a storage root may be another filesystem
                    gone = p.parent / f".clearing-{name}-{os.getpid()}-{time.monotonic_ns()}"
                    os.rename(p, gone)  # the old tree vanishes at once, then is deleted
                    shutil.rmtree(gone, ignore_errors=True)
            for p in self.root.glob(".clearing-*"):  # left by an earlier clear that was killed
                shutil.rmtree(p, ignore_errors=True)
            self.healed = self.problem = None
            with contextlib.suppress(StoreFull):  # a disk still full: the index is created on first use
                self._open()
        self._keep_reserve()
        return {"root": str(self.root), "bytes_removed": max(before - tree_bytes(self.root), 0),
                "free_bytes": self.free_bytes(), "storage": self.files.url}

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
