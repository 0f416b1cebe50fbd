"""Storage roots: checkpoints in the store's folder, in another folder, or in an object store (S3).

The S3 tests talk to a real S3-compatible server on this machine (moto's, `s3_server` in conftest)
through fsspec's s3fs, the same path a cluster uses against AWS or MinIO.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from twophase_core.experiments.presets import preset
from twophase_core.settings import config as conf
from twophase_core.storage import upkeep
from twophase_core.storage.files import ENV_OPTIONS, ENV_ROOT, LocalFiles, ObjectFiles, StoreError, open_storage
from twophase_core.storage.store import Store

CHAOS = conf.replace(preset("tiny", "chaos"), perturb_seeds=(0, 1))


K, OTHER = "0123456789abcdef0123", "fedcba9876543210fedc"  # trajectory keys, as config.digest writes them
KERNEL = "kernels/t000000010-full-jacobian-cpu-n8-0123456789abcdef0123-s1.npy"


def _listing(files):
    return sorted((e.trajectory, e.name, e.what, e.size) for e in files.scan().entries)


def _exercise(files):
    """The same operations on any storage, and what they gave."""
    seen = {"missing": files.read(K, 7), "empty": (files.iterations(K), _listing(files))}
    files.write(K, 10, b"ten")
    files.write(K, 2, b"two!")
    files.write(OTHER, 0, b"0")
    files.write(K, 10, b"TEN")  # a rewrite replaces the whole file
    files.write(K, KERNEL, b"kernel")  # a file beside the checkpoints: not one of them
    seen["after"] = (files.iterations(K), _listing(files), files.read(K, 10), files.size(K, 2))
    seen["kernel"] = files.read(K, KERNEL)
    files.delete(K, 2)
    files.delete(K, 2)  # twice: nothing to delete is not an error
    seen["deleted"] = (files.iterations(K), files.size(K, 2))
    for e in files.scan().entries:
        files.remove(e)
    seen["removed"] = _listing(files)
    return seen


def test_a_folder_and_an_object_store_answer_alike(tmp_path, s3_root):
    url, opts, _ = s3_root
    local, remote = _exercise(LocalFiles(tmp_path / "ck")), _exercise(ObjectFiles(url, opts))
    assert local == remote
    listed = [(K, KERNEL, "kernel", 6), (K, "t000000002.pt", "checkpoint", 4), (K, "t000000010.pt", "checkpoint", 3),
              (OTHER, "t000000000.pt", "checkpoint", 1)]
    assert local["after"] == ([2, 10], listed, b"TEN", 4)
    assert local["missing"] is None and local["deleted"] == ([10], None) and local["removed"] == []
    assert local["kernel"] == b"kernel"
    assert not any((tmp_path / "ck").iterdir())  # emptied trajectory folders go with their last file


def test_storage_urls_open_what_they_name(tmp_path):
    assert open_storage(str(tmp_path)).root == tmp_path.resolve()
    assert open_storage((tmp_path / "a b").as_uri()).root == (tmp_path / "a b").resolve()
    assert isinstance(open_storage("s3://bucket/prefix"), ObjectFiles)
    with pytest.raises(StoreError, match="names no host"):
        open_storage("file://server/share")


def test_an_s3_storage_root_holds_the_checkpoints_and_gives_the_same_bits(tmp_path, s3_root, capsys):
    from twophase_core.execution.run import run_chaos

    url, _, fs = s3_root
    key = CHAOS.train.trajectory_key()
    store = Store(tmp_path / "cache")
    assert store.files.url == url
    got = run_chaos(CHAOS, store)
    plain = run_chaos(CHAOS, Store(tmp_path / "plain", storage=tmp_path / "plain" / "runs"))
    for k in ("C", "B", "D", "path", "acc_base", "train_loss", "acc"):
        assert np.array_equal(plain.arrays[k], got.arrays[k], equal_nan=True), k
    assert not (tmp_path / "cache" / "runs").exists()  # nothing on the local disk but the index
    objects = fs.find(url)
    assert f"{url[5:]}/{key}/t{max(CHAOS.t1):09d}.pt" in objects
    assert len(objects) == len(list((tmp_path / "plain" / "runs").rglob("t*.pt")))
    assert store.checkpoints(key) == Store(tmp_path / "plain", storage=tmp_path / "plain" / "runs").checkpoints(key)
    report = upkeep.check(store)
    assert report["ok"] and report["storage"] == url and report["checkpoints"]["verified"] == len(objects)
    assert upkeep.info(store)["checkpoints"] == len(objects)
    from twophase_core.interfaces.cli import main

    assert main(["cache", "clear", "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert fs.find(url) == [] and f"and {url}: {len(objects)} checkpoints" in out
    assert fs.exists(url.split("/")[2])  # the bucket stays


def test_a_damaged_object_is_dropped_and_retrained_to_the_same_bytes(tmp_path, s3_root):
    from twophase_core.science.train import Training

    url, _, fs = s3_root
    store = Store(tmp_path / "cache")
    run = Training(CHAOS.train, store)
    run.base().ensure([20, 40])
    obj = f"{url[5:]}/{run.base().key}/t{40:09d}.pt"
    good = fs.cat_file(obj)
    fs.pipe_file(obj, good[:-10] + b"0123456789")  # a flipped tail: fails its checksum
    report = upkeep.check(store)
    assert not report["ok"] and report["checkpoints"]["bad"] == [f"{url}/{run.base().key}/t{40:09d}.pt"]
    assert store.load_checkpoint(run.base().key, 40) is None  # never used; dropped
    assert not fs.exists(obj)
    Training(CHAOS.train, store).base().ensure([20, 40])  # retrained from the checkpoint at 20
    assert fs.cat_file(obj) == good


def test_an_unreachable_object_store_is_an_error_never_a_missing_checkpoint(tmp_path, s3_root):
    """A read that fails for the network is not damage: the checkpoint stays and the error says where."""
    from twophase_core.science.train import Training

    store = Store(tmp_path / "cache")
    run = Training(CHAOS.train, store)
    run.base().ensure([20])

    def down(*a, **k):
        raise ConnectionError("connection reset by peer")

    store.files.fs.cat_file = down
    with pytest.raises(StoreError, match=r"could not be used \(reading checkpoint 20 .*ConnectionError"):
        store.load_checkpoint(run.base().key, 20)
    del store.files.fs.cat_file
    assert store.load_checkpoint(run.base().key, 20) is not None


def test_wrong_storage_settings_are_named_before_any_training(tmp_path, s3_root, monkeypatch):
    from twophase_core.execution.run import run_chaos

    url, opts, fs = s3_root
    monkeypatch.setenv(ENV_ROOT, "s3://no-such-bucket/x")
    with pytest.raises(StoreError, match="no-such-bucket.*bucket does not exist"):
        run_chaos(CHAOS, Store(tmp_path / "a"))
    monkeypatch.setenv(ENV_ROOT, "nope://x")
    with pytest.raises(StoreError, match="Protocol not known: nope"):
        run_chaos(CHAOS, Store(tmp_path / "b"))
    monkeypatch.setenv(ENV_ROOT, url)
    monkeypatch.setenv(ENV_OPTIONS, "{endpoint: 1}")
    with pytest.raises(StoreError, match=f"{ENV_OPTIONS}=.* is not JSON"):
        Store(tmp_path / "c")
    assert fs.find(url) == [] and not any((tmp_path / d / "runs").exists() for d in "ab")
    # the CLI: one line, before training
    env = {**dict(__import__("os").environ), ENV_ROOT: "s3://no-such-bucket/x", ENV_OPTIONS: json.dumps(opts)}
    r = subprocess.run([sys.executable, "-m", "twophase_core", "chaos", "--preset", "tiny", "--quiet", "--cache-dir",
                        str(tmp_path / "cli")], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "storage root s3://no-such-bucket/x could not be used" in r.stderr


def test_linear_and_cone_runs_read_the_object_store_too(tmp_path, s3_root):
    from twophase_core.execution.run import run_cone, run_linear

    url, _, fs = s3_root
    lin, cone = preset("tiny", "linear"), preset("tiny", "cone")
    for run_, cfg in ((run_linear, lin), (run_cone, cone)):
        a = run_(cfg, Store(tmp_path / f"s3-{conf.kind_of(cfg)}"))
        b = run_(cfg, Store(tmp_path / f"plain-{conf.kind_of(cfg)}", storage=tmp_path / "runs"))
        for k, v in a.arrays.items():
            assert np.array_equal(v, b.arrays[k], equal_nan=True), (conf.kind_of(cfg), k)
    assert fs.find(url) and not (tmp_path / "s3-linear" / "runs").exists()


def test_a_cone_run_keeps_its_kernels_and_the_next_one_reads_them(tmp_path, monkeypatch):
    """Kernels are written beside the checkpoints: a second cone on the same checkpoints and samples
    (other views) computes none, and gives what a fresh store computes; a damaged kernel is recomputed."""
    from twophase_core.execution.run import run_cone
    from twophase_core.science import ntk

    first = preset("tiny", "cone")
    its = sorted(first.checkpoints)
    other = conf.replace(first, references=(its[1],), dts=(its[2] - its[1],))
    store = Store(tmp_path / "s")
    a = run_cone(first, store)
    assert a.meta["kernels_reused"] == 0
    kernel_files = sorted((store.files.root / first.train.trajectory_key() / "kernels").glob("*.npy"))
    assert len(kernel_files) == len(its)
    calls = []
    real = ntk.empirical_ntk
    monkeypatch.setattr(ntk, "empirical_ntk", lambda *a, **k: calls.append(1) or real(*a, **k))
    b = run_cone(other, store)
    assert b.meta["kernels_reused"] == len(its) and calls == []
    fresh = run_cone(other, Store(tmp_path / "fresh"))
    for k in ("R", "G", "S", "pca3", "mds2", "ref_curves"):
        assert np.array_equal(b.arrays[k], fresh.arrays[k]), k
    # damage one kernel file: it is never read, but recomputed, and the result does not change
    kernel_files[1].write_bytes(kernel_files[1].read_bytes()[:-8] + b"\0" * 8)
    third = conf.replace(first, references=(its[0], its[-1]))
    calls.clear()
    c = run_cone(third, store)
    assert c.meta["kernels_reused"] == len(its) - 1 and len(calls) == 1
    assert np.array_equal(c.arrays["S"], a.arrays["S"])
    # `cache check` verifies kernel files too, and `repair` removes a bad one
    kernel_files[2].write_bytes(kernel_files[2].read_bytes()[:-1] + b"?")  # ours (its header), damaged
    foreign = kernel_files[3].with_name("t000000099-full-mine-cpu-n1-x-s1.npy")  # our naming, not our file
    foreign.write_bytes(b"not a kernel")
    report = upkeep.check(store)
    assert not report["ok"] and report["kernels"]["bad"] == [str(kernel_files[2])]
    assert report["kernels"]["files"] == len(its) + 1 and report["kernels"]["verified"] == len(its) - 1
    assert any(x.startswith(f"{foreign}: not a kernel twophase wrote") for x in report["left_alone"])
    assert upkeep.repair(store)["kernels_removed"] == [str(kernel_files[2])] and not kernel_files[2].exists()
    assert upkeep.check(store)["ok"] and foreign.read_bytes() == b"not a kernel"


def test_submitting_a_job_never_lists_the_object_store(tmp_path, s3_root):
    """The free-space check at submit (the app's process) has no disk to check on an object store: it
    must not list the bucket (no network wait in the page, no s3fs needed there)."""
    from twophase_core.execution.jobs import JobManager

    store = Store(tmp_path / "cache")

    def no_network(*a, **k):
        raise AssertionError("the submit path listed the object store")

    store.files.iterations = store.files.listing = store.files.size = no_network
    JobManager(store)._check_space(CHAOS, "job-x")  # returns without a look at the bucket
    local = Store(tmp_path / "local", storage=tmp_path / "runs")
    local.files.iterations = no_network
    with pytest.raises(AssertionError, match="listed"):
        JobManager(local)._check_space(CHAOS, "job-y")  # a folder is checked (the oracle: the check runs)


def test_resuming_from_an_object_store_never_retrains_a_stored_checkpoint(tmp_path, s3_root):
    """A second process (another Store, another Run) extends the run from what the bucket holds: the
    SGD steps it takes are only the new ones, and the bits are those of an unbroken run."""
    from twophase_core.science.train import Training

    first = Training(CHAOS.train, Store(tmp_path / "a"))
    first.base().ensure([20, 40])
    assert first.steps_done == 40
    again = Training(CHAOS.train, Store(tmp_path / "b"))  # a fresh index: only the bucket is shared
    again.base().ensure([20, 40, 60])
    assert again.steps_done == 20
    unbroken = Training(CHAOS.train, Store(tmp_path / "c", storage=tmp_path / "runs"))
    unbroken.base().ensure([60])
    a, b = again.base().state(60).model.state_dict(), unbroken.base().state(60).model.state_dict()
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
