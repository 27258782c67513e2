"""Connect, idle-between-items and total timeouts, separately, for every client (SSE,
chunked HTTP, gRPC), sync and async. Each one fires within a bound and raises a
``StreamError``: ``StreamTimeoutError`` once the stream is open; when it never opened,
the transport's error (``TransportTimeoutError``, which is both a ``TransportError`` and
a ``StreamTimeoutError``, for SSE/HTTP; ``GrpcStatusError`` for gRPC).

How each is set (see docs/reliability.md):

=============  ===========================================  =====================================
               SSE / chunked HTTP                            gRPC
=============  ===========================================  =====================================
connect        httpx ``timeout=httpx.Timeout(connect=...)``  ``timeout=`` (deadline) with
                                                             ``wait_for_ready=True``; else fails
                                                             fast with UNAVAILABLE
idle, async    reader ``idle_timeout`` (or httpx read)       reader ``idle_timeout``
idle, sync     reader ``idle_timeout`` (as httpx's read      ``idle_timeout`` (transport watchdog)
               timeout), or httpx read
total          reader ``total_timeout``                      ``timeout=`` deadline or reader
                                                             ``total_timeout``
=============  ===========================================  =====================================
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from live_server import live_server
from reliability_helpers import TYPES, grpc_request, grpc_service, starlette_app

from transports import grpc as tgrpc
from transports import http, sse
from transports.base import TransportError
from transports.grpc import GrpcStatusError, serve_in_thread
from truss_stream import StreamError, StreamTimeoutError

TRANSPORTS = ["sse", "http", "grpc"]
MODES = ["sync", "async"]


@contextlib.contextmanager
def full_backlog_listener() -> Iterator[int]:
    """A port whose accept queue is full: new connections hang in SYN (a black hole)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.05)
    try:
        yield port
    finally:
        for s in (*fillers, server):
            s.close()


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A port that accepts connections and never says a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def read_stream(
    transport: str,
    mode: str,
    base: str,
    params: dict[str, Any],
    *,
    httpx_timeout: httpx.Timeout | None = None,
    reader: dict[str, Any] | None = None,
    grpc_kwargs: dict[str, Any] | None = None,
) -> tuple[BaseException | None, float, int]:
    """Read a whole stream; return (error, seconds, items read)."""
    reader_opts = reader or {}
    timeout = httpx_timeout or httpx.Timeout(30.0)
    count = 0
    started = time.monotonic()

    async def aread() -> None:
        nonlocal count
        if transport == "grpc":
            cm: Any = tgrpc.aconnect(
                base,
                "Stream",
                TYPES["msgpack"],
                request=grpc_request(**params),
                **(grpc_kwargs or {}),
                **reader_opts,
            )
            async with cm as r:
                await r.read_header()
                async for _ in r.read_items():
                    count += 1
                await r.read_footer()
            return
        module = sse if transport == "sse" else http
        async with (
            httpx.AsyncClient(timeout=timeout) as client,
            module.aconnect(
                client,
                "GET",
                f"{base}/{transport}",
                TYPES["msgpack"],
                params=params,
                reader_options=reader_opts,
            ) as r,
        ):
            await r.read_header()
            async for _ in r.read_items():
                count += 1
            await r.read_footer()

    def sread() -> None:
        nonlocal count
        if transport == "grpc":
            with tgrpc.connect(
                base,
                "Stream",
                TYPES["msgpack"],
                request=grpc_request(**params),
                **(grpc_kwargs or {}),
                **reader_opts,
            ) as r:
                r.read_header()
                for _ in r.read_items():
                    count += 1
                r.read_footer()
            return
        module = sse if transport == "sse" else http
        with (
            httpx.Client(timeout=timeout) as client,
            module.connect(
                client,
                "GET",
                f"{base}/{transport}",
                TYPES["msgpack"],
                params=params,
                reader_options=reader_opts,
            ) as r,
        ):
            r.read_header()
            for _ in r.read_items():
                count += 1
            r.read_footer()

    try:
        if mode == "sync":
            sread()
        else:
            asyncio.run(aread())
    except StreamError as exc:
        return exc, time.monotonic() - started, count
    return None, time.monotonic() - started, count


@contextlib.contextmanager
def served(transport: str) -> Iterator[str]:
    if transport == "grpc":
        with serve_in_thread(grpc_service(), reflection=False, health=False) as running:
            yield running.target
    else:
        with live_server(starlette_app()) as server:
            yield server.url


# Connect ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connect_timeout_against_a_black_hole(transport: str, mode: str) -> None:
    with full_backlog_listener() as port:
        if transport == "grpc":
            error, took, _ = read_stream(
                transport,
                mode,
                f"127.0.0.1:{port}",
                {},
                grpc_kwargs={"timeout": 0.5, "wait_for_ready": True},
            )
            assert isinstance(error, GrpcStatusError), error
            assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED
        else:
            error, took, _ = read_stream(
                transport,
                mode,
                f"http://127.0.0.1:{port}",
                {},
                httpx_timeout=httpx.Timeout(30.0, connect=0.5),
            )
            assert isinstance(error, TransportError), error
            assert isinstance(error, StreamTimeoutError), error
            assert isinstance(error.__cause__, httpx.ConnectTimeout)
    assert took < 3, took


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", ["http", "grpc"])  # SSE opens through the same code
def test_a_server_that_accepts_and_never_answers_times_out(transport: str, mode: str) -> None:
    with silent_listener() as port:
        if transport == "grpc":
            error, took, _ = read_stream(
                transport, mode, f"127.0.0.1:{port}", {}, grpc_kwargs={"timeout": 0.5}
            )
            assert isinstance(error, GrpcStatusError), error
            assert error.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
        else:
            error, took, _ = read_stream(
                transport,
                mode,
                f"http://127.0.0.1:{port}",
                {},
                httpx_timeout=httpx.Timeout(30.0, read=0.5),
            )
            assert isinstance(error, TransportError), error
            assert isinstance(error, StreamTimeoutError), error
            assert isinstance(error.__cause__, httpx.ReadTimeout)
    assert took < 3, took


def test_grpc_without_wait_for_ready_fails_fast_on_a_refused_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        for mode in MODES:
            error, took, _ = read_stream("grpc", mode, f"127.0.0.1:{port}", {})
            assert isinstance(error, GrpcStatusError), error
            assert error.code is grpc.StatusCode.UNAVAILABLE
            assert took < 5, took


# Idle between items -------------------------------------------------------------------------

STALLS = {"stream": 1, "n": 5, "delay": 30}  # header and item 0, then 30 s of silence


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_idle_timeout_between_items(transport: str, mode: str) -> None:
    # Sync SSE/HTTP: connect() hands the idle limit to httpx as its read timeout.
    with served(transport) as base:
        error, took, count = read_stream(
            transport, mode, base, STALLS, reader={"idle_timeout": 0.5}
        )
    assert isinstance(error, StreamTimeoutError), error
    assert isinstance(error, TimeoutError)
    assert count == 1
    assert 0.4 < took < 4, took


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", ["sse", "http"])
def test_httpx_read_timeout_mid_stream_is_a_stream_timeout(transport: str, mode: str) -> None:
    with served(transport) as base:
        error, took, count = read_stream(
            transport, mode, base, STALLS, httpx_timeout=httpx.Timeout(30.0, read=0.5)
        )
    assert isinstance(error, StreamTimeoutError), error
    assert count == 1
    assert took < 4


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_idle_timeout_does_not_fire_on_a_steady_stream(transport: str) -> None:
    # Items every 30 ms for ~0.3 s under a 0.25 s idle limit: no timeout.
    params = {"stream": 1, "n": 10, "delay": 0.03}
    with served(transport) as base:
        for mode in MODES:
            error, _, count = read_stream(
                transport, mode, base, params, reader={"idle_timeout": 0.25}
            )
            assert error is None, (mode, error)
            assert count == 10


def test_grpc_sync_idle_watchdog_ignores_a_slow_consumer() -> None:
    # Time the consumer spends between reads is not idle time.
    with (
        served("grpc") as base,
        tgrpc.connect(
            base,
            "Stream",
            TYPES["msgpack"],
            request=grpc_request(stream=1, n=3),
            idle_timeout=0.2,
        ) as reader,
    ):
        reader.read_header()
        items = []
        for item in reader.read_items():
            items.append(item.index)
            time.sleep(0.5)
        reader.read_footer()
    assert items == [0, 1, 2]


# Total --------------------------------------------------------------------------------------

TRICKLE = {"stream": 1, "n": -1, "delay": 0.05}  # an item every 50 ms, forever


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_total_timeout_on_a_stream_that_never_ends(transport: str, mode: str) -> None:
    with served(transport) as base:
        error, took, count = read_stream(
            transport, mode, base, TRICKLE, reader={"total_timeout": 0.6, "idle_timeout": 0.4}
        )
    assert isinstance(error, StreamTimeoutError), error
    assert "total_timeout" in str(error)
    assert count >= 3
    assert 0.55 < took < 4, took


@pytest.mark.parametrize("mode", MODES)
def test_grpc_deadline_is_a_total_limit(mode: str) -> None:
    with served("grpc") as base:
        error, took, count = read_stream("grpc", mode, base, TRICKLE, grpc_kwargs={"timeout": 0.6})
    assert isinstance(error, GrpcStatusError), error
    assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert count >= 3
    assert took < 4, took
