"""What twophase's checkpoint files look like and how they are named, wherever they live.

A checkpoint is written once and carries its own sha256 (`frame_checkpoint`), so any reader verifies
it without an index, and a damaged or partial one is dropped and retrained, never used. Layout:
`<root>/<trajectory key>/t<iteration:09d>.pt`, and the eNTK of a checkpoint, framed the same way, under
`<root>/<trajectory key>/kernels/` (a cone task on another machine writes it there and returns its
name; the next cone run on those checkpoints reads it). The root may be a folder the user also keeps
other things in, so twophase touches only entries of its exact naming (a 20-hex-digit trajectory folder
holding `t<9 digits>.pt`, `kernels/t<9 digits>-....npy`, `tmp*.tmp` and `.lock`) whose first bytes are
its header. Its own module because a folder (`local_files.py`) and an object store (`object_files.py`)
share this format and naming, and the checks on them (`ownership.py`) read it too.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

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


def classify(name: str) -> str | None:
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


def check_trajectory(trajectory: str) -> None:
    if not RUN_NAME.fullmatch(trajectory):
        raise ValueError(f"not a trajectory key: {trajectory!r}")
