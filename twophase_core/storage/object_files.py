"""Checkpoint files as objects under any fsspec URL: s3:// through s3fs (`pip install 'twophase[s3]'`),
gs:// through gcsfs, memory:// for tests.

A checkpoint is one put of the whole file, which an object store shows whole or not at all; listings
are always read fresh, never from fsspec's cache, since other machines write too. Options for the
filesystem (endpoint_url, profile, ...) come as a JSON object in $TWOPHASE_STORAGE_OPTIONS; credentials
are best left to each machine's environment (instance roles, ~/.aws, AWS_* variables). Object stores
have no locks: a trajectory's lock is a flock on this machine, and the Ray executor trains a base run
that several tasks share in one task of its own before those tasks start, so nothing relies on a lock
across machines. Its own module because the network's failures and fsspec's ways are its own; a folder
answers the same calls (`local_files.py`). Nothing imports fsspec at module level.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from twophase_core.storage.errors import StorageSettingError, StoreError
from twophase_core.storage.layout import (
    ENV_OPTIONS,
    ENV_ROOT,
    MAGIC_LEN,
    PROBE_NAME,
    RUN_NAME,
    Entry,
    Scan,
    check_trajectory,
    classify,
    file_name,
    iteration_of,
)
from twophase_core.storage.locks import file_lock

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem


class _State(TypedDict):
    """What an ObjectFiles pickles as."""

    url: str
    options: dict[str, object]


class ObjectFiles:
    """Checkpoints as objects under an fsspec URL (`s3://bucket/prefix`, `gs://...`, `memory://...`).

    Pickles as its URL and options (a Ray task opens its own connection); the filesystem is made on
    first use, so opening a store never touches the network.
    """

    def __init__(self, url: str, options: Mapping[str, object] | None = None):
        self.url = url.rstrip("/")
        self.options = dict(options or {})
        self._fs: AbstractFileSystem | None = None
        self._root = ""

    def __repr__(self) -> str:
        return f"ObjectFiles({self.url!r})"

    def __getstate__(self) -> _State:
        return {"url": self.url, "options": self.options}

    def __setstate__(self, state: _State) -> None:
        ObjectFiles.__init__(self, state["url"], state["options"])

    @property
    def fs(self) -> AbstractFileSystem:
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
        check_trajectory(trajectory)
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
        check_trajectory(trajectory)
        try:
            self.fs.pipe_file(self._key(trajectory, t), data)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001
            raise self._fail(f"writing checkpoint {t} of {trajectory}", e) from None

    def delete(self, trajectory: str, t: int | str) -> None:
        check_trajectory(trajectory)
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
        check_trajectory(trajectory)
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
                classify(name) if RUN_NAME.fullmatch(trajectory) and name else None)
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
        check_trajectory(trajectory)
        return file_lock(self.lock_path(trajectory), wait if wait is not None else (lambda: None))

    def lock_path(self, trajectory: str) -> Path:
        here = Path(tempfile.gettempdir()) / "twophase-locks" / hashlib.sha256(self.url.encode()).hexdigest()[:16]
        return here / f"{trajectory}.lock"

    def free_bytes(self) -> int | None:
        return None  # not a disk of ours
