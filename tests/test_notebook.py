"""The README's notebook example runs as written, and the notebook API's promises hold."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_readme_notebook_example_runs(tmp_path):
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- notebook:start -->", 1)[1].split("<!-- notebook:end -->", 1)[0]
    code = re.search(r"```python\n(.*?)```", block, re.S).group(1)
    env = {"TWOPHASE_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300,
                       cwd=tmp_path)  # another folder: the package, not the working directory, finds things
    assert r.returncode == 0, r.stderr[-3000:]
    from twophase_core.experiments.result import load_result
    from twophase_core.storage.store import Store

    store = Store(tmp_path / "cache")  # both results went to the store the app and the CLI use
    try:
        [key] = store.keys("result/chaos/")
        assert len(store.keys("result/cone/")) == 1
        a = load_result(store, "chaos", key.rsplit("/", 1)[1]).arrays
    finally:
        store.close()
    # the printed pivot is the stored C: a header of t1 values, then one row per t0 (NaN where t1 <= t0)
    header, _, *rows = r.stdout.splitlines()
    assert header.split() == ["t1", *(str(t) for t in a["t1"])]
    assert [int(row.split()[0]) for row in rows] == a["t0"].tolist()
    printed = np.array([[float(v) for v in row.split()[1:]] for row in rows])
    np.testing.assert_allclose(printed, a["C"][0], rtol=1e-5)  # pandas prints 6 significant digits


def test_importing_the_package_does_not_load_torch():
    code = "import sys, twophase_core; from twophase_core import preset, ChaosConfig, Store, Result; " \
           "print('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr


def test_default_store_is_the_same_from_any_folder(tmp_path, monkeypatch):
    from twophase_core.storage.store import default_root

    monkeypatch.delenv("TWOPHASE_CACHE_DIR", raising=False)
    here = default_root()
    monkeypatch.chdir(tmp_path)
    assert default_root() == here == ROOT / "cache"
    monkeypatch.setenv("TWOPHASE_CACHE_DIR", str(tmp_path / "x"))
    assert default_root() == tmp_path / "x"


def test_a_notebook_computes_on_the_engines_threads_and_gets_its_own_back(store, monkeypatch):
    """A result stored under a hash must not depend on the caller's torch thread count (a reduction's order can):
    the notebook API computes on TWOPHASE_THREADS (default 1), as the CLI and the workers do, then restores."""
    import torch

    from twophase_core import preset, run_chaos

    monkeypatch.delenv("TWOPHASE_THREADS", raising=False)
    before = torch.get_num_threads()
    seen: list[int] = []
    torch.set_num_threads(2)
    try:  # every progress call but the last ("done", after the computation) comes from inside it
        run_chaos(preset("tiny", "chaos"), store,
                  progress=lambda f, s: s == "done" or seen.append(torch.get_num_threads()))
        assert torch.get_num_threads() == 2  # the caller's count is back
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}


def test_chaos_dataframe_matches_the_arrays(store):
    from twophase_core import preset, run_chaos

    r = run_chaos(preset("tiny", "chaos"), store)
    df = r.to_dataframe()
    a = r.arrays
    t0s, t1s = list(a["t0"]), list(a["t1"])
    assert list(df.columns[:6]) == ["seed", "t0", "t1", "C", "B", "D"]
    assert len(df) == sum(t1 > t0 for t0 in t0s for t1 in t1s) * len(a["seeds"])
    for row in df.itertuples():
        i, j = t0s.index(row.t0), t1s.index(row.t1)
        assert row.C == a["C"][0, i, j] and row.B == a["B"][0, i, j] and row.D == a["D"][0, i, j]
    assert not np.isnan(df[["C", "B", "D"]].to_numpy()).any()


def test_cone_and_linear_dataframes(store):
    from twophase_core import preset, run_cone, run_linear

    cone = run_cone(preset("tiny", "cone"), store)
    df = cone.to_dataframe()
    m = len(cone.arrays["iters"])
    assert list(df.columns) == ["t_i", "t_j", "S", "G"] and len(df) == m * m
    assert np.array_equal(df["S"].to_numpy().reshape(m, m), cone.arrays["S"])
    assert cone.meta["entk_method"] in ("structured", "jacobian", "ntvp")  # the automatic choice, recorded
    lin = run_linear(preset("tiny", "linear"), store).to_dataframe()
    assert list(lin["switch"]) == sorted(preset("tiny", "linear").switch)
    assert lin["acc_linear"].between(0, 1).all()
