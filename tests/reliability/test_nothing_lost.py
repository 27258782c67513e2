"""Nothing is lost silently, on every transport: a server SIGKILLed mid-stream, the
connection cut at random byte offsets, a consumer that stalls.

The conformance suite (tests/conformance) already covers a producer raising, a client
leaving and an in-process server abort; these add a real process kill, random cuts
through a loopback TCP proxy (with a check that each server-side producer is closed)
and gRPC backpressure.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from live_server import live_server
from reliability_helpers import (
    TYPES,
    CutProxy,
    Tracker,
    grpc_request,
    grpc_service,
    starlette_app,
    subprocess_server,
)

from transports import grpc as tgrpc
from transports import http, sse
from transports.grpc import GrpcOptions, serve_in_thread
from truss_stream import StreamError, StreamTruncatedError

TRANSPORTS = ["sse", "http", "grpc"]
PRIVATE_CONNECTION = GrpcOptions(extra=[("grpc.use_local_subchannel_pool", 1)])


class Outcome:
    def __init__(self) -> None:
        self.items: list[tuple[int, int]] = []
        self.error: BaseException | None = None
        self.complete = False


def _check_prefix(outcome: Outcome, stream: int) -> None:
    assert outcome.items == [(stream, i) for i in range(len(outcome.items))], "reordered or lost"


async def aread(
    transport: str,
    base: str,
    *,
    stream: int,
    n: int,
    codec: str = "msgpack",
    delay: float = 0.0,
    floats: int = 0,
    on_item: Callable[[int], Any] | None = None,
    timeout: float = 20.0,
) -> Outcome:
    """Read one stream with the async client; record items and how it ended."""
    out = Outcome()
    types = TYPES[codec]
    params = {"stream": stream, "n": n, "codec": codec, "delay": delay, "floats": floats}
    try:
        if transport == "grpc":
            # A private subchannel pool: grpc-core otherwise shares connections between
            # channels to one target, and a stream could ride an earlier, uncut one.
            cm: Any = tgrpc.aconnect(
                base,
                "Stream",
                types,
                request=grpc_request(**params),
                timeout=timeout,
                options=PRIVATE_CONNECTION,
            )
            async with cm as reader:
                await _drain(reader, out, on_item)
        else:
            module = sse if transport == "sse" else http
            async with (
                httpx.AsyncClient(timeout=timeout) as client,
                module.aconnect(
                    client, "GET", f"{base}/{transport}", types, params=params
                ) as reader,
            ):
                await _drain(reader, out, on_item)
    except StreamError as exc:
        out.error = exc
    return out


async def _drain(reader: Any, out: Outcome, on_item: Callable[[int], Any] | None) -> None:
    header = await reader.read_header()
    async for item in reader.read_items():
        out.items.append((item.stream, item.index))
        if on_item is not None:
            result = on_item(item.index)
            if asyncio.iscoroutine(result):
                await result
    footer = await reader.read_footer()
    assert footer.count == header.n == len(out.items)
    out.complete = True


def sread(
    transport: str,
    base: str,
    *,
    stream: int,
    n: int,
    delay: float,
    out: Outcome,
    started: threading.Event,
) -> None:
    """The sync client twin of :func:`aread` (for a thread)."""
    types = TYPES["msgpack"]
    params = {"stream": stream, "n": n, "delay": delay}
    try:
        if transport == "grpc":
            with tgrpc.connect(
                base, "Stream", types, request=grpc_request(**params), timeout=30
            ) as reader:
                _sdrain(reader, out, started)
        else:
            module = sse if transport == "sse" else http
            with (
                httpx.Client(timeout=30) as client,
                module.connect(
                    client, "GET", f"{base}/{transport}", types, params=params
                ) as reader,
            ):
                _sdrain(reader, out, started)
    except StreamError as exc:
        out.error = exc
    finally:
        started.set()


def _sdrain(reader: Any, out: Outcome, started: threading.Event) -> None:
    reader.read_header()
    for item in reader.read_items():
        out.items.append((item.stream, item.index))
        if len(out.items) >= 3:
            started.set()
    reader.read_footer()
    out.complete = True


# A server process killed mid-stream ------------------------------------------------------


def test_server_process_sigkilled_mid_stream_is_never_a_complete_stream() -> None:
    # One process serves all three transports; six streams (3 transports x sync/async)
    # are mid-flight when it gets SIGKILL.
    with subprocess_server() as server:
        bases = {"sse": server.http_url, "http": server.http_url, "grpc": server.grpc_target}
        sync_outcomes: dict[str, Outcome] = {}
        threads = []
        for i, transport in enumerate(TRANSPORTS):
            out, started = Outcome(), threading.Event()
            sync_outcomes[transport] = out
            thread = threading.Thread(
                target=sread,
                args=(transport, bases[transport]),
                kwargs={
                    "stream": 10 + i,
                    "n": 100_000,
                    "delay": 0.01,
                    "out": out,
                    "started": started,
                },
                daemon=True,
            )
            thread.start()
            threads.append((thread, started))

        async def main() -> list[Outcome]:
            got: dict[int, int] = {}
            ready = asyncio.Event()

            def seen(stream: int) -> Callable[[int], None]:
                def on_item(index: int) -> None:
                    got[stream] = index
                    if len(got) == 3 and min(got.values()) >= 3:
                        ready.set()

                return on_item

            tasks = [
                asyncio.ensure_future(
                    aread(t, bases[t], stream=i, n=100_000, delay=0.01, on_item=seen(i))
                )
                for i, t in enumerate(TRANSPORTS)
            ]
            await asyncio.wait_for(ready.wait(), 20)
            for _, started in threads:
                assert await asyncio.to_thread(started.wait, 20)
            server.kill()
            return list(await asyncio.wait_for(asyncio.gather(*tasks), 20))

        async_outcomes = asyncio.run(main())
        for thread, _ in threads:
            thread.join(20)
            assert not thread.is_alive(), "a sync reader hung after the server died"
    for i, (transport, out) in enumerate(zip(TRANSPORTS, async_outcomes, strict=True)):
        assert not out.complete, transport
        assert isinstance(out.error, StreamError), (transport, out.error)
        assert len(out.items) >= 3
        _check_prefix(out, i)
    for i, transport in enumerate(TRANSPORTS):
        out = sync_outcomes[transport]
        assert not out.complete, transport
        assert isinstance(out.error, StreamError), (transport, out.error)
        _check_prefix(out, 10 + i)


# Connections cut at random points ----------------------------------------------------------

CUTS_PER_TRANSPORT = 10


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_connection_cut_at_random_points_is_truncation_and_closes_the_producer(
    transport: str, codec: str
) -> None:
    rng = random.Random(f"{transport}-{codec}")
    tracker = Tracker()
    n_items, floats = 40, 64
    cuts: list[int | None] = [None]
    kinds: dict[str, int] = {}

    @contextlib_server(transport, tracker)
    def run(upstream: str, port: int) -> None:
        with CutProxy(port, lambda: cuts[-1]) as proxy:
            base = upstream.replace(str(port), str(proxy.port))
            # First a whole stream, to learn how many bytes one takes.
            full = asyncio.run(
                aread(transport, base, stream=0, n=n_items, codec=codec, floats=floats)
            )
            assert full.complete, full.error
            total = proxy.sent[-1]
            for k in range(1, CUTS_PER_TRANSPORT + 1):
                cuts.append(rng.randrange(0, total))
                out = asyncio.run(
                    aread(transport, base, stream=k, n=n_items, codec=codec, floats=floats)
                )
                assert not out.complete, f"cut at {cuts[-1]} of {total} bytes read as complete"
                kinds[type(out.error).__name__] = kinds.get(type(out.error).__name__, 0) + 1
                assert isinstance(out.error, StreamError), out.error
                _check_prefix(out, k)
        assert tracker.wait_all_closed(5), f"{tracker.started - tracker.closed} producers left open"
        print(f"FIGURE cuts {transport}-{codec} stream_bytes={total} cuts={len(cuts) - 1} {kinds}")

    run()


def contextlib_server(
    transport: str, tracker: Tracker
) -> Callable[[Callable[[str, int], None]], Callable[[], None]]:
    """Decorator: run the body with (base URL or target, port) of a fresh in-thread server."""

    def wrap(body: Callable[[str, int], None]) -> Callable[[], None]:
        def run() -> None:
            if transport == "grpc":
                with serve_in_thread(
                    grpc_service(tracker), reflection=False, health=False
                ) as running:
                    body(running.target, running.port)
            else:
                with live_server(starlette_app(tracker)) as server:
                    body(server.url, server.port)

        return run

    return wrap


def test_cut_before_any_byte_is_an_error_for_every_transport() -> None:
    for transport in TRANSPORTS:

        @contextlib_server(transport, Tracker())
        def run(upstream: str, port: int, name: str = transport) -> None:
            with CutProxy(port, lambda: 0) as proxy:
                base = upstream.replace(str(port), str(proxy.port))
                out = asyncio.run(aread(name, base, stream=1, n=5, timeout=5))
                assert not out.complete
                assert isinstance(out.error, StreamError), out.error
                assert out.items == []

        run()


# A consumer that stalls --------------------------------------------------------------------


def test_grpc_stalled_consumer_does_not_let_the_producer_run_ahead() -> None:
    # 1 MiB items, a client that reads the header and then sleeps: HTTP/2 flow control
    # must stop the producer after a bounded number of frames.
    tracker = Tracker()
    floats = 256 * 1024

    async def main(target: str) -> tuple[int, int, int]:
        params = {"stream": 1, "n": -1, "floats": floats}
        async with tgrpc.aconnect(
            target, "Stream", TYPES["msgpack"], request=grpc_request(**params)
        ) as reader:
            await reader.read_header()
            await asyncio.sleep(0.7)
            ahead_1s = tracker.produced
            await asyncio.sleep(0.7)
            ahead_2s = tracker.produced
            got = 0
            async for _ in reader.read_items():
                got += 1
                if got == 50:
                    break
            return ahead_1s, ahead_2s, got

    with serve_in_thread(grpc_service(tracker), reflection=False, health=False) as running:
        ahead_1s, ahead_2s, got = asyncio.run(main(running.target))
        assert tracker.wait_all_closed(5), "the producer was not closed after the client left"
    print(f"FIGURE grpc-stall items_1MiB_ahead_after_0.7s={ahead_1s} after_1.4s={ahead_2s}")
    assert got == 50
    # Bounded, and not growing while the client sleeps.
    assert ahead_2s <= 40, f"producer ran {ahead_2s} MiB ahead of a stalled client"
    assert ahead_2s - ahead_1s <= 2, (ahead_1s, ahead_2s)


@pytest.mark.parametrize("transport", ["sse", "http"])
def test_http_stalled_httpx_consumer_is_bounded_then_aborted(transport: str) -> None:
    # The teammates' test stalls a raw socket; this one stalls a real httpx client.
    tracker = Tracker()
    floats = 256 * 1024

    async def main(url: str) -> tuple[int, int, BaseException | None]:
        params = {"stream": 1, "n": -1, "floats": floats}
        module = sse if transport == "sse" else http
        error = None
        async with (
            httpx.AsyncClient(timeout=30) as client,
            module.aconnect(
                client, "GET", f"{url}/{transport}", TYPES["msgpack"], params=params
            ) as reader,
        ):
            await reader.read_header()
            await asyncio.sleep(0.3)
            ahead = tracker.produced
            await asyncio.sleep(1.0)  # past send_timeout: the server aborts
            try:
                async for _ in reader.read_items():
                    pass
            except StreamTruncatedError as exc:
                error = exc
        return ahead, tracker.produced, error

    with live_server(starlette_app(tracker, send_timeout=0.6)) as server:
        started = time.monotonic()
        ahead, produced, error = asyncio.run(main(server.url))
        assert tracker.wait_all_closed(5)
    print(f"FIGURE {transport}-stall items_1MiB_ahead={ahead} produced_total={produced}")
    assert ahead <= 64, ahead
    assert produced <= 96, produced
    assert isinstance(error, StreamTruncatedError), "an aborted stream must read as truncated"
    assert time.monotonic() - started < 15
