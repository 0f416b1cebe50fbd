"""The adaptive t0 grid (issue 17): where each outcome asks for a t0, and a refined tiny sweep within its budget."""

import os
import threading

import pytest
from waiting import wait_for

from twophase_core.execution.refine import proposals, refine_sweep
from twophase_core.experiments import sweep as S
from twophase_core.experiments.presets import preset
from twophase_core.settings import config as conf
from twophase_core.storage.store import Store

GRID = [0, 300, 500, 700, 900, 1200, 1600, 2000]


def test_each_outcome_asks_for_the_t0_it_needs():
    # unresolved between 700 and 900: their geometric middle on the log(1 + t0) axis, by hand sqrt(701 * 901) - 1
    assert proposals(GRID, 3000, {"outcome": "unresolved", "ci_low": 700.0, "ci_high": 900.0}) == ({794}, 3000)
    # still falling at 2000 (1000 iterations before T): t0 = 3000, and T = 4000 so it has as long to grow
    assert proposals(GRID, 3000, {"outcome": "beyond_grid"}) == ({3000}, 4000)
    assert proposals(GRID, 3000, {"outcome": "before_grid"}) == ({int(round((301) ** 0.5 - 1))}, 3000)
    for done in ({"outcome": "found"}, {"outcome": "none"}, None, {"found": True}):
        assert proposals(GRID, 3000, done) == (set(), 3000)
    assert proposals([0, 1, 2], 10, {"outcome": "unresolved", "ci_low": 1.0, "ci_high": 2.0}) == (set(), 10)


@pytest.mark.slow  # trains a tiny sweep three times over: about 20 s here
def test_a_refined_sweep_reuses_its_store_and_stays_within_its_budget(tmp_path):
    base = conf.replace(preset("tiny", "chaos"), t0=(0, 5, 10, 20, 30), t1=(60,))
    sweep = S.Sweep(base, replicates=2)
    store = Store(tmp_path / "cache")
    ref = refine_sweep(sweep, store, budget=1e9)
    assert ref.rounds[0]["t0"] == [0, 5, 10, 20, 30] and ref.spent > 0
    again = refine_sweep(sweep, store, budget=0.0)  # every round is stored now: nothing left to spend
    assert again.spent == 0.0 and [r["t0"] for r in again.rounds] == [r["t0"] for r in ref.rounds]
    tight = refine_sweep(sweep, Store(tmp_path / "other"), budget=1.0)  # the coarse grid, then no more
    assert len(tight.rounds) == 1 and (tight.stopped.startswith("the next round") or len(ref.rounds) == 1)
    assert ref.to_json()["rounds"] == ref.rounds
    with pytest.raises(ValueError):
        refine_sweep(S.Sweep(base, S.parse_vary("chaos", ["t0=0,5|0,10"])), store, 1.0)


@pytest.mark.slow  # trains a tiny sweep twice: about 20 s here
def test_cli_sweep_refine_reports_the_budget_spent(tmp_path, capsys):
    import json

    from twophase_core.interfaces.cli import main

    out = tmp_path / "sweep.json"
    argv = ["sweep", "chaos", "--preset", "tiny", "--replicates", "2", "--t0", "0,5,10,20,30", "--t1", "60",
            "--refine", "5000", "--cache-dir", str(tmp_path / "cache"), "--json", str(out), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    d = json.loads(out.read_text())
    assert d["refine"]["budget"] == 5000 and 0 < d["refine"]["spent"] <= 5000 + d["refine"]["rounds"][0]["units"]
    assert d["refine"]["rounds"][0]["t0"] == [0, 5, 10, 20, 30] and d["base"]["t0"] == d["refine"]["rounds"][-1]["t0"]
    assert "units spent" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# As jobs (the Sweeps page): one driver, each round's points ordinary jobs


class ThreadLauncher:
    """Each job, and a refine's driver, in a thread of this process (torch loaded once, no process started); the
    driver's own jobs come back here too."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.launched: list[str] = []

    def launch(self, job_id: str, cache_dir: str) -> int:
        from twophase_core.execution.jobs import JobManager
        from twophase_core.execution.refine import drive_refine
        from twophase_core.execution.worker import run_job

        def go() -> None:
            store = Store(cache_dir)
            if job_id.startswith("sweep-"):
                drive_refine(store, job_id, JobManager(store, launcher=self), poll_s=0.05)
            else:
                run_job(store, job_id)

        self.launched.append(job_id)
        t = threading.Thread(target=go, name=job_id, daemon=True)
        t.start()
        self.threads.append(t)
        return os.getpid()  # run_job claims its record as this process

    def alive(self, pid: int) -> bool:
        return any(t.is_alive() for t in self.threads)

    def kill(self, pid: int) -> None:
        raise AssertionError("no thread is killed")

    def reap(self) -> None:
        pass

    def exit_status(self, pid: int) -> int | None:
        return None


def _tiny_sweep() -> S.Sweep:
    return S.Sweep(conf.replace(preset("tiny", "chaos"), t0=(0, 5, 10, 20, 30), t1=(60,)), replicates=2)


@pytest.mark.slow  # trains a tiny sweep's two rounds twice (in-process and as jobs): about a minute here
def test_a_refine_run_as_jobs_gives_the_rounds_and_budget_of_the_cli(tmp_path):
    from twophase_core.execution import refine as RF
    from twophase_core.execution.jobs import JobManager

    sweep = _tiny_sweep()
    here = refine_sweep(sweep, Store(tmp_path / "here"), budget=1e9)
    assert len(here.rounds) >= 2  # (the tiny grid asks for a t0 below 5: two rounds)
    store = Store(tmp_path / "jobs")
    launcher = ThreadLauncher()
    rec = RF.submit_refine(JobManager(store, launcher=launcher), sweep, 1e9)
    assert rec["refine"]["start"] == sweep.to_dict() and rec["refine"]["pid"] == os.getpid()

    def ended():
        r = S.load_sweep(store, sweep.id())
        return r if r["refine"]["state"] != "running" else None

    done = wait_for("the refine's driver to finish", ended, timeout=300)
    assert done["refine"]["state"] == "done", done["refine"]
    assert RF.cli_entry(done["refine"]) == here.to_json()  # the same rounds, units, outcomes, spent and stop
    assert done["sweep"] == here.result.sweep.to_dict() and done["runs"] == [p.run_id for p in S.expand(
        here.result.sweep)]
    jm = JobManager(store, launcher=launcher)
    assert all(jm.get(p.run_id).status == "done" for r in here.rounds  # every round's points ran as jobs
               for p in S.expand(S.Sweep(conf.replace(sweep.base, t0=tuple(r["t0"])), (), sweep.seeds, 2)))
    # again with no budget: every round is stored, the driver spends nothing and walks the same grids
    RF.submit_refine(jm, sweep, 0.0)
    again = wait_for("the second driver to finish", ended, timeout=120)
    assert again["refine"]["spent"] == 0.0 and [r["t0"] for r in again["refine"]["rounds"]] == [
        r["t0"] for r in here.rounds]
    assert RF.refine_state(jm, again) == "done"


def test_stopping_a_refine_cancels_its_round_and_says_so(tmp_path):
    """Stop on the Sweeps page: the driver cancels its round's points, ends, and the record says it was stopped
    (not failed); the points of a plain sweep are cancelled the same way."""
    from launchers import IdleLauncher

    from twophase_core.execution import refine as RF
    from twophase_core.execution import sweeps as SJ
    from twophase_core.execution.jobs import JobManager

    store, sweep = Store(tmp_path / "cache"), _tiny_sweep()
    jm = JobManager(store, launcher=IdleLauncher())  # jobs that run and never finish
    RF.submit_refine(jm, sweep, 1e9)
    driver = threading.Thread(target=RF.drive_refine, args=(store, sweep.id(), jm, 0.02), daemon=True)
    driver.start()
    runs = [p.run_id for p in S.expand(sweep)]
    wait_for("the first round's jobs", lambda: all(jm.get(r) is not None for r in runs), timeout=30)
    RF.stop_refine(jm, sweep.id())
    wait_for("the driver to end", lambda: not driver.is_alive(), timeout=30)
    ref = S.load_sweep(store, sweep.id())["refine"]
    assert ref["state"] == "cancelled" and ref["error"] == RF.STOPPED and RF.refine_state(jm, {"refine": ref,
                                                                                               "id": sweep.id()}) \
        == "cancelled"
    assert all(jm.get(r).status == "cancelled" or jm.get(r).cancel_requested is not None for r in runs)
    # a plain sweep: its points queued or running are asked to stop, and only those
    plain = S.Sweep(conf.replace(sweep.base, t0=(0, 10)), replicates=2)
    rec = SJ.submit_sweep(jm, plain)
    assert SJ.cancel_sweep(jm, rec) == len(rec["runs"]) and SJ.cancel_sweep(jm, rec) == 0


def test_a_refine_is_refused_attached_to_or_said_lost_as_its_driver_goes(tmp_path):
    from launchers import FailingLauncher, IdleLauncher

    from twophase_core.execution import refine as RF
    from twophase_core.execution.jobs import JobManager
    from twophase_core.settings.spec import ConfigError

    store = Store(tmp_path / "cache")
    sweep = _tiny_sweep()
    idle = IdleLauncher()
    jm = JobManager(store, launcher=idle)
    for bad, budget in ((S.Sweep(preset("tiny", "cone")), 100.0), (S.Sweep(sweep.base, S.parse_vary(
            "chaos", ["iterations=60,80"])), 100.0), (sweep, -1.0), (sweep, float("nan"))):
        with pytest.raises(ConfigError, match="--refine"):
            RF.submit_refine(jm, bad, budget)
    assert S.list_sweeps(store) == ([], [])  # nothing recorded
    rec = RF.submit_refine(jm, sweep, 500.0)
    assert rec["refine"]["pid"] == 4242 and RF.refine_state(jm, rec) == "running"
    assert RF.submit_refine(jm, sweep, 900.0)["refine"]["budget"] == 500.0  # its driver runs: attached
    assert JobManager(store).list() == []  # the driver queues the points, not the submit
    idle.killed.add(4242)
    assert RF.refine_state(jm, rec) == "lost"
    failed = RF.submit_refine(JobManager(store, launcher=FailingLauncher()), sweep, 500.0)
    assert failed["refine"]["state"] == "failed" and "no room for a worker" in failed["refine"]["error"]
    assert S.load_sweep(store, sweep.id()) == failed
    # the command shown beside it
    from twophase_core.experiments.reproduce import sweep_command

    assert sweep_command(sweep, refine=500.0).endswith("--refine 500 --json sweep.json")


def test_while_a_round_trains_the_page_draws_the_last_finished_one(tmp_path):
    from twophase_core.execution import refine as RF
    from twophase_core.execution.sweeps import run_sweep

    store = Store(tmp_path / "cache")
    first = S.Sweep(conf.replace(preset("tiny", "chaos"), t0=(0, 10), t1=(20,), iterations=20))
    run_sweep(first, store)
    second = S.Sweep(conf.replace(first.base, t0=(0, 3, 10)))
    rec = {"id": first.id(), "sweep": second.to_dict(), "runs": [p.run_id for p in S.expand(second)],
           "refine": {"shown": first.to_dict()}}
    shown = RF.shown_record(rec, store)
    assert shown["sweep"] == first.to_dict() and shown["runs"] == [p.run_id for p in S.expand(first)]
    run_sweep(second, store)
    assert RF.shown_record(rec, store) is rec  # its points are stored now: the round itself


@pytest.mark.slow  # the page starts a real driver process, which runs two rounds of tiny jobs: about a minute here
def test_the_sweeps_page_refines_a_chaos_sweep_and_shows_its_rounds(tmp_path, monkeypatch):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from twophase_core.execution import refine as RF
    from twophase_core.execution.jobs import JobManager

    root = tmp_path / "cache"
    monkeypatch.setenv("TWOPHASE_CACHE_DIR", str(root))
    monkeypatch.setenv("TWOPHASE_WARM_WORKERS", "0")
    monkeypatch.setenv("TWOPHASE_GALLERY", "0")
    at = AppTest.from_file(str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=120)
    at.query_params.update({"page": "sweeps"})
    at.run()
    at.radio(key="sweep_kind").set_value("cone").run()
    assert not [n for n in at.number_input if n.key == "sweep_refine"]  # t0 are a chaos sweep's
    at.radio(key="sweep_kind").set_value("chaos").run()
    at.selectbox(key="sweep_preset").set_value("tiny").run()
    at.text_area(key="sweep_vary_chaos_tiny").set_value("")
    at.text_area(key="sweep_over_chaos_tiny").set_value("t0=0,5,10,20,30\nt1=60")
    at.text_input(key="sweep_reps_tiny").set_value("2")
    at.number_input(key="sweep_refine").set_value(5000)
    [go] = [b for b in at.button if b.label == "Run sweep"]
    go.click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    sweep = _tiny_sweep()
    assert at.query_params.get("sweep") == sweep.id()
    store = Store(root)
    pid = S.load_sweep(store, sweep.id())["refine"]["pid"]
    try:
        done = wait_for("the page's refine to finish",
                        lambda: (r := S.load_sweep(store, sweep.id()))["refine"]["state"] != "running" and r,
                        timeout=300, every=0.5)
    finally:
        try:  # a failing wait leaves no driver behind
            os.killpg(pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
    ref = done["refine"]
    assert ref["state"] == "done" and ref["budget"] == 5000.0 and ref["rounds"][0]["t0"] == [0, 5, 10, 20, 30]
    assert 0 < ref["spent"] <= 5000 + ref["rounds"][0]["units"] and ref["stopped"]
    here = refine_sweep(sweep, store, 5000.0)  # in this process, on what the jobs stored: the same rounds, free
    assert here.spent == 0.0 and here.stopped == ref["stopped"] and set(RF.cli_entry(ref)) == set(here.to_json())
    assert [{**r, "units": 0.0} for r in ref["rounds"]] == here.rounds
    assert all(j.status == "done" for j in JobManager(store).list())
    at.run()
    assert not at.exception
    [ok] = [s.value for s in at.success if "Refined in" in s.value]
    assert f"Refined in {len(ref['rounds'])} rounds" in ok and f"{ref['spent']:,.0f} of 5,000 units spent" in ok
    assert any("--refine 5000" in c.value and "twophase sweep chaos" in c.value for c in at.code)
    [rounds] = [d for d in at.dataframe if "round" in d.value.columns]
    assert list(rounds.value["t0"]) == [", ".join(map(str, r["t0"])) for r in ref["rounds"]]
