"""Nothing is lost silently, on every transport: a server SIGKILLed mid-stream, the
connection cut at random byte offsets, a consumer that stalls.

The conformance suite (tests/conformance) already covers a producer raising, a client
leaving and an in-process server abort; these add a real process kill, random cuts
through a loopback TCP proxy (with a check that each server-side producer is closed)
and gRPC backpressure. Every transport test runs over the conformance harness
registry (``harness_clients``).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conformance.harness import TransportHarness, harness_named
from harness_clients import (
    HARNESSES,
    SHARED_SERVER_HARNESSES,
    ClientSettings,
    StreamCall,
    each_harness,
    served,
)
from reliability_helpers import TYPES, CutProxy, Tracker, subprocess_server

from truss_stream import StreamError, StreamTruncatedError


class Outcome:
    def __init__(self) -> None:
        self.items: list[tuple[int, int]] = []
        self.error: BaseException | None = None
        self.complete = False


def _check_prefix(outcome: Outcome, stream: int) -> None:
    assert outcome.items == [(stream, i) for i in range(len(outcome.items))], "reordered or lost"


async def aread(
    harness: TransportHarness,
    address: str,
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
    params = {"stream": stream, "n": n, "codec": codec, "delay": delay, "floats": floats}
    # gRPC: a private subchannel pool: grpc-core otherwise shares connections between
    # channels to one target, and a stream could ride an earlier, uncut one.
    settings = ClientSettings(timeout=timeout, private_connection=True)
    try:
        async with harness.aconnect(StreamCall(address, TYPES[codec], params, settings)) as reader:
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
    harness: TransportHarness,
    address: str,
    *,
    stream: int,
    n: int,
    delay: float,
    out: Outcome,
    started: threading.Event,
) -> None:
    """The sync client twin of :func:`aread` (for a thread)."""
    params = {"stream": stream, "n": n, "delay": delay}
    try:
        with harness.connect(StreamCall(address, TYPES["msgpack"], params)) as reader:
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
    # One process serves every transport; two streams per transport (sync and async)
    # are mid-flight when it gets SIGKILL.
    with subprocess_server() as server:
        bases = {
            h.name: h.address_in(http_url=server.http_url, grpc_target=server.grpc_target)
            for h in SHARED_SERVER_HARNESSES
        }
        sync_outcomes: dict[str, Outcome] = {}
        threads = []
        for i, harness in enumerate(SHARED_SERVER_HARNESSES):
            out, started = Outcome(), threading.Event()
            sync_outcomes[harness.name] = out
            thread = threading.Thread(
                target=sread,
                args=(harness, bases[harness.name]),
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
                    if len(got) == len(SHARED_SERVER_HARNESSES) and min(got.values()) >= 3:
                        ready.set()

                return on_item

            tasks = [
                asyncio.ensure_future(
                    aread(h, bases[h.name], stream=i, n=100_000, delay=0.01, on_item=seen(i))
                )
                for i, h in enumerate(SHARED_SERVER_HARNESSES)
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
    for i, (harness, out) in enumerate(zip(SHARED_SERVER_HARNESSES, async_outcomes, strict=True)):
        assert not out.complete, harness.name
        assert isinstance(out.error, StreamError), (harness.name, out.error)
        assert len(out.items) >= 3
        _check_prefix(out, i)
    for i, harness in enumerate(SHARED_SERVER_HARNESSES):
        out = sync_outcomes[harness.name]
        assert not out.complete, harness.name
        assert isinstance(out.error, StreamError), (harness.name, out.error)
        _check_prefix(out, 10 + i)


# Connections cut at random points ----------------------------------------------------------

CUTS_PER_TRANSPORT = 10


@each_harness
@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_connection_cut_at_random_points_is_truncation_and_closes_the_producer(
    harness: TransportHarness, codec: str
) -> None:
    rng = random.Random(f"{harness.name}-{codec}")
    tracker = Tracker()
    n_items, floats = 40, 64
    cuts: list[int | None] = [None]
    kinds: dict[str, int] = {}
    with served(harness, tracker) as app, CutProxy(app.port, lambda: cuts[-1]) as proxy:
        address = harness.address_at(proxy.port)
        # First a whole stream, to learn how many bytes one takes.
        full = asyncio.run(aread(harness, address, stream=0, n=n_items, codec=codec, floats=floats))
        assert full.complete, full.error
        total = proxy.sent[-1]
        for k in range(1, CUTS_PER_TRANSPORT + 1):
            cuts.append(rng.randrange(0, total))
            out = asyncio.run(
                aread(harness, address, stream=k, n=n_items, codec=codec, floats=floats)
            )
            assert not out.complete, f"cut at {cuts[-1]} of {total} bytes read as complete"
            kinds[type(out.error).__name__] = kinds.get(type(out.error).__name__, 0) + 1
            assert isinstance(out.error, StreamError), out.error
            _check_prefix(out, k)
        assert tracker.wait_all_closed(5), f"{tracker.started - tracker.closed} producers left open"
    print(f"FIGURE cuts {harness.name}-{codec} stream_bytes={total} cuts={len(cuts) - 1} {kinds}")


def test_cut_before_any_byte_is_an_error_for_every_transport() -> None:
    for harness in HARNESSES:
        with served(harness) as app, CutProxy(app.port, lambda: 0) as proxy:
            out = asyncio.run(
                aread(harness, harness.address_at(proxy.port), stream=1, n=5, timeout=5)
            )
            assert not out.complete, harness.name
            assert isinstance(out.error, StreamError), out.error
            assert out.items == []


# A consumer that stalls --------------------------------------------------------------------


def test_grpc_stalled_consumer_does_not_let_the_producer_run_ahead() -> None:
    # 1 MiB items, a client that reads the header and then sleeps: HTTP/2 flow control
    # must stop the producer after a bounded number of frames.
    tracker = Tracker()
    floats = 256 * 1024

    harness = harness_named("grpc")

    async def main(target: str) -> tuple[int, int, int]:
        params = {"stream": 1, "n": -1, "floats": floats}
        async with harness.aconnect(StreamCall(target, TYPES["msgpack"], params)) as reader:
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

    with served(harness, tracker) as app:
        ahead_1s, ahead_2s, got = asyncio.run(main(app.address))
        assert tracker.wait_all_closed(5), "the producer was not closed after the client left"
    print(f"FIGURE grpc-stall items_1MiB_ahead_after_0.7s={ahead_1s} after_1.4s={ahead_2s}")
    assert got == 50
    # Bounded, and not growing while the client sleeps.
    assert ahead_2s <= 40, f"producer ran {ahead_2s} MiB ahead of a stalled client"
    assert ahead_2s - ahead_1s <= 2, (ahead_1s, ahead_2s)


@pytest.mark.parametrize("name", ["sse", "http"])  # send_timeout is theirs
def test_http_stalled_httpx_consumer_is_bounded_then_aborted(name: str) -> None:
    # The teammates' test stalls a raw socket; this one stalls a real httpx client.
    harness = harness_named(name)
    tracker = Tracker()
    floats = 256 * 1024

    async def main(address: str) -> tuple[int, int, BaseException | None]:
        params = {"stream": 1, "n": -1, "floats": floats}
        error = None
        async with harness.aconnect(StreamCall(address, TYPES["msgpack"], params)) as reader:
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

    with served(harness, tracker, send_timeout=0.6) as app:
        started = time.monotonic()
        ahead, produced, error = asyncio.run(main(app.address))
        assert tracker.wait_all_closed(5)
    print(f"FIGURE {name}-stall items_1MiB_ahead={ahead} produced_total={produced}")
    assert ahead <= 64, ahead
    assert produced <= 96, produced
    assert isinstance(error, StreamTruncatedError), "an aborted stream must read as truncated"
    assert time.monotonic() - started < 15
