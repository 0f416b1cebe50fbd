"""A real browser against a real app: Home -> Chaos, run the tiny preset, wait for the heatmap.

Uses the system Chromium (/usr/bin/chromium); Playwright never downloads a browser here.
The screenshot lands in tests/artifacts/ (git-ignored).
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from waiting import free_port, wait_healthy

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"),
]


def _stop_workers(cache: Path) -> None:
    """Workers run in their own sessions and outlive the server: stop the ones this test started."""
    from twophase_core.execution.jobs import JobManager
    from twophase_core.storage.store import Store

    store = Store(cache)
    try:
        for rec in JobManager(store).list():
            if rec.pid and not rec.finished:
                try:
                    os.killpg(rec.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
    finally:
        store.close()


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


@pytest.fixture
def app_url(tmp_path, cache):
    port = free_port()
    env = {**os.environ, "TWOPHASE_CACHE_DIR": str(cache), "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "streamlit.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()
        _stop_workers(cache)


def test_home_to_chaos_runs_tiny_and_draws_the_heatmap(app_url):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(app_url, wait_until="domcontentloaded")
            expect(page.get_by_role("button", name="Run the demo")).to_be_visible(timeout=60_000)
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
            page.wait_for_timeout(1500)  # let plotly finish its transitions before the picture
            page.screenshot(path=str(ARTIFACTS / "browser_chaos_tiny.png"), full_page=True)
        finally:
            browser.close()


def test_a_shared_link_as_the_first_request_gets_the_whole_app(app_url):
    """The first request after a start is a deep link: the page must still come with app.py's navigation."""
    from playwright.sync_api import expect, sync_playwright

    rid = "cone-0123456789abcdef0123"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{app_url}/cone?run={rid}", wait_until="domcontentloaded")
            expect(page.get_by_role("heading", name="Cone Effect")).to_be_visible(timeout=60_000)
            expect(page.get_by_text(f"No run or stored result called {rid}")).to_be_visible(timeout=30_000)
            nav = page.get_by_test_id("stSidebarNav")
            expect(nav.get_by_role("link", name="Linearised training")).to_be_visible(timeout=30_000)
            expect(nav.get_by_role("link", name="app")).to_have_count(0)  # not the old pages/ directory mode
            assert f"run={rid}" in page.url and "/cone" in page.url
        finally:
            browser.close()


def test_sweep_view_draws_the_transition_with_its_interval_and_bands(cache, app_url):
    """A stored sweep (computed as the CLI would) opened by its link: t* table, transition figure, bands."""
    from playwright.sync_api import expect, sync_playwright

    from twophase_core.execution.jobs import JobManager
    from twophase_core.experiments import sweep as S
    from twophase_core.experiments.presets import preset
    from twophase_core.settings import config as conf
    from twophase_core.storage.store import Store

    base = conf.replace(preset("tiny", "chaos"), t0=(0, 5, 10, 20, 30, 40), t1=(60,))
    sweep = S.Sweep(base, S.parse_vary("chaos", ["eps=1e-7,1e-5"]), replicates=2)
    store = Store(cache)
    S.run_sweep(sweep, store)
    rec = S.submit_sweep(JobManager(store), sweep)
    store.close()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"{app_url}/sweeps?sweep={rec['id']}", wait_until="domcontentloaded")
            expect(page.get_by_role("heading", name="The transition: t* and its 95% interval per group")) \
                .to_be_visible(timeout=60_000)
            expect(page.get_by_text("4 of 4 runs done")).to_be_visible(timeout=30_000)
            expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Where the chaos ends", exact=False).first).to_be_visible(timeout=30_000)
            expect(page.get_by_text("95% band over replicates", exact=False).first).to_be_visible(timeout=30_000)
            page.wait_for_timeout(1500)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "browser_sweep.png"), full_page=True)
        finally:
            browser.close()


def test_two_submitted_demo_runs_compared_and_a_cell_click_redraws_the_path(cache, app_url):
    """Issue 9's walk-through: two demo chaos runs with different eps submitted from the CLI, compared
    side by side, and a click on a heatmap cell that redraws the interpolation path."""
    from playwright.sync_api import expect, sync_playwright

    env = {**os.environ, "TWOPHASE_CACHE_DIR": str(cache)}
    ids = []
    for eps in ("1e-7", "1e-6"):
        r = subprocess.run([sys.executable, "-m", "twophase_core", "submit", "chaos", "--preset", "demo", "--eps", eps,
                            "--wait", "--quiet"], capture_output=True, text=True, env=env, timeout=400)
        assert r.returncode == 0, r.stderr[-2000:]
        ids.append(r.stdout.strip().splitlines()[0])
    a, b = ids
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{app_url}/compare?runs={a},{b}", wait_until="domcontentloaded")
            expect(page.locator(".js-plotly-plot .heatmaplayer").first).to_be_visible(timeout=90_000)
            expect(page.get_by_text("eps", exact=False).first).to_be_visible(timeout=30_000)
            page.wait_for_timeout(1500)
            assert page.locator("[data-testid=stException]").count() == 0
            page.screenshot(path=str(ARTIFACTS / "browser_compare_demo.png"), full_page=True)

            page.goto(f"{app_url}/chaos?run={a}", wait_until="domcontentloaded")
            expect(page.locator(".js-plotly-plot .heatmaplayer").first).to_be_visible(timeout=90_000)
            expect(page.get_by_text("Loss along the interpolation path").first).to_be_attached(timeout=30_000)
            page.wait_for_timeout(1500)
            before = page.url.split("cell=")[1].split("&")[0].replace("%2C", ",") if "cell=" in page.url else ""
            # the demo grid: t0 (0, 30, 100, 300) bottom to top, t1 (100 ... 600) left to right
            target, (fx, fy) = (("300,600", (0.9, 0.125)) if before != "300,600" else ("0,100", (0.1, 0.875)))
            area = page.locator("[data-testid=stPlotlyChart]").nth(1).locator(".nsewdrag").first.bounding_box()
            x, y = area["x"] + fx * area["width"], area["y"] + fy * area["height"]
            page.mouse.move(x, y)
            page.wait_for_timeout(300)
            page.mouse.click(x, y)
            t0, t1 = target.split(",")
            title = page.locator(".js-plotly-plot .gtitle", has_text=f"interpolation path, t0={t0}, t1={t1}")
            expect(title).to_be_attached(timeout=30_000)
            assert f"cell={t0}%2C{t1}" in page.url  # the link carries the clicked cell
            page.screenshot(path=str(ARTIFACTS / "browser_chaos_click_demo.png"), full_page=True)
        finally:
            browser.close()
