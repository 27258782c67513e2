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

Every test runs over the conformance harness registry (``harness_clients``); the
client's limits are given as ``ClientSettings``, which each harness maps onto its
transport's own settings as in the table.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import grpc
import httpx
import pytest
from conformance.harness import TransportHarness, harness_named
from harness_clients import MODES, ClientSettings, StreamCall, each_harness, read_stream, served
from reliability_helpers import TYPES

from transports.base import TransportError
from transports.grpc import GrpcStatusError
from truss_stream import StreamTimeoutError

NOT_GRPC = ["sse", "http"]


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


# Connect ------------------------------------------------------------------------------------


def _assert_opening_timed_out(harness: TransportHarness, error: object, cause: type) -> None:
    # The stream never opened: the transport's own error, which is a StreamError.
    if harness.name == "grpc":
        assert isinstance(error, GrpcStatusError), error
        assert error.code in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    else:
        assert isinstance(error, TransportError), error
        assert isinstance(error, StreamTimeoutError), error
        assert isinstance(error.__cause__, cause)


@pytest.mark.parametrize("mode", MODES)
@each_harness
def test_connect_timeout_against_a_black_hole(harness: TransportHarness, mode: str) -> None:
    with full_backlog_listener() as port:
        error, took, _ = read_stream(
            harness, mode, harness.address_at(port), {}, ClientSettings(connect_timeout=0.5)
        )
    _assert_opening_timed_out(harness, error, httpx.ConnectTimeout)
    if harness.name == "grpc":  # waiting for a connection ends at the deadline
        assert isinstance(error, GrpcStatusError)
        assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert took < 3, took


@pytest.mark.parametrize("mode", MODES)
@each_harness
def test_a_server_that_accepts_and_never_answers_times_out(
    harness: TransportHarness, mode: str
) -> None:
    with silent_listener() as port:
        error, took, _ = read_stream(
            harness, mode, harness.address_at(port), {}, ClientSettings(read_timeout=0.5)
        )
    _assert_opening_timed_out(harness, error, httpx.ReadTimeout)
    assert took < 3, took


def test_grpc_without_wait_for_ready_fails_fast_on_a_refused_port() -> None:
    harness = harness_named("grpc")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        for mode in MODES:
            error, took, _ = read_stream(harness, mode, harness.address_at(port), {})
            assert isinstance(error, GrpcStatusError), error
            assert error.code is grpc.StatusCode.UNAVAILABLE
            assert took < 5, took


# Idle between items -------------------------------------------------------------------------

STALLS = {"stream": 1, "n": 5, "delay": 30}  # header and item 0, then 30 s of silence


@pytest.mark.parametrize("mode", MODES)
@each_harness
def test_idle_timeout_between_items(harness: TransportHarness, mode: str) -> None:
    # Sync SSE/HTTP: connect() hands the idle limit to httpx as its read timeout.
    with served(harness) as app:
        error, took, count = read_stream(
            harness, mode, app.address, STALLS, ClientSettings(reader={"idle_timeout": 0.5})
        )
    assert isinstance(error, StreamTimeoutError), error
    assert isinstance(error, TimeoutError)
    assert count == 1
    assert 0.4 < took < 4, took


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NOT_GRPC)  # gRPC has no read timeout of its own
def test_httpx_read_timeout_mid_stream_is_a_stream_timeout(name: str, mode: str) -> None:
    harness = harness_named(name)
    with served(harness) as app:
        error, took, count = read_stream(
            harness, mode, app.address, STALLS, ClientSettings(read_timeout=0.5)
        )
    assert isinstance(error, StreamTimeoutError), error
    assert count == 1
    assert took < 4


@each_harness
def test_idle_timeout_does_not_fire_on_a_steady_stream(harness: TransportHarness) -> None:
    # Items every 30 ms for ~0.3 s under a 0.25 s idle limit: no timeout.
    params = {"stream": 1, "n": 10, "delay": 0.03}
    with served(harness) as app:
        for mode in MODES:
            error, _, count = read_stream(
                harness, mode, app.address, params, ClientSettings(reader={"idle_timeout": 0.25})
            )
            assert error is None, (mode, error)
            assert count == 10


@each_harness
def test_sync_idle_timeout_ignores_a_slow_consumer(harness: TransportHarness) -> None:
    # Time the consumer spends between reads is not idle time (gRPC: its watchdog;
    # SSE/HTTP: httpx's read timeout runs only while reading).
    settings = ClientSettings(reader={"idle_timeout": 0.2})
    with (
        served(harness) as app,
        harness.connect(
            StreamCall(app.address, TYPES["msgpack"], {"stream": 1, "n": 3}, settings)
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
@each_harness
def test_total_timeout_on_a_stream_that_never_ends(harness: TransportHarness, mode: str) -> None:
    settings = ClientSettings(reader={"total_timeout": 0.6, "idle_timeout": 0.4})
    with served(harness) as app:
        error, took, count = read_stream(harness, mode, app.address, TRICKLE, settings)
    assert isinstance(error, StreamTimeoutError), error
    assert "total_timeout" in str(error)
    assert count >= 3
    assert 0.55 < took < 4, took


@pytest.mark.parametrize("mode", MODES)
def test_grpc_deadline_is_a_total_limit(mode: str) -> None:
    harness = harness_named("grpc")
    with served(harness) as app:
        error, took, count = read_stream(
            harness, mode, app.address, TRICKLE, ClientSettings(timeout=0.6)
        )
    assert isinstance(error, GrpcStatusError), error
    assert error.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert count >= 3
    assert took < 4, took
