"""The example browser page in real headless Chromium, against a live server.

The page (examples/browser/index.html) reads the example server with the JS package
(js/, built by `make js`): detections as SSE over fetch() with binary msgpack frames,
rendered as table rows and boxes, and 2-D float32 heatmaps over chunked HTTP, painted
on a canvas. The test awaits the page's own promise through the DevTools protocol
(tests/chromium_cdp.py), then reads its DOM (and keeps a screenshot in tmp_path).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from chromium_cdp import evaluate_page
from live_server import live_server

from examples.heatmaps import heatmap_values
from examples.sse_server import JS_DIST, app

pytestmark = pytest.mark.browser

PAGE_DONE = """new Promise((resolve) => {
  const poll = setInterval(() => {
    if (window.pageDone) { clearInterval(poll); resolve(window.pageDone); }
  }, 20);
}).then(() => document.documentElement.outerHTML)"""


def dump_dom(url: str, profile: Path) -> str:
    if not (JS_DIST / "index.js").exists():
        pytest.skip("js/dist is not built: `make js` builds it")
    dom: str = evaluate_page(url, PAGE_DONE, profile / "profile", screenshot=profile / "page.png")
    return dom


def test_page_renders_the_items_live(tmp_path: Path) -> None:
    with live_server(app) as server:
        dom = dump_dom(f"{server.url}/?frames=6&delay_ms=30", tmp_path)
    assert 'data-state="done"' in dom
    rows = re.findall(r'<tr class="item" data-frame="(\d+)">(.*?)</tr>', dom)
    assert [int(frame) for frame, _ in rows] == list(range(6))
    for _, cells in rows:
        assert re.search(r"<td>float32\[\d, 4\]</td>", cells), cells
        assert re.search(r"<td>([01]\.\d\d ?)+</td>", cells), cells  # scores: Float32Array views
    assert re.search(r"model toy-detector-v1, 6 frames", dom)
    assert re.search(r"done: \d+ detections in 6 frames", dom)


def test_page_paints_heatmaps_from_a_binary_stream(tmp_path: Path) -> None:
    with live_server(app) as server:
        dom = dump_dom(f"{server.url}/?frames=5&delay_ms=10", tmp_path)
    assert 'data-heat-state="done"' in dom
    expected = heatmap_values(4).astype(np.float64).sum()
    match = re.search(r"5 maps, peak 1\.00, last float32\[48, 64\], sum (\d+\.\d+)", dom)
    assert match is not None, dom
    assert float(match.group(1)) == pytest.approx(expected, abs=1e-3)
    assert (tmp_path / "page.png").stat().st_size > 1000


def test_page_shows_a_producer_failure(tmp_path: Path) -> None:
    with live_server(app) as server:
        dom = dump_dom(f"{server.url}/?frames=6&delay_ms=20&fail_at=2", tmp_path)
    assert 'data-state="failed"' in dom
    assert "failed: RuntimeError: detector crashed at frame 2" in dom
    rows = re.findall(r'<tr class="item" data-frame="(\d+)">', dom)
    assert [int(frame) for frame in rows] == [0, 1]
