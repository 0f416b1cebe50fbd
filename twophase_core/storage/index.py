"""The store's index: keys to records in a diskcache `Cache`, and the only module that imports diskcache.

Everything goes through diskcache's public API (`Cache`, a `Disk` subclass), so a new diskcache version,
or another index behind the same few methods, changes this file alone. The index holds strings,
numbers and checksummed records `{"sha", "blob"}` (framed by `records.py`), never a pickle: `SafeDisk`
refuses one unread. Reading a damaged index file without writing to it is `salvage.py`'s job (plain
sqlite3, read-only); the row modes it reads are diskcache's, named here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import diskcache
from diskcache.core import MODE_BINARY, MODE_PICKLE, MODE_RAW, MODE_TEXT

from twophase_core.storage.records import REC_MAGIC, frame_record, unframe_record

__all__ = ["MODE_BINARY", "MODE_PICKLE", "MODE_RAW", "MODE_TEXT", "Index", "SafeDisk", "UnsafeEntry", "UnsafeKey",
           "entry_path"]

FILE_PREFIXES = ("result/",)  # records kept in their own files whatever their size: they survive the db
WRITE_TRIES = 10  # a concurrent delete may remove an entry file's emptied folder between mkdir and open


class Record(TypedDict):
    """A checksummed record as the index hands it out (framed as bytes on disk: `records.py`)."""

    sha: str
    blob: bytes


Value = str | int | float | bytes | Record  # what the index holds


class UnsafeEntry(ValueError):
    """An index entry that would need unpickling (or points outside the index): refused unread."""


class UnsafeKey(bytes):
    """A key diskcache stored pickled: never unpickled, only skipped (a repair rebuilds the index without it)."""


def entry_path(folder: Path, filename: str) -> Path:
    """The entry file a row names, inside the index `folder`; UnsafeEntry if it points anywhere else."""
    full = os.path.realpath(os.path.join(folder, filename))
    if not full.startswith(os.path.realpath(folder) + os.sep):
        raise UnsafeEntry(f"an index entry points outside the index: {filename!r}")
    return Path(full)


def _write_new(path: Path, data: bytes) -> None:
    """Write a new entry file (its name is random: never over another), making its folders."""
    for attempt in range(WRITE_TRIES):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "xb") as f:
                f.write(data)
            return
        except FileNotFoundError:
            if attempt == WRITE_TRIES - 1:
                raise


class SafeDisk(diskcache.Disk):
    """diskcache serialisation that never unpickles.

    Keys are strings; values are str, int, float, bytes or a checksummed record `{"sha", "blob"}`
    (framed as bytes with its key, in the database or, for `FILE_PREFIXES` and anything large, in a
    file of its own). A pickled value or key found on disk raises `UnsafeEntry` / comes back as an
    `UnsafeKey` instead of being loaded, and a file name pointing outside the index is refused.
    """

    def __init__(self, directory: str, **settings: object):
        super().__init__(directory, **settings)
        self.folder = Path(directory)

    def put(self, key: object) -> tuple[object, bool]:
        if type(key) is not str:
            raise TypeError(f"store keys are strings, not {type(key).__name__}")
        return super().put(key)

    def get(self, key: object, raw: bool) -> object:
        if not raw:
            return UnsafeKey(bytes(key))  # type: ignore[call-overload]  # diskcache: a non-raw key is bytes
        return super().get(key, raw)

    def store(self, value: object, read: bool, key: object = diskcache.UNKNOWN) -> tuple[int, int, str | None, object]:
        if type(value) is dict and set(value) == {"sha", "blob"}:
            data = frame_record(key if type(key) is str else "", str(value["sha"]), bytes(value["blob"]))
            if (type(key) is str and key.startswith(FILE_PREFIXES)) or len(data) >= self.min_file_size:
                filename, full_path = self.filename(key, data)
                _write_new(Path(full_path), data)
                return len(data), MODE_BINARY, filename, None
            return 0, MODE_RAW, None, data
        if type(value) in (str, int, float, bytes) and not read:
            return super().store(value, read, key)
        raise TypeError(f"the store keeps strings, numbers, bytes and checksummed records, not {type(value).__name__}")

    def fetch(self, mode: int, filename: str | None, value: object, read: bool) -> object:
        if mode == MODE_PICKLE:
            raise UnsafeEntry("a pickled entry (the store never unpickles)")
        if filename is not None:
            entry_path(self.folder, filename)
        out = super().fetch(mode, filename, value, read)
        if type(out) is bytes and out.startswith(REC_MAGIC):
            _, sha, blob = unframe_record(out)
            return {"sha": sha, "blob": blob}
        return out

    def remove(self, file_path: str) -> None:
        try:
            entry_path(self.folder, file_path)
        except UnsafeEntry:
            return
        super().remove(file_path)


class Index:
    """Keys to values in a diskcache `Cache` under `folder`: eviction policy 'none' (a result is never
    silently dropped), a minute's patience for another process's write, `SafeDisk` serialisation.

    Opening writes diskcache's settings into its database: on a full disk it raises (OSError or
    sqlite3.OperationalError), which the store names.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self._cache = diskcache.Cache(str(folder), eviction_policy="none", timeout=60, disk=SafeDisk)

    def get(self, key: str) -> Value | None:
        """The value (a record as `{"sha", "blob"}`), None if there is none; UnsafeEntry for a pickle."""
        return self._cache.get(key)

    def set(self, key: str, value: Value) -> None:
        self._cache.set(key, value)

    def delete(self, key: str) -> bool:
        """Remove a key's row and its entry file (never a file outside the index); False if it was not there."""
        return bool(self._cache.delete(key))

    def __contains__(self, key: object) -> bool:
        return key in self._cache

    def keys(self, prefix: str = "") -> list[str]:
        """Every string key starting with `prefix`, in order (a key stored pickled is not one)."""
        return [k for k in self._cache.iterkeys() if type(k) is str and k.startswith(prefix)]

    def volume(self) -> int:
        """Bytes on disk: the database and the entry files."""
        return int(self._cache.volume())

    def clear(self) -> int:
        return int(self._cache.clear())

    @contextlib.contextmanager
    def transact(self) -> Iterator[None]:
        """Reads and writes inside are atomic: no other process writes meanwhile."""
        with self._cache.transact():
            yield

    def close(self) -> None:
        """Close this thread's connection (diskcache reopens one on the next use): the WAL is folded in."""
        self._cache.close()
