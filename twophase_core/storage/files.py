"""Where checkpoint files live: a folder, or any filesystem fsspec reaches (s3://, gs://, ...).

The storage root is a URL, from $TWOPHASE_STORAGE_ROOT (default: the store's own `runs/` folder):
- a plain path or a file:// URL is a folder, on this machine or on a filesystem every worker mounts
  at the same path (NFS, Lustre, ...). A checkpoint is written to a temp file, fsynced and renamed;
  a trajectory's lock is a flock beside its files, so it holds across machines sharing the folder.
- any other scheme is an fsspec filesystem: s3:// through s3fs (`pip install 'twophase[s3]'`),
  gs:// through gcsfs, memory:// for tests. A checkpoint is one put of the whole file, which an
  object store shows whole or not at all; listings are always read fresh, never from fsspec's cache,
  since other machines write too. Options for the filesystem (endpoint_url, profile, ...) come as a
  JSON object in $TWOPHASE_STORAGE_OPTIONS; credentials are best left to each machine's environment
  (instance roles, ~/.aws, AWS_* variables). Object stores have no locks: a trajectory's lock is a
  flock on this machine, and the Ray executor trains a base run that several tasks share in one task
  of its own before those tasks start (ray_exec), so nothing relies on a lock across machines.

Either way a checkpoint is written once and carries its own sha256 (`frame_checkpoint`), so any
reader verifies it without an index, and a damaged or partial one is dropped and retrained, never
used. Layout: `<root>/<trajectory key>/t<iteration:09d>.pt`, and the eNTK of a checkpoint, framed
the same way, under `<root>/<trajectory key>/kernels/` (a cone task on another machine writes it
there and returns its name; the next cone run on those checkpoints reads it).

The root may be a folder the user also keeps other things in, so twophase touches only what it can
tell is its own: entries of its exact naming (a 20-hex-digit trajectory folder holding `t<9 digits>.pt`,
`kernels/t<9 digits>-....npy`, `tmp*.tmp` and `.lock`) whose first bytes are its header (`entries`,
`owned`). Everything else is left alone and never deleted, renamed or written over, and in a folder
nothing is read, written or deleted through a link. Nothing here imports torch or fsspec at module level.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from twophase_core.storage.errors import StorageSettingError, StoreError
from twophase_core.storage.locks import file_lock

__all__ = ["StoreError", "StorageSettingError"]  # re-exported: callers of storage know one module

ENV_ROOT = "TWOPHASE_STORAGE_ROOT"
ENV_OPTIONS = "TWOPHASE_STORAGE_OPTIONS"
CKPT_MAGIC = b"TPCKPT1\n"  # then the 32-byte sha256 of the payload, then torch.save bytes
KERNEL_MAGIC = b"TPKERN1\n"  # then the sha256, then np.save bytes of one checkpoint's eNTK
MAGIC_LEN = len(CKPT_MAGIC)

# twophase's own naming (ASCII only); anything else under a root is not its own and is left alone
RUN_NAME = re.compile(r"[0-9a-f]{20}")  # config.digest of a trajectory
CKPT_NAME = re.compile(r"t([0-9]{9})\.pt")
KERNEL_NAME = re.compile(r"t[0-9]{9}-[A-Za-z0-9_.-]{1,200}\.npy")  # experiments.kernel_name
TEMP_NAME = re.compile(r"tmp[A-Za-z0-9_]{1,64}\.tmp")  # tempfile.mkstemp(suffix=".tmp")
PROBE_NAME = re.compile(r"\.probe-[0-9]+-[0-9]+")  # ObjectFiles.probe, left by a killed probe
LOCK_NAME = ".lock"


def frame_checkpoint(payload: bytes, magic: bytes = CKPT_MAGIC) -> bytes:
    return magic + hashlib.sha256(payload).digest() + payload


def verify_checkpoint(data: bytes, magic: bytes = CKPT_MAGIC) -> bytes | None:
    """The payload of a framed file (a checkpoint's torch bytes) if its checksum holds, else None."""
    n = len(magic)
    if not data.startswith(magic) or len(data) < n + 32:
        return None
    payload = data[n + 32:]
    return payload if hashlib.sha256(payload).digest() == data[n:n + 32] else None


def has_header(head: bytes, what: str) -> bool:
    """Whether a file's first bytes are twophase's: its header (checkpoint or kernel), or, for a temp
    file a writer was killed in, a beginning of one (possibly empty)."""
    if what == "checkpoint":
        return head.startswith(CKPT_MAGIC)
    if what == "kernel":
        return head.startswith(KERNEL_MAGIC)
    if what == "temp":
        return CKPT_MAGIC.startswith(head[:MAGIC_LEN]) or KERNEL_MAGIC.startswith(head[:MAGIC_LEN])
    return what in ("lock", "probe") and head == b""


def free_bytes(path: str | Path) -> int:
    """Free bytes on the disk holding `path` (or its nearest existing parent); 0 if it cannot be read."""
    import shutil

    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return 0


def file_name(t: int) -> str:
    return f"t{t:09d}.pt"


def iteration_of(name: str) -> int | None:
    """The iteration of a checkpoint file name (`t000000030.pt` -> 30), None for anything else."""
    m = CKPT_NAME.fullmatch(name.rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Entry:
    """One file under a storage root, named as twophase names its own (`what`: checkpoint, kernel,
    temp, lock or probe). Its name alone does not make it twophase's: `owned` also reads its header."""

    trajectory: str  # trajectory key; "" for a file at the root (a probe)
    name: str  # t000000030.pt, kernels/<name>.npy, tmpXXXX.tmp, kernels/tmpXXXX.tmp, .lock, .probe-...
    what: str
    size: int
    mtime: float = 0.0


@dataclass
class Scan:
    """What a storage root holds: entries of twophase's naming, and what was left alone and why."""

    entries: list[Entry]
    left_alone: list[str]  # notable things that are not twophase's (links, odd files in its folders)

    def of(self, what: str) -> list[Entry]:
        return [e for e in self.entries if e.what == what]


def _classify(name: str) -> str | None:
    """What a file inside a trajectory folder is by its name (`kernels/...` included), else None."""
    if name == LOCK_NAME:
        return "lock"
    sub, _, base = name.rpartition("/")
    if sub not in ("", "kernels"):
        return None
    if sub == "" and CKPT_NAME.fullmatch(base):
        return "checkpoint"
    if sub == "kernels" and KERNEL_NAME.fullmatch(base):
        return "kernel"
    return "temp" if TEMP_NAME.fullmatch(base) else None


def _check_run(trajectory: str) -> None:
    if not RUN_NAME.fullmatch(trajectory):
        raise ValueError(f"not a trajectory key: {trajectory!r}")


# ---------------------------------------------------------------------------------------------
# A folder


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
        _check_run(trajectory)
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
        left alone, never entered)."""
        entries: list[Entry] = []
        left: list[str] = []
        if not self.root.is_dir():
            return Scan(entries, left)
        for d in sorted(self.root.iterdir()):
            if not RUN_NAME.fullmatch(d.name):
                continue  # not a trajectory folder: someone else's, not even listed
            if d.is_symlink():
                left.append(f"{d}: a link, not a folder twophase made")
                continue
            if not d.is_dir():
                continue
            for f, name in self._walk(d, left):
                what = _classify(name)
                st = os.lstat(f)
                if what is None or not stat.S_ISREG(st.st_mode):
                    left.append(f"{f}: {'not a plain file' if what else 'not named as twophase names its files'}")
                    continue
                entries.append(Entry(d.name, name, what, st.st_size, st.st_mtime))
        return Scan(entries, left)

    @staticmethod
    def _walk(d: Path, left: list[str]) -> Iterator[tuple[Path, str]]:
        """(path, name relative to the trajectory folder) of its files and of its real `kernels/` folder's."""
        for f in sorted(d.iterdir()):
            if f.name == "kernels" and f.is_dir() and not f.is_symlink():
                for g in sorted(f.iterdir()):
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


# ---------------------------------------------------------------------------------------------
# An fsspec filesystem (object stores)


class ObjectFiles:
    """Checkpoints as objects under an fsspec URL (`s3://bucket/prefix`, `gs://...`, `memory://...`).

    Pickles as its URL and options (a Ray task opens its own connection); the filesystem is made on
    first use, so opening a store never touches the network.
    """

    def __init__(self, url: str, options: dict[str, Any] | None = None):
        self.url = url.rstrip("/")
        self.options = dict(options or {})
        self._fs: Any = None
        self._root = ""

    def __repr__(self) -> str:
        return f"ObjectFiles({self.url!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["options"])  # type: ignore[misc]

    @property
    def fs(self) -> Any:
        if self._fs is None:
            try:
                from fsspec.core import url_to_fs

                self._fs, self._root = url_to_fs(self.url, **self.options)
            except ImportError as e:  # fsspec knows the scheme, its package is missing
                raise StorageSettingError(ENV_ROOT, self.url, f"{e} (for s3://: pip install 'twophase[s3]')") from None
            except (ValueError, TypeError) as e:  # an unknown scheme, or options the filesystem does not take
                raise StorageSettingError(ENV_ROOT, self.url, f"{e}; use a path, a file:// URL or an fsspec URL "
                                          f"such as s3://bucket/prefix (options as JSON in {ENV_OPTIONS})") from None
            self._root = self._root.rstrip("/")
        return self._fs

    @property
    def root(self) -> str:
        """The root as the filesystem names it (`bucket/prefix`): resolved with the filesystem."""
        self.fs  # noqa: B018 - sets _root
        return self._root

    def _key(self, trajectory: str, t: int | str | None = None) -> str:
        if t is None:
            return f"{self.root}/{trajectory}"
        return f"{self.root}/{trajectory}/{file_name(t) if isinstance(t, int) else t}"

    def _fail(self, doing: str, e: Exception) -> StoreError:
        if isinstance(e, TypeError):  # an option the filesystem's client does not take (made lazily, on first use)
            return StorageSettingError(ENV_OPTIONS, json.dumps(self.options)[:300], f"{e}; give only options "
                                       f"the filesystem of {self.url.split(':', 1)[0]}:// takes")
        return StoreError(f"storage root {self.url[:80]} could not be used ({doing}): {type(e).__name__}: "
                          f"{str(e)[:200]}; check the URL, its credentials and {ENV_OPTIONS}")

    def probe(self) -> None:
        """Write and delete a small object, so a wrong bucket, endpoint or credential is named before
        any training rather than at the first checkpoint."""
        key = f"{self.root}/.probe-{os.getpid()}-{time.monotonic_ns()}"
        try:
            self.fs.pipe_file(key, b"")
            self.fs.rm_file(key)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - botocore, aiohttp, ... each has its own
            raise self._fail("writing a test object", e) from None

    def path(self, trajectory: str, t: int | str) -> str:
        return f"{self.url}/{trajectory}/{file_name(t) if isinstance(t, int) else t}"

    def read(self, trajectory: str, t: int | str) -> bytes | None:
        """The object's bytes; None if there is none. Any other failure (network, permissions) raises
        StoreError: a checkpoint that could not be fetched is not a damaged one, and is never dropped."""
        _check_run(trajectory)
        try:
            return self.fs.cat_file(self._key(trajectory, t))
        except FileNotFoundError:
            return None
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001
            raise self._fail(f"reading checkpoint {t} of {trajectory}", e) from None

    def write(self, trajectory: str, t: int | str, data: bytes) -> None:
        """One put of the whole file: readers see all of it or nothing."""
        _check_run(trajectory)
        try:
            self.fs.pipe_file(self._key(trajectory, t), data)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001
            raise self._fail(f"writing checkpoint {t} of {trajectory}", e) from None

    def delete(self, trajectory: str, t: int | str) -> None:
        _check_run(trajectory)
        self._rm(self._key(trajectory, t), f"deleting checkpoint {t} of {trajectory}")

    def _rm(self, key: str, doing: str) -> None:
        try:
            self.fs.rm_file(key)
        except FileNotFoundError:
            pass
        except Exception as e:  # noqa: BLE001
            raise self._fail(doing, e) from None

    def _find(self, path: str) -> dict[str, dict[str, Any]]:
        self.fs.invalidate_cache(path)  # other machines write here: never a cached listing
        try:
            return self.fs.find(path, detail=True)
        except FileNotFoundError:
            return {}
        except Exception as e:  # noqa: BLE001
            raise self._fail(f"listing {path}", e) from None

    def iterations(self, trajectory: str) -> list[int]:
        _check_run(trajectory)
        prefix = self._key(trajectory)
        its = (iteration_of(k) for k in self._find(prefix) if k.rsplit("/", 1)[0] == prefix)
        return sorted(t for t in its if t is not None)

    def size(self, trajectory: str, t: int | str) -> int | None:
        try:
            return int(self.fs.info(self._key(trajectory, t)).get("size") or 0)
        except Exception:  # noqa: BLE001
            return None

    def head(self, e: Entry) -> bytes:
        key = f"{self.root}/{e.name}" if not e.trajectory else self._key(e.trajectory, e.name)
        try:
            return self.fs.cat_file(key, start=0, end=MAGIC_LEN) if e.size else b""
        except FileNotFoundError:
            return b""
        except Exception as ex:  # noqa: BLE001
            raise self._fail(f"reading {key}", ex) from None

    def scan(self) -> Scan:
        """Every object of twophase's naming under the root (anything else in the bucket is not listed)."""
        entries: list[Entry] = []
        root = self.root
        for k, info in sorted(self._find(root).items()):
            rel = k[len(root):].strip("/") if k.startswith(root) else ""
            trajectory, _, name = rel.partition("/")
            what = "probe" if not name and PROBE_NAME.fullmatch(trajectory) else (
                _classify(name) if RUN_NAME.fullmatch(trajectory) and name else None)
            if what in (None, "lock", "temp"):  # an object store holds neither locks nor temp files of ours
                continue
            entries.append(Entry("" if what == "probe" else trajectory, trajectory if what == "probe" else name, what,
                                 int(info.get("size") or 0)))
        return Scan(entries, [])

    def remove(self, e: Entry) -> None:
        key = f"{self.root}/{e.name}" if not e.trajectory else self._key(e.trajectory, e.name)
        self._rm(key, f"deleting {key}")

    def deletion_refused(self) -> str | None:
        return None

    def lock(self, trajectory: str, wait: Callable[[], None] | None = None) -> contextlib.AbstractContextManager[None]:
        """A flock on this machine (object stores have none): serialises this machine's processes."""
        _check_run(trajectory)
        return file_lock(self.lock_path(trajectory), wait if wait is not None else (lambda: None))

    def lock_path(self, trajectory: str) -> Path:
        here = Path(tempfile.gettempdir()) / "twophase-locks" / hashlib.sha256(self.url.encode()).hexdigest()[:16]
        return here / f"{trajectory}.lock"

    def free_bytes(self) -> int | None:
        return None  # not a disk of ours


CheckpointFiles = LocalFiles | ObjectFiles


def open_storage(url: str | Path, options: dict[str, Any] | None = None, setting: str = ENV_ROOT) -> CheckpointFiles:
    """The checkpoint files at `url`: a path or file:// URL is a folder, any other scheme goes to fsspec."""
    if isinstance(url, Path):
        return LocalFiles(url, setting)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageSettingError(setting, url, "a file URL names no host: write file:///shared/path")
        return LocalFiles(unquote(parsed.path), setting)
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a path (or a Windows drive letter)
        return LocalFiles(url, setting)
    return ObjectFiles(url, options)


def storage_from_env(default: Path) -> CheckpointFiles:
    """$TWOPHASE_STORAGE_ROOT (with $TWOPHASE_STORAGE_OPTIONS), or `default` when it is unset."""
    url = os.environ.get(ENV_ROOT, "").strip()
    raw = os.environ.get(ENV_OPTIONS, "").strip()
    options: dict[str, Any] = {}
    if raw:
        try:
            options = json.loads(raw)
        except ValueError as e:
            raise StorageSettingError(ENV_OPTIONS, raw, f"is not JSON ({e}); give an object such as "
                                      '{"endpoint_url": "http://minio:9000"}') from None
        if not isinstance(options, dict):
            raise StorageSettingError(ENV_OPTIONS, raw, "give a JSON object of filesystem options, "
                                      'such as {"endpoint_url": "http://minio:9000"}')
    if not url:
        return LocalFiles(default, "checkpoint folder")
    return open_storage(url, options)
