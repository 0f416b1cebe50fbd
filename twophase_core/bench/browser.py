"""What a user waits for, measured in a real browser: from clicking *Open the demo* on a store the gallery did not
fill (so the demo trains live) to the first live training curve and to the first heatmap cell (Chromium, driven by
Playwright), with the app's warm worker ready as it is a few seconds after the page opens, and again without it
(TWOPHASE_WARM_WORKERS=0), so the saving is measured in the same run.

Needs Debian's chromium at /usr/bin/chromium and the `playwright` package (the test extra); returns
nothing where either is missing. Part of `twophase bench`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
NEW_CHART = ".js-plotly-plot:not([data-before])"  # a chart drawn after the click
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def bench_demo_in_browser() -> dict[str, Any]:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return {}
    if not Path(CHROMIUM).exists() or not (ROOT / "app.py").exists():
        return {}
    out: dict[str, Any] = {}
    for warm in (True, False):
        curve, cell, ready = _demo_clicked(warm)
        suffix = "" if warm else "_cold_worker"
        out[f"demo_first_live_curve_seconds{suffix}"] = curve
        out[f"demo_first_heatmap_cell_seconds{suffix}"] = cell
        if warm:
            out["warm_worker_ready_seconds"] = ready
    return out


ROOT = Path(__file__).resolve().parents[2]


def _demo_clicked(warm: bool) -> tuple[float, float, float]:
    """(s to the first live curve, s to the first heatmap cell, s from the server's start to a waiting warm worker)."""
    from playwright.sync_api import expect, sync_playwright

    with tempfile.TemporaryDirectory() as d:
        cache = Path(d) / "cache"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "TWOPHASE_CACHE_DIR": str(cache), "TWOPHASE_GALLERY": "0",
               "TWOPHASE_WARM_WORKERS": "1" if warm else "0"}
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                                 "--server.port", str(port), "--server.address", "127.0.0.1",
                                 "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        ready = float("nan")
        try:
            for _ in range(240):
                try:
                    urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                    break
                except OSError:
                    time.sleep(0.5)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(url, wait_until="domcontentloaded")
                button = page.get_by_role("button", name="Open the demo")
                expect(button).to_be_visible(timeout=60_000)
                if warm:  # a teacher opens the app before the class: the click comes once the worker waits
                    _wait_warm_worker(cache, timeout=180)
                    ready = time.perf_counter() - started
                # charts already on Home (its glance figure) are marked, so only the demo's own count
                page.evaluate("document.querySelectorAll('.js-plotly-plot').forEach(e => e.dataset.before = '1')")
                t = time.perf_counter()
                button.click()
                # visible ones only: the live curve folds into a closed expander once the first cell is there
                _wait_drawn(page, f"{NEW_CHART} .scatterlayer .trace", timeout_s=120)
                curve = time.perf_counter() - t
                _wait_drawn(page, f"{NEW_CHART} .heatmaplayer", timeout_s=300)
                cell = time.perf_counter() - t
                browser.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            _stop_workers(cache)
    return curve, cell, ready


DRAWN = """sel => [...document.querySelectorAll(sel)].some(e => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && getComputedStyle(e).visibility !== "hidden";
})"""


def _wait_drawn(page: Any, selector: str, timeout_s: float) -> None:
    """Until an element of `selector` has a box on screen (a line of one point has none), checked every 0.1 s: a
    locator assertion re-checks at growing intervals (up to 1 s), which adds up to a second to a figure measured in
    seconds, and a check at every painted frame forces a layout each time, slowing the page it measures."""
    page.wait_for_function(DRAWN, arg=selector, polling=100, timeout=timeout_s * 1000)


def _warm_workers(cache: Path) -> list[int]:
    """Pids of the warm workers waiting on this store (their command line names it; they have no job yet)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--warm" in cmd and str(cache).encode() in cmd:
                pids.append(int(d.name))
    return pids


def _wait_warm_worker(cache: Path, timeout: float) -> None:
    """Until a warm worker of this store sleeps reading its pipe (torch loaded, the job id not yet sent)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for pid in _warm_workers(cache):
            try:
                if "pipe" in Path(f"/proc/{pid}/wchan").read_text():
                    return
            except OSError:
                continue
        time.sleep(0.1)
    raise RuntimeError(f"no warm worker was waiting on {cache} after {timeout:.0f} s")


def _stop_workers(cache: Path) -> None:
    from twophase_core.execution.jobs import JobManager
    from twophase_core.storage.store import Store

    for r in JobManager(Store(cache)).list():
        if r.pid and not r.finished:
            try:
                os.killpg(r.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
