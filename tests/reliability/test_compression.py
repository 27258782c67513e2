"""Server-side streaming compression (``compression="gzip" | "zstd" | "auto"``) over a
real uvicorn: the coding is negotiated, each batch is flushed so a frame can be
decoded as soon as it is sent, and the decoded body is the exact stream. Also the
headers every streaming response carries for proxies (nginx buffering, caches).

Decoding here uses httpx's own decoders (``iter_bytes``) and zlib / zstandard
directly, so these tests hold whatever the client transports do.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from live_server import live_server
from reliability_helpers import TYPES, Header, Item
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import truss_stream as ts
from transports import http, sse
from transports._compression import StreamCompressor, negotiate
from transports.sse import SSEFrameDecoder

RESPOND = {"sse": sse.sse_response, "http": http.stream_response}


class Decoder:
    """Incremental decoder for one content coding."""

    def __init__(self, coding: str) -> None:
        if coding == "gzip":
            self._z: Any = zlib.decompressobj(16 + zlib.MAX_WBITS)
        else:
            self._z = zstandard.ZstdDecompressor().decompressobj()

    def feed(self, data: bytes) -> bytes:
        return bytes(self._z.decompress(data))


@settings(max_examples=60, deadline=None)
@given(
    coding=st.sampled_from(["gzip", "zstd"]),
    batches=st.lists(st.binary(max_size=3000), min_size=1, max_size=12),
)
def test_every_batch_decodes_as_soon_as_it_is_compressed(coding: str, batches: list[bytes]) -> None:
    compressor = StreamCompressor(coding)
    decoder = Decoder(coding)
    for batch in batches:
        assert decoder.feed(compressor.compress(batch)) == batch
    assert decoder.feed(compressor.finish()) == b""


@pytest.mark.parametrize(
    ("requested", "accept", "chosen"),
    [
        (None, "gzip", None),
        ("gzip", "gzip, deflate", "gzip"),
        ("gzip", "", None),
        ("gzip", "identity", None),
        ("gzip", "gzip;q=0", None),
        ("gzip", "*", "gzip"),
        ("zstd", "gzip, zstd", "zstd"),
        ("auto", "gzip, deflate, zstd", "zstd"),
        ("auto", "gzip, deflate", "gzip"),
        ("auto", "br", None),
    ],
)
def test_negotiation(requested: Any, accept: str, chosen: str | None) -> None:
    assert negotiate(requested, accept) == chosen


_TOKENS = st.sampled_from(["gzip", "zstd", "br", "deflate", "identity", "*", "GZIP", "x-gzip"])
_PARAMS = st.sampled_from(["", ";q=0", ";q=0.5", ";q=1", ";q=bad", "; q=0", ";level=1"])


def _q(param: str) -> float:
    value = param.replace(" ", "").partition("q=")[2] if "q=" in param else "1"
    try:
        return float(value)
    except ValueError:
        return 0.0


@settings(max_examples=300, deadline=None)
@given(
    requested=st.sampled_from(["gzip", "zstd", "auto"]),
    parts=st.lists(st.tuples(_TOKENS, _PARAMS), max_size=5),
    junk=st.text(max_size=20),
)
def test_negotiation_picks_exactly_what_the_client_accepts(
    requested: Any, parts: list[tuple[str, str]], junk: str
) -> None:
    negotiate(requested, junk)  # any header at all: an answer, never an exception
    q = {token.lower(): _q(param) for token, param in parts}  # the last one counts
    accepted = [c for c in ("zstd", "gzip") if q.get(c, q.get("*", 0.0)) > 0]
    wanted = ["zstd", "gzip"] if requested == "auto" else [requested]
    expected = next((c for c in wanted if c in accepted), None)
    header = ", ".join(token + param for token, param in parts)
    assert negotiate(requested, header) == expected


def test_an_unknown_compression_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="compression must be"):
        sse.sse_response([], compression="br")  # type: ignore[arg-type]


class Gated:
    """Header and item 0, then wait for ``release``, then items 1..n-1 and footer."""

    def __init__(self, n: int = 50) -> None:
        self.release = threading.Event()
        self.n = n

    def frames(self) -> Iterator[bytes]:
        writer = ts.stream_writer(TYPES["msgpack"])
        yield writer.yield_header(Header(stream=0, n=self.n))
        yield writer.yield_item(Item(index=0, stream=0, text="first " * 20))
        self.release.wait(20)
        for i in range(1, self.n):
            yield writer.yield_item(Item(index=i, stream=0, text="same text " * 20))
        yield writer.yield_footer(ts_footer(self.n))


def ts_footer(n: int) -> Any:
    from reliability_helpers import Footer

    return Footer(count=n)


def gated_app(gated: Gated, coding: str) -> Starlette:
    async def stream(request: Request) -> Response:
        respond = RESPOND[request.path_params["transport"]]
        return respond(gated.frames(), compression=coding)  # type: ignore[operator]

    return Starlette(routes=[Route("/{transport}", stream)])


def _frame_bytes(transport: str, body: bytes) -> bytes:
    return SSEFrameDecoder().feed(body) if transport == "sse" else body


def _frames_of(transport: str, body: bytes) -> list[Any]:
    data = _frame_bytes(transport, body)
    reader = ts.stream_reader(TYPES["msgpack"], [data])
    return [reader.read_header(), *reader.read_items(), reader.read_footer()]


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
@pytest.mark.parametrize("transport", ["sse", "http"])
def test_compressed_stream_stays_streaming_and_decodes_exactly(transport: str, coding: str) -> None:
    gated = Gated()
    with live_server(gated_app(gated, coding)) as server, httpx.Client(timeout=10) as client:
        try:
            headers = {"accept-encoding": coding}
            with client.stream("GET", f"{server.url}/{transport}", headers=headers) as r:
                assert r.headers["content-encoding"] == coding
                assert r.headers["vary"].lower() == "accept-encoding"
                decoder = Decoder(coding)
                raw = r.iter_raw()
                seen = b""
                # Item 0 must be decodable while the producer still waits: the batch
                # was flushed, not held in the compressor.
                while b"first" not in _frame_bytes(transport, seen):
                    seen += decoder.feed(next(raw))
                gated.release.set()
                for chunk in raw:
                    seen += decoder.feed(chunk)
        finally:
            gated.release.set()
    parts = _frames_of(transport, seen)
    assert [p.index for p in parts[1:-1]] == list(range(50))
    assert parts[-1].count == 50


@pytest.mark.parametrize("transport", ["sse", "http"])
def test_httpx_decodes_the_compressed_body_and_it_is_smaller(transport: str) -> None:
    gated = Gated(n=200)
    gated.release.set()
    with live_server(gated_app(gated, "gzip")) as server, httpx.Client(timeout=10) as client:
        url = f"{server.url}/{transport}"
        with client.stream("GET", url) as r:
            wire = sum(len(c) for c in r.iter_raw())
        with client.stream("GET", url) as r:
            body = b"".join(r.iter_bytes())
    assert wire < len(body) / 3
    assert [p.index for p in _frames_of(transport, body)[1:-1]] == list(range(200))


@pytest.mark.parametrize("transport", ["sse", "http"])
def test_a_client_that_does_not_accept_the_coding_gets_identity(transport: str) -> None:
    gated = Gated(n=3)
    gated.release.set()
    with live_server(gated_app(gated, "gzip")) as server, httpx.Client(timeout=10) as client:
        r = client.get(f"{server.url}/{transport}", headers={"accept-encoding": "identity"})
    assert "content-encoding" not in r.headers
    assert len(_frames_of(transport, r.content)) == 5


@pytest.mark.parametrize("transport", ["sse", "http"])
def test_streaming_responses_tell_proxies_not_to_buffer_or_cache(transport: str) -> None:
    def frames() -> list[bytes]:
        return [ts.stream_writer(TYPES["msgpack"]).yield_header(Header(stream=0, n=0))]

    async def stream(request: Request) -> Response:
        return RESPOND[transport](frames())  # type: ignore[operator]

    app = Starlette(routes=[Route("/", stream)])
    with live_server(app) as server, httpx.Client(timeout=10) as client:
        r = client.get(server.url + "/")
    assert r.headers["x-accel-buffering"] == "no"
    assert r.headers["cache-control"] == "no-cache"
