"""The command line: overrides, one-line errors with exit code 2, JSON output, reproducible commands."""

import json
import os
import shlex
import subprocess
import sys

import pytest

from twophase_core.experiments import registry
from twophase_core.experiments.presets import preset
from twophase_core.experiments.reproduce import command_for
from twophase_core.interfaces.cli import build_config, main
from twophase_core.settings import config as conf


def _args(kind: str, *extra: str):
    import argparse

    from twophase_core.interfaces.cli import _experiment_parser

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    _experiment_parser(sub, kind, "")
    return parser.parse_args([kind, *extra])


def test_overrides_accept_epochs_and_iterations():
    cfg = build_config("chaos", _args("chaos", "--preset", "demo", "--t0", "0,1ep,2ep5it", "--t1", "600",
                                      "--eps", "1e-6", "--eps-mode", "total-l2", "--seed", "3"))
    ipe = conf.iterations_per_epoch(cfg.train)
    assert cfg.t0 == (0, ipe, 2 * ipe + 5) and cfg.t1 == (600,)
    assert cfg.eps == 1e-6 and cfg.eps_mode == "total-l2" and cfg.train.init_seed == 3


@pytest.mark.parametrize("kind, extra", [
    ("chaos", ["--preset", "demo", "--t0", "0,50", "--t1", "600", "--eps", "0", "--model", "mlp"]),
    ("cone", ["--preset", "tiny", "--checkpoints", "0,10,20,30", "--dts", "10", "--kernel", "trace"]),
    ("linear", ["--preset", "tiny", "--switch", "0,10", "--iterations", "50"]),
])
def test_command_for_reproduces_the_config(kind, extra):
    cfg = build_config(kind, _args(kind, *extra))
    line = command_for(cfg, extra[1])
    parts = shlex.split(line)
    assert parts[:2] == ["twophase", kind]
    again = build_config(kind, _args(kind, *[p for p in parts[2:] if p not in ("--json", "out.json")]))
    assert conf.config_hash(again) == conf.config_hash(cfg)


@pytest.mark.parametrize("argv, needle", [
    (["chaos", "--preset", "tiny", "--t0", "500"], "t0="),
    (["chaos", "--preset", "tiny", "--eps", "-1"], "eps="),
    (["chaos", "--preset", "tiny", "--model", "gpt"], "model="),
    (["chaos", "--preset", "nope"], "preset="),
    (["cone", "--preset", "tiny", "--kernel", "diag"], "kernel="),
    (["chaos", "--preset", "tiny", "--t0", "soon"], "t0="),
])
def test_bad_input_is_one_line_and_exit_code_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("twophase: error:") and needle in err[0]


@pytest.mark.slow
def test_chaos_json_and_module_entry_point(tmp_path):
    out = tmp_path / "out.json"
    env = {"TWOPHASE_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-m", "twophase_core", "chaos", "--preset", "tiny", "--eps", "0",
                        "--json", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(out.read_text())
    assert d["t0"] == list(preset("tiny", "chaos").t0)
    assert all(v == 0.0 for row in d["C"] + d["B"] + d["D"] for v in row if v is not None)
    assert d["realized_eps_norm"] == [0.0, 0.0]
    assert "chaos" in r.stdout and "C=0.000e+00" in r.stdout


# ----------------------------------------------------------------------------------------------
# Every setting round-trips: random non-default values -> command_for -> --print-config -> same config

def _random_value(name: str, spec, current, rng, T: int):
    """A valid value of the setting that differs from `current` (bounds from the spec itself)."""
    t = spec.type
    for _ in range(100):
        if t == "choice":
            v = spec.choices[rng.integers(len(spec.choices))]
        elif t == "bool":
            v = not current
        elif t == "text":
            v = f"/data/x{rng.integers(1000)} y"
        elif t == "int":
            hi = min(spec.hi, 200)  # small: sizes are bounded by the data (256 synthetic points)
            v = int(rng.integers(spec.lo, hi + 1))
        elif t == "float":
            lo, hi = spec.lo, min(spec.hi, 10.0)
            v = float(rng.uniform(lo, hi)) if not spec.lo_open else float(rng.uniform(lo, hi)) or hi / 2
            v = min(v, hi * 0.999) if spec.hi_open else v
        elif t == "step":
            v = int(rng.integers(max(int(spec.lo), 1), T))
        elif t == "window":
            v = current
        else:  # steps, ints
            k = int(rng.integers(1, 4))
            v = tuple(sorted({int(x) for x in rng.integers(max(int(spec.lo), 1), T, size=k)}))
        if v != current:
            return v
    return current


@pytest.mark.parametrize("kind", ["chaos", "cone", "linear"])
@pytest.mark.parametrize("draw", range(4))
def test_every_setting_round_trips_through_command_for_and_print_config(kind, draw, capsys):
    import numpy as np

    rng = np.random.default_rng([draw, list(registry.names()).index(kind)])
    base = preset("tiny", kind)
    T = 200
    cfg = conf.replace(base, iterations=T)
    changed = set()
    for name, (spec, _) in conf.settings_of(registry.get(kind).config).items():
        for _ in range(20):  # draw until the whole config is still valid (fields constrain each other)
            v = _random_value(name, spec, conf.flat(cfg)[name], rng, T)
            if name == "device":
                v = "cpu"  # cuda is not on this machine; auto resolves to a concrete device
            if name in ("dataset", "model"):
                continue  # tied to each other and to the data on disk; the other fields vary
            ck = sorted(conf.flat(cfg).get("checkpoints", ()))
            if name == "checkpoints":
                v = tuple(sorted({0, *(int(x) for x in rng.integers(1, T, size=4))}))
            elif name == "references":
                v = tuple(int(x) for x in rng.choice(ck, size=2, replace=False))
            elif name == "dts":
                v = (int(ck[2] - ck[1]),)
            elif name == "cone_window":
                v = (int(ck[1]), int(ck[-1]))
            try:
                trial = conf.replace(cfg, **{name: v})
                conf.validate(trial)
            except conf.ConfigError:
                continue
            cfg = trial
            changed.add(name) if v != conf.flat(base)[name] else None
            break
    fixed = {"dataset", "model", "device"}
    names = set(conf.settings_of(registry.get(kind).config))
    assert len(changed) >= len(names) - len(fixed) - 1, names - changed
    line = command_for(cfg, "tiny")
    argv = shlex.split(line)[1:]
    argv = [p for p in argv if p not in ("--json", "out.json")] + ["--print-config"]
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads(capsys.readouterr().out) == conf.to_dict(cfg)


def test_every_setting_has_a_flag_in_help(capsys):
    for kind in registry.names():
        with pytest.raises(SystemExit):
            main([kind, "--help"])
        out = capsys.readouterr().out
        for name, (spec, _) in conf.settings_of(registry.get(kind).config).items():
            assert spec.flag(name) in out, (kind, name)


def test_the_settings_table_of_the_docs_is_current():
    from pathlib import Path

    from twophase_core.interfaces.cli import settings_table

    readme = (Path(__file__).resolve().parent.parent / "docs" / "settings.md").read_text()
    start, end = "<!-- settings:start -->\n", "<!-- settings:end -->"
    assert start in readme and end in readme, "docs/settings.md lacks the generated settings table"
    block = readme.split(start, 1)[1].split(end, 1)[0]
    assert block.strip() == settings_table().strip(), "regenerate with: twophase settings"


@pytest.mark.parametrize("argv, needle", [
    (["--batch-size", "0"], "batch_size="),
    (["--batch-size", "100000"], "training set"),
    (["--perturb-seeds", "a,b"], "perturb_seeds="),
    (["--perturb-seeds", "1.5"], "perturb_seeds="),
    (["--seed", "1180591620717411303424"], "init_seed="),
    (["--n-alpha", "1000000000000"], "n_alpha="),
    (["--eps", "-1e-7"], "eps="),
    (["--eps", "inf"], "eps="),
    (["--eps", "1e308"], "eps="),
    (["--t0", ""], "t0="),
    (["--t1", ""], "t1="),
    (["--perturb-seeds", ""], "perturb_seeds="),
    (["--t0", "x" * 100_000], "chars"),
    (["--json", "/nonexistent/dir/out.json"], "--json"),
    (["--json", "/tmp"], "--json"),
    (["--json", "/dev/full"], "--json"),
    (["--cache-dir", "/etc/hostname"], "--cache-dir"),
    (["--iterations", "99999999999"], "iterations="),
])
def test_hostile_chaos_flags_fail_before_any_work(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TWOPHASE_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["chaos", "--preset", "tiny", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("twophase: error:") and needle in err[0], err
    assert len(err[0]) < 400
    assert not (tmp_path / "cache").exists()  # nothing was written


def test_lists_split_on_spaces_and_commas_alike(capsys):
    assert main(["chaos", "--preset", "tiny", "--t0", "0 10", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["t0"] == [0, 10]
    assert main(["chaos", "--preset", "tiny", "--t0", "1 2", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["t0"] == [1, 2]


@pytest.mark.parametrize("kind", ["cone"])
def test_cone_window_needs_two_steps(kind, capsys):
    for w in ("1,2,3", "5"):
        assert main([kind, "--preset", "tiny", "--cone-window", w]) == 2
        assert "cone_window=" in capsys.readouterr().err


def test_cache_check_repair_clear_on_a_damaged_index(tmp_path, capsys):
    root = tmp_path / "cache"
    assert main(["linear", "--preset", "tiny", "--cache-dir", str(root), "--json", "-", "--quiet"]) == 0
    first = json.loads(capsys.readouterr().out.splitlines()[0])
    db = root / "index" / "cache.db"
    with open(db, "r+b") as f:  # 4 bytes at offset 16: sqlite's header, as in the issue
        f.seek(16)
        f.write(b"\xff\xff\xff\xff")
    assert main(["cache", "check", "--cache-dir", str(root)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["problems"]
    assert main(["cache", "repair", "--cache-dir", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["after"]["ok"] is True
    assert main(["linear", "--preset", "tiny", "--cache-dir", str(root), "--json", "-", "--quiet"]) == 0
    again = json.loads(capsys.readouterr().out.splitlines()[0])
    assert again["meta"]["created"] == first["meta"]["created"]  # the rebuilt index serves the stored result
    assert main(["cache", "clear", "--cache-dir", str(root)]) == 0
    assert "cleared" in capsys.readouterr().out


@pytest.mark.slow
def test_submit_wait_and_jobs_use_the_apps_job_runner(tmp_path, monkeypatch):
    """`twophase submit` makes the same job the app would (same id), `--wait` follows it, `jobs` lists it."""
    from twophase_core.execution.jobs import JobManager
    from twophase_core.storage.store import Store

    root = tmp_path / "cache"
    env = {**os.environ, "TWOPHASE_CACHE_DIR": str(root)}
    cmd = [sys.executable, "-m", "twophase_core"]
    r = subprocess.run([*cmd, "submit", "chaos", "--preset", "tiny", "--wait", "--quiet"], capture_output=True,
                       text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip().splitlines()[0]
    assert job_id == JobManager.job_id(preset("tiny", "chaos"))  # what the app's Run button would queue
    assert JobManager(Store(root)).get(job_id).status == "done"
    bad = subprocess.run([*cmd, "submit", "chaos", "--preset", "tiny", "--lr", "10000", "--wait", "--quiet"],
                         capture_output=True, text=True, env=env, timeout=240)
    assert bad.returncode == 1 and "failed" in bad.stderr and "non-finite" in bad.stderr
    listed = subprocess.run([*cmd, "jobs"], capture_output=True, text=True, env=env, timeout=60)
    assert job_id in listed.stdout and "done" in listed.stdout and "failed" in listed.stdout


# ----------------------------------------------------------------------------------------------
# Checked before trusted (issue 18): device, environment, ASCII numbers, a closed pipe


@pytest.fixture
def no_cuda(monkeypatch):
    """This machine as one without CUDA, whatever it has."""
    from twophase_core.execution import placement

    monkeypatch.setattr(placement, "cuda_available", lambda: False)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("twophase: error:"), err
    return err[0]


def test_submit_cuda_without_cuda_is_one_line_exit_2_and_queues_no_job(no_cuda, tmp_path, capsys):
    from twophase_core.storage.store import Store

    root = tmp_path / "cache"
    Store(root).close()  # a user's existing store: the refused job must leave no record in it
    assert main(["submit", "chaos", "--preset", "tiny", "--device", "cuda", "--cache-dir", str(root)]) == 2
    line = _one_error_line(capsys)
    assert "device='cuda'" in line and "device=cpu" in line and "--device" in line
    store = Store(root)
    assert list(store.keys("job/")) == []
    store.close()


@pytest.mark.parametrize("argv", [
    ["chaos", "--preset", "tiny", "--device", "cuda", "--print-config"],
    ["sweep", "chaos", "--preset", "tiny", "--vary", "device=cpu,cuda", "--print-config"],
])
def test_a_cuda_run_or_sweep_point_without_cuda_is_refused_even_for_print_config(no_cuda, argv, capsys):
    assert main(argv) == 2
    assert "device='cuda'" in _one_error_line(capsys)


def test_cuda_on_ray_is_left_to_the_cluster_and_auto_is_always_fine(no_cuda, capsys):
    from twophase_core.execution.placement import check_device

    check_device("auto")
    check_device("cuda", "ray")
    assert main(["chaos", "--preset", "tiny", "--device", "cuda", "--executor", "ray", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["device"] == "cuda"


def test_the_cuda_probe_loads_no_torch_into_its_process_and_agrees_with_torch():
    """The app's process asks without importing torch: a child interpreter answers."""
    import torch

    probe = ("import sys; from twophase_core.execution.placement import cuda_available\n"
             "print(cuda_available(), 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(torch.cuda.is_available()), "False"]


@pytest.mark.parametrize("argv", [["chaos", "--preset", "tiny", "--print-config"],
                                  ["submit", "chaos", "--preset", "tiny"]])
def test_a_bad_twophase_executor_is_one_line_exit_2_naming_it(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TWOPHASE_EXECUTOR", "slurm")
    monkeypatch.setenv("TWOPHASE_CACHE_DIR", str(tmp_path / "cache"))
    assert main(argv) == 2
    assert "TWOPHASE_EXECUTOR='slurm'" in _one_error_line(capsys)
    assert not (tmp_path / "cache").exists()
    assert main([*argv, "--executor", "local", "--print-config"]) == 0  # the flag given wins


@pytest.mark.parametrize("value", ["0", "two"])
def test_a_bad_twophase_max_jobs_is_one_line_exit_2_before_the_store_is_made(value, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TWOPHASE_MAX_JOBS", value)
    root = tmp_path / "cache"
    assert main(["submit", "chaos", "--preset", "tiny", "--cache-dir", str(root)]) == 2
    assert "TWOPHASE_MAX_JOBS=" in _one_error_line(capsys)
    assert not root.exists()


@pytest.mark.parametrize("flag, value", [("--lr", "١"), ("--lr", "0.1_0"), ("--lr", "0.1\u00a0"), ("--lr", "Infinity"),
                                         ("--batch-size", "１６"), ("--t0", "0,1_0"), ("--t0", "0\u30005"),
                                         ("--perturb-seeds", "٣")])
def test_numbers_in_other_scripts_or_with_underscores_are_refused(flag, value, capsys):
    assert main(["chaos", "--preset", "tiny", f"{flag}={value}", "--print-config"]) == 2
    assert f"{flag[2:].replace('-', '_')}=" in _one_error_line(capsys)


@pytest.mark.parametrize("argv", [["settings"], ["presets"],
                                  ["sweep", "chaos", "--preset", "tiny", "--print-config"]])
def test_output_into_a_closed_pipe_ends_quietly_with_status_141(argv):
    """The reader is gone before the first write, so every run meets the closed pipe (no race)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run([sys.executable, "-m", "twophase_core", *argv], stdout=write_end, stderr=subprocess.PIPE,
                           text=True, timeout=120)
    finally:
        os.close(write_end)
    assert (r.returncode, r.stderr) == (141, "")


def test_a_reader_that_stops_after_one_line_ends_the_sweep_print_config_quietly():
    """`twophase sweep ... --print-config | head -1`: the config (12,000 seeds, about 150 kB) is larger
    than the pipe (64 kB) and one read, so the writer meets the closed pipe after the first line."""
    alternatives = "|".join(",".join(str(k * 1000 + i) for i in range(600)) for k in range(20))
    p = subprocess.Popen([sys.executable, "-m", "twophase_core", "sweep", "chaos", "--preset", "tiny",
                          "--vary", f"perturb_seeds={alternatives}", "--print-config"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 141
    assert first == "{\n" and "Traceback" not in err and err == ""


@pytest.mark.parametrize("vary, name", [("t0=0,2ep\u00a0", "t0"), ("iterations=٢ep", "iterations"),
                                        ("lr=0.1\u30000.2", "lr"), ("eps=1_0e-7", "eps")])
def test_sweep_values_in_other_scripts_or_with_underscores_are_refused(vary, name, capsys):
    assert main(["sweep", "chaos", "--preset", "tiny", "--vary", vary, "--print-config"]) == 2
    assert f"{name}=" in _one_error_line(capsys)
