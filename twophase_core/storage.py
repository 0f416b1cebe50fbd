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
there and returns its name; the next cone run on those checkpoints reads it). Nothing here imports torch or fsspec
at module level.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from .locks import file_lock

ENV_ROOT = "TWOPHASE_STORAGE_ROOT"
ENV_OPTIONS = "TWOPHASE_STORAGE_OPTIONS"
CKPT_MAGIC = b"TPCKPT1\n"  # then the 32-byte sha256 of the payload, then torch.save bytes
KERNEL_MAGIC = b"TPKERN1\n"  # then the sha256, then np.save bytes of one checkpoint's eNTK


class StoreError(RuntimeError):
    """The store cannot do what was asked; the message says why and what to do."""


def frame_checkpoint(payload: bytes, magic: bytes = CKPT_MAGIC) -> bytes:
    return magic + hashlib.sha256(payload).digest() + payload


def verify_checkpoint(data: bytes, magic: bytes = CKPT_MAGIC) -> bytes | None:
    """The payload of a framed file (a checkpoint's torch bytes) if its checksum holds, else None."""
    n = len(magic)
    if not data.startswith(magic) or len(data) < n + 32:
        return None
    payload = data[n + 32:]
    return payload if hashlib.sha256(payload).digest() == data[n:n + 32] else None


def free_bytes(path: str | Path) -> int:
    """Free bytes on the disk holding `path` (or its nearest existing parent); 0 if it cannot be read."""
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
    base = name.rsplit("/", 1)[-1]
    if not (base.startswith("t") and base.endswith(".pt")):
        return None
    try:
        return int(base[1:-3])
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------
# A folder


class LocalFiles:
    """Checkpoints in a folder (local, or shared by every worker at the same path)."""

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def __repr__(self) -> str:
        return f"LocalFiles({str(self.root)!r})"

    def probe(self) -> None:
        """Nothing to check before use: the folder is made on the first write."""

    def path(self, run: str, t: int | str) -> Path:
        """Checkpoint t of `run`, or (t a name) a file of `run` beside its checkpoints (`kernels/...`)."""
        return self.root / run / (file_name(t) if isinstance(t, int) else t)

    def read(self, run: str, t: int | str) -> bytes | None:
        """The file's bytes; None if there is none; OSError if it cannot be read."""
        try:
            return self.path(run, t).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, run: str, t: int | str, data: bytes) -> None:
        """Temp file (flocked, so no one takes it for an orphan), fsync, rename: all or nothing."""
        path = self.path(run, t)
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

    def delete(self, run: str, t: int | str) -> None:
        with contextlib.suppress(OSError):
            self.path(run, t).unlink(missing_ok=True)

    def iterations(self, run: str) -> list[int]:
        d = self.root / run
        its = (iteration_of(f.name) for f in d.glob("t*.pt")) if d.is_dir() else ()
        return sorted(t for t in its if t is not None)

    def listing(self) -> list[tuple[str, int, int]]:
        """(run, iteration, bytes) of every checkpoint file."""
        out = []
        for d in sorted(p for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else ():
            for f in sorted(d.glob("t*.pt")):
                t = iteration_of(f.name)
                if t is not None:
                    with contextlib.suppress(OSError):
                        out.append((d.name, t, f.stat().st_size))
        return out

    def kernel_listing(self) -> list[tuple[str, str, int]]:
        """(run, kernels/<name>, bytes) of every kernel file."""
        out = []
        for f in sorted(self.root.glob("*/kernels/*.npy")) if self.root.is_dir() else ():
            with contextlib.suppress(OSError):
                out.append((f.parent.parent.name, f"kernels/{f.name}", f.stat().st_size))
        return out

    def size(self, run: str, t: int | str) -> int | None:
        try:
            return self.path(run, t).stat().st_size
        except OSError:
            return None

    def lock(self, run: str, wait: Callable[[], None] | None = None) -> contextlib.AbstractContextManager[None]:
        return file_lock(self.root / run / ".lock", wait if wait is not None else (lambda: None))

    def temp_files(self) -> list[Path]:
        """Temp files of writers, live or killed (the store removes the unlocked ones)."""
        return list(self.root.rglob("tmp*.tmp")) if self.root.is_dir() else []

    def free_bytes(self) -> int | None:
        return free_bytes(self.root)

    def clear(self) -> None:
        """Remove every checkpoint: the folder is renamed beside itself first, so it vanishes at once."""
        if self.root.exists():
            gone = self.root.parent / f".clearing-{self.root.name}-{os.getpid()}-{time.monotonic_ns()}"
            os.rename(self.root, gone)
            shutil.rmtree(gone, ignore_errors=True)
        for p in self.root.parent.glob(f".clearing-{self.root.name}-*"):  # left by a clear that was killed
            shutil.rmtree(p, ignore_errors=True)


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
                raise StoreError(f"{ENV_ROOT}={self.url[:80]!r}: {e} (for s3://: pip install 'twophase[s3]')") from None
            except (ValueError, TypeError) as e:  # an unknown scheme, or options the filesystem does not take
                raise StoreError(f"{ENV_ROOT}={self.url[:80]!r}: {e}; use a path, a file:// URL or an fsspec URL "
                                 f"such as s3://bucket/prefix (options as JSON in {ENV_OPTIONS})") from None
            self._root = self._root.rstrip("/")
        return self._fs

    def _key(self, run: str, t: int | str | None = None) -> str:
        self.fs  # noqa: B018 - resolves the root
        if t is None:
            return f"{self._root}/{run}"
        return f"{self._root}/{run}/{file_name(t) if isinstance(t, int) else t}"

    def _fail(self, doing: str, e: Exception) -> StoreError:
        return StoreError(f"storage root {self.url[:80]} could not be used ({doing}): {type(e).__name__}: "
                          f"{str(e)[:200]}; check the URL, its credentials and {ENV_OPTIONS}")

    def probe(self) -> None:
        """Write and delete a small object, so a wrong bucket, endpoint or credential is named before
        any training rather than at the first checkpoint."""
        key = f"{self._key('.probe')}-{os.getpid()}-{time.monotonic_ns()}"
        try:
            self.fs.pipe_file(key, b"")
            self.fs.rm_file(key)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - botocore, aiohttp, ... each has its own
            raise self._fail("writing a test object", e) from None

    def path(self, run: str, t: int | str) -> str:
        return f"{self.url}/{run}/{file_name(t) if isinstance(t, int) else t}"

    def read(self, run: str, t: int | str) -> bytes | None:
        """The object's bytes; None if there is none. Any other failure (network, permissions) raises
        StoreError: a checkpoint that could not be fetched is not a damaged one, and is never dropped."""
        try:
            return self.fs.cat_file(self._key(run, t))
        except FileNotFoundError:
            return None
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001
            raise self._fail(f"reading checkpoint {t} of {run}", e) from None

    def write(self, run: str, t: int | str, data: bytes) -> None:
        """One put of the whole file: readers see all of it or nothing."""
        try:
            self.fs.pipe_file(self._key(run, t), data)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001
            raise self._fail(f"writing checkpoint {t} of {run}", e) from None

    def delete(self, run: str, t: int | str) -> None:
        try:
            self.fs.rm_file(self._key(run, t))
        except FileNotFoundError:
            pass
        except Exception as e:  # noqa: BLE001
            raise self._fail(f"deleting checkpoint {t} of {run}", e) from None

    def _find(self, path: str) -> dict[str, dict[str, Any]]:
        self.fs.invalidate_cache(path)  # other machines write here: never a cached listing
        try:
            return self.fs.find(path, detail=True)
        except FileNotFoundError:
            return {}
        except Exception as e:  # noqa: BLE001
            raise self._fail(f"listing {path}", e) from None

    def iterations(self, run: str) -> list[int]:
        prefix = self._key(run)
        its = (iteration_of(k) for k in self._find(prefix) if k.rsplit("/", 1)[0] == prefix)
        return sorted(t for t in its if t is not None)

    def listing(self) -> list[tuple[str, int, int]]:
        out = []
        for k, info in sorted(self._find(self._root).items()):
            parts = k[len(self._root):].strip("/").split("/")
            t = iteration_of(parts[-1]) if len(parts) == 2 else None
            if t is not None:
                out.append((parts[0], t, int(info.get("size") or 0)))
        return out

    def kernel_listing(self) -> list[tuple[str, str, int]]:
        out = []
        for k, info in sorted(self._find(self._root).items()):
            parts = k[len(self._root):].strip("/").split("/")
            if len(parts) == 3 and parts[1] == "kernels" and parts[2].endswith(".npy"):
                out.append((parts[0], f"kernels/{parts[2]}", int(info.get("size") or 0)))
        return out

    def size(self, run: str, t: int | str) -> int | None:
        try:
            return int(self.fs.info(self._key(run, t)).get("size") or 0)
        except Exception:  # noqa: BLE001
            return None

    def lock(self, run: str, wait: Callable[[], None] | None = None) -> contextlib.AbstractContextManager[None]:
        """A flock on this machine (object stores have none): serialises this machine's processes."""
        here = Path(tempfile.gettempdir()) / "twophase-locks" / hashlib.sha256(self.url.encode()).hexdigest()[:16]
        return file_lock(here / f"{run}.lock", wait if wait is not None else (lambda: None))

    def temp_files(self) -> list[Path]:
        return []  # a put leaves nothing behind

    def free_bytes(self) -> int | None:
        return None  # not a disk of ours

    def clear(self) -> None:
        try:
            self.fs.rm(self._root, recursive=True)
        except FileNotFoundError:
            pass
        except Exception as e:  # noqa: BLE001
            raise self._fail("clearing it", e) from None


CheckpointFiles = LocalFiles | ObjectFiles


def open_storage(url: str | Path, options: dict[str, Any] | None = None) -> CheckpointFiles:
    """The checkpoint files at `url`: a path or file:// URL is a folder, any other scheme goes to fsspec."""
    if isinstance(url, Path):
        return LocalFiles(url)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(f"{ENV_ROOT}={url[:80]!r}: a file URL names no host (file:///shared/path)")
        return LocalFiles(unquote(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a path (or a Windows drive letter)
        return LocalFiles(url)
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
            raise StoreError(f"{ENV_OPTIONS}={raw[:60]!r} is not JSON ({e}); give an object such as "
                             '{"endpoint_url": "http://minio:9000"}') from None
        if not isinstance(options, dict):
            raise StoreError(f"{ENV_OPTIONS}={raw[:60]!r}: give a JSON object of filesystem options")
    if not url:
        return LocalFiles(default)
    return open_storage(url, options)
