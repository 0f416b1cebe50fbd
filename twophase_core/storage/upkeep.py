"""Looking after a store: `info`, `check`, `repair`, `clear`, and moving damaged records aside.

Each takes a Store and returns a JSON-ready report (`twophase cache info|check|repair|clear`). `check`
changes nothing and reads the index read-only (`salvage.py`), so it works on a damaged index or a full
disk; `repair` and `clear` delete only what `ownership.py` says twophase wrote. A damaged record is never
dropped: its stored bytes go to `damaged/<time>-<key>.rec` with a `.why` beside them. Its own module,
above the store (it uses a Store, never the reverse), because what may be deleted changes for other
reasons than how results are read and written.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path
from typing import Any

from twophase_core.storage import ownership, salvage, space
from twophase_core.storage.errors import StoreError, StoreFull
from twophase_core.storage.files import iteration_of
from twophase_core.storage.ownership import DAMAGED_DIR, damaged_copies
from twophase_core.storage.store import Store

log = logging.getLogger("twophase.store")


def info(store: Store) -> dict[str, Any]:
    """Counts and sizes; on a full disk or a damaged index (not opened) they are read read-only."""
    scan = store.files.scan()
    ckpts = scan.of("checkpoint")
    try:
        results, volume = len(store.keys("result/")), store.cache.volume()
    except StoreError:
        results = salvage.inspect_index(store.db_path, store.index_dir)["results"]
        volume = salvage.tree_bytes(store.index_dir) if store.index_dir.is_dir() else 0
    return {
        "root": str(store.root),
        "storage": store.files.url,
        "results": results,
        "checkpoints": len(ckpts),
        "bytes": volume + sum(e.size for e in ckpts + scan.of("kernel")),
        "temp_files": len(ownership.temps(store.files, scan)),  # being written now (orphans go when a store opens)
        "orphan_temp_files_removed": store.cleaned["files"],
        "orphan_temp_bytes_removed": store.cleaned["bytes"],
        "damaged_index_copies": [str(p) for p in damaged_copies(store.root)],
        "healed": store.healed,
        "free_bytes": store.free_bytes(),
    }


def check(store: Store) -> dict[str, Any]:
    """Verify everything without changing anything; a JSON-ready report (`ok`, `problems`, counts).

    Works on any store: the index is read through a read-only connection (a damaged, missing or
    full-disk index is reported, not opened for writing), every checkpoint and kernel file is read and
    checked. `ok` says whether anything twophase can repair is wrong; what is not twophase's is listed
    under `left_alone` and never counts as a problem (repair would not touch it)."""
    files = store.files
    problems: list[str] = []
    index = salvage.inspect_index(store.db_path, store.index_dir)
    if index["problem"]:
        problems.append(f"index: {index['problem']}")
    if index["damaged"]:
        named = "; ".join(f"{d['key']} ({d['why']})" for d in index["damaged"][:5])
        more = f" and {len(index['damaged']) - 5} more" if len(index["damaged"]) > 5 else ""
        problems.append(f"index: {len(index['damaged'])} damaged records: {named}{more} (repair moves them aside)")
    if index.get("unreferenced_files"):
        problems.append(f"index: {index['unreferenced_files']} entry files no record points to")
    scan = files.scan()
    sorted_ = ownership.sort_files(files, scan, index.pop("legacy_shas"))
    bad = {what: [str(files.path(e.trajectory, e.name)) for e in sorted_["bad"] if e.what == what]
           for what in ("checkpoint", "kernel")}
    ckpt = {"runs": len({e.trajectory for e in scan.of("checkpoint")}), "files": len(scan.of("checkpoint")),
            "verified": sum(e.what == "checkpoint" for e in sorted_["verified"]), "legacy": len(sorted_["legacy"]),
            "bad": bad["checkpoint"]}
    kernels = {"files": len(scan.of("kernel")), "verified": sum(e.what == "kernel" for e in sorted_["verified"]),
               "bad": bad["kernel"]}
    if bad["checkpoint"]:
        problems.append(f"checkpoints: {len(bad['checkpoint'])} fail their checksum")
    if bad["kernel"]:
        problems.append(f"kernels: {len(bad['kernel'])} fail their checksum")
    temps = ownership.temps(files, scan)
    orphans = ownership.orphans(files, temps)
    if orphans:
        problems.append(f"{len(orphans)} orphan temp files")
    return {"root": str(store.root), "storage": files.url, "ok": not problems, "problems": problems,
            "index": index, "checkpoints": ckpt, "kernels": kernels,
            "temp_files": {"in_use": len(temps) - len(orphans), "orphans": len(orphans),
                           "orphan_bytes": sum(e.size for e in orphans)},
            "left_alone": ownership.left_alone(files, store.root, scan, sorted_["foreign"]),
            "damaged_index_copies": [str(p) for p in damaged_copies(store.root)], "free_bytes": store.free_bytes()}


def repair(store: Store, dry_run: bool = False) -> dict[str, Any]:
    """Fix what `check` finds; a JSON-ready report of what was done (or, dry, would be) and the check after.

    A damaged or missing index is moved aside and rebuilt (never emptied in place); damaged records are
    moved aside into `damaged/`; checkpoints and kernels of ours that fail their checksum are removed
    (recomputed on demand); orphan temp files of ours are removed. Nothing that is not twophase's is
    touched. Works on a full disk as far as deleting goes.
    """
    files = store.files
    done: dict[str, Any] = {"root": str(store.root), "dry_run": dry_run}
    before = check(store)
    with store.root_lock():
        refused = files.deletion_refused()
        orphans = [] if refused else ownership.orphans(files, ownership.temps(files))
        done["orphan_temp_files_removed"] = len(orphans)
        legacy = salvage.inspect_index(store.db_path, store.index_dir)["legacy_shas"]
        bad = [] if refused else ownership.sort_files(files, files.scan(), legacy)["bad"]
        done["checkpoints_removed"] = [str(files.path(e.trajectory, e.name)) for e in bad if e.what == "checkpoint"]
        done["kernels_removed"] = [str(files.path(e.trajectory, e.name)) for e in bad if e.what == "kernel"]
        if refused:
            done["refused"] = refused
        if dry_run:
            done["index"] = before["index"]["problem"] and "would be moved aside and rebuilt"
            done["records_moved_aside"] = before["index"]["damaged"]
            return done
        store.release_reserve()  # room to work on a full disk; made again at the end
        for e in orphans:
            files.remove(e)
        rebuilt = store.heal()
        if rebuilt is not None:
            done["rebuilt_index"] = rebuilt
        done["records_moved_aside"] = _move_damaged_rows(store)
        done["unreferenced_files_removed"] = _remove_unreferenced(store)
        for e in bad:
            if e.what == "checkpoint":
                store.ckpt.drop(e.trajectory, int(iteration_of(e.name) or 0))
            else:
                files.remove(e)
    space.keep_reserve(store.root)
    done["after"] = check(store)
    return done


def move_aside(store: Store, key: str, why: str) -> str:
    """Move a record's stored bytes out of the index into `damaged/` (named by the time and its key) and
    remove it from the index; where they went ('' if there is no such record)."""
    with store.root_lock():
        row = salvage.find_row(store.db_path, key)
        if row is None:
            return ""
        to = _keep_aside(store.root, key, why, salvage.stored_bytes(row, store.index_dir))
        store.delete(key)
        return to


def _move_damaged_rows(store: Store) -> list[dict[str, str]]:
    """Move aside every row `check` names damaged: its stored bytes into `damaged/`, then the row out of the
    index, by its key; a key stored pickled (which the index cannot name without unpickling it) goes
    with a rebuild of the index from the records that verify."""
    moved, unnamed = [], 0
    for row, why in salvage.damaged_rows(store.db_path, store.index_dir):
        name = salvage.key_text(row.key)
        moved.append({"key": name, "why": why,
                      "to": _keep_aside(store.root, name, why, salvage.stored_bytes(row, store.index_dir))})
        if isinstance(row.key, str):
            store.delete(row.key)
        else:
            unnamed += 1
    if unnamed:
        store.rebuild(f"{unnamed} records under keys stored pickled, moved aside")
    return moved


def _keep_aside(root: Path, name: str, why: str, data: bytes) -> str:
    """Write a damaged record's bytes, whole, to `damaged/` with a `.why` beside them; the path."""
    folder = root / DAMAGED_DIR
    folder.mkdir(exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{re.sub(r'[^A-Za-z0-9._-]', '_', name)[:120]}"
    dest, n = folder / f"{stem}.rec", 1
    while dest.exists():
        n += 1
        dest = folder / f"{stem}-{n}.rec"
    dest.write_bytes(data)
    (folder / f"{dest.stem}.why").write_text(f"{name}: {why}\n")
    log.warning("store record %s (%s) moved aside to %s", name, why, dest)
    return str(dest)


def _remove_unreferenced(store: Store) -> int:
    """Delete index entry files no row points to (a writer killed between file and row) that are records."""
    referenced = salvage.referenced_files(store.db_path)
    if referenced is None:
        return 0  # the table cannot be read whole: no file is known to be unreferenced
    stray = salvage.unreferenced(store.index_dir, referenced)
    for p in stray:
        p.unlink(missing_ok=True)
    return len(stray)


def clear(store: Store, dry_run: bool = False) -> dict[str, Any]:
    """Remove every result, job record, log, checkpoint and kernel that twophase wrote, and nothing else:
    never the root, bucket or prefix itself, never a file it cannot tell is its own, never through a link;
    what is left alone is listed. Works on a damaged index and a full disk (it only deletes). A worker
    still running finds its index gone and fails loudly; a trajectory a live job holds is left to it.
    With `dry_run`, lists what would go and changes nothing."""
    files, root = store.files, store.root
    report: dict[str, Any] = {"root": str(root), "storage": files.url, "dry_run": dry_run}
    with store.root_lock():
        legacy = salvage.inspect_index(store.db_path, store.index_dir)["legacy_shas"]
        refused = files.deletion_refused()
        entries, left = ([], [refused]) if refused else ownership.owned_storage(files, legacy)
        if root.is_symlink():
            here: list[Path] = []
            left.append(f"store {root} is a link; twophase never deletes through one: give its target "
                        f"({root.resolve()}) as --cache-dir to clear it there")
        else:
            here = ownership.owned_here(root, store.index_dir)
        report["removed"] = {what: sum(e.what == what for e in entries)
                             for what in ("checkpoint", "kernel", "temp", "lock", "probe")}
        report["removed"]["store files"] = len(here)
        report["bytes_removed"] = sum(e.size for e in entries) + sum(ownership.size(p) for p in here)
        report["left_alone"] = left
        if dry_run:
            report["would_remove"] = [str(files.path(e.trajectory, e.name)) for e in entries] + [str(p) for p in here]
            return report
        with contextlib.suppress(Exception):
            store.close()
        for e in entries:
            files.remove(e)
        for p in here:  # the database first: no row is left pointing at a deleted file
            p.unlink(missing_ok=True)
        for folder in (store.index_dir, *damaged_copies(root), root / "jobs", root / DAMAGED_DIR):
            _remove_empty_folders(folder)
        store.healed = store.problem = None
        with contextlib.suppress(StoreFull):  # a disk still full: the index is made on first use
            store.heal()
    space.keep_reserve(root)
    report["free_bytes"] = store.free_bytes()
    return report


def _remove_empty_folders(folder: Path) -> None:
    """Remove `folder` and the folders under it that are empty (real folders only, deepest first)."""
    if not folder.is_dir() or folder.is_symlink():
        return
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()

