"""`make demo` end to end: the example server under uvicorn (a subprocess), both clients.

Other segments (gRPC, the Triton proxy) may print more; this checks the SSE/HTTP one.
"""

from __future__ import annotations

import re

import pytest

from examples import demo


def test_demo_streams_from_a_real_server_and_stops_it(capsys: pytest.CaptureFixture[str]) -> None:
    demo.main()
    out = capsys.readouterr().out
    assert out.count("header: request") >= 4  # async + sync, SSE + chunked HTTP (+ others)
    assert re.search(r"item 0: boxes float32\[\d, 4\], scores float32\[\d\]", out)
    assert out.count("footer:") >= 4
    assert "read 14 items over SSE and chunked HTTP" in out
    assert "server stopped (exit status 0)" in out
