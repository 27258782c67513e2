"""The token-streaming page in real headless Chromium: proxy -> typed SSE -> browser.

The demo backend's ``stream_tokens`` (the embedded twin of the PyTriton decoupled
model) sends one response per word, 50 ms apart; ``examples/triton_sse.py`` re-serves
them as a typed SSE stream and ``examples/browser/tokens.html`` renders each token as it
arrives (the JS package's SSE-over-fetch reader).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from chromium_cdp import evaluate_page
from live_server import live_server
from triton_helpers import ProxyProcess

from examples.triton_sse import JS_DIST, create_app

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

PAGE_DONE = """new Promise((resolve) => {
  const poll = setInterval(() => {
    if (window.pageDone) { clearInterval(poll); resolve(window.pageDone); }
  }, 20);
}).then(() => document.documentElement.outerHTML)"""


@pytest.fixture(scope="module")
def demo_proxy() -> Iterator[ProxyProcess]:
    proxy = ProxyProcess(["--backend", "demo"])
    yield proxy
    proxy.stop()


def test_page_renders_streamed_tokens(demo_proxy: ProxyProcess, tmp_path: Path) -> None:
    if not (JS_DIST / "index.js").exists():
        pytest.skip("js/dist is not built: `make js` builds it")
    prompt = "tokens arrive in the browser one at a time"
    with live_server(create_app(demo_proxy.target)) as server:
        url = f"{server.url}/tokens?prompt={prompt.replace(' ', '+')}"
        dom: str = evaluate_page(
            url, PAGE_DONE, tmp_path / "profile", screenshot=tmp_path / "page.png"
        )
    assert 'data-state="done"' in dom, dom[-2000:]
    tokens = re.findall(
        r'<li class="token" data-index="(\d+)" data-arrived-ms="(\d+)">([^<]*)</li>', dom
    )
    words = prompt.split()
    assert [t for _, _, t in tokens] == words
    assert [int(i) for i, _, _ in tokens] == list(range(len(words)))
    # Streamed, not delivered at the end: the model waits 50 ms before each token.
    arrived = [int(ms) for _, ms, _ in tokens]
    assert arrived[-1] - arrived[0] >= 50 * (len(words) - 2)
    assert f'data-final="{len(words)}"' in dom
    assert re.search(rf"done: {len(words) + 1} responses, 1 frame", dom)
