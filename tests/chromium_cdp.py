"""Run a page in real headless Chromium and await a JavaScript value through the DevTools protocol.

``--dump-dom`` with a virtual-time budget (tests/test_browser.py) suits pages that finish
on their own; a page that streams with fetch() and waits on timers between reconnections
needs real time, so this drives Chromium over ``--remote-debugging-port`` (websockets, from
uvicorn[standard], speaks the protocol) and awaits a promise the page exposes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import websockets

FLAGS = (
    "--window-size=1000,900",
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium on PATH: `make chromium` installs Debian's package")


def _debugger_port(profile: Path, process: subprocess.Popen[bytes], deadline: float) -> int:
    marker = profile / "DevToolsActivePort"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with {process.returncode}")
        if marker.exists():
            lines = marker.read_text().split()
            if lines:
                return int(lines[0])
        time.sleep(0.05)
    raise TimeoutError("chromium did not open its DevTools port")


class _Retry(Exception):
    """The evaluation hit a page between documents (it was still navigating)."""


async def _call(ws: Any, call_id: int, method: str, params: dict[str, Any], timeout: float) -> Any:
    await ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
    while True:
        message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if message.get("id") == call_id:
            return message


async def _evaluate(
    ws_url: str, expression: str, timeout: float, screenshot: Path | None = None
) -> Any:
    async with websockets.connect(ws_url, max_size=None) as ws:
        params = {"expression": expression, "awaitPromise": True, "returnByValue": True}
        message = await _call(ws, 1, "Runtime.evaluate", params, timeout)
        if screenshot is not None and "error" not in message:
            shot = await _call(ws, 2, "Page.captureScreenshot", {"format": "png"}, timeout)
            screenshot.write_bytes(base64.b64decode(shot["result"]["data"]))
    if "error" in message:
        raise _Retry(str(message["error"]))
    result = message["result"]
    if "exceptionDetails" in result:
        raise AssertionError(f"page script failed: {result['exceptionDetails']}")
    return result["result"].get("value")


def evaluate_page(
    url: str,
    expression: str,
    profile: Path,
    *,
    timeout: float = 90,
    screenshot: Path | None = None,
) -> Any:
    """Open ``url`` in headless Chromium and return the value ``expression`` resolves to.

    ``screenshot``: also save a PNG of the page there, once the value is in.
    """
    deadline = time.monotonic() + timeout
    process = subprocess.Popen(
        [chromium(), *FLAGS, f"--user-data-dir={profile}", url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port = _debugger_port(profile, process, deadline)
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
                pages = [t for t in json.load(answer) if t["type"] == "page"]
            # Evaluate only once the page shows our document, not the initial about:blank;
            # a navigation under way still destroys the context: then try again.
            if pages and pages[0]["url"] == url:
                try:
                    return asyncio.run(
                        _evaluate(
                            pages[0]["webSocketDebuggerUrl"],
                            expression,
                            deadline - time.monotonic(),
                            screenshot,
                        )
                    )
                except _Retry:
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"chromium did not evaluate the page at {url}")
            time.sleep(0.1)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
