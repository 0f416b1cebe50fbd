"""The gallery that ships with the package, and the lesson built on it (issue 16, items 1, 2 and 5).

The gallery's entries are real results: the demo chaos entry is recomputed here and compared byte for byte (a change
of the engine that changes the pictures cannot land unnoticed); an empty store is seeded with every entry without
torch, so the demo is on screen at once; a damaged file is refused. The lesson draws every step from the gallery
and writes them all into one handout that opens offline."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from twophase_core.execution.run import run_experiment
from twophase_core.experiments.presets import preset
from twophase_core.experiments.result import Result
from twophase_core.interfaces import gallery, lesson
from twophase_core.interfaces.cli import main
from twophase_core.settings import config as conf
from twophase_core.storage.store import Store

APP = str(Path(__file__).resolve().parent.parent / "app.py")


def test_the_gallery_holds_every_entry_small_each_with_its_config_command_and_platform():
    g = gallery.read()
    assert {e.name for e in g.entries} == {*gallery.RUNS, *gallery.SWEEPS}
    assert len(g.named("demo-sweep-chaos")) == len(g.named("demo-sweep-cone")) == 5  # five replicates each
    assert gallery.size() < 5_000_000
    for e in g.entries:
        data = (gallery.FOLDER / e.file).read_bytes()
        assert len(data) == e.bytes and e.command.startswith("twophase ")
        cfg = conf.from_dict(type(preset("demo", e.kind)), e.config)
        assert conf.config_hash(cfg) == e.hash  # the hash as the store keys it, computed again from the config
        assert {"torch", "numpy", "python", "machine", "threads"} <= set(e.platform)
    assert gallery.load(g.named("demo-chaos")[0]).config == conf.to_dict(preset("demo", "chaos"))


@pytest.mark.slow
def test_the_demo_chaos_entry_is_the_engines_result_byte_for_byte(tmp_path):
    """`make test` recomputes the demo's chaos run: same platform, same bytes in every array."""
    entry = gallery.read().named("demo-chaos")[0]
    shipped = gallery.load(entry)
    fresh = run_experiment(preset("demo", "chaos"), Store(tmp_path / "cache"))
    assert sorted(shipped.arrays) == sorted(fresh.arrays)
    for k, v in shipped.arrays.items():
        assert v.dtype == fresh.arrays[k].dtype and v.shape == fresh.arrays[k].shape, k
        assert v.tobytes() == fresh.arrays[k].tobytes(), k
    assert gallery.compare(shipped, fresh, exact=True) == (True, "")


def test_compare_is_bit_for_bit_on_the_same_platform_and_tolerant_only_across():
    a = {"C": np.array([0.5, 1.0, np.nan]), "t0": np.array([0, 30, 100])}
    shipped = Result("chaos", {}, "h", a)
    one_ulp = Result("chaos", {}, "h", {**a, "C": np.nextafter(a["C"], 2.0)})
    far = Result("chaos", {}, "h", {**a, "C": a["C"] * 1.01})
    assert gallery.compare(shipped, one_ulp, exact=True)[0] is False
    assert gallery.compare(shipped, one_ulp, exact=False) == (True, "")
    same, worst = gallery.compare(shipped, far, exact=False)
    assert not same and worst.startswith("C differs by up to 0.01")


def test_an_empty_store_is_seeded_without_torch_and_the_demo_is_served_at_once(tmp_path):
    code = ("import sys, time\n"
            "from twophase_core.execution.jobs import JobManager\n"
            "from twophase_core.experiments.presets import preset\n"
            "from twophase_core.interfaces import gallery\n"
            "from twophase_core.storage.store import Store\n"
            f"store = Store({str(tmp_path / 'cache')!r})\n"
            "added = gallery.seed(store)\n"
            "t = time.monotonic()\n"
            "rec = JobManager(store).submit(preset('demo', 'chaos'))\n"
            "print(len(added), rec.status, rec.stage, 'torch' in sys.modules, round(time.monotonic() - t, 1))\n"
            "print(len(gallery.seed(store)))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.splitlines()
    n, status, *stage, torch_loaded, seconds = first.split()
    assert int(n) == len(gallery.read().entries) and status == "done" and " ".join(stage) == "served from the store"
    assert torch_loaded == "False" and float(seconds) < 5
    assert second == "0"  # a second seeding adds nothing: a stored result is never replaced


def test_a_damaged_gallery_file_is_refused_not_shown(tmp_path):
    folder = tmp_path / "gallery"
    shutil.copytree(gallery.FOLDER, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    entry = gallery.read(folder).named("demo-chaos")[0]
    data = bytearray((folder / entry.file).read_bytes())
    data[-100] ^= 1
    (folder / entry.file).write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match its checksum"):
        gallery.load(entry, folder)


def test_gallery_list_names_every_entry(capsys):
    assert main(["gallery", "list"]) == 0
    out = capsys.readouterr().out
    assert all(e.run_id in out for e in gallery.read().entries)


# ---------------------------------------------------------------------------------------------
# The lesson


def test_every_lesson_step_draws_from_the_gallery_and_says_what_to_notice_and_ask():
    steps = lesson.steps()
    assert [s.key for s in steps] == ["question", "chaos", "barrier", "disagreement", "cone", "transition", "linear"]
    for s in steps:
        fig = s.figure()
        assert fig.data and s.notice and s.question.endswith("?"), s.key
    cone = gallery.load(gallery.read().named("demo-cone")[0])
    assert f"{cone.meta['cone_angle_deg']:.0f} degrees" in steps[4].notice
    t, stopped, lin, _ = lesson.linear_numbers()
    assert f"{lin:.3f}" in steps[6].question and f"({stopped:.3f})" in steps[6].question and steps[6].answer


def test_the_handout_holds_every_step_and_opens_offline(tmp_path):
    out = tmp_path / "lesson.html"
    assert main(["lesson", "--html", str(out)]) == 0
    text = out.read_text()
    assert text.count("<h2>") == 7 and text.count("Plotly.newPlot") >= 7
    assert re.search(r"<script[^>]*\bsrc=", text) is None  # no script fetched from anywhere: plotly's is inline
    assert len(text) > 3_000_000 and text.count("plotly.js v") >= 1


def test_the_lesson_page_walks_its_steps_by_url_and_offers_a_live_variant_with_its_wait(tmp_path, monkeypatch):
    monkeypatch.setenv("TWOPHASE_CACHE_DIR", str(tmp_path / "cache"))
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"page": "lesson", "step": "2"})
    at.run()
    assert not at.exception, at.exception
    assert at.title[0].value == lesson.steps()[1].title
    waits = [c.value for c in at.caption if c.value.startswith("Try it live")]
    assert waits and " s on a 2-core laptop" in waits[0]
    at.button(key="lesson_next").click().run()
    assert at.query_params["step"] == "3" and at.title[0].value == lesson.steps()[2].title


def test_a_seeded_result_says_it_ships_with_twophase_and_how_it_is_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("TWOPHASE_CACHE_DIR", str(tmp_path / "cache"))
    demo = gallery.read().named("demo-chaos")[0]
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params.update({"page": "chaos", "run": demo.run_id})
    at.run()  # the app's job manager fills the empty store from the gallery
    assert not at.exception, at.exception
    [note] = [c.value for c in at.caption if "ships with twophase" in c.value]
    assert f"computed {demo.built}" in note and "twophase gallery verify" in note
    assert len(at.get("plotly_chart")) >= 3  # drawn at once: nothing trained
