"""The result store: keys and blobs, nothing about experiments.

A diskcache `Cache` (eviction policy 'none': a result is never silently dropped) holds results,
job records and checkpoint checksums; checkpoints are files next to it, written atomically
(temp file + rename) and loaded with `weights_only=True`. Every blob carries its sha256: an
entry that fails the check, or does not parse, is deleted and reported missing, so the caller
recomputes it and never shows it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import diskcache
import numpy as np

ENV = "TWOPHASE_CACHE_DIR"


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


def _sha(b: bytes) -> str:
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


class Store:
    """Checksummed blobs in diskcache plus checkpoint files under `root`/runs."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.root.mkdir(parents=True, exist_ok=True)
        self.cache = diskcache.Cache(str(self.root / "index"), eviction_policy="none", timeout=60)

    # -- blobs ------------------------------------------------------------------------------
    def put_blob(self, key: str, blob: bytes) -> None:
        self.cache.set(key, {"sha": _sha(blob), "blob": blob})

    def get_blob(self, key: str) -> bytes | None:
        try:
            rec = self.cache.get(key)
        except Exception:  # unpicklable record: corrupt
            self.cache.delete(key)
            return None
        if rec is None:
            return None
        if not (isinstance(rec, dict) and isinstance(rec.get("blob"), bytes) and _sha(rec["blob"]) == rec.get("sha")):
            self.cache.delete(key)
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
            self.cache.delete(key)
            return None

    def put_arrays(self, key: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.put_blob(key, pack_arrays(arrays, meta))

    def get_arrays(self, key: str) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        b = self.get_blob(key)
        if b is None:
            return None
        try:
            return unpack_arrays(b)
        except Exception:
            self.cache.delete(key)
            return None

    def delete(self, key: str) -> None:
        self.cache.delete(key)

    def keys(self, prefix: str = "") -> list[str]:
        return [k for k in self.cache.iterkeys() if isinstance(k, str) and k.startswith(prefix)]

    # -- checkpoint files -------------------------------------------------------------------
    def _ckpt_path(self, run: str, t: int) -> Path:
        return self.root / "runs" / run / f"t{t:09d}.pt"

    def save_checkpoint(self, run: str, t: int, state: dict[str, Any]) -> None:
        """Atomic write; the checksum goes to the index only after the file is in place."""
        path = self._ckpt_path(run, t)
        import torch  # here, not at the top: the app's process reads results and never needs torch

        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.cache.set(f"ckpt/{run}/{t}", _sha(data))

    def load_checkpoint(self, run: str, t: int, map_location: Any = "cpu") -> dict[str, Any] | None:
        """The checkpoint, or None if it is missing or fails its checksum (then it is removed)."""
        path = self._ckpt_path(run, t)
        sha = self.cache.get(f"ckpt/{run}/{t}")
        if sha is None or not path.is_file():
            return None
        data = path.read_bytes()
        if _sha(data) != sha:
            self.drop_checkpoint(run, t)
            return None
        import torch

        try:
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
        except Exception:
            self.drop_checkpoint(run, t)
            return None

    def drop_checkpoint(self, run: str, t: int) -> None:
        self.cache.delete(f"ckpt/{run}/{t}")
        self._ckpt_path(run, t).unlink(missing_ok=True)

    def checkpoints(self, run: str) -> list[int]:
        """Iterations with a checkpoint recorded for `run` (checksums are verified on load)."""
        pre = f"ckpt/{run}/"
        return sorted(int(k[len(pre):]) for k in self.keys(pre))

    # -- housekeeping -----------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        runs = self.root / "runs"
        files = list(runs.rglob("*.pt")) if runs.exists() else []
        return {
            "root": str(self.root),
            "results": len(self.keys("result/")),
            "checkpoints": len(files),
            "bytes": self.cache.volume() + sum(f.stat().st_size for f in files),
        }

    def clear(self) -> None:
        self.cache.clear()
        shutil.rmtree(self.root / "runs", ignore_errors=True)

    def close(self) -> None:
        self.cache.close()
