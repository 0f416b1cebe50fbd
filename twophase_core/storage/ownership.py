"""What, in the store's places, twophase wrote and may therefore delete: decided here, acted on elsewhere.

A file is twophase's only by its exact name and, where it has one, its header: the index's database
and record files, copies of a damaged index, moved-aside records, worker logs, and in the storage root
checkpoints, kernels, temp files and locks (`files.py` names those). Everything else, a link anywhere
included, is listed as left alone and never touched. Temp files of checkpoint writers killed mid-write
(orphans) are ours to remove once no writer holds them. Its own module because every command that
deletes (opening a store, `repair`, `clear`) must draw this line the same way.
"""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path
from typing import TypedDict

from twophase_core.storage.files import (
    CKPT_MAGIC,
    KERNEL_MAGIC,
    CheckpointFiles,
    Entry,
    LocalFiles,
    ObjectFiles,
    Scan,
    has_header,
    iteration_of,
    verify_checkpoint,
)
from twophase_core.storage.locks import is_locked
from twophase_core.storage.records import REC_MAGIC, sha_hex

ORPHAN_AGE_S = 1.0  # an unlocked temp file older than this is left over from a killed writer
DAMAGED_DIR = "damaged"  # records moved aside by repair: <time>-<key>.rec and .why
INDEX_FILES = ("cache.db", "cache.db-wal", "cache.db-shm", "cache.db-journal")
VAL_NAME = re.compile(r"[0-9a-f]{28}\.val")  # diskcache's entry files, under two levels of 2-hex folders
LOG_NAME = re.compile(r"[a-z]+-[0-9a-f]{20}\.log")  # a worker's log: jobs/<job id>.log
LOG_HEADER = b"--- "  # its first line, written by the job runner before the worker starts
ASIDE_NAME = re.compile(r"[0-9]{8}-[0-9]{6}-[A-Za-z0-9._-]{1,120}(-[0-9]+)?\.(rec|why)")


def plain(p: Path) -> bool:
    """A plain file, not a link (nothing is deleted through one)."""
    try:
        return stat.S_ISREG(os.lstat(p).st_mode)
    except OSError:
        return False


def starts_with(p: Path, prefix: bytes) -> bool:
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        return f.read(len(prefix)) == prefix


def size(p: Path) -> int:
    try:
        return os.lstat(p).st_size
    except OSError:
        return 0


# ---------------------------------------------------------------------------------------------
# The storage root: checkpoints, kernels, temp files, locks


def temps(files: CheckpointFiles, scan: Scan | None = None) -> list[Entry]:
    """Temp files of our checkpoint writers, live or killed (named as ours and beginning as ours do), in a
    folder storage root. An object store has none, and is not listed for them: opening a store never
    waits on the network."""
    if not isinstance(files, LocalFiles):
        return []
    scan = scan if scan is not None else files.scan()
    return [e for e in scan.of("temp") if has_header(files.head(e), "temp")]


def orphans(files: CheckpointFiles, found: list[Entry]) -> list[Entry]:
    """The temp files among `found` that no live writer holds: left by kill -9 during a write."""
    now = time.time()
    return [e for e in found if now - e.mtime >= ORPHAN_AGE_S and not is_locked(Path(files.path(e.trajectory, e.name)))]


def clean_orphans(files: CheckpointFiles) -> dict[str, int]:
    """Remove orphan temp files (unless the root may not be deleted in); how many, and their bytes."""
    n = total = 0
    if files.deletion_refused() is None:
        for e in orphans(files, temps(files)):
            files.remove(e)
            n, total = n + 1, total + e.size
    return {"files": n, "bytes": total}


class Sorted(TypedDict):
    """Checkpoint and kernel files by what reading them showed (`sort_files`)."""

    verified: list[Entry]
    legacy: list[Entry]
    bad: list[Entry]
    foreign: list[tuple[Entry, str]]  # (entry, why)


def sort_files(files: CheckpointFiles, scan: Scan, legacy: dict[str, str]) -> Sorted:
    """Checkpoint and kernel files read whole and sorted: `verified`, `legacy` (an old checkpoint whose
    checksum the index holds), `bad` (ours: our header, but failing its checksum) and `foreign`
    ((entry, why): no twophase header, or unreadable: never touched)."""
    out: Sorted = {"verified": [], "legacy": [], "bad": [], "foreign": []}
    for e in scan.of("checkpoint") + scan.of("kernel"):
        magic = CKPT_MAGIC if e.what == "checkpoint" else KERNEL_MAGIC
        try:
            data = files.read(e.trajectory, e.name)
        except OSError as ex:
            out["foreign"].append((e, f"cannot be read ({ex.strerror or ex})"))
            continue
        if data is None:
            continue  # gone since the listing (a clear, a repair elsewhere)
        if verify_checkpoint(data, magic) is not None:
            out["verified"].append(e)
        elif data.startswith(magic):
            out["bad"].append(e)
        elif e.what == "checkpoint" and legacy.get(f"ckpt/{e.trajectory}/{iteration_of(e.name)}") == sha_hex(data):
            out["legacy"].append(e)
        else:
            out["foreign"].append((e, f"not a {e.what} twophase wrote (no twophase header)"))
    return out


def owned_storage(files: CheckpointFiles, legacy: dict[str, str]) -> tuple[list[Entry], list[str]]:
    """Entries of the storage root that are verifiably twophase's and free to delete (no live writer or
    trainer holds them; locks last, after their folder's files), and what is left alone and why."""
    scan = files.scan()
    left = list(scan.left_alone)
    busy = {e.trajectory for e in scan.of("lock") if is_locked(Path(files.path(e.trajectory, e.name)))}
    if isinstance(files, ObjectFiles):
        busy |= {e.trajectory for e in scan.entries if e.trajectory and is_locked(files.lock_path(e.trajectory))}
    owned = []
    for e in scan.entries:
        if e.trajectory in busy:
            continue
        ours = has_header(files.head(e), e.what) if e.what != "lock" else e.size == 0
        sha = legacy.get(f"ckpt/{e.trajectory}/{iteration_of(e.name)}")
        if not ours and e.what == "checkpoint" and sha is not None:
            data = files.read(e.trajectory, e.name)
            ours = data is not None and sha_hex(data) == sha
        if ours:
            owned.append(e)
        else:
            left.append(f"{files.path(e.trajectory, e.name)}: not a {e.what} file twophase wrote")
    left += [f"{files.path(trajectory, '')}: in use by a running job, left for it" for trajectory in sorted(busy)]
    return sorted(owned, key=lambda e: e.what == "lock"), left


def left_alone(files: CheckpointFiles, root: Path, scan: Scan, foreign: list[tuple[Entry, str]]) -> list[str]:
    """What twophase found in its places but will not touch, with why (shown by check and clear)."""
    out = list(scan.left_alone) + [f"{files.path(e.trajectory, e.name)}: {why}" for e, why in foreign]
    refused = files.deletion_refused()
    if refused:
        out.append(refused)
    parents = {root}
    if isinstance(files, LocalFiles):
        parents.add(files.root.parent)
    for parent in sorted(parents):
        for p in sorted(parent.glob(".clearing-*")):
            out.append(f"{p}: set aside by `cache clear` of an earlier twophase version, which could take files "
                       "that were not its own; look inside, then remove it yourself")
    return out


# ---------------------------------------------------------------------------------------------
# The store's root: its index, copies of a damaged one, moved-aside records, worker logs


def damaged_copies(root: Path) -> list[Path]:
    """Damaged indexes moved aside by a rebuild (`index.damaged-<time>-<pid>/`): real folders only."""
    return sorted(p for p in root.glob("index.damaged-*") if p.is_dir() and not p.is_symlink())


def owned_here(root: Path, index_dir: Path) -> list[Path]:
    """The store's own files under its root: the index (its database and record files), copies of a
    damaged index, moved-aside records and worker logs, each by its exact name and, where it has one,
    its header. The root's `.lock` and `.reserve` stay."""
    out: list[Path] = []
    for folder in (index_dir, *damaged_copies(root)):
        if not folder.is_dir() or folder.is_symlink():
            continue
        out += [p for p in (folder / n for n in INDEX_FILES) if plain(p)]
        out += [p for p in sorted(folder.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]/*.val"))
                if VAL_NAME.fullmatch(p.name) and plain(p) and not p.parent.is_symlink()
                and not p.parent.parent.is_symlink() and starts_with(p, REC_MAGIC)]
    jobs = root / "jobs"
    if jobs.is_dir() and not jobs.is_symlink():
        out += [p for p in sorted(jobs.iterdir()) if LOG_NAME.fullmatch(p.name) and plain(p)
                and starts_with(p, LOG_HEADER)]
    damaged = root / DAMAGED_DIR
    if damaged.is_dir() and not damaged.is_symlink():
        out += [p for p in sorted(damaged.iterdir()) if ASIDE_NAME.fullmatch(p.name) and plain(p)]
    return out
