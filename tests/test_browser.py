"""The example browser page in real headless Chromium, against a live server.

The page (examples/browser/index.html) reads the JSON SSE endpoint with the
browser's own EventSource and renders each item as a table row; the test dumps
the DOM once the stream ended (Chromium's virtual time waits for the network
to go idle, i.e. for the page to close its EventSource on ``end``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from live_server import live_server

from examples.sse_server import app

pytestmark = pytest.mark.browser


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH: `make chromium` installs Debian's package")


def dump_dom(url: str, profile: Path) -> str:
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=20000",
        "--dump-dom",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_page_renders_the_items_live(tmp_path: Path) -> None:
    with live_server(app) as server:
        dom = dump_dom(f"{server.url}/?frames=6&delay_ms=30", tmp_path)
    assert 'data-state="done"' in dom
    rows = re.findall(r'<tr class="item" data-frame="(\d+)">(.*?)</tr>', dom)
    assert [int(frame) for frame, _ in rows] == list(range(6))
    for _, cells in rows:
        assert re.search(r"<td>float32\[\d, 4\]</td>", cells), cells
        assert re.search(r"<td>([01]\.\d\d ?)+</td>", cells), cells  # scores decoded from base64
    assert re.search(r"model toy-detector-v1, 6 frames", dom)
    assert re.search(r"done: \d+ detections in 6 frames", dom)


def test_page_shows_a_producer_failure(tmp_path: Path) -> None:
    with live_server(app) as server:
        dom = dump_dom(f"{server.url}/?frames=6&delay_ms=20&fail_at=2", tmp_path)
    assert 'data-state="failed"' in dom
    assert "failed: RuntimeError: detector crashed at frame 2" in dom
    rows = re.findall(r'<tr class="item" data-frame="(\d+)">', dom)
    assert [int(frame) for frame in rows] == [0, 1]
