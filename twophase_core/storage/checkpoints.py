"""Checkpoint and kernel files of one store: written self-verifying, read only if twophase wrote them.

A checkpoint (torch.save bytes) and a checkpoint's eNTK (np.save bytes) are framed with their sha256
(`files.frame_checkpoint`) and written atomically where the storage root says (`files.py`: a folder or
an object store). On load a damaged one of ours is dropped, so it is recomputed; a file of our name
without our header is someone else's: named, never used nor touched. Checkpoints from before the header
verify against the sha256 the index holds (`legacy_sha`). Its own module because the checkpoint format
and its checks change with the training code, not with the index. Nothing imports torch at module
level: the app's process reads results without it.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from twophase_core.storage import space
from twophase_core.storage.errors import StoreError
from twophase_core.storage.files import CKPT_MAGIC, KERNEL_MAGIC, CheckpointFiles, frame_checkpoint, verify_checkpoint
from twophase_core.storage.records import sha_hex

if TYPE_CHECKING:
    import torch

LegacySha = Callable[[str, int], str | None]  # (trajectory, t) -> the sha256 an older version kept in the index
Forget = Callable[[str, int], None]  # drop that sha256 with its file


def serialize(state: dict[str, Any]) -> bytes:
    """torch.save bytes of a checkpoint (its size is what one checkpoint costs on disk)."""
    import torch  # here, not at the top: the app's process reads results and never needs torch

    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


class Checkpoints:
    """The checkpoint and kernel files under `files`, for a store rooted at `root` (the disk named when
    a write finds no room, and whose reserve is given up then)."""

    def __init__(self, files: CheckpointFiles, root: Path, legacy_sha: LegacySha, forget: Forget):
        self.files, self.root = files, root
        self._legacy_sha, self._forget = legacy_sha, forget
        self._probed = False

    def check_storage(self) -> None:
        """Before any training: can checkpoints be written where they go? (An object store is sent a test
        object, so a wrong bucket, endpoint or credential is named now, not at the first checkpoint.)"""
        if not self._probed:
            self.files.probe()
            self._probed = True

    def save(self, trajectory: str, t: int, state: dict[str, Any]) -> None:
        """Atomic write of a self-verifying file; a full disk leaves no temp file and raises StoreFull."""
        self._write(trajectory, t, frame_checkpoint(serialize(state)), f"writing checkpoint {t} of {trajectory}")

    def load(self, trajectory: str, t: int, map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
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
            self.drop(trajectory, t)
            return None
        import torch

        try:
            return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
        except Exception:  # noqa: BLE001
            self.drop(trajectory, t)
            return None

    def drop(self, trajectory: str, t: int) -> None:
        """Remove a damaged checkpoint of ours (its caller checked its header), so it is trained again."""
        self.files.delete(trajectory, t)
        self._forget(trajectory, t)

    def save_kernel(self, trajectory: str, name: str, kernel: np.ndarray) -> None:
        """Write once, self-verifying, like a checkpoint."""
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(kernel), allow_pickle=False)
        self._write(trajectory, f"kernels/{name}", frame_checkpoint(buf.getvalue(), KERNEL_MAGIC),
                    f"writing kernel {name} of {trajectory}")

    def load_kernel(self, trajectory: str, name: str) -> np.ndarray | None:
        """The kernel, or None if it is missing or a damaged one of ours (then it is removed and recomputed)."""
        data = self._read_owned(trajectory, f"kernels/{name}", KERNEL_MAGIC, "kernel")
        if data is None:
            return None
        payload = verify_checkpoint(data, KERNEL_MAGIC)
        with contextlib.suppress(ValueError):
            if payload is not None:
                return np.load(io.BytesIO(payload), allow_pickle=False)
        self.files.delete(trajectory, f"kernels/{name}")
        return None

    def latest_bytes(self, trajectory: str) -> int | None:
        """Size of the latest checkpoint file of a trajectory (what one more costs: its checkpoints all hold
        the same tensors), None if it has none."""
        its = self.files.iterations(trajectory)
        return self.files.size(trajectory, its[-1]) if its else None

    def _write(self, trajectory: str, name: int | str, data: bytes, doing: str) -> None:
        try:
            self.files.write(trajectory, name, data)
        except OSError as e:
            where = space.checkpoint_disk(self.files, self.root)
            if space.is_full(e, where):
                space.release_reserve(self.root)
                raise space.full(where, doing) from e
            raise

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
                         "it is left as it is: move it away, and the run computes its own")
