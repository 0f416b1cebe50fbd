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

from .records import SafeDisk, sha_hex, unframe_record

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


def inspect_index(db: Path, index_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"path": str(db), "state": "ok", "problem": None, "entries": 0, "results": 0,
                           "jobs": 0, "pickled": 0, "bad_records": 0, "legacy_shas": {}}
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
    for key, raw, mode, value in rows:
        if not raw or mode == MODE_PICKLE:
            out["pickled"] += 1
            continue
        if isinstance(key, str) and key.startswith("result/"):
            out["results"] += 1
        if isinstance(key, str) and key.startswith("job/"):
            out["jobs"] += 1
        if isinstance(key, str) and key.startswith("ckpt/") and isinstance(value, str):
            out["legacy_shas"][key] = value
        if mode in (MODE_RAW, MODE_BINARY) and not isinstance(value, str | int | float):
            try:
                data = value if mode == MODE_RAW else None
                if data is None:
                    continue  # a file: read below
                _, sha, blob = unframe_record(data)
                if sha_hex(blob) != sha:
                    out["bad_records"] += 1
            except ValueError:
                out["bad_records"] += 1
    with contextlib.suppress(sqlite3.Error):
        con = connect_ro(db)
        try:
            files = con.execute("SELECT filename, raw, mode FROM Cache WHERE filename IS NOT NULL").fetchall()
        finally:
            con.close()
        for filename, raw, mode in files:
            if not raw or mode != MODE_BINARY:
                continue  # counted as pickled above
            try:
                _, sha, blob = unframe_record(Path(disk._inside(filename)).read_bytes())
                ok = sha_hex(blob) == sha
            except (OSError, ValueError):
                ok = False
            out["bad_records"] += not ok
        if not err:
            stray = unreferenced(index_dir, {f for f, _, _ in files})
            out["unreferenced_files"], out["unreferenced_bytes"] = len(stray), sum(size_of(p) for p in stray)
    if out["state"] == "ok" and db.stat().st_size == 0:
        out["state"], out["problem"] = "empty", "cache.db is empty (0 bytes): cut short"
    return out


def unreferenced(index_dir: Path, referenced: set[str]) -> list[Path]:
    """Entry files no index row points to, older than a minute (a writer files its value just before
    its row): left by a process killed in between."""
    now = time.time()
    return [p for p in index_dir.rglob("*.val") if str(p.relative_to(index_dir)) not in referenced
            and now - mtime(p) > STRAY_AGE_S]


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
