"""The store under faults: lost checkpoints, a damaged index, planted pickles, orphan temp files, a full disk."""

from __future__ import annotations

import fcntl
import os
import pickle
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from twophase_core.execution.jobs import JobManager, JobRecord, save_record
from twophase_core.execution.run import run_chaos, run_linear
from twophase_core.experiments.presets import preset
from twophase_core.experiments.result import load_result, result_key
from twophase_core.science.train import Training
from twophase_core.settings import config as conf
from twophase_core.storage import upkeep
from twophase_core.storage.checkpoints import serialize
from twophase_core.storage.errors import StoreError, StoreFull
from twophase_core.storage.store import Store, task_store

TINY = preset("tiny", "chaos").train


def _same_state(a: dict, b: dict) -> None:
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"])
    assert a["iteration"] == b["iteration"] and a["train_loss"] == b["train_loss"]


# ---------------------------------------------------------------------------------------------
# Missing and unreadable checkpoints


def test_missing_checkpoint_is_recomputed_bitwise_from_the_nearest_earlier_one(store):
    run = Training(TINY, store)
    run.base().ensure([10, 20, 30, 40])
    key = run.key
    lost = store.load_checkpoint(key, 30)
    store.checkpoint_path(key, 30).unlink()  # the issue's `rm cache/runs/<key>/t000000030.pt`
    assert store.checkpoints(key) == [10, 20, 40]
    again = Training(TINY, store)
    state = again.base().state(30)
    assert again.steps_done == 10  # from checkpoint 20, not from 0
    assert state.t == 30
    _same_state(lost, store.load_checkpoint(key, 30))  # CPU training is bitwise deterministic


def test_unreadable_checkpoint_is_recomputed_through_the_experiment(store):
    """`twophase linear --preset tiny --switch 30` after losing checkpoint 30: the same result, 10 steps."""
    cfg = conf.replace(preset("tiny", "linear"), switch=(30,), checkpoint_every=10)
    first = run_linear(cfg, store)
    key = cfg.train.trajectory_key()
    path = store.checkpoint_path(key, 30)
    path.write_bytes(path.read_bytes()[:-1] + b"?")  # ours (its header), but it fails its checksum
    store.delete(result_key("linear", first.hash))
    second = run_linear(cfg, store)
    assert second.meta["sgd_steps"] == 10  # from checkpoint 20
    for k in first.arrays:
        np.testing.assert_array_equal(first.arrays[k], second.arrays[k], err_msg=k)


def test_a_file_of_our_name_without_our_header_is_named_and_never_touched(store):
    """A file twophase did not write, at a checkpoint's path: the run stops with one line naming it, and
    the file is neither deleted nor written over (nor is it used)."""
    cfg = conf.replace(preset("tiny", "linear"), switch=(30,), checkpoint_every=10)
    run_linear(cfg, store)
    key = cfg.train.trajectory_key()
    path = store.checkpoint_path(key, 30)
    path.write_bytes(b"my own notes")
    with pytest.raises(StoreError, match=r"t000000030\.pt is not a checkpoint twophase wrote .* move it away"):
        store.load_checkpoint(key, 30)
    report = upkeep.check(store)
    assert report["ok"] and any(x.startswith(f"{path}: not a checkpoint") for x in report["left_alone"])
    assert upkeep.repair(store)["checkpoints_removed"] == []
    assert path.read_bytes() == b"my own notes"


def test_a_checkpoint_that_never_reads_back_says_so(store, monkeypatch):
    run = Training(TINY, store)
    monkeypatch.setattr(store, "load_checkpoint", lambda *a, **k: None)
    with pytest.raises(StoreError, match=r"checkpoint 10 of \w+ was written twice to .*t000000010\.pt.*cache check"):
        run.base().state(10)


def test_checkpoint_files_verify_without_the_index(store):
    run = Training(TINY, store)
    run.base().ensure([10])
    path = store.checkpoint_path(run.key, 10)
    data = bytearray(path.read_bytes())
    assert data.startswith(b"TPCKPT1\n")
    store.cache.clear()  # the index knows nothing about checkpoints
    assert store.load_checkpoint(run.key, 10) is not None
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    assert store.load_checkpoint(run.key, 10) is None and not path.exists()


# ---------------------------------------------------------------------------------------------
# A damaged index


def _damage(db: Path, how: str) -> None:
    data = db.read_bytes()
    if how == "offset16":
        db.write_bytes(data[:16] + b"\xde\xad\xbe\xef" + data[20:])
    elif how == "half":
        db.write_bytes(data[: len(data) // 2])
    else:
        db.write_bytes(b"")


@pytest.mark.parametrize("how", ["offset16", "half", "empty"])
def test_damaged_index_is_moved_aside_and_rebuilt_from_what_verifies(tmp_path, how):
    root = tmp_path / "cache"
    cfg = preset("tiny", "chaos")
    store = Store(root)
    first = run_chaos(cfg, store)
    for i in range(50):  # enough rows that half a file is a real cut
        store.put_json(f"job/filler-{i}", {"i": i, "pad": "x" * 200})
    store.close()
    db = root / "index" / "cache.db"
    size = db.stat().st_size
    _damage(db, how)
    damaged = db.read_bytes()

    looked = Store(root, heal=False)
    report = upkeep.check(looked)
    assert report["ok"] is False and report["problems"][0].startswith("index: ")
    assert db.read_bytes() == damaged  # check changes nothing
    with pytest.raises(StoreError, match="cache repair"):
        looked.keys()

    healed = Store(root)
    assert healed.healed is not None and healed.healed["problem"]
    aside = Path(healed.healed["moved_aside"])
    assert aside.name.startswith("index.damaged-") and (aside / "cache.db").read_bytes() == damaged  # kept
    assert healed.healed["recovered"] >= 1
    got = load_result(healed, "chaos", first.hash)  # final results live in files that verify themselves
    assert got is not None and np.array_equal(got.arrays["C"], first.arrays["C"], equal_nan=True)
    assert upkeep.check(healed)["ok"] is True
    healed.delete(result_key("chaos", first.hash))
    again = run_chaos(cfg, healed)  # checkpoints verify without the index: nothing is trained again
    assert again.meta["sgd_steps"] == 0
    assert np.array_equal(again.arrays["B"], first.arrays["B"], equal_nan=True)
    assert size > 0 and upkeep.info(healed)["damaged_index_copies"] == [str(aside)]
    healed.close()


def test_repair_and_clear_work_on_a_damaged_store(tmp_path):
    root = tmp_path / "cache"
    store = Store(root)
    run_chaos(preset("tiny", "chaos"), store)
    key = TINY.trajectory_key()
    bad = store.checkpoint_path(key, 20)
    data = bad.read_bytes()
    bad.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    store.close()
    _damage(root / "index" / "cache.db", "offset16")

    s = Store(root, heal=False)
    report = upkeep.check(s)
    assert [p.split(":")[0] for p in report["problems"]] == ["index", "checkpoints"]
    assert report["checkpoints"]["bad"] == [str(bad)]
    fixed = upkeep.repair(s)
    assert fixed["rebuilt_index"]["moved_aside"] and fixed["checkpoints_removed"] == [str(bad)]
    assert fixed["after"]["ok"] is True and fixed["after"]["checkpoints"]["verified"] >= 4
    assert s.keys("result/")  # usable again

    _damage(root / "index" / "cache.db", "half")
    cleared = upkeep.clear(Store(root, heal=False))
    assert cleared["bytes_removed"] > 0
    fresh = Store(root)
    assert fresh.keys() == [] and fresh.checkpoints(key) == [] and upkeep.info(fresh)["damaged_index_copies"] == []
    assert upkeep.check(fresh)["ok"] is True


def test_index_damaged_under_a_live_store_is_rebuilt_on_its_next_use(tmp_path):
    """The app holds its Store for hours: damage to cache.db meanwhile is healed, not a traceback per page."""
    root = tmp_path / "cache"
    app = Store(root)
    first = run_chaos(preset("tiny", "chaos"), app)
    app.put_json("job/x", {"a": 1})
    app.cache.close()  # idle: the WAL is folded into cache.db
    _damage(root / "index" / "cache.db", "offset16")
    assert app.keys("result/") == [result_key("chaos", first.hash)]  # healed on the spot
    assert app.healed["problem"] == "DatabaseError: file is not a database" and app.healed["recovered"] >= 1
    assert load_result(app, "chaos", first.hash) is not None
    app.put_json("job/y", {"b": 2})
    assert app.get_json("job/y") == {"b": 2} and upkeep.check(app)["ok"] is True


def test_deleted_index_is_rebuilt_under_a_live_store(tmp_path):
    """`rm cache/index/cache.db*` while the app holds a Store: its next access finds the rebuilt index."""
    root = tmp_path / "cache"
    app = Store(root)
    first = run_chaos(preset("tiny", "chaos"), app)
    before = app.index_id()
    for f in (root / "index").glob("cache.db*"):
        f.unlink()
    assert load_result(app, "chaos", first.hash) is not None
    assert app.index_id() != before and app.healed["recovered"] >= 1


# ---------------------------------------------------------------------------------------------
# Nothing in the store is ever unpickled


class Planted:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_planted_pickle_is_never_executed(store, tmp_path):
    marker, proof = tmp_path / "pwned", tmp_path / "proof"
    payload = pickle.dumps(Planted(marker))
    pickle.loads(pickle.dumps(Planted(proof)))
    assert proof.exists()  # the payload is live: unpickling it runs code
    jm = JobManager(store)
    cfg = preset("tiny", "chaos")
    rec = JobRecord(jm.job_id(cfg), "chaos", conf.config_hash(cfg), conf.to_dict(cfg), status="done")
    save_record(store, rec)
    store.put_blob("result/chaos/big", b"x" * 100_000)  # a value in its own file
    db = store.root / "index" / "cache.db"
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE Cache SET mode = 4, value = ? WHERE key = ?", (payload, f"job/{rec.id}"))
        con.execute("INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count, tag, size, "
                    "mode, filename, value) VALUES (?, 0, 0, NULL, 0, 0, NULL, 0, 4, NULL, ?)",
                    (payload, payload))  # a pickled key too
        (fname,) = con.execute("SELECT filename FROM Cache WHERE key = 'result/chaos/big'").fetchone()
        con.execute("UPDATE Cache SET mode = 4 WHERE key = 'result/chaos/big'")
    con.close()
    (store.index_dir / fname).write_bytes(payload)

    assert jm.get(rec.id) is None  # refused unread, and left where it is
    assert store.get_blob("result/chaos/big") is None
    assert jm.list() == []
    report = upkeep.check(Store(store.root, heal=False))
    assert report["index"]["pickled"] == 3 and report["ok"] is False  # named, never dropped on a read
    assert {d["key"] for d in report["index"]["damaged"]} >= {f"job/{rec.id}", "result/chaos/big"}
    moved = upkeep.repair(store)["records_moved_aside"]
    assert len(moved) == 3 and store.keys() == [] and upkeep.check(store)["ok"] is True
    kept = {Path(m["to"]).read_bytes() for m in moved}  # moved aside whole, never unpickled
    assert payload in kept
    assert not marker.exists()


def test_a_row_pointing_outside_the_index_is_named_and_moved_aside_leaving_its_target_alone(store, tmp_path):
    target = tmp_path / "outside.txt"
    target.write_bytes(b"not the store's")
    store.put_blob("result/chaos/x", b"x")  # a result: in a file of its own
    con = sqlite3.connect(store.db_path)
    with con:
        con.execute("UPDATE Cache SET filename = ? WHERE key = 'result/chaos/x'",
                    (os.path.relpath(target, store.index_dir),))
    con.close()
    assert store.get_blob("result/chaos/x") is None  # refused, never read
    named = upkeep.check(store)["index"]["damaged"]
    assert named == [{"key": "result/chaos/x", "why": "its file is outside the index"}]
    moved = upkeep.repair(store)["records_moved_aside"]
    assert [(m["key"], Path(m["to"]).read_bytes()) for m in moved] == [("result/chaos/x", b"")]
    assert store.keys() == [] and target.read_bytes() == b"not the store's" and upkeep.check(store)["ok"] is True


# ---------------------------------------------------------------------------------------------
# Temp files left by kills


def test_orphan_temp_files_are_cleaned_at_start_and_counted(tmp_path):
    root = tmp_path / "cache"
    Store(root).close()
    d = root / "runs" / "0123456789abcdef0123"
    d.mkdir(parents=True)
    orphan, live, mine = d / "tmpdead.tmp", d / "tmplive.tmp", d / "tmpmine.tmp"
    orphan.write_bytes(b"TPCKPT1\n" + b"x" * 992)  # a checkpoint cut short when its writer was killed
    live.write_bytes(b"TPCK")
    mine.write_bytes(b"a user's own temp file, named like ours")
    old = time.time() - 60
    for p in (orphan, live, mine):
        os.utime(p, (old, old))
    with open(live, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # a writer still at work: never removed
        before = upkeep.check(Store(root, heal=False))["temp_files"]
        assert before == {"in_use": 1, "orphans": 1, "orphan_bytes": 1000}
        s = Store(root)
        info = upkeep.info(s)
    assert not orphan.exists() and live.exists() and mine.exists()
    assert info["orphan_temp_files_removed"] == 1 and info["orphan_temp_bytes_removed"] == 1000
    assert info["temp_files"] == 1


def test_a_killed_checkpoint_writer_leaves_only_an_orphan_the_next_store_removes(tmp_path):
    root = tmp_path / "cache"
    Store(root).close()
    d = root / "runs" / "0123456789abcdef0123"
    d.mkdir(parents=True)
    script = ("import fcntl, os, tempfile, time, sys\n"
              f"fd, p = tempfile.mkstemp(dir={str(d)!r}, suffix='.tmp')\n"
              "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'TPCKPT1\\n' + b'z' * 5000); print(p, flush=True)\n"
              "time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    tmp = Path(p.stdout.readline().strip())
    os.utime(tmp, (time.time() - 60,) * 2)
    Store(root).close()
    assert tmp.exists()  # its writer is alive
    p.kill()
    p.wait()
    assert upkeep.info(Store(root))["orphan_temp_files_removed"] == 1 and not tmp.exists()


def test_a_killed_tasks_scratch_is_removed_by_the_next_task_store_and_nothing_else(tmp_path, monkeypatch):
    """A Ray task killed mid-run never removes its throwaway index; the next task store on the machine does:
    only folders named as task scratch whose process is gone, never through a link."""
    files = Store(tmp_path / "cache").files
    script = ("import sys, time\nfrom twophase_core.storage.files import LocalFiles\n"
              "from twophase_core.storage.store import task_store\n"
              "with task_store(LocalFiles(sys.argv[1])) as s:\n    print(s.root, flush=True)\n    time.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", script, str(files.root)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "TMPDIR": str(tmp_path)})
    killed = Path(p.stdout.readline().strip())
    p.kill()
    p.wait()
    base = tmp_path / f"twophase-tasks-{os.getuid()}"
    assert killed.parent == base and (killed / "index" / "cache.db").is_file()  # left behind: no `finally` ran
    live, other = base / f"{os.getpid()}-abcd1234", base / "notes-abcd1234"  # a live process's; not scratch
    outside = tmp_path / "outside"
    for d in (live, other, outside):
        d.mkdir()
    (outside / "keep.txt").write_bytes(b"mine")
    link = base / f"{p.pid}-link1234"  # named as the dead task's scratch, but a link
    link.symlink_to(outside, target_is_directory=True)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with task_store(files) as store:
        ours = store.root
        assert ours.parent == base and ours.name.startswith(f"{os.getpid()}-")
        assert sorted(p.name for p in base.iterdir()) == sorted([live.name, other.name, link.name, ours.name])
    assert not ours.exists() and link.is_symlink() and (outside / "keep.txt").read_bytes() == b"mine"


# ---------------------------------------------------------------------------------------------
# A full disk


@pytest.fixture
def small_disk(tmp_path):
    """A 20 MB tmpfs (root only); skipped where it cannot be mounted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a 20 MB tmpfs here ({(r.stderr or r.stdout).strip()}): full-disk test skipped")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path, leave: int) -> Path:
    """Fill the filesystem holding `path` until `leave` bytes are free."""
    filler = path / "filler"
    free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
    with open(filler, "wb") as f:
        f.write(b"\0" * max(free - leave, 0))
    return filler


def test_full_disk_is_reported_as_a_full_disk_and_clear_still_works(small_disk):
    root = small_disk / "cache"
    store = Store(root)
    cfg = conf.replace(preset("tiny", "chaos"), checkpoint_every=1)  # 60+ checkpoints of ~13 KB: more than is left
    _fill(small_disk, 300_000)
    with pytest.raises(StoreFull) as e:
        run_chaos(cfg, store)
    msg = str(e.value)
    assert msg.startswith(f"the disk holding the store {root} has ") and "\n" not in msg
    assert re.search(r"free, too little: training \d+ checkpoints of \w+ needs about [\d.]+ [KM]B;", msg), msg
    assert list((root / "runs").rglob("*.tmp")) == []  # nothing half-written left behind
    assert upkeep.check(store)["free_bytes"] >= 0
    cleared = upkeep.clear(store)  # works on a full disk: it only deletes
    assert cleared["root"] == str(root)
    assert Store(root).keys() == [] and store.checkpoints(cfg.train.trajectory_key()) == []


def test_full_disk_mid_write_leaves_no_temp_and_names_the_disk(small_disk):
    root = small_disk / "cache"
    store = Store(root)
    run = Training(TINY, store)
    state = run.pack(run.initial(), None)
    one = len(serialize(state))
    store.release_reserve()
    _fill(small_disk, one // 2)
    with pytest.raises(StoreFull, match=rf"store {root} is full \(.* free\) writing checkpoint 5 of"):
        store.save_checkpoint(run.key, 5, state)
    assert list((root / "runs").rglob("*.tmp")) == [] and store.checkpoints(run.key) == []
    upkeep.clear(store)


def test_a_job_that_fills_the_disk_is_reported_as_such(small_disk, monkeypatch):
    from twophase_core.execution.worker import run_job

    root = small_disk / "cache"
    store = Store(root)
    cfg = conf.replace(preset("tiny", "chaos"), checkpoint_every=1)
    jm = JobManager(store)
    job_id = jm.job_id(cfg)
    save_record(store, JobRecord(job_id, "chaos", conf.config_hash(cfg), conf.to_dict(cfg), created=time.time(),
                                 updated=time.time()))
    monkeypatch.setattr(Store, "require_space", lambda *a, **k: None)  # skip the early check: hit ENOSPC for real
    _fill(small_disk, 200_000)
    assert run_job(store, job_id) == 1
    rec = jm.get(job_id)
    assert rec.status == "failed" and rec.error.startswith(f"the disk holding the store {root} is full ("), rec.error
    assert "died without reporting" not in rec.error and "\n" not in rec.error
    assert list((root / "runs").rglob("*.tmp")) == []
    assert upkeep.clear(store)["bytes_removed"] > 0
    assert Store(root).keys() == []


def test_submit_refuses_a_job_that_cannot_fit(small_disk):
    root = small_disk / "cache"
    store = Store(root)
    run_chaos(preset("tiny", "chaos"), store)  # the base run's checkpoints tell the size of one
    one = store.checkpoint_bytes(TINY.trajectory_key())
    _fill(small_disk, 20 * one)
    big = conf.replace(preset("tiny", "chaos"), checkpoint_every=1, eps=1e-6)  # ~180 more checkpoints
    jm = JobManager(store)
    with pytest.raises(StoreFull, match=rf"store {root} has .* free, too little: job chaos-\w+ \(\d+ checkpoints of"):
        jm.submit(big)
    assert store.keys("job/") == []  # nothing created, nothing started
    assert jm.submit(preset("tiny", "chaos")).status == "done"  # served from the store: no space needed


def test_file_lock_excludes_other_threads_and_is_reentrant(tmp_path):
    import threading

    from twophase_core.storage.locks import file_lock

    path, order, blocked = tmp_path / "k" / ".lock", [], threading.Event()

    def other() -> None:
        with file_lock(path, wait=blocked.set):  # wait() is called while the lock is refused
            order.append("other")

    with file_lock(path):
        with file_lock(path):  # re-entrant in one thread (a branch's start needs the base run)
            t = threading.Thread(target=other)
            t.start()
            assert blocked.wait(10), "the other thread never found the lock held"
            order.append("holder")
    t.join(5)
    assert order == ["holder", "other"]


def test_checkpoints_from_before_the_header_still_load_through_the_index(store):
    """A store written by the previous version: plain torch files, their sha256 in the index."""
    import hashlib
    import io

    run = Training(TINY, store)
    state = run.pack(run.initial(), None)
    buf = io.BytesIO()
    torch.save(state, buf)
    path = store.checkpoint_path(run.key, 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(buf.getvalue())
    with pytest.raises(StoreError, match="not a checkpoint twophase wrote"):  # no checksum anywhere: not trusted
        store.load_checkpoint(run.key, 0)
    assert path.read_bytes() == buf.getvalue()  # nor touched
    store.cache.set(f"ckpt/{run.key}/0", hashlib.sha256(buf.getvalue()).hexdigest())
    _same_state(state, store.load_checkpoint(run.key, 0))
    assert upkeep.check(store)["checkpoints"] == {"runs": 1, "files": 1, "verified": 0, "legacy": 1, "bad": []}


def test_a_store_on_a_disk_with_nothing_free_opens_checks_and_clears(small_disk):
    root = small_disk / "cache"
    store = Store(root)
    run_chaos(preset("tiny", "chaos"), store)
    store.close()
    fd = os.open(_fill(small_disk, 0), os.O_WRONLY | os.O_APPEND)
    with pytest.raises(OSError, match="No space left"):  # the last pages too
        while True:
            os.write(fd, b"\0" * 4096)
    os.close(fd)
    s = Store(root)  # sqlite cannot even open its index here ('disk I/O error'): opening is deferred
    info = upkeep.info(s)  # read-only counts
    assert info["results"] == 1 and info["checkpoints"] >= 4 and info["free_bytes"] < 64 * 1024
    report = upkeep.check(s)
    assert report["checkpoints"]["verified"] >= 4 and report["free_bytes"] < 64 * 1024
    with pytest.raises(StoreFull, match=rf"^the disk holding the store {root} is full \("):
        s.keys()
    fixed = upkeep.repair(s)  # gives up the 1 MiB reserve to work
    assert fixed["after"]["ok"] is True and fixed["checkpoints_removed"] == []
    assert len(s.keys("result/")) == 1
    assert upkeep.clear(s)["bytes_removed"] > 0  # deleting needs no space
    assert Store(root).keys() == []


def test_entry_files_without_a_record_are_reported_and_repaired(store):
    store.put_blob("result/chaos/x", b"kept")
    stray, young = store.index_dir / "ab" / "cd" / "stray.val", store.index_dir / "ab" / "cd" / "young.val"
    stray.parent.mkdir(parents=True, exist_ok=True)
    from twophase_core.storage.records import frame_record, sha_hex

    blob = b"a value whose row was never written (writer killed)"
    stray.write_bytes(frame_record("result/chaos/y", sha_hex(blob), blob))
    young.write_bytes(frame_record("result/chaos/z", sha_hex(b"now"), b"now"))  # its row is being written now
    foreign = stray.with_name("0123456789abcdef0123456789ab.val")
    foreign.write_bytes(b"not a record of ours")
    os.utime(stray, (time.time() - 600,) * 2)
    os.utime(foreign, (time.time() - 600,) * 2)
    report = upkeep.check(store)
    assert report["index"]["unreferenced_files"] == 1 and "1 entry files no record points to" in report["problems"][0]
    fixed = upkeep.repair(store)
    assert fixed["unreferenced_files_removed"] == 1 and not stray.exists() and young.exists()
    assert foreign.read_bytes() == b"not a record of ours"
    assert store.get_blob("result/chaos/x") == b"kept"


def test_a_file_url_storage_root_in_another_folder_holds_the_checkpoints(tmp_path, monkeypatch):
    """TWOPHASE_STORAGE_ROOT=file:///elsewhere: checkpoints go there (a shared filesystem for workers on
    other machines), the index stays in the store, and the result is the same bits."""
    from twophase_core.execution.run import run_chaos
    from twophase_core.experiments.presets import preset
    from twophase_core.storage.files import ENV_ROOT as ENV_STORAGE

    cfg = preset("tiny", "chaos")
    plain = run_chaos(cfg, Store(tmp_path / "plain"))
    shared = tmp_path / "shared folder"
    monkeypatch.setenv(ENV_STORAGE, shared.as_uri())
    store = Store(tmp_path / "cache")
    assert store.files.root == shared.resolve()
    got = run_chaos(cfg, store)
    key = cfg.train.trajectory_key()
    assert (shared / key).is_dir() and not (tmp_path / "cache" / "runs").exists()
    assert store.checkpoints(key) == Store(tmp_path / "plain").checkpoints(key)
    for k in ("C", "B", "D", "train_loss"):
        assert np.array_equal(plain.arrays[k], got.arrays[k], equal_nan=True)
    assert upkeep.clear(store)["root"] == str(tmp_path / "cache")
    assert shared.is_dir() and not any(shared.iterdir())  # every file of ours gone, the root itself kept
