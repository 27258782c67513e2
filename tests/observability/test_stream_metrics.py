"""Stream metrics and access records over real servers, scraped and parsed for real.

Each test serves its own ``CollectorRegistry`` through ``prometheus_client.make_asgi_app``
mounted in the Starlette app under uvicorn, and parses the scrape with
prometheus_client's own parser.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import grpc
import httpx
import msgpack
import pytest
from live_server import live_server
from obs_helpers import (
    TYPES,
    Header,
    produce,
    produce_forever,
    scrape_registry,
    scrape_url,
    value,
    wait_for,
)
from prometheus_client import CollectorRegistry, make_asgi_app
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Mount, Route

from transports import grpc as tgrpc
from transports import http, sse
from transports.observability import ACCESS_LOGGER, JsonFormatter, StreamMetrics
from transports.shutdown import GracefulShutdown
from truss_stream import RemoteStreamError, ServerGoingAwayError, stream_writer

pytestmark = pytest.mark.anyio


class Served:
    def __init__(self, url: str, metrics: StreamMetrics) -> None:
        self.url = url
        self.metrics = metrics

    def scrape(self) -> Any:
        return scrape_url(f"{self.url}/metrics/")

    def scrape_when_ended(self, outcome: str, **labels: str) -> Any:
        """The first scrape with a stream of ``labels`` ended as ``outcome`` (ends are async)."""
        ended = "truss_stream_streams_ended_total"
        return wait_for(
            lambda: (s := self.scrape()) and value(s, ended, **labels, outcome=outcome) and s
        )


@pytest.fixture
def served() -> Iterator[Served]:
    registry = CollectorRegistry()
    metrics = StreamMetrics.for_registry(registry, stall_seconds=0.05)

    async def items(request: Request) -> Any:
        n = int(request.path_params["n"])
        fail = request.query_params.get("fail")
        frames = produce(n, fail_after=int(fail) if fail is not None else None)
        if request.query_params.get("http"):
            return http.stream_response(frames, metrics=metrics)
        return sse.sse_response(frames, metrics=metrics)

    async def missing(request: Request) -> Any:
        async def frames() -> AsyncIterator[bytes]:
            raise HTTPException(404, "no such thing")
            yield b""  # pragma: no cover

        return sse.sse_response(frames(), metrics=metrics)

    async def endless(request: Request) -> Any:
        timeout = float(request.query_params.get("send_timeout", "30"))
        frames = produce_forever(delay=0, text="y" * 60_000)
        return sse.sse_response(frames, metrics=metrics, send_timeout=timeout)

    async def going_away(request: Request) -> Any:
        async def frames() -> AsyncIterator[bytes]:
            writer = stream_writer(TYPES)
            yield writer.yield_header(Header(name="h"))
            body = {"type": "ServerGoingAwayError", "message": "bye", "reason": "going_away"}
            payload = msgpack.packb(body)
            yield bytes([0x16]) + len(payload).to_bytes(4, "big") + payload

        return sse.sse_response(frames(), metrics=metrics)

    app = Starlette(
        routes=[
            Route("/items/{n}", items),
            Route("/missing", missing),
            Route("/endless", endless),
            Route("/going-away", going_away),
            Mount("/metrics", app=make_asgi_app(registry=registry)),
        ]
    )
    with live_server(app) as server:
        yield Served(server.url, metrics)


SSE = {"transport": "sse", "route": "/items/{n}"}


async def test_sse_stream_is_counted_by_kind_and_outcome(served: Served) -> None:
    async with (
        httpx.AsyncClient() as client,
        sse.aconnect(client, "GET", f"{served.url}/items/5", TYPES) as reader,
    ):
        await reader.read_header()
        assert [i.index async for i in reader.read_items()] == list(range(5))

    def ended() -> Any:
        s = served.scrape()
        return (
            s if value(s, "truss_stream_streams_ended_total", **SSE, outcome="complete") else None
        )

    s = wait_for(ended)
    assert s is not None
    # The route label is the template, not the path with its parameter.
    assert value(s, "truss_stream_streams_started_total", **SSE) == 1
    assert value(s, "truss_stream_streams_active", **SSE) == 0
    assert value(s, "truss_stream_frames_sent_total", **SSE, kind="header") == 1
    assert value(s, "truss_stream_frames_sent_total", **SSE, kind="item") == 5
    assert value(s, "truss_stream_frames_sent_total", **SSE, kind="end") == 1
    assert value(s, "truss_stream_sent_bytes_total", **SSE, kind="item") > 5 * 10
    assert value(s, "truss_stream_time_to_first_frame_seconds_count", **SSE) == 1
    assert value(s, "truss_stream_stream_duration_seconds_count", **SSE) == 1
    assert not any("/items/5" in str(labels) for _, labels in s)


async def test_http_transport_has_its_own_label(served: Served) -> None:
    async with (
        httpx.AsyncClient() as client,
        http.aconnect(client, "GET", f"{served.url}/items/3?http=1", TYPES) as reader,
    ):
        await reader.read_header()
        assert len([i async for i in reader.read_items()]) == 3
    labels = {"transport": "http", "route": "/items/{n}"}
    s = served.scrape_when_ended("complete", **labels)
    assert value(s, "truss_stream_frames_sent_total", **labels, kind="item") == 3


async def test_producer_failure_mid_stream_is_a_producer_error_with_a_warning(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with (
        httpx.AsyncClient() as client,
        sse.aconnect(client, "GET", f"{served.url}/items/5?fail=2", TYPES) as reader,
    ):
        await reader.read_header()
        with pytest.raises(RemoteStreamError):
            _ = [i async for i in reader.read_items()]
    s = served.scrape_when_ended("producer_error", **SSE)
    assert value(s, "truss_stream_frames_sent_total", **SSE, kind="error") == 1
    records = [r for r in caplog.records if r.name == ACCESS_LOGGER]
    assert len(records) == 1
    record = records[0]
    assert record.levelno == logging.WARNING
    assert record.__dict__["outcome"] == "producer_error"
    assert record.__dict__["error_type"] == "RuntimeError"
    assert record.__dict__["items"] == 2
    assert record.__dict__["route"] == "/items/{n}"
    assert record.__dict__["peer"].startswith("127.0.0.1:")
    assert len(record.__dict__["stream_id"]) == 16
    line = json.loads(JsonFormatter().format(record))
    assert line["outcome"] == "producer_error"
    assert line["level"] == "WARNING"
    assert line["logger"] == ACCESS_LOGGER


async def test_failure_before_the_first_frame_and_rejections(served: Served) -> None:
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{served.url}/items/5?fail=0")).status_code == 200
        assert (await client.get(f"{served.url}/missing")).status_code == 404
    missing = {"transport": "sse", "route": "/missing"}
    s = served.scrape_when_ended("rejected", **missing)
    assert value(s, "truss_stream_streams_ended_total", **missing, outcome="producer_error") == 0
    # fail=0 fails after the header: an ERROR frame inside a 200.
    assert value(s, "truss_stream_streams_ended_total", **SSE, outcome="producer_error") == 1


async def test_client_that_leaves_is_client_gone_and_not_active(served: Served) -> None:
    endless = {"transport": "sse", "route": "/endless"}
    async with (
        httpx.AsyncClient() as client,
        sse.aconnect(client, "GET", f"{served.url}/endless", TYPES) as reader,
    ):
        await reader.read_header()
        async for item in reader.read_items():
            if item.index == 3:
                break
    s = served.scrape_when_ended("client_gone", **endless)
    assert value(s, "truss_stream_streams_active", **endless) == 0


async def test_send_timeout_is_a_timeout_with_stalls(served: Served) -> None:
    endless = {"transport": "sse", "route": "/endless"}
    async with (
        httpx.AsyncClient() as client,
        client.stream("GET", f"{served.url}/endless?send_timeout=0.3") as response,
    ):
        # Read nothing: the socket buffers fill, sends block, the server gives up.
        def timed_out() -> Any:
            s = served.scrape()
            return value(s, "truss_stream_streams_ended_total", **endless, outcome="timeout") and s

        s = await anyio.to_thread.run_sync(lambda: wait_for(timed_out, 20))
        assert response.status_code == 200
    assert s
    assert value(s, "truss_stream_send_stalls_total", **endless) >= 1
    assert value(s, "truss_stream_send_stall_seconds_total", **endless) >= 0.05


async def test_going_away_error_frame_is_a_shutdown(served: Served) -> None:
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{served.url}/going-away")).status_code == 200
    labels = {"transport": "sse", "route": "/going-away"}
    s = served.scrape_when_ended("shutdown", **labels)
    assert value(s, "truss_stream_streams_ended_total", **labels, outcome="producer_error") == 0


async def test_route_labels_are_capped() -> None:
    registry = CollectorRegistry()
    metrics = StreamMetrics.for_registry(registry, route_limit=2)
    assert [metrics.routes.label(r) for r in ("/a", "/b", "/c", "/a")] == [
        "/a",
        "/b",
        "other",
        "/a",
    ]


def test_for_registry_finds_the_same_group_again() -> None:
    registry = CollectorRegistry()
    first = StreamMetrics.for_registry(registry)
    assert StreamMetrics.for_registry(registry) is first
    assert StreamMetrics.for_registry(CollectorRegistry()) is not first


async def test_grpc_streams_are_counted_by_method() -> None:
    registry = CollectorRegistry()
    metrics = StreamMetrics.for_registry(registry)

    def producer(body: bytes, context: Any) -> AsyncIterator[bytes]:
        return produce(int(body or b"4"), fail_after=2 if body == b"9" else None)

    service = tgrpc.FrameStreamService({"Generate": producer}, metrics=metrics)
    async with tgrpc.serve(service) as running:
        async with tgrpc.aconnect(running.target, "Generate", TYPES, request=b"4") as reader:
            await reader.read_header()
            assert len([i async for i in reader.read_items()]) == 4
        async with tgrpc.aconnect(running.target, "Generate", TYPES, request=b"9") as reader:
            await reader.read_header()
            with pytest.raises(RemoteStreamError):
                _ = [i async for i in reader.read_items()]
    route = {"transport": "grpc", "route": "/truss_stream.FrameStream/Generate"}
    s = scrape_registry(registry)
    assert value(s, "truss_stream_streams_started_total", **route) == 2
    assert value(s, "truss_stream_streams_ended_total", **route, outcome="complete") == 1
    assert value(s, "truss_stream_streams_ended_total", **route, outcome="producer_error") == 1
    assert value(s, "truss_stream_frames_sent_total", **route, kind="item") == 6
    assert value(s, "truss_stream_streams_active", **route) == 0


def forever(body: bytes, context: Any) -> AsyncIterator[bytes]:
    """A gRPC producer that never ends."""
    return produce_forever(delay=0.001)


async def test_grpc_client_cancel_is_client_gone() -> None:
    registry = CollectorRegistry()
    metrics = StreamMetrics.for_registry(registry)

    service = tgrpc.FrameStreamService({"Forever": forever}, metrics=metrics)
    route = {"transport": "grpc", "route": "/truss_stream.FrameStream/Forever"}
    async with tgrpc.serve(service) as running:
        async with tgrpc.aconnect(running.target, "Forever", TYPES) as reader:
            await reader.read_header()
            async for item in reader.read_items():
                if item.index == 5:
                    break
        with anyio.fail_after(10):
            while not value(
                scrape_registry(registry),
                "truss_stream_streams_ended_total",
                **route,
                outcome="client_gone",
            ):
                await anyio.sleep(0.02)


async def test_grpc_stream_ended_by_the_shutdown_is_a_shutdown() -> None:
    # RunningServer.stop(grace=0) cuts the open stream with the going-away ERROR
    # frame: its outcome is "shutdown", not "client_gone".
    registry = CollectorRegistry()
    metrics = StreamMetrics.for_registry(registry)
    reading = anyio.Event()

    service = tgrpc.FrameStreamService({"Forever": forever}, metrics=metrics)
    route = {"transport": "grpc", "route": "/truss_stream.FrameStream/Forever"}
    running = await tgrpc.start_server(service)
    try:
        async with tgrpc.aconnect(running.target, "Forever", TYPES) as reader:
            await reader.read_header()

            async def stop_when_reading() -> None:
                await reading.wait()
                await running.stop(0)

            async with anyio.create_task_group() as tg:
                tg.start_soon(stop_when_reading)
                with pytest.raises(ServerGoingAwayError):  # noqa: PT012 - reads until cut
                    async for item in reader.read_items():
                        if item.index == 2:
                            reading.set()
    finally:
        await running.kill()
    s = scrape_registry(registry)
    assert value(s, "truss_stream_streams_ended_total", **route, outcome="shutdown") == 1
    assert value(s, "truss_stream_streams_ended_total", **route, outcome="client_gone") == 0


def test_sse_stream_ended_by_the_shutdown_is_a_shutdown() -> None:
    # A GracefulShutdown whose grace is over ends the open SSE stream with the
    # going-away ERROR frame: "shutdown", not "client_gone".
    registry = CollectorRegistry()
    metrics = StreamMetrics.for_registry(registry)
    drain = GracefulShutdown(grace=0)

    async def endless(request: Request) -> Any:
        return sse.sse_response(forever(b"", None), metrics=metrics, shutdown=drain)

    labels = {"transport": "sse", "route": "/endless"}
    with (
        live_server(Starlette(routes=[Route("/endless", endless)])) as server,
        httpx.Client(timeout=10) as client,
        sse.connect(client, "GET", f"{server.url}/endless", TYPES) as reader,
    ):
        reader.read_header()
        items = reader.read_items()
        next(items)
        loop = server._loop
        assert loop is not None
        loop.call_soon_threadsafe(drain.begin)
        with pytest.raises(ServerGoingAwayError):
            for _ in items:
                pass
    s = wait_for(
        lambda: (
            (s := scrape_registry(registry))
            and value(s, "truss_stream_streams_ended_total", **labels, outcome="shutdown")
            and s
        )
    )
    assert value(s, "truss_stream_streams_ended_total", **labels, outcome="shutdown") == 1
    assert value(s, "truss_stream_streams_ended_total", **labels, outcome="client_gone") == 0


@pytest.mark.parametrize("transport", ["sse", "grpc"])
async def test_access_record_stream_id_is_the_one_the_failure_was_logged_under(
    served: Served, caplog: pytest.LogCaptureFixture, transport: str
) -> None:
    # An operator who finds "stream <id>: producer failed" in the server log finds
    # the same id in the stream's access record (and span).
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    caplog.set_level(logging.INFO, logger="truss_stream.server")
    if transport == "sse":
        async with (
            httpx.AsyncClient() as client,
            sse.aconnect(client, "GET", f"{served.url}/items/5?fail=2", TYPES) as reader,
        ):
            await reader.read_header()
            with pytest.raises(RemoteStreamError):
                _ = [i async for i in reader.read_items()]
    else:

        def producer(body: bytes, context: Any) -> AsyncIterator[bytes]:
            return produce(5, fail_after=2)

        service = tgrpc.FrameStreamService({"Fails": producer}, metrics=False)
        async with (
            tgrpc.serve(service) as running,
            tgrpc.aconnect(running.target, "Fails", TYPES) as reader,
        ):
            await reader.read_header()
            with pytest.raises(RemoteStreamError):
                _ = [i async for i in reader.read_items()]

    def records() -> Any:
        access = [r for r in caplog.records if r.name == ACCESS_LOGGER]
        failed = [r for r in caplog.records if r.name == "truss_stream.server"]
        return (access, failed) if access and failed else None

    with anyio.move_on_after(10):
        while (found := records()) is None:
            await anyio.sleep(0.02)
    assert found, [(r.name, r.getMessage()) for r in caplog.records]
    access, failed = found
    assert len(access) == 1
    assert len(failed) == 1
    stream_id = access[0].__dict__["stream_id"]
    assert failed[0].getMessage().startswith(f"stream {stream_id}: producer failed")


def test_metrics_false_records_nothing() -> None:
    registry = CollectorRegistry()
    StreamMetrics.for_registry(registry)

    async def ok(request: Request) -> Any:
        return sse.sse_response(produce(2), metrics=False)

    app = Starlette(routes=[Route("/s", ok)])
    with (
        live_server(app) as server,
        httpx.Client() as client,
        sse.connect(client, "GET", f"{server.url}/s", TYPES) as reader,
    ):
        reader.read_header()
        assert len(list(reader.read_items())) == 2
    assert not value(
        scrape_registry(registry), "truss_stream_streams_started_total", transport="sse", route="/s"
    )


def test_default_registry_is_used_without_an_argument() -> None:
    from prometheus_client import REGISTRY

    async def ok(request: Request) -> Any:
        return sse.sse_response(produce(2))

    labels = {"transport": "sse", "route": "/default-registry"}
    before = value(scrape_registry(REGISTRY), "truss_stream_streams_started_total", **labels)
    app = Starlette(routes=[Route("/default-registry", ok), Mount("/metrics", make_asgi_app())])
    with live_server(app) as server, httpx.Client() as client:
        with sse.connect(client, "GET", f"{server.url}/default-registry", TYPES) as reader:
            reader.read_header()
            assert len(list(reader.read_items())) == 2
        s = scrape_url(f"{server.url}/metrics/")
    assert value(s, "truss_stream_streams_started_total", **labels) == before + 1
    assert grpc  # imported for the gRPC tests above


def test_grafana_dashboard_queries_only_metrics_that_exist() -> None:
    import re
    from pathlib import Path

    from transports.observability import ProxyMetrics

    dashboard = json.loads(
        (Path(__file__).resolve().parents[2] / "examples" / "grafana-dashboard.json").read_text()
    )
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs
    known: set[str] = set()
    for group in (StreamMetrics(), ProxyMetrics()):
        for family in group.describe():
            for sample_suffix in ("", "_total", "_bucket", "_count", "_sum"):
                known.add(family.name + sample_suffix)
    used = {name for expr in exprs for name in re.findall(r"truss_stream_[a-z_]+", expr)}
    assert used <= known, used - known
    # Every metric of both groups is on the dashboard.
    families = {f.name for g in (StreamMetrics(), ProxyMetrics()) for f in g.describe()}
    assert {f for f in families if not any(u.startswith(f) for u in used)} == {
        "truss_stream_proxy_upstream_probes"
    }


def test_the_example_server_serves_its_metrics() -> None:
    from examples.shared_types import DETECTIONS
    from examples.sse_server import app

    with live_server(app) as server, httpx.Client() as client:
        with sse.connect(client, "GET", f"{server.url}/sse/detections?frames=3", DETECTIONS) as r:
            r.read_header()
            assert len(list(r.read_items())) == 3
        labels = {"transport": "sse", "route": "/sse/detections", "outcome": "complete"}
        assert wait_for(
            lambda: value(
                scrape_url(f"{server.url}/metrics/"), "truss_stream_streams_ended_total", **labels
            )
        )
