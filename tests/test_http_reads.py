"""Chunked HTTP reads its body in wide socket reads (transports._httpclient.wide_reads).

httpcore reads 64 KiB at a time; the chunked transport widens that for its own
response, so a big frame arrives in a few chunks instead of ~64 per 4 MiB (each
chunk costs a pass through httpcore, h11, httpx and the reader). Over real uvicorn.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import numpy as np
import pydantic
import pytest
from live_server import live_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from transports import http
from transports._httpclient import wide_reads
from truss_stream import NDArray, stream_reader, stream_types, stream_writer

DEFAULT_READ = 64 * 1024
ITEMS = 6


class Item(pydantic.BaseModel):
    index: int
    tensor: NDArray


TYPES = stream_types(Item, codec="msgpack")
TENSOR = np.random.default_rng(0).random((1024, 1024), np.float32)  # 4 MiB


async def produce() -> AsyncIterator[bytes | memoryview]:
    writer = stream_writer(TYPES)
    for i in range(ITEMS):
        yield writer.yield_item(Item(index=i, tensor=TENSOR))


async def endpoint(request: Request) -> Response:
    return http.stream_response(produce())


APP = Starlette(routes=[Route("/s", endpoint)])


def _check(items: list[Any]) -> None:
    assert [item.index for item in items] == list(range(ITEMS))
    for item in items:
        np.testing.assert_array_equal(item.tensor, TENSOR)


def test_sync_stream_reads_wider_than_httpcore_and_restores_the_default() -> None:
    with live_server(APP) as server, httpx.Client() as client:
        url = f"{server.url}/s"
        transport = http.HTTPTransport(client, "GET", url)
        with transport.open_stream() as chunks:
            sizes = [len(chunk) for chunk in chunks]
        # Each read of a 64 KiB reader gives at most 64 KiB.
        assert max(sizes) > DEFAULT_READ
        assert sum(sizes) > ITEMS * TENSOR.nbytes
        # The pooled connection is back to httpcore's reads for the next request.
        with client.stream("GET", url) as response:
            assert max(len(chunk) for chunk in response.iter_raw()) <= DEFAULT_READ
        with http.connect(client, "GET", url, TYPES) as reader:
            _check(list(reader.read_items()))


def test_async_stream_reads_wider_than_httpcore_and_restores_the_default() -> None:
    async def main(url: str) -> None:
        async with httpx.AsyncClient() as client:
            transport = http.AsyncHTTPTransport(client, "GET", url)
            async with transport.open_stream() as chunks:
                sizes = [len(chunk) async for chunk in chunks]
            assert max(sizes) > DEFAULT_READ
            assert sum(sizes) > ITEMS * TENSOR.nbytes
            async with client.stream("GET", url) as response:
                assert max([len(chunk) async for chunk in response.aiter_raw()]) <= DEFAULT_READ
            async with http.aconnect(client, "GET", url, TYPES) as reader:
                _check([item async for item in reader.read_items()])

    with live_server(APP) as server:
        anyio.run(main, f"{server.url}/s")


def test_other_httpx_transports_are_left_alone_and_still_stream() -> None:
    # No httpcore connection behind an ASGI transport: nothing to widen, same items.
    async def main() -> None:
        transport = httpx.ASGITransport(app=APP)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            async with client.stream("GET", "/s") as response:
                with wide_reads(response) as widened:
                    assert widened is False
                    body = b"".join([chunk async for chunk in response.aiter_raw()])
            reader = stream_reader(TYPES, [body])
            _check(list(reader.read_items()))

    anyio.run(main)


@pytest.mark.parametrize("size", [DEFAULT_READ // 2, 4 * 1024 * 1024])
def test_a_read_size_never_goes_below_httpcore_default(size: int) -> None:
    with (
        live_server(APP) as server,
        httpx.Client() as client,
        client.stream("GET", f"{server.url}/s") as response,
        wide_reads(response, size) as widened,
    ):
        assert widened is True
        sizes = [len(chunk) for chunk in response.iter_raw()]
    assert sum(sizes) > ITEMS * TENSOR.nbytes
    if size < DEFAULT_READ:
        assert max(sizes) <= DEFAULT_READ
