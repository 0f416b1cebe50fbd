"""Reading a possibly damaged store index without writing to it: what `check` reports and what a
rebuild recovers. Every connection here is read-only (or immutable, when sqlite cannot even take a
read lock), so looking never makes things worse.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

from diskcache.core import MODE_BINARY, MODE_PICKLE, MODE_RAW

from twophase_core.storage.records import REC_MAGIC, SafeDisk, sha_hex, unframe_record

STRAY_AGE_S = 60.0  # an index entry file with no row, older than this, is left over from a killed writer


def connect_ro(db: Path) -> sqlite3.Connection:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        con.execute("SELECT count(*) FROM sqlite_master").fetchall()
        return con
    except sqlite3.Error:
        return sqlite3.connect(f"file:{db}?immutable=1", uri=True)


def salvage_rows(db: Path) -> tuple[list[tuple[Any, int, int, Any]], str | None]:
    """(key, raw, mode, value) of every row that can still be read; values in files are left to the file scan."""
    rows: list[tuple[Any, int, int, Any]] = []
    if not db.is_file() or db.stat().st_size == 0:
        return rows, None
    try:
        con = connect_ro(db)
    except sqlite3.Error as e:
        return rows, str(e)
    try:
        for key, raw, mode, value in con.execute("SELECT key, raw, mode, value FROM Cache"):
            rows.append((key, raw, mode, bytes(value) if isinstance(value, bytes | memoryview) else value))
    except sqlite3.Error as e:
        return rows, str(e)
    finally:
        con.close()
    return rows, None


def key_text(key: Any) -> str:
    """A row's key as text for a report: a key stored pickled is never unpickled, only described."""
    return key if isinstance(key, str) else f"<pickled key, {len(bytes(key)) if key is not None else 0} bytes>"


def inspect_index(db: Path, index_dir: Path) -> dict[str, Any]:
    """What the index holds, read without writing: counts, and every record that cannot be trusted,
    named (`damaged`: key and why)."""
    out: dict[str, Any] = {"path": str(db), "state": "ok", "problem": None, "entries": 0, "results": 0,
                           "jobs": 0, "pickled": 0, "bad_records": 0, "damaged": [], "legacy_shas": {}}
    if not db.exists():
        out["state"] = "missing"
        leftovers = list(index_dir.rglob("*.val")) if index_dir.is_dir() else []
        if leftovers:
            out["problem"] = f"cache.db is missing but {len(leftovers)} entry files remain"
        return out
    rows, err = salvage_rows(db)
    if err:
        out["state"], out["problem"] = "damaged", err
    out["entries"] = len(rows)
    disk = SafeDisk(str(index_dir))

    def bad(key: Any, why: str) -> None:
        out["bad_records"] += 1
        out["damaged"].append({"key": key_text(key), "why": why})

    for key, raw, mode, value in rows:
        if not raw or mode == MODE_PICKLE:
            out["pickled"] += 1
            out["damaged"].append({"key": key_text(key), "why": "stored pickled (refused, never read)"})
            continue
        if isinstance(key, str) and key.startswith("result/"):
            out["results"] += 1
        if isinstance(key, str) and key.startswith("job/"):
            out["jobs"] += 1
        if isinstance(key, str) and key.startswith("ckpt/") and isinstance(value, str):
            out["legacy_shas"][key] = value
        if mode == MODE_RAW and not isinstance(value, str | int | float):
            try:
                _, sha, blob = unframe_record(value)
            except ValueError:
                bad(key, "not a framed record")
                continue
            if sha_hex(blob) != sha:
                bad(key, "fails its checksum")
    with contextlib.suppress(sqlite3.Error):
        con = connect_ro(db)
        try:
            files = con.execute("SELECT key, filename, raw, mode FROM Cache WHERE filename IS NOT NULL").fetchall()
        finally:
            con.close()
        for key, filename, raw, mode in files:
            if not raw or mode != MODE_BINARY:
                continue  # counted as pickled above
            try:
                _, sha, blob = unframe_record(Path(disk._inside(filename)).read_bytes())
                ok = sha_hex(blob) == sha
            except (OSError, ValueError):
                ok = False
            if not ok:
                bad(key, "its file fails its checksum or cannot be read")
        if not err:
            stray = unreferenced(index_dir, {f for _, f, _, _ in files})
            out["unreferenced_files"], out["unreferenced_bytes"] = len(stray), sum(size_of(p) for p in stray)
    if out["state"] == "ok" and db.stat().st_size == 0:
        out["state"], out["problem"] = "empty", "cache.db is empty (0 bytes): cut short"
    return out


def unreferenced(index_dir: Path, referenced: set[str]) -> list[Path]:
    """Entry files of ours (framed records) no index row points to, older than a minute (a writer files
    its value just before its row): left by a process killed in between. Anything else is not ours."""
    now = time.time()
    return [p for p in index_dir.rglob("*.val") if str(p.relative_to(index_dir)) not in referenced
            and now - mtime(p) > STRAY_AGE_S and not p.is_symlink() and _head(p) == REC_MAGIC]


def _head(p: Path) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read(len(REC_MAGIC))
    except OSError:
        return b""


def size_of(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            total += size_of(Path(dirpath) / f)
    return total
