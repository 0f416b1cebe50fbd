"""A real browser against a real app: Home -> Chaos runs the tiny preset to its heatmap; Run the demo opens its
live training curve; deep links as the first request; a stored sweep; two submitted runs compared and a heatmap
click that redraws the interpolation path.

One Chromium and one Streamlit server (with its store) serve the whole module, each test in a browser context of
its own, and each test leaves no job running there (the next one's jobs would queue behind it); only the deep-link
test starts a server of its own, since what it checks is the first request a fresh server gets. Starting a server
and rendering its first page (the app's imports) took about 6 s a test; now once.

Every run is the tiny preset except the demo's first screen, which only the demo can show (see that test).
Waits are on what the page shows, never on a timer. Uses the system Chromium (/usr/bin/chromium);
Playwright never downloads a browser here. Screenshots land in tests/artifacts/ (git-ignored, except the Lesson in
presentation mode: lesson_present_*.png are committed, to be looked at).
"""

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from waiting import free_port, stop, wait_for, wait_healthy

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,  # a server, a browser and real runs
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]


def _stop_workers(cache: Path) -> None:
    """Workers run in their own sessions and outlive the server: stop the ones started on `cache`, and wait until
    the store says so (every job finished), so that nothing queues behind them."""
    from twophase_core.execution.jobs import JobManager
    from twophase_core.storage.store import Store

    store = Store(cache)
    try:
        jm = JobManager(store)
        for rec in jm.list():
            if rec.finished:
                continue
            if rec.pid is None:
                jm.cancel(rec.id)  # queued: cancelled at once
                continue
            try:
                os.killpg(rec.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        wait_for("every job on the store to be finished", lambda: all(r.finished for r in jm.list()), timeout=30)
    finally:
        store.close()


@contextmanager
def _serving(cache: Path, log: Path) -> Iterator[str]:
    """A Streamlit server of the app on `cache` (its output in `log`): its URL, once it answers."""
    port = free_port()
    env = {**os.environ, "TWOPHASE_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port",
             str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
            yield url
        finally:
            stop(proc)
            _stop_workers(cache)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """The module's server and its store: (URL, cache folder)."""
    folder = tmp_path_factory.mktemp("browser")
    with _serving(folder / "cache", folder / "streamlit.log") as url:
        yield url, folder / "cache"


@pytest.fixture
def cache(server):
    return server[1]


@pytest.fixture
def app_url(server):
    """The module's server; the test's workers are stopped when it ends."""
    yield server[0]
    _stop_workers(server[1])


@pytest.fixture
def fresh_app_url(tmp_path):
    """A server of its own, on an empty store, that nothing has asked anything yet."""
    with _serving(tmp_path / "cache", tmp_path / "streamlit.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module; each test opens its own context (`browser.new_page` or `new_context`)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


def test_home_to_chaos_runs_tiny_and_draws_the_heatmap(app_url, browser):
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    try:
        page.goto(app_url, wait_until="domcontentloaded")
        expect(page.get_by_role("button", name="Open the demo")).to_be_visible(timeout=60_000)
        # Home -> Chaos through the page link in the body
        page.get_by_role("main").get_by_role("link", name="Chaos Effect").click()
        expect(page.get_by_role("heading", name="Chaos Effect")).to_be_visible(timeout=30_000)
        # choose the tiny preset (Streamlit's selectbox is a combobox) and run it
        page.get_by_role("combobox", name="Start from").click()
        page.get_by_role("option", name="tiny", exact=False).first.click()
        expect(page.get_by_role("textbox", name="iterations T")).to_have_value("60", timeout=30_000)
        page.get_by_role("button", name="Run", exact=True).click()
        heatmap = page.locator(".js-plotly-plot .heatmaplayer").first
        expect(heatmap).to_be_visible(timeout=120_000)
        assert "run=chaos-" in page.url  # the URL names the run: a copied link opens this view
        expect(page.get_by_text("status done", exact=False).first).to_be_visible(timeout=60_000)
        # the whole page drawn before the picture: C, B and D, and the path plot at its bottom
        expect(page.locator(".js-plotly-plot .heatmaplayer")).to_have_count(3, timeout=30_000)
        expect(page.locator(".js-plotly-plot .gtitle", has_text="interpolation path")).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "browser_chaos_tiny.png"), full_page=True)
    finally:
        page.context.close()


def test_the_demo_opens_at_once_and_a_lesson_variant_trains_live(app_url, browser):
    """A teacher's two clicks: Open the demo shows the Chaos page with its three heatmaps at once (the demo ships
    in the gallery: nothing trains); the lesson's Try it live starts a real variant, whose page draws the base
    run's training curve live, before any heatmap cell. The variant is not waited for; the fixture stops its
    worker."""
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    try:
        page.goto(app_url, wait_until="domcontentloaded")
        page.get_by_role("button", name="Open the demo").click(timeout=60_000)
        expect(page.get_by_role("heading", name="Chaos Effect")).to_be_visible(timeout=30_000)
        expect(page.locator(".js-plotly-plot .heatmaplayer")).to_have_count(3, timeout=30_000)
        assert "/chaos" in page.url and "run=chaos-" in page.url
        page.screenshot(path=str(ARTIFACTS / "browser_demo_at_once.png"), full_page=True)
        page.goto(f"{app_url}/lesson?step=2", wait_until="domcontentloaded")
        page.get_by_role("button", name="Try it live", exact=False).click(timeout=60_000)
        expect(page.get_by_role("heading", name="Chaos Effect")).to_be_visible(timeout=30_000)
        expect(page.get_by_role("heading", name="Training, live")).to_be_visible(timeout=120_000)
        expect(page.locator(".js-plotly-plot .scatterlayer .trace").first).to_be_visible(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "browser_lesson_live.png"), full_page=True)
    finally:
        page.context.close()


def test_a_shared_link_as_the_first_request_gets_the_whole_app(fresh_app_url, browser):
    """The first request after a start is a deep link: the page must still come with app.py's navigation."""
    from playwright.sync_api import expect

    rid = "cone-0123456789abcdef0123"
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(f"{fresh_app_url}/cone?run={rid}", wait_until="domcontentloaded")
        expect(page.get_by_role("heading", name="Cone Effect")).to_be_visible(timeout=60_000)
        expect(page.get_by_text(f"No run or stored result called {rid}")).to_be_visible(timeout=30_000)
        nav = page.get_by_test_id("stSidebarNav")
        expect(nav.get_by_role("link", name="Linearised training")).to_be_visible(timeout=30_000)
        expect(nav.get_by_role("link", name="app")).to_have_count(0)  # not the old pages/ directory mode
        assert f"run={rid}" in page.url and "/cone" in page.url
    finally:
        page.context.close()


def test_sweep_view_draws_the_transition_with_its_interval_and_bands(cache, app_url, browser):
    """A stored sweep (computed as the CLI would) opened by its link: t* table, transition figure, bands."""
    from playwright.sync_api import expect

    from twophase_core.execution import sweeps as SJ
    from twophase_core.execution.jobs import JobManager
    from twophase_core.experiments import sweep as S
    from twophase_core.experiments.presets import preset
    from twophase_core.settings import config as conf
    from twophase_core.storage.store import Store

    base = conf.replace(preset("tiny", "chaos"), t0=(0, 5, 10, 20, 30, 40), t1=(60,))
    sweep = S.Sweep(base, S.parse_vary("chaos", ["eps=1e-7,1e-5"]), replicates=2)
    store = Store(cache)
    SJ.run_sweep(sweep, store)
    rec = SJ.submit_sweep(JobManager(store), sweep)
    store.close()
    page = browser.new_page(viewport={"width": 1500, "height": 1100})
    try:
        page.goto(f"{app_url}/sweeps?sweep={rec['id']}", wait_until="domcontentloaded")
        expect(page.get_by_role("heading", name="The transition: t* and its 95% interval per group")) \
            .to_be_visible(timeout=60_000)
        expect(page.get_by_text("4 of 4 runs done")).to_be_visible(timeout=30_000)
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=60_000)
        expect(page.get_by_text("Where the chaos ends", exact=False).first).to_be_visible(timeout=30_000)
        expect(page.get_by_text("95% band over replicates", exact=False).first).to_be_visible(timeout=30_000)
        expect(page.get_by_test_id("stPlotlyChart")).to_have_count(2)  # transition and bands: all drawn
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "browser_sweep.png"), full_page=True)
    finally:
        page.context.close()


def test_two_submitted_runs_compared_and_a_cell_click_redraws_the_path(cache, app_url, browser):
    """Issue 9's walk-through on the tiny preset: two chaos runs with different eps submitted from the CLI,
    compared side by side, and a click on a heatmap cell that redraws the interpolation path and goes into
    the link. The tiny grid (t0 0, 20 by t1 30, 60) has cells to click as the demo's has; AppTest cannot
    show that a click reaches Streamlit (plotly cannot select heatmap cells), which is why this runs here."""
    from playwright.sync_api import expect

    env = {**os.environ, "TWOPHASE_CACHE_DIR": str(cache), "TWOPHASE_MAX_JOBS": "2"}  # both run at once
    # neither is the tiny preset's own eps (1e-7), which the Home test runs on this store: both are trained here
    submits = [subprocess.Popen([sys.executable, "-m", "twophase_core", "submit", "chaos", "--preset", "tiny", "--eps",
                                 eps, "--wait", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env) for eps in ("1e-6", "1e-5")]
    ids = []
    try:
        for proc in submits:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-2000:]
            ids.append(out.strip().splitlines()[0])
    finally:
        for proc in submits:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    a, b = ids
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{app_url}/compare?runs={a},{b}", wait_until="domcontentloaded")
        expect(page.locator(".js-plotly-plot .heatmaplayer").first).to_be_visible(timeout=90_000)
        expect(page.get_by_text("eps", exact=False).first).to_be_visible(timeout=30_000)
        # the page ran to its end: C, B, D and the cross-sections, each with CSV, JSON and HTML
        expect(page.get_by_test_id("stDownloadButton")).to_have_count(4 * 3, timeout=30_000)
        assert page.get_by_test_id("stException").count() == 0
        page.screenshot(path=str(ARTIFACTS / "browser_compare_tiny.png"), full_page=True)

        page.goto(f"{app_url}/chaos?run={a}", wait_until="domcontentloaded")
        expect(page.locator(".js-plotly-plot .heatmaplayer").first).to_be_visible(timeout=90_000)
        expect(page.get_by_text("Loss along the interpolation path").first).to_be_attached(timeout=30_000)
        expect(page).to_have_url(re.compile(r"cell=\d+%2C\d+"), timeout=30_000)  # the cell drawn first
        before = page.url.split("cell=")[1].split("&")[0].replace("%2C", ",")
        # t0 (0, 20) bottom to top, t1 (30, 60) left to right: click a cell other than the one drawn
        target, (fx, fy) = (("20,60", (0.75, 0.25)) if before != "20,60" else ("0,30", (0.25, 0.75)))
        area = page.get_by_test_id("stPlotlyChart").nth(1).locator(".nsewdrag").first.bounding_box()
        x, y = area["x"] + fx * area["width"], area["y"] + fy * area["height"]
        page.mouse.move(x, y)
        t0, t1 = target.split(",")
        expect(page.locator(".hoverlayer .hovertext").first).to_be_visible(timeout=10_000)  # over its marker
        page.mouse.click(x, y)
        title = page.locator(".js-plotly-plot .gtitle", has_text=f"interpolation path, t0={t0}, t1={t1}")
        expect(title).to_be_attached(timeout=30_000)
        expect(page).to_have_url(re.compile(f"cell={t0}%2C{t1}"))  # the link carries the clicked cell
        page.screenshot(path=str(ARTIFACTS / "browser_chaos_click_tiny.png"), full_page=True)
    finally:
        page.context.close()


# ---------------------------------------------------------------------------------------------
# Presentation mode on a projector: 1280x720 at 150 % zoom is a CSS viewport of 853x480 at 1.5 device px per CSS px

PROJECTOR = {"viewport": {"width": 853, "height": 480}, "device_scale_factor": 1.5}
MIN_LABEL_PX = 16
# every text label of one plotly figure, with its box in CSS px (skipping empty and hidden ones), and the figure's box
FIGURE_LABELS = r"""(plot) => {
  const box = (r) => ({x: r.left, y: r.top, w: r.width, h: r.height});
  const shown = (el) => {
    for (let e = el; e && e !== plot; e = e.parentElement) {
      const s = getComputedStyle(e);
      if (s.display === 'none' || s.visibility === 'hidden' || parseFloat(s.opacity) === 0) return false;
    }
    return true;
  };
  const clipOf = (el) => {  // the plot area that clips a trace's text (a heatmap's values), if it is clipped
    const sub = el.closest('.cartesianlayer .subplot');
    let clipped = false;
    for (let e = el; sub && e && e !== sub; e = e.parentElement) clipped = clipped || e.hasAttribute('clip-path');
    const area = clipped && plot.querySelector(`.draglayer .${sub.classList[1]} .nsewdrag`);
    return area ? box(area.getBoundingClientRect()) : null;
  };
  const labels = [];
  for (const t of plot.querySelectorAll('.main-svg text')) {
    const text = (t.textContent || '').trim();
    const r = t.getBoundingClientRect();
    if (!text || r.width < 0.5 || r.height < 0.5 || !shown(t)) continue;
    labels.push({text, ...box(r), size: parseFloat(getComputedStyle(t).fontSize), clip: clipOf(t),
                 where: t.parentElement.getAttribute('class') || ''});
  }
  const title = plot.querySelector('.gtitle');
  return {figure: box(plot.getBoundingClientRect()), title: title ? title.textContent : '', labels};
}"""


def _outside(a: dict, b: dict, slack: float) -> bool:
    """Whether box `a` reaches more than `slack` px out of box `b`."""
    return a["x"] < b["x"] - slack or a["y"] < b["y"] - slack or a["x"] + a["w"] > b["x"] + b["w"] + slack \
        or a["y"] + a["h"] > b["y"] + b["h"] + slack


def label_problems(info: dict, slack: float = 0.5) -> list[str]:
    """Labels under MIN_LABEL_PX, cut by the figure's edges or by the plot area that clips them, or overlapping another
    label (boxes that share more than `slack` px both ways: touching is allowed, covering is not)."""
    fig, labels = info["figure"], info["labels"]
    out = [f"{a['text']!r} is {a['size']:g} px" for a in labels if a["size"] < MIN_LABEL_PX]
    out += [f"{a['text']!r} is cut by the figure's edge" for a in labels if _outside(a, fig, slack)]
    out += [f"{a['text']!r} is cut by its plot area" for a in labels if a["clip"] and _outside(a, a["clip"], slack)]
    for k, a in enumerate(labels):
        for b in labels[k + 1:]:
            dx = min(a["x"] + a["w"], b["x"] + b["w"]) - max(a["x"], b["x"])
            dy = min(a["y"] + a["h"], b["y"] + b["h"]) - max(a["y"], b["y"])
            if dx > slack and dy > slack:
                out.append(f"{a['text']!r} ({a['where']}) overlaps {b['text']!r} ({b['where']}) "
                           f"by {dx:.0f}x{dy:.0f} px")
    return out


def _wait_drawn(page, expect, heading: str, charts: int) -> None:
    """Until `heading` is shown, the script run is over and at least `charts` figures are drawn, every one of them."""
    expect(page.get_by_role("heading", name=heading).first).to_be_visible(timeout=60_000)
    page.wait_for_function(
        """(n) => { const app = document.querySelector("[data-testid='stApp']");
                    const c = [...document.querySelectorAll("[data-testid='stPlotlyChart']")];
                    return app && app.getAttribute('data-test-script-state') === 'notRunning' && c.length >= n
                           && c.every(e => e.querySelector('.main-svg .infolayer')); }""",
        arg=charts, timeout=60_000)


def test_presentation_mode_every_figure_is_readable_on_a_projector(cache, app_url, browser):
    """?present=1 at 853x480 CSS px on every page, on the gallery's results (nothing trains): the sidebar is
    collapsed, the page's first primary button is above the fold, and in every figure no label is under 16 px, cut by
    the figure's edge or overlapping another. Each Lesson step is saved as tests/artifacts/lesson_present_N.png (the
    first screen) and lesson_present_N_figure.png (its figure), committed; the mode's toggle is tried last."""
    from playwright.sync_api import expect

    from twophase_core.interfaces import gallery, lesson
    from twophase_core.storage.store import Store

    store = Store(cache)
    gallery.seed(store)  # as the app does on an empty store (where it has not yet), for the run ids
    store.close()
    g = gallery.read()
    one = {name: g.named(name)[0].run_id for name in ("demo-chaos", "demo-cone", "demo-linear", "demo-sweep-chaos",
                                                        "demo-sweep-cone")}
    sweep = {rec["name"]: sid for sid, rec in g.sweeps.items()}
    # (path, heading, figures at least): every page, a result page on the demo's grid and on the denser demo-sweep's
    pages = [("", "Two-phase learning dynamics", 0),
             *[(f"lesson?step={n}", None, 1) for n in range(1, len(lesson.steps()) + 1)],
             (f"chaos?run={one['demo-chaos']}", "Chaos Effect", 6),
             (f"chaos?run={one['demo-sweep-chaos']}", "Chaos Effect", 6),
             (f"cone?run={one['demo-cone']}", "Cone Effect", 5),
             (f"linear?run={one['demo-linear']}", "Linearised training", 1),
             (f"sweeps?sweep={sweep['demo-sweep-chaos']}", "Sweeps", 2),
             (f"sweeps?sweep={sweep['demo-sweep-cone']}", "Sweeps", 1),
             ("runs", "Runs", 0),
             (f"compare?runs={one['demo-chaos']},{one['demo-sweep-chaos']}", "Compare runs", 4),
             (f"compare?runs={one['demo-cone']},{one['demo-sweep-cone']}", "Compare runs", 4)]
    ARTIFACTS.mkdir(exist_ok=True)
    problems: list[str] = []
    page = browser.new_context(**PROJECTOR).new_page()
    try:
        for path, heading, charts in pages:
            sep = "&" if "?" in path else "?"
            page.goto(f"{app_url}/{path}{sep}present=1", wait_until="domcontentloaded")
            if heading is None:  # a lesson step: its title is the heading
                expect(page.get_by_text("Lesson · step", exact=False)).to_be_visible(timeout=60_000)
                heading = page.get_by_role("heading", level=1).first.inner_text().strip()
            _wait_drawn(page, expect, heading, charts)
            assert "present=1" in page.url, path
            expect(page.get_by_test_id("stSidebar")).to_have_attribute("data-collapsed", "true")
            primary = page.locator("[data-testid='stBaseButton-primary']:visible")
            if primary.count():
                box = primary.first.bounding_box()
                if box["y"] + box["height"] > PROJECTOR["viewport"]["height"]:
                    problems.append(f"/{path}: the primary button {primary.first.inner_text()!r} is below the "
                                    f"fold (bottom at {box['y'] + box['height']:.0f} px)")
            for chart in page.locator(".js-plotly-plot").all():
                if not chart.is_visible():
                    continue  # folded away (an expander)
                chart.scroll_into_view_if_needed()
                info = chart.evaluate(FIGURE_LABELS)
                problems += [f"/{path} '{info['title']}': {x}" for x in label_problems(info)]
            if path.startswith("lesson"):  # what the class sees first, and the step's figure
                step = path.split("=")[1]
                page.get_by_test_id("stMain").evaluate("e => e.scrollTo(0, 0)")
                expect(page.get_by_role("button", name="Next")).to_be_in_viewport()
                page.screenshot(path=str(ARTIFACTS / f"lesson_present_{step}.png"), scale="css")
                page.locator(".js-plotly-plot").first.screenshot(
                    path=str(ARTIFACTS / f"lesson_present_{step}_figure.png"), scale="css")
        # the mode survives a page switch: Home's Start the lesson opens the lesson still presenting; the
        # sidebar's toggle turns it off, and out of the link
        page.goto(f"{app_url}/?present=1", wait_until="domcontentloaded")
        page.get_by_role("button", name="Start the lesson").click(timeout=60_000)
        expect(page.get_by_text("Lesson · step 1", exact=False)).to_be_visible(timeout=60_000)
        expect(page).to_have_url(re.compile(r"/lesson\?.*present=1"), timeout=30_000)
        page.get_by_test_id("stExpandSidebarButton").click()
        page.get_by_test_id("stSidebar").get_by_text("Presentation mode").click()
        expect(page).not_to_have_url(re.compile(r"present="), timeout=30_000)
        expect(page.get_by_text("Lesson · step 1", exact=False)).to_be_visible()
    finally:
        page.context.close()
    assert not problems, "\n".join(problems)
