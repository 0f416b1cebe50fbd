"""The index's record format: what a value in the store's diskcache index is, byte for byte.

A record is framed (magic, its key, its sha256, the blob) so it verifies by itself and names the key
it belongs to; `SafeDisk` is diskcache's serialisation with pickle taken out: a pickled value or key
found on disk is refused unread. Arrays travel as npz blobs with their metadata (`pack_arrays`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
from typing import Any

import diskcache
import numpy as np
from diskcache.core import MODE_BINARY, MODE_PICKLE, MODE_RAW, UNKNOWN

REC_MAGIC = b"TPREC1\n"  # then a 4-byte header length, the JSON header {key, sha}, then the blob
FILE_PREFIXES = ("result/",)  # records kept in their own files whatever their size: they survive the db


class UnsafeEntry(ValueError):
    """An index entry that would need unpickling (or points outside the index): refused unread."""


def sha_hex(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def pack_arrays(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)
    return buf.getvalue()


def unpack_arrays(blob: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
        meta = json.loads(z["__meta__"].tobytes().decode())
    return arrays, meta


# ---------------------------------------------------------------------------------------------
# Framing: records and checkpoints that verify by themselves


def frame_record(key: str, sha: str, blob: bytes) -> bytes:
    head = json.dumps({"key": key, "sha": sha}).encode()
    return REC_MAGIC + len(head).to_bytes(4, "big") + head + blob


def unframe_record(data: bytes) -> tuple[str, str, bytes]:
    """(key, sha, blob) of a framed record; ValueError if it is not one. The sha is not checked here."""
    if not data.startswith(REC_MAGIC) or len(data) < len(REC_MAGIC) + 4:
        raise ValueError("not a framed record")
    n = int.from_bytes(data[len(REC_MAGIC):len(REC_MAGIC) + 4], "big")
    start = len(REC_MAGIC) + 4
    head = json.loads(data[start:start + n].decode())
    if not (isinstance(head, dict) and isinstance(head.get("key"), str) and isinstance(head.get("sha"), str)):
        raise ValueError("bad record header")
    return head["key"], head["sha"], data[start + n:]


class UnsafeKey(bytes):
    """A key diskcache stored pickled: never unpickled, only skipped or deleted."""


class SafeDisk(diskcache.Disk):
    """diskcache serialisation that never unpickles.

    Keys are strings; values are str, int, float, bytes or a checksummed record `{"sha", "blob"}`
    (framed as bytes with its key, in the database or, for `FILE_PREFIXES` and anything large, in a
    file of its own). A pickled value or key found on disk raises `UnsafeEntry` / comes back as an
    `UnsafeKey` instead of being loaded, and a file name pointing outside the index is refused.
    """

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) is not str:
            raise TypeError(f"store keys are strings, not {type(key).__name__}")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            return UnsafeKey(bytes(key))
        return super().get(key, raw)

    def store(self, value: Any, read: bool, key: Any = UNKNOWN) -> tuple[int, int, str | None, Any]:
        if type(value) is dict and set(value) == {"sha", "blob"}:
            data = frame_record(key if type(key) is str else "", str(value["sha"]), bytes(value["blob"]))
            if (type(key) is str and key.startswith(FILE_PREFIXES)) or len(data) >= self.min_file_size:
                filename, full_path = self.filename(key, data)
                self._write(full_path, io.BytesIO(data), "xb")
                return len(data), MODE_BINARY, filename, None
            return 0, MODE_RAW, None, sqlite3.Binary(data)
        if type(value) in (str, int, float, bytes) and not read:
            return super().store(value, read, key)
        raise TypeError(f"the store keeps strings, numbers, bytes and checksummed records, not {type(value).__name__}")

    def _inside(self, filename: str) -> str:
        full = os.path.realpath(os.path.join(self._directory, filename))
        if not full.startswith(os.path.realpath(self._directory) + os.sep):
            raise UnsafeEntry(f"an index entry points outside the index: {filename!r}")
        return full

    def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
        if mode == MODE_PICKLE:
            raise UnsafeEntry("a pickled entry (the store never unpickles)")
        if filename is not None:
            self._inside(filename)
        out = super().fetch(mode, filename, value, read)
        if type(out) is bytes and out.startswith(REC_MAGIC):
            _, sha, blob = unframe_record(out)
            return {"sha": sha, "blob": blob}
        return out

    def remove(self, file_path: str) -> None:
        try:
            self._inside(file_path)
        except UnsafeEntry:
            return
        super().remove(file_path)
