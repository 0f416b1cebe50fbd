"""The record format: what a value in the store's index is, byte for byte, and how arrays travel in one.

A record is framed (magic, its key, its sha256, the blob) so it verifies by itself and names the key
it belongs to: a lost index is rebuilt from its entry files, and a damaged one is named, never used.
Arrays travel as npz blobs with their metadata (`pack_arrays`). Pure bytes in, bytes out: its own
module because the index (`index.py`), the read-only salvage reader and the store all speak it, and
the format must change in one place only.
"""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import numpy as np

REC_MAGIC = b"TPREC1\n"  # then a 4-byte header length, the JSON header {key, sha}, then the blob


def sha_hex(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def pack_arrays(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    # numpy's stub types **arrays as possibly allow_pickle (a bool); result arrays never take that name
    np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8), **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def unpack_arrays(blob: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "__meta__"}
        meta = json.loads(z["__meta__"].tobytes().decode())
    return arrays, meta


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
