"""Reading a possibly damaged store index without writing to it: what `check` reports, what a rebuild
recovers and what `repair` moves aside.

Its own module because it reads diskcache's table with plain sqlite3, row by row and as stored (a key
stored pickled is kept as bytes, never loaded), which the live index (`index.py`, diskcache's public API)
cannot do. Every connection here is read-only (or immutable, when sqlite cannot even take a read
lock), so looking never makes things worse.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NotRequired, TypedDict

from twophase_core.storage.index import MODE_PICKLE, MODE_RAW, MODE_TEXT, Record, UnsafeEntry, entry_path
from twophase_core.storage.records import REC_MAGIC, sha_hex, unframe_record

STRAY_AGE_S = 60.0  # an index entry file with no row, older than this, is left over from a killed writer
PICKLED = "stored pickled (refused, never read)"


@dataclass(frozen=True)
class Row:
    """One row of the index as stored: its key (a str, or the bytes of a key stored pickled), diskcache's
    raw flag and mode, the entry file it names (if any) and the value held in the row itself."""

    key: str | bytes
    raw: int
    mode: int
    filename: str | None
    value: str | int | float | bytes | None  # as sqlite gives it


class Counts(TypedDict):
    """What of a moved-aside index does not verify (`recoverable`)."""

    unverifiable: int
    refused_pickles: int
    read_error: NotRequired[str]  # why the table could not be read whole


class Rebuilt(Counts):
    """What a rebuild of the index did (`Store.rebuild`)."""

    problem: str
    moved_aside: str | None
    recovered: int


class IndexReport(TypedDict):
    """What the index holds, read without writing to it (`inspect_index`)."""

    path: str
    state: str  # ok, missing, empty, damaged
    problem: str | None
    entries: int
    results: int
    jobs: int
    pickled: int
    bad_records: int
    damaged: list[dict[str, str]]  # key, why
    legacy_shas: NotRequired[dict[str, str]]  # checkpoint key -> the sha256 an older version kept
    unreferenced_files: NotRequired[int]
    unreferenced_bytes: NotRequired[int]


def connect_ro(db: Path) -> sqlite3.Connection:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        con.execute("SELECT count(*) FROM sqlite_master").fetchall()
        return con
    except sqlite3.Error:
        return sqlite3.connect(f"file:{db}?immutable=1", uri=True)


def read_rows(db: Path) -> tuple[list[Row], str | None]:
    """Every row that can still be read, and why the rest could not be (None when all could)."""
    rows: list[Row] = []
    if not db.is_file() or db.stat().st_size == 0:
        return rows, None
    try:
        con = connect_ro(db)
    except sqlite3.Error as e:
        return rows, str(e)
    try:
        for key, raw, mode, filename, value in con.execute("SELECT key, raw, mode, filename, value FROM Cache"):
            rows.append(Row(key, raw, mode, filename, bytes(value) if isinstance(value, bytes | memoryview) else value))
    except sqlite3.Error as e:
        return rows, str(e)
    finally:
        con.close()
    return rows, None


def find_row(db: Path, key: str) -> Row | None:
    """The row of a string key, as stored; None if there is none (or the table cannot be read)."""
    try:
        con = connect_ro(db)
        try:
            found = con.execute("SELECT key, raw, mode, filename, value FROM Cache WHERE key = ? AND raw = 1",
                                (key,)).fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    if found is None:
        return None
    k, raw, mode, filename, value = found
    return Row(k, raw, mode, filename, bytes(value) if isinstance(value, bytes | memoryview) else value)


def key_text(key: str | bytes | None) -> str:
    """A row's key as text for a report: a key stored pickled is never unpickled, only described."""
    return key if isinstance(key, str) else f"<pickled key, {len(bytes(key)) if key is not None else 0} bytes>"


def stored_bytes(row: Row, folder: Path) -> bytes:
    """What a row keeps, as it is (its entry file's bytes, or its value): what `repair` moves aside.
    A file outside the index is never read (b"")."""
    if row.filename is not None:
        try:
            return entry_path(folder, row.filename).read_bytes()
        except (OSError, UnsafeEntry):
            return b""
    if isinstance(row.value, bytes):
        return row.value
    return b"" if row.value is None else str(row.value).encode()


def row_problem(row: Row, folder: Path) -> str | None:
    """Why a row cannot be trusted, or None. Ours are checksummed records and, from older versions, the
    sha256 (a str) of a checkpoint file; anything pickled is refused unread."""
    if not row.raw or row.mode == MODE_PICKLE:
        return PICKLED
    if not isinstance(row.key, str):
        return "its key is not a string"
    if row.filename is None:
        data = row.value
    else:
        try:
            data = entry_path(folder, row.filename).read_bytes()
        except UnsafeEntry:
            return "its file is outside the index"
        except OSError:
            return "its file cannot be read"
    if isinstance(data, str) or row.mode == MODE_TEXT:
        return None
    if not isinstance(data, bytes):
        return "not a record"
    try:
        _, sha, blob = unframe_record(data)
    except ValueError:
        return "not a framed record"
    return None if sha_hex(blob) == sha else "fails its checksum"


def index_problem(db: Path, folder: Path) -> str | None:
    """Why the index on disk cannot be trusted, or None (also None when there is none yet)."""
    if not db.exists():
        leftovers = list(folder.rglob("*.val")) if folder.is_dir() else []
        return f"cache.db is missing but {len(leftovers)} entry files remain" if leftovers else None
    try:
        size = db.stat().st_size
        wal = db.with_name("cache.db-wal")
        if size == 0 and not (wal.exists() and wal.stat().st_size > 0):
            return "cache.db is empty (0 bytes): cut short"
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=60)
        try:
            rows = con.execute("PRAGMA quick_check").fetchall()
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.OperationalError:
        return None  # busy, locked, cannot open: not damage (opening will say what is wrong)
    except sqlite3.DatabaseError as e:  # not a database, malformed
        return f"{type(e).__name__}: {e}"
    except OSError:
        return None
    if rows != [("ok",)]:
        return "quick_check: " + "; ".join(str(r[0]) for r in rows[:3])
    if tables and not {"Cache", "Settings"} <= tables:
        return f"cache.db is not a store index (tables {sorted(tables)})"
    return None


def damaged_rows(db: Path, folder: Path) -> list[tuple[Row, str]]:
    """Every readable row that cannot be trusted, with why."""
    rows, _ = read_rows(db)
    return [(row, why) for row in rows if (why := row_problem(row, folder)) is not None]


def recoverable(folder: Path) -> tuple[dict[str, str | Record], Counts]:
    """What of a moved-aside index verifies, ready to write into a fresh one (key -> checksummed record,
    or the checksum an older version kept for a checkpoint file), and counts of what does not
    (`unverifiable`, `refused_pickles`, `read_error` if the table could not be read whole). Records in
    entry files count even without their row: each names its key."""
    got: dict[str, str | Record] = {}
    counts: Counts = {"unverifiable": 0, "refused_pickles": 0}
    rows, read_error = read_rows(folder / "cache.db")
    for row in rows:
        if not row.raw or row.mode == MODE_PICKLE:
            counts["refused_pickles"] += 1
        elif not isinstance(row.key, str):
            counts["unverifiable"] += 1
        elif row.mode == MODE_RAW and isinstance(row.value, str) and row.key.startswith("ckpt/"):
            got[row.key] = row.value  # verified again when its checkpoint loads
        elif row.mode == MODE_RAW and isinstance(row.value, bytes):
            record = _verified(row.value)
            if record is not None and record[0] in (row.key, ""):
                got[row.key] = record[1]
            else:
                counts["unverifiable"] += 1
    for f in sorted(folder.rglob("*.val")):
        try:
            record = _verified(f.read_bytes())
        except OSError:
            record = None
        if record is not None and record[0]:
            got.setdefault(record[0], record[1])
        else:
            counts["unverifiable"] += 1
    if read_error:
        counts["read_error"] = read_error
    return got, counts


def _verified(data: bytes) -> tuple[str, Record] | None:
    """(key, {"sha", "blob"}) of a framed record whose checksum holds, else None."""
    try:
        key, sha, blob = unframe_record(data)
    except ValueError:
        return None
    return (key, {"sha": sha, "blob": blob}) if sha_hex(blob) == sha else None


def inspect_index(db: Path, folder: Path) -> IndexReport:
    """What the index holds, read without writing: counts, why it cannot be used (`problem`), and every
    record that cannot be trusted, named (`damaged`: key and why)."""
    legacy: dict[str, str] = {}
    out: IndexReport = {"path": str(db), "state": "ok", "problem": index_problem(db, folder), "entries": 0,
                        "results": 0, "jobs": 0, "pickled": 0, "bad_records": 0, "damaged": [],
                        "legacy_shas": legacy}
    if not db.exists():
        out["state"] = "missing"
        return out
    rows, err = read_rows(db)
    if err:
        out["problem"] = err
    if out["problem"]:
        out["state"] = "empty" if db.stat().st_size == 0 else "damaged"
    out["entries"] = len(rows)
    for row in rows:
        why = row_problem(row, folder)
        if why is not None:
            if why == PICKLED:
                out["pickled"] += 1
            else:
                out["bad_records"] += 1
            out["damaged"].append({"key": key_text(row.key), "why": why})
            continue
        assert isinstance(row.key, str)  # row_problem names any other key
        out["results"] += row.key.startswith("result/")
        out["jobs"] += row.key.startswith("job/")
        if row.key.startswith("ckpt/") and isinstance(row.value, str):
            legacy[row.key] = row.value
    if not err:
        stray = unreferenced(folder, {r.filename for r in rows if r.filename is not None})
        out["unreferenced_files"], out["unreferenced_bytes"] = len(stray), sum(size_of(p) for p in stray)
    return out


def referenced_files(db: Path) -> set[str] | None:
    """The entry files the index's rows name; None if the table cannot be read whole."""
    rows, err = read_rows(db)
    return None if err else {r.filename for r in rows if r.filename is not None}


def unreferenced(folder: Path, referenced: set[str]) -> list[Path]:
    """Entry files of ours (framed records) no index row points to, older than a minute (a writer files
    its value just before its row): left by a process killed in between. Anything else is not ours."""
    now = time.time()
    return [p for p in folder.rglob("*.val") if str(p.relative_to(folder)) not in referenced
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

