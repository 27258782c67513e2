"""`make demo` end to end: the example server under uvicorn (a subprocess), both clients.

Other segments (gRPC, the Triton proxy) may print more; this checks the SSE/HTTP one.
"""

from __future__ import annotations

import re

import httpx
import pytest
from live_server import live_server

from examples import demo
from examples.shared_types import DETECTIONS
from examples.sse_server import app
from transports import http
from transports.http import StreamResponseError


def test_demo_streams_from_a_real_server_and_stops_it(capsys: pytest.CaptureFixture[str]) -> None:
    demo.main()
    out = capsys.readouterr().out
    assert out.count("header: request") >= 4  # async + sync, SSE + chunked HTTP (+ others)
    assert re.search(r"item 0: boxes float32\[\d, 4\], scores float32\[\d\]", out)
    assert out.count("footer:") >= 4
    assert "read 14 items over SSE and chunked HTTP" in out
    assert "server stopped (exit status 0)" in out


def test_example_server_refuses_bad_parameters_with_400() -> None:
    with live_server(app) as server, httpx.Client(base_url=server.url) as client:
        for query in ("frames=x", "frames=-1", "codec=xml", "fail_at=z"):
            response = client.get(f"/sse/detections?{query}")
            assert response.status_code == 400, query
        url = "/http/detections?codec=xml"
        with (
            pytest.raises(StreamResponseError) as info,
            http.connect(client, "GET", url, DETECTIONS),
        ):
            pass  # pragma: no cover
        assert info.value.status == 400
        assert "codec" in info.value.body
