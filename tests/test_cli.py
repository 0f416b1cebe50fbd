"""The command line: overrides, one-line errors with exit code 2, JSON output, reproducible commands."""

import json
import shlex
import subprocess
import sys

import pytest

from twophase_core import config as C
from twophase_core.cli import build_config, command_for, main
from twophase_core.presets import preset


def _args(kind: str, *extra: str):
    import argparse

    from twophase_core.cli import _experiment_parser

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    _experiment_parser(sub, kind, "")
    return parser.parse_args([kind, *extra])


def test_overrides_accept_epochs_and_iterations():
    cfg = build_config("chaos", _args("chaos", "--preset", "demo", "--t0", "0,1ep,2ep5it", "--t1", "600",
                                      "--eps", "1e-6", "--eps-mode", "total-l2", "--seed", "3"))
    ipe = C.iterations_per_epoch(cfg.train)
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
    assert C.config_hash(again) == C.config_hash(cfg)


@pytest.mark.parametrize("argv, needle", [
    (["chaos", "--preset", "tiny", "--t0", "500"], "t0="),
    (["chaos", "--preset", "tiny", "--eps", "-1"], "eps="),
    (["chaos", "--preset", "tiny", "--model", "gpt"], "model="),
    (["chaos", "--preset", "nope"], "preset="),
    (["cone", "--preset", "tiny", "--kernel", "diag"], "kernel="),
    (["chaos", "--preset", "tiny", "--t0", "soon"], "step="),
])
def test_bad_input_is_one_line_and_exit_code_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("twophase: error:") and needle in err[0]


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
