"""What a user waits for, measured in a real browser: from clicking *Run the demo* on a fresh store
to the first live training curve and to the first heatmap cell (Chromium, driven by Playwright).

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
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def bench_demo_in_browser() -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        return {}
    if not Path(CHROMIUM).exists() or not (root / "app.py").exists():
        return {}
    with tempfile.TemporaryDirectory() as d:
        cache = Path(d) / "cache"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
                                 "--server.port", str(port), "--server.address", "127.0.0.1",
                                 "--browser.gatherUsageStats", "false"], cwd=root,
                                env={**os.environ, "TWOPHASE_CACHE_DIR": str(cache)}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
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
                expect(page.get_by_role("button", name="Run the demo")).to_be_visible(timeout=60_000)
                t = time.perf_counter()
                page.get_by_role("button", name="Run the demo").click()
                expect(page.locator(".js-plotly-plot .scatterlayer .trace").first).to_be_visible(timeout=120_000)
                curve = time.perf_counter() - t
                expect(page.locator(".js-plotly-plot .heatmaplayer").first).to_be_visible(timeout=300_000)
                cell = time.perf_counter() - t
                browser.close()
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            _stop_workers(cache)
    return {"demo_first_live_curve_seconds": curve, "demo_first_heatmap_cell_seconds": cell}


def _stop_workers(cache: Path) -> None:
    from twophase_core.execution.jobs import JobManager
    from twophase_core.storage.store import Store

    for r in JobManager(Store(cache)).list():
        if r.pid and not r.finished:
            try:
                os.killpg(r.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
