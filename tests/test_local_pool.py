"""A local sweep over several processes (execution/local_pool.py): the in-process sweep's bits, a base run trained
once, a cancel that stops every worker and keeps what was trained, a dead worker named in one line."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading

import numpy as np
import pytest
from waiting import set_when, wait_for

from twophase_core.execution.sweeps import run_sweep
from twophase_core.experiments.presets import preset
from twophase_core.experiments.sweep import Sweep, parse_vary
from twophase_core.settings import config as conf
from twophase_core.storage.store import Store


def same_arrays(a, b) -> None:
    assert set(a.results) == set(b.results)
    for h, r in a.results.items():
        for k, v in b.results[h].arrays.items():
            assert np.array_equal(r.arrays[k], v, equal_nan=True), (h, k)


@pytest.mark.slow
def test_two_processes_give_the_in_process_sweeps_bits_and_train_each_base_run_once(tmp_path):
    base = conf.replace(preset("tiny", "chaos"), perturb_seeds=(0,))
    sweep = Sweep(base, parse_vary("chaos", ["eps=1e-6,1e-5"]), replicates=2)  # 2 base runs, 2 points each
    fractions: list[float] = []
    pooled = run_sweep(sweep, Store(tmp_path / "p"), workers=2, progress=lambda f, _s: fractions.append(f))
    here = run_sweep(sweep, Store(tmp_path / "h"))
    assert len(pooled.results) == 4
    same_arrays(pooled, here)
    T = base.train.iterations
    for r in pooled.results.values():  # no point trained a base step: its prepare task did, once
        assert r.meta["executor"] == "local" and r.meta["sgd_steps"] == sum(T - t0 for t0 in base.t0)
    assert fractions == sorted(fractions) and 0 < fractions[0] and fractions[-1] == 1.0
    assert pooled.meta["workers"] == 2
    assert not mp.active_children()  # the pool is gone with the sweep


@pytest.mark.slow
def test_cone_and_linear_sweeps_over_processes_match_in_process(tmp_path):
    for kind, vary in (("linear", "bn_stats=recompute,checkpoint"), ("cone", "n_samples=6,8")):
        sweep = Sweep(preset("tiny", kind), parse_vary(kind, [vary]))
        same_arrays(run_sweep(sweep, Store(tmp_path / f"p{kind}"), workers=2),
                    run_sweep(sweep, Store(tmp_path / f"h{kind}")))


@pytest.mark.slow
def test_a_cancel_stops_every_worker_keeps_the_checkpoints_and_a_rerun_gives_the_same_bits(tmp_path):
    from twophase_core.science.train import Cancelled, CancelToken

    base = conf.replace(preset("tiny", "chaos"), iterations=600, t0=(0, 300), t1=(500, 600), perturb_seeds=(0,))
    sweep = Sweep(base, parse_vary("chaos", ["eps=1e-6,1e-5"]))
    store, token, key = Store(tmp_path / "c"), CancelToken(), base.train.trajectory_key()

    set_when(token, "two checkpoints of the base run", lambda: len(store.checkpoints(key)) >= 2)
    with pytest.raises(Cancelled):
        run_sweep(sweep, store, workers=2, cancel=token)
    assert not mp.active_children()
    assert len(store.checkpoints(key)) >= 2  # what was trained stays
    again = run_sweep(sweep, store, workers=2)
    same_arrays(again, run_sweep(sweep, Store(tmp_path / "fresh")))


@pytest.mark.slow
def test_a_killed_worker_fails_the_sweep_in_one_line(tmp_path):
    from twophase_core.execution.local_pool import WorkerDied

    base = conf.replace(preset("tiny", "chaos"), iterations=600, t0=(0, 300), t1=(600,), perturb_seeds=(0,))
    sweep = Sweep(base, parse_vary("chaos", ["eps=1e-6,1e-5"]))
    store, key = Store(tmp_path / "k"), base.train.trajectory_key()

    def kill_a_worker_once_training() -> None:
        wait_for("a checkpoint of the base run", lambda: store.checkpoints(key), timeout=120)
        for p in mp.active_children():
            os.kill(p.pid, signal.SIGKILL)
            return

    threading.Thread(target=kill_a_worker_once_training, daemon=True).start()
    with pytest.raises(WorkerDied, match="run the sweep again to resume"):
        run_sweep(sweep, store, workers=2)
    assert not mp.active_children()


def test_a_sweep_of_a_few_seconds_stays_in_this_process(tmp_path, monkeypatch):
    monkeypatch.setenv("TWOPHASE_SWEEP_WORKERS", "2")
    res = run_sweep(Sweep(preset("tiny", "chaos")), Store(tmp_path / "s"), workers=None)
    assert res.meta["workers"] == 1 and not mp.active_children()


_FORKSERVER_DURING_PLANNING = """
import os, sys, tempfile
from pathlib import Path
from twophase_core.execution import sweeps
from twophase_core.experiments.presets import preset
from twophase_core.experiments.sweep import Sweep
from twophase_core.storage.store import Store

def forkservers():
    n = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
            cmd = open(f"/proc/{pid}/cmdline", "rb").read()
        except (OSError, ValueError, IndexError):
            continue
        n += ppid == os.getpid() and b"multiprocessing.forkserver" in cmd
    return n

seen, units = [], sweeps.sweep_units
sweeps.sweep_units = lambda todo, store: (seen.append(forkservers()), units(todo, store))[1]
with tempfile.TemporaryDirectory() as d:
    sweeps.run_sweep(Sweep(preset("tiny", "chaos")), Store(Path(d) / "s"), workers=2, progress=lambda f, s: None)
print(seen)
"""


@pytest.mark.slow
def test_the_pools_forkserver_starts_before_the_sweep_is_planned():
    """The forkserver imports torch and the engine for the workers while the driver plans (sweep_units), so the
    first task does not wait for those imports after planning. In a fresh process: a forkserver is a process-wide
    singleton that an earlier test may have started."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _FORKSERVER_DURING_PLANNING], capture_output=True, text=True,
                         timeout=300, check=True).stdout
    assert out.strip().splitlines()[-1] == "[1]"
