"""twophase deletes only what it wrote: its own naming, its own header, never through a link.

Each test plants what a user keeps beside the store (their files in a storage root they share, a link
where a folder was, a file named like a checkpoint) and checks, byte for byte, that `cache clear`,
`cache repair` and training leave it as it was, while what twophase did write still goes. Bad storage
settings are one line and exit 2, before anything is made.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from twophase_core.execution.run import run_chaos, run_cone
from twophase_core.experiments.presets import preset
from twophase_core.interfaces.cli import main
from twophase_core.settings import config as conf
from twophase_core.storage import upkeep
from twophase_core.storage.errors import StoreError
from twophase_core.storage.files import ENV_OPTIONS, ENV_ROOT
from twophase_core.storage.store import ENV as ENV_CACHE
from twophase_core.storage.store import Store

CHAOS = preset("tiny", "chaos")
KEY = CHAOS.train.trajectory_key()


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (links as their target's name) and its bytes: what must not change."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = f"-> {os.readlink(p)}".encode()
        elif p.is_file():
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def _user_files(folder: Path) -> dict[str, bytes]:
    """A user's own things in a folder, some named as twophase names its files."""
    files = {"keep.txt": b"mine", "userdata/thesis.tex": b"\\section{Intro}", f"{KEY}/notes.txt": b"beside a run",
             "0123456789abcdef0123/t000000005.pt": b"a user's file with a checkpoint's name",
             "0123456789abcdef0123/kernels/t000000001-x.npy": b"a user's npy", "tmpstuff.tmp": b"user temp",
             ".clearing-old": b"left by an old clear"}
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def _cli(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "twophase_core", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_clear_on_a_shared_folder_removes_only_what_twophase_wrote(tmp_path, monkeypatch, capsys):
    """The issue's case: TWOPHASE_STORAGE_ROOT=file:///folder holding the user's keep.txt and thesis."""
    folder = tmp_path / "shared"
    folder.mkdir()
    mine = _user_files(folder)
    monkeypatch.setenv(ENV_ROOT, folder.as_uri())
    store = Store(tmp_path / "cache")
    run_cone(preset("tiny", "cone"), store)  # checkpoints and kernel files
    ours = [p for p in folder.rglob("*") if p.is_file() and str(p.relative_to(folder)) not in mine]
    assert len(ours) > 5 and all(p.read_bytes()[:6] in (b"TPCKPT", b"TPKERN") or p.name == ".lock" for p in ours)
    before = _tree(folder)
    assert main(["cache", "clear", "--dry-run", "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    assert _tree(folder) == before  # a dry run changes nothing
    listed = {line.strip() for line in out.splitlines() if line.startswith("  /")}
    assert {str(p) for p in ours} <= listed and not any(str(folder / m) in listed for m in mine)
    assert main(["cache", "clear", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert _tree(folder) == {name: data for name, data in mine.items()}  # exactly the user's files remain
    assert store.keys() == []  # and the store's results are gone


def test_clear_on_a_whole_bucket_keeps_other_objects_and_the_bucket(tmp_path, s3_root, monkeypatch, capsys):
    _, opts, fs = s3_root
    bucket = s3_root[0].split("/")[2]
    fs.pipe_file(f"{bucket}/other/keep.txt", b"mine")
    fs.pipe_file(f"{bucket}/0123456789abcdef0123/t000000001.pt", b"not ours: no header")
    monkeypatch.setenv(ENV_ROOT, f"s3://{bucket}")
    store = Store(tmp_path / "cache")
    run_chaos(CHAOS, store)
    foreign = [f"{bucket}/0123456789abcdef0123/t000000001.pt", f"{bucket}/other/keep.txt"]
    ours = [k for k in fs.find(bucket) if k not in foreign]
    assert any(k.startswith(f"{bucket}/{KEY}/") for k in ours)  # the base run's, and its branches'
    for action in ("info", "check", "repair"):  # the listing reads the bucket's root correctly
        assert main(["cache", action, "--cache-dir", str(tmp_path / "cache")]) == 0, action
    capsys.readouterr()
    assert main(["cache", "clear", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert f"{len(ours)} checkpoints" in capsys.readouterr().out
    assert sorted(fs.find(bucket)) == foreign
    assert fs.cat_file(f"{bucket}/other/keep.txt") == b"mine" and fs.exists(bucket)


def test_a_storage_root_that_is_a_file_is_refused_and_left_alone(tmp_path):
    afile = tmp_path / "afile"
    afile.write_bytes(b"precious")
    for args in (["cache", "clear"], ["cache", "check"], ["cache", "info"], ["chaos", "--preset", "tiny"]):
        r = _cli([*args, "--cache-dir", str(tmp_path / "cache")], {ENV_ROOT: str(afile)})
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (args, r.stderr)
        assert f"{ENV_ROOT}='{afile}' is invalid: is a file, not a folder" in r.stderr
    assert afile.read_bytes() == b"precious" and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize("root", ["/proc/twophase-cannot-be-made/x", "~nosuchuser-twophase/x"])
@pytest.mark.parametrize("variable", [ENV_ROOT, ENV_CACHE])
def test_a_root_that_cannot_be_made_is_one_line_exit_2(tmp_path, root, variable):
    env = {variable: root}
    args = ["chaos", "--preset", "tiny", "--quiet"] + ([] if variable == ENV_CACHE else ["--cache-dir",
                                                                                       str(tmp_path / "c")])
    r = _cli(args, env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("twophase: error: ") and root in r.stderr
    assert not (tmp_path / "c").exists()  # nothing made


@pytest.mark.parametrize("variable,value,says", [
    (ENV_OPTIONS, "{endpoint: 1}", "is not JSON"),
    (ENV_OPTIONS, '["endpoint_url"]', "give a JSON object"),
    (ENV_ROOT, "file://host/x", "a file URL names no host"),
    (ENV_ROOT, "nope://x", "Protocol not known: nope"),
])
def test_a_malformed_storage_setting_is_one_line_exit_2_before_anything_is_made(tmp_path, variable, value, says):
    env = {ENV_ROOT: "s3://bucket/x", variable: value} if variable == ENV_OPTIONS else {variable: value}
    for args in (["chaos", "--preset", "tiny", "--quiet"], ["cache", "info"]):
        r = _cli([*args, "--cache-dir", str(tmp_path / "c")], env)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (args, r.stderr)
        assert says in r.stderr and variable in r.stderr
    assert not (tmp_path / "c" / "runs").exists()


def test_unknown_s3_options_are_one_line_exit_2(tmp_path, s3_root):
    url, opts, _ = s3_root
    r = _cli(["chaos", "--preset", "tiny", "--quiet", "--cache-dir", str(tmp_path / "c")],
             {ENV_ROOT: url, ENV_OPTIONS: json.dumps({**opts, "no_such_option": 1})})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert ENV_OPTIONS in r.stderr or ENV_ROOT in r.stderr


def test_a_runs_folder_replaced_by_a_link_is_never_cleared_through(tmp_path, capsys):
    """`runs/` replaced by a link to another folder (here one holding real checkpoints): clear removes the
    store's own files and says why it left the link's target alone."""
    elsewhere = tmp_path / "elsewhere"
    store = Store(tmp_path / "first")
    run_chaos(CHAOS, store)
    os.rename(store.files.root, elsewhere)  # real checkpoints, and the user's things beside them
    (elsewhere / "keep.txt").write_bytes(b"mine")
    root = tmp_path / "cache"
    Store(root).close()
    (root / "runs").symlink_to(elsewhere, target_is_directory=True)
    before = _tree(elsewhere)
    assert main(["cache", "clear", "--cache-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert "is a link to" in out and "never deletes through a link" in out
    assert _tree(elsewhere) == before and (root / "runs").is_symlink()


def test_a_run_folder_that_is_a_link_is_never_read_written_or_repaired_through(tmp_path):
    target = tmp_path / "target"
    (target / "kernels").mkdir(parents=True)
    (target / "t000000005.pt").write_bytes(b"someone's file")
    (target / "kernels" / "my.npy").write_bytes(b"someone's kernel")
    before = _tree(target)
    store = Store(tmp_path / "cache")
    store.files.root.mkdir(parents=True)
    (store.files.root / KEY).symlink_to(target, target_is_directory=True)
    report = upkeep.check(store)
    assert report["ok"] and any("a link, not a folder twophase made" in x for x in report["left_alone"])
    assert upkeep.repair(store)["checkpoints_removed"] == [] and upkeep.clear(store)["removed"]["checkpoint"] == 0
    with pytest.raises(StoreError, match=rf"{KEY} is a link, not a folder twophase made"):
        run_chaos(CHAOS, store)
    assert _tree(target) == before


def test_a_lock_that_is_a_link_creates_nothing_outside_the_store(tmp_path):
    store = Store(tmp_path / "cache")
    (store.files.root / KEY).mkdir(parents=True)
    outside = tmp_path / "outside" / "created-by-a-lock"
    outside.parent.mkdir()
    (store.files.root / KEY / ".lock").symlink_to(outside)
    r = _cli(["chaos", "--preset", "tiny", "--quiet", "--cache-dir", str(tmp_path / "cache")])
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and ".lock is a link, not a lock file" in r.stderr
    assert not outside.exists()


def test_a_lock_that_is_a_folder_is_one_line(tmp_path):
    store = Store(tmp_path / "cache")
    (store.files.root / KEY / ".lock").mkdir(parents=True)
    r = _cli(["chaos", "--preset", "tiny", "--quiet", "--cache-dir", str(tmp_path / "cache")])
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and ".lock is a folder, not a lock file" in r.stderr


def test_names_that_only_look_like_checkpoints_never_fail_repair(tmp_path):
    """A file `t-0000001.pt` and a folder `t000000099.pt` in a run folder: not twophase's, so neither a
    problem nor touched; repair ends with exit 0."""
    store = Store(tmp_path / "cache")
    run_chaos(CHAOS, store)
    run_dir = store.files.root / KEY
    (run_dir / "t-0000001.pt").write_bytes(b"x")
    (run_dir / "t000000099.pt").mkdir()
    (run_dir / "t000000099.pt" / "inside").write_bytes(b"y")
    before = _tree(run_dir)
    r = _cli(["cache", "repair", "--cache-dir", str(tmp_path / "cache")])
    assert r.returncode == 0, r.stdout[-2000:]
    assert json.loads(r.stdout)["after"]["ok"] is True
    assert _tree(run_dir) == before and store.checkpoints(KEY) == sorted(set(CHAOS.t0) | set(CHAOS.t1))


def test_a_trajectory_a_live_job_holds_is_left_to_it_by_clear(tmp_path, lock_holder):
    store = Store(tmp_path / "cache")
    run_chaos(CHAOS, store)
    files = sorted((store.files.root / KEY).glob("t*.pt"))
    holder = lock_holder(store.files.lock_path(KEY))
    report = upkeep.clear(store)
    assert all(p.exists() for p in files)  # the base run's, held; its branches' went
    assert any(KEY in x and "in use by a running job" in x for x in report["left_alone"])
    holder.kill()
    holder.wait()
    assert upkeep.clear(store)["removed"]["checkpoint"] == len(files) and not any(p.exists() for p in files)


def test_eps_zero_still_gives_exact_zeros_after_a_clear(tmp_path):
    """Clearing and recomputing changes nothing of the science: the control stays exactly zero."""
    store = Store(tmp_path / "cache")
    cfg = conf.replace(CHAOS, eps=0.0)
    run_chaos(cfg, store)
    upkeep.clear(store)
    again = run_chaos(cfg, store)
    for k in ("C", "B", "D"):
        assert (again.arrays[k] == 0).all(), k
