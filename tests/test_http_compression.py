"""Compressed streams: behind Starlette's GZipMiddleware and behind a real nginx (gzip on).

Both clients read whatever content coding they advertised (httpx decodes it chunk by
chunk), and a compressed stream stays a stream: the first item is read while the
producer is still blocked, waiting for the test to let it go on.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pydantic
import pytest
from live_server import live_server
from nginx_proxy import nginx_proxy
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from transports import http, sse
from transports.http import StreamResponseError
from truss_stream import stream_types, stream_writer


class Header(pydantic.BaseModel):
    name: str


class Item(pydantic.BaseModel):
    index: int
    text: str


TYPES = stream_types(Item, header_type=Header)
N_ITEMS = 20
TEXT = "a compressible sentence about tensors. " * 20
MODULES: dict[str, Any] = {"sse": sse, "http": http}


def make_app(gate: threading.Event, *, gzip: bool) -> Starlette:
    """``/sse`` and ``/http`` serve the header, item 0, then wait for ``gate``."""

    async def produce() -> AsyncIterator[bytes]:
        writer = stream_writer(TYPES)
        yield writer.yield_header(Header(name="h"))
        for i in range(N_ITEMS):
            if i == 1:
                while not gate.is_set():  # blocked until the client has item 0
                    await anyio.sleep(0.005)
            yield writer.yield_item(Item(index=i, text=TEXT))

    async def sse_endpoint(request: Request) -> Response:
        return sse.sse_response(produce())

    async def http_endpoint(request: Request) -> Response:
        return http.stream_response(produce())

    middleware = [Middleware(GZipMiddleware, minimum_size=0, exclude_content_types=())]
    return Starlette(
        routes=[Route("/sse", sse_endpoint), Route("/http", http_endpoint)],
        middleware=middleware if gzip else [],
    )


def read_gated(url: str, transport: str, mode: str, gate: threading.Event) -> dict[str, Any]:
    """Read item 0 before opening the gate, then the rest; return what was seen."""
    module = MODULES[transport]
    seen: dict[str, Any] = {}
    options = {"idle_timeout": 10}  # a buffering proxy would hold item 0 back: fail, not hang

    def record(response: httpx.Response) -> None:
        seen["content-encoding"] = response.headers.get("content-encoding")

    if mode == "sync":
        with (
            httpx.Client(event_hooks={"response": [record]}) as client,
            module.connect(client, "GET", url, TYPES, reader_options=options) as reader,
        ):
            seen["header"] = reader.read_header().name
            items = reader.read_items()
            first = next(items)
            seen["first_before_gate"] = not gate.is_set()
            gate.set()
            seen["items"] = [first.index] + [item.index for item in items]
        return seen

    async def main() -> None:
        async def arecord(response: httpx.Response) -> None:
            record(response)

        async with (
            httpx.AsyncClient(event_hooks={"response": [arecord]}) as client,
            module.aconnect(client, "GET", url, TYPES, reader_options=options) as reader,
        ):
            seen["header"] = (await reader.read_header()).name
            items = reader.read_items()
            first = await items.__anext__()
            seen["first_before_gate"] = not gate.is_set()
            gate.set()
            seen["items"] = [first.index] + [item.index async for item in items]

    anyio.run(main)
    return seen


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # never leave a producer spinning


def check(seen: dict[str, Any]) -> None:
    assert seen["content-encoding"] == "gzip"  # the stream really was compressed
    assert seen["header"] == "h"
    assert seen["first_before_gate"]
    assert seen["items"] == list(range(N_ITEMS))


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("transport", ["sse", "http"])
def test_behind_gzip_middleware(transport: str, mode: str, gate: threading.Event) -> None:
    with live_server(make_app(gate, gzip=True)) as server:
        check(read_gated(f"{server.url}/{transport}", transport, mode, gate))


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("transport", ["sse", "http"])
def test_behind_nginx_with_gzip(transport: str, mode: str, gate: threading.Event) -> None:
    with live_server(make_app(gate, gzip=False)) as server, nginx_proxy(server.port) as url:
        check(read_gated(f"{url}/{transport}", transport, mode, gate))


@pytest.mark.parametrize("transport", ["sse", "http"])
def test_identity_when_asked(transport: str, gate: threading.Event) -> None:
    """``Accept-Encoding: identity`` is honoured by nginx: the stream arrives uncompressed."""
    gate.set()
    module = MODULES[transport]
    with (
        live_server(make_app(gate, gzip=False)) as server,
        nginx_proxy(server.port) as url,
        httpx.Client(headers={"Accept-Encoding": "identity"}) as client,
        module.connect(client, "GET", f"{url}/{transport}", TYPES) as reader,
    ):
        reader.read_header()
        assert [item.index for item in reader.read_items()] == list(range(N_ITEMS))


def test_a_coding_not_advertised_is_refused() -> None:
    """A server that compresses with a coding the client did not offer gets a clear error."""

    async def endpoint(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"\x28\xb5\x2f\xfd not really zstd"

        headers = {"Content-Encoding": "zstd"}
        return StreamingResponse(body(), media_type=http.MEDIA_TYPE, headers=headers)

    app = Starlette(routes=[Route("/s", endpoint)])
    with (
        live_server(app) as server,
        httpx.Client(headers={"Accept-Encoding": "gzip"}) as client,
        pytest.raises(StreamResponseError, match="Content-Encoding 'zstd'"),
        http.connect(client, "GET", f"{server.url}/s", TYPES),
    ):
        pass
