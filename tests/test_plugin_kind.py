"""A new experiment kind from outside the package (tests/plugins/param_norm.py: the parameter norm at every
checkpoint) runs everywhere a built-in one does, with no edit inside twophase_core: the CLI, a sweep, the store
(a second run is served from it), a job's worker, the Runs page and the generic result page. (Ray: test_ray.py.)

The oracle: the norm of every checkpoint's parameters, computed here with torch.linalg on the same base run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PLUGINS
from streamlit.testing.v1 import AppTest

from twophase_core.experiments.presets import preset
from twophase_core.science.train import Training
from twophase_core.storage.store import Store

APP = str(Path(__file__).resolve().parent.parent / "app.py")
ENV = {"TWOPHASE_PLUGINS": "param_norm",
       "PYTHONPATH": os.pathsep.join(p for p in (str(PLUGINS), os.environ.get("PYTHONPATH", "")) if p)}


def _cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "twophase_core", *args, "--cache-dir", str(cache)],
                          capture_output=True, text=True, env={**os.environ, **ENV}, timeout=300)


def _norms(train: object, checkpoints: list[int], root: Path) -> list[float]:
    """|theta_t|_2 of the base run at each checkpoint, by torch.linalg over every parameter flattened."""
    training = Training(train, Store(root))  # type: ignore[arg-type]
    out = []
    for t in checkpoints:
        params = torch.cat([p.detach().double().flatten() for p in training.base().model(t).parameters()])
        out.append(float(torch.linalg.vector_norm(params)))
    return out


@pytest.mark.slow
def test_a_plugin_kind_runs_from_the_cli_and_is_served_from_the_store_the_second_time(tmp_path):
    cache = tmp_path / "cache"
    r = _cli("pnorm", "--preset", "tiny", "--quiet", "--json", str(tmp_path / "a.json"), cache=cache)
    assert r.returncode == 0, r.stderr
    first = json.loads((tmp_path / "a.json").read_text())
    assert first["t"] == [0, 30, 60]
    np.testing.assert_allclose(first["norm"], _norms(preset("tiny", "chaos").train, [0, 30, 60], tmp_path / "o"),
                               rtol=1e-12)
    again = _cli("pnorm", "--preset", "tiny", "--quiet", "--json", str(tmp_path / "b.json"), cache=cache)
    assert again.returncode == 0, again.stderr
    second = json.loads((tmp_path / "b.json").read_text())
    assert second == first  # the stored result, meta (its wall time, its creation) included
    assert "pnorm" in _cli("--help", cache=cache).stdout.split("{", 1)[1].split("}", 1)[0]


@pytest.mark.slow
def test_a_plugin_kind_sweeps_over_settings_and_replicates(tmp_path):
    r = _cli("sweep", "pnorm", "--preset", "tiny", "--vary", "lr=0.05,0.1", "--replicates", "2", "--quiet",
             "--json", str(tmp_path / "s.json"), cache=tmp_path / "cache")
    assert r.returncode == 0, r.stderr
    sweep = json.loads((tmp_path / "s.json").read_text())
    assert [g["varied"] for g in sweep["groups"]] == [{"lr": 0.05}, {"lr": 0.1}]
    assert all(g["replicates"] == 2 and len(g["norm"]["mean"]) == 3 for g in sweep["groups"])
    by_seed = _norms(preset("tiny", "chaos").train, [0, 30, 60], tmp_path / "o")  # replicate 0 of lr=0.05
    band = sweep["groups"][0]["norm"]
    for i, v in enumerate(by_seed):  # within its group's band (to rounding: the oracle sums in another order)
        assert band["ci_low"][i] * (1 - 1e-12) <= v <= band["ci_high"][i] * (1 + 1e-12)


@pytest.mark.slow
def test_a_plugin_kind_runs_as_a_job_in_its_own_worker_process(tmp_path):
    cache = tmp_path / "cache"
    r = _cli("submit", "pnorm", "--preset", "tiny", "--checkpoints", "0,20,60", "--wait", "--quiet", cache=cache)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    assert job_id.startswith("pnorm-")
    listed = _cli("jobs", cache=cache)
    assert job_id in listed.stdout and "done" in listed.stdout


def test_the_runs_page_and_the_result_page_show_a_plugin_kinds_run(tmp_path, monkeypatch, plugin_kind):
    from twophase_core.execution.run import run_experiment

    cache = tmp_path / "cache"
    monkeypatch.setenv("TWOPHASE_CACHE_DIR", str(cache))
    cfg = preset("tiny", "pnorm")
    result = run_experiment(cfg, Store(cache))
    run_id = f"pnorm-{result.hash}"
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["page"] = "runs"
    at.run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert list(table.loc[table["kind"] == "pnorm", "id"]) == [run_id]  # beside the gallery's seeded runs
    page = AppTest.from_file(APP, default_timeout=120)
    page.query_params.update({"page": "result", "run": run_id})
    page.run()
    assert not page.exception, page.exception
    shown = page.dataframe[0].value
    np.testing.assert_allclose(shown["norm"], _norms(cfg.train, [0, 30, 60], tmp_path / "o"), rtol=1e-12)
