"""Client counters: a reader wrapped with observe_reader, over real uvicorn."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from live_server import LiveServer, live_server
from obs_helpers import TYPES, produce, produce_forever, scrape_registry, value
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from transports import http, sse
from transports.observability import ClientMetrics, observe_reader
from truss_stream import RemoteStreamError, StreamTruncatedError


@pytest.fixture
def server() -> Iterator[LiveServer]:
    async def items(request: Request) -> Any:
        fail = request.query_params.get("fail")
        n = int(request.query_params.get("n", "4"))
        frames = produce(n, fail_after=int(fail) if fail else None)
        if request.query_params.get("http"):
            return http.stream_response(frames)
        return sse.sse_response(frames)

    async def endless(request: Request) -> Any:
        return http.stream_response(produce_forever(delay=0.01))

    app = Starlette(routes=[Route("/items", items), Route("/endless", endless)])
    with live_server(app) as running:
        yield running


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> ClientMetrics:
    return ClientMetrics.for_registry(registry)


def test_counts_streams_frames_and_remote_errors(
    server: LiveServer, registry: CollectorRegistry, metrics: ClientMetrics
) -> None:
    with httpx.Client() as client:
        with sse.connect(client, "GET", f"{server.url}/items", TYPES) as reader:
            observed = observe_reader(reader, transport="sse", metrics=metrics)
            assert observed.read_header().name == "h"
            assert [i.index for i in observed.read_items()] == [0, 1, 2, 3]
            assert observed.ended
        with sse.connect(client, "GET", f"{server.url}/items?fail=1", TYPES) as reader:
            observed = observe_reader(reader, transport="sse", metrics=metrics)
            observed.read_header()
            with pytest.raises(RemoteStreamError):
                list(observed.read_items())
    s = scrape_registry(registry)
    assert value(s, "truss_stream_client_streams_total", transport="sse") == 2
    assert value(s, "truss_stream_client_frames_total", transport="sse", kind="header") == 2
    assert value(s, "truss_stream_client_frames_total", transport="sse", kind="item") == 5
    assert value(s, "truss_stream_client_remote_errors_total", transport="sse") == 1
    assert value(s, "truss_stream_client_truncations_total", transport="sse") == 0


@pytest.mark.anyio
async def test_counts_a_truncated_async_stream(
    server: LiveServer, registry: CollectorRegistry, metrics: ClientMetrics
) -> None:
    async with (
        httpx.AsyncClient() as client,
        http.aconnect(client, "GET", f"{server.url}/endless", TYPES) as reader,
    ):
        observed = observe_reader(reader, transport="http", metrics=metrics)
        await observed.read_header()

        async def read_until_cut() -> None:
            async for item in observed.read_items():
                if item.index == 2:
                    await anyio.to_thread.run_sync(server.kill)

        with pytest.raises(StreamTruncatedError):
            await read_until_cut()
    s = scrape_registry(registry)
    assert value(s, "truss_stream_client_truncations_total", transport="http") == 1
    assert value(s, "truss_stream_client_frames_total", transport="http", kind="item") >= 3


def test_counts_items_in_batches_and_on_early_close(
    server: LiveServer, registry: CollectorRegistry, metrics: ClientMetrics
) -> None:
    # 2,500 items: more than one batch of counts (1,024) and a partial one at the end.
    with httpx.Client() as client:
        with sse.connect(client, "GET", f"{server.url}/items?n=2500", TYPES) as reader:
            observed = observe_reader(reader, transport="sse", metrics=metrics)
            observed.read_header()
            assert sum(1 for _ in observed.read_items()) == 2500
        with sse.connect(client, "GET", f"{server.url}/items?n=2500", TYPES) as reader:
            observed = observe_reader(reader, transport="sse", metrics=metrics)
            observed.read_header()
            items = observed.read_items()
            for item in items:
                if item.index == 1499:
                    break
            items.close()  # type: ignore[attr-defined]
    s = scrape_registry(registry)
    assert value(s, "truss_stream_client_frames_total", transport="sse", kind="item") == 4000
    assert value(s, "truss_stream_client_frames_total", transport="sse", kind="header") == 2


@pytest.mark.anyio
async def test_async_counts_items_and_one_remote_error(
    server: LiveServer, registry: CollectorRegistry, metrics: ClientMetrics
) -> None:
    async with httpx.AsyncClient() as client:
        async with http.aconnect(client, "GET", f"{server.url}/items?http=1&n=2500", TYPES) as r:
            observed = observe_reader(r, transport="http", metrics=metrics)
            await observed.read_header()
            assert len([i async for i in observed.read_items()]) == 2500
        url = f"{server.url}/items?http=1&n=2500&fail=1100"
        async with http.aconnect(client, "GET", url, TYPES) as r:
            observed = observe_reader(r, transport="http", metrics=metrics)
            await observed.read_header()
            with pytest.raises(RemoteStreamError):
                _ = [i async for i in observed.read_items()]
    s = scrape_registry(registry)
    assert value(s, "truss_stream_client_frames_total", transport="http", kind="item") == 3600
    assert value(s, "truss_stream_client_remote_errors_total", transport="http") == 1
