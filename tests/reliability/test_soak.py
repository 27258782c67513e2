"""Sustained load on loopback: 200 concurrent SSE streams, 100 chunked HTTP streams,
100 gRPC streams, and the Triton proxy (demo backend) at full rate. Zero lost or
reordered items; server RSS at start, middle and end.

The servers run in their own process (reliability_server.py) so their memory is theirs
alone. ``make soak`` runs the long version (``-m soak``, TRUSS_STREAM_SOAK_SECONDS,
default 60 s per transport); the normal suite runs a short one (3 s). Each run prints
one ``SOAK`` line with its figures (docs/reliability.md quotes them).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psutil
import pytest
from conformance.harness import TransportHarness
from harness_clients import ClientSettings, StreamCall, each_shared_harness
from reliability_helpers import TYPES, SubprocessServer, subprocess_server
from test_faults import Proxy, free_port, settings

from transports.triton import AsyncTritonBytesStreamer
from truss_stream import StreamError

SOAK_SECONDS = float(os.environ.get("TRUSS_STREAM_SOAK_SECONDS", "60"))
SHORT_SECONDS = 2.0
MiB = 1024 * 1024


@dataclass
class LoadResult:
    transport: str
    streams: int
    seconds: float = 0.0
    items: int = 0
    expected: int = 0
    reordered: int = 0
    errors: list[str] = field(default_factory=list)
    rss: dict[str, float] = field(default_factory=dict)
    server_cpu: float = 0.0
    client_cpu: float = 0.0

    @property
    def lost(self) -> int:
        return self.expected - self.items

    def line(self) -> str:
        rss = " ".join(f"server_rss_{k}={v:.0f}MiB" for k, v in self.rss.items())
        return (
            f"SOAK {self.transport} streams={self.streams} seconds={self.seconds:.1f} "
            f"items={self.items} lost={self.lost} reordered={self.reordered} "
            f"errors={len(self.errors)} {rss} server_cpu_s={self.server_cpu:.1f} "
            f"client_cpu_s={self.client_cpu:.1f}"
        )


def _rss(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MiB


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


async def _one_stream(
    harness: TransportHarness,
    address: str,
    client: Any,
    stream: int,
    n: int,
    delay: float,
    result: LoadResult,
) -> None:
    params = {"stream": stream, "n": n, "delay": delay}
    result.expected += n
    try:
        # No deadline: a soak stream runs as long as the soak.
        call = StreamCall(address, TYPES["msgpack"], params, ClientSettings(timeout=None))
        async with harness.aconnect(call, client=client) as reader:
            header = await reader.read_header()
            assert header.stream == stream
            expect = 0
            async for item in reader.read_items():
                if item.stream != stream or item.index != expect:
                    result.reordered += 1
                expect = item.index + 1
                result.items += 1
            footer = await reader.read_footer()
            assert footer.count == n
    except (StreamError, AssertionError) as exc:
        result.errors.append(f"{type(exc).__name__}: {exc}"[:300])


async def run_load(
    harness: TransportHarness,
    streams: int,
    delay: float,
    seconds: float,
    server: SubprocessServer,
) -> LoadResult:
    """``streams`` concurrent streams, each an item every ``delay`` s for about ``seconds``."""
    result = LoadResult(harness.name, streams)
    pid = server.proc.pid
    result.rss["start"] = _rss(pid)
    cpu_start, client_cpu_start = _cpu(pid), time.process_time()
    n = max(int(seconds / delay), 1)
    started = time.monotonic()
    address = harness.address_in(http_url=server.http_url, grpc_target=server.grpc_target)

    async def sample_middle() -> None:
        await asyncio.sleep(seconds / 2)
        result.rss["middle"] = _rss(pid)

    async with harness.async_client(address, max_streams=streams) as client:
        sampler = asyncio.ensure_future(sample_middle())
        await asyncio.wait_for(
            asyncio.gather(
                *(
                    _one_stream(harness, address, client, s, n, delay, result)
                    for s in range(streams)
                )
            ),
            seconds * 3 + 60,
        )
        await sampler
    result.seconds = time.monotonic() - started
    result.server_cpu = _cpu(pid) - cpu_start
    result.client_cpu = time.process_time() - client_cpu_start
    await asyncio.sleep(0.5)  # let the server drop what the streams held
    result.rss["end"] = _rss(pid)
    return result


# transport -> (concurrent streams, seconds between a stream's items): about 1,000
# items/s in all, what one loaded core of this 2-core machine sustains with the client
# alongside. A transport registered later gets the default.
LOADS = {"sse": (200, 0.25), "http": (100, 0.1), "grpc": (100, 0.1)}
DEFAULT_LOAD = (100, 0.1)


def _check(result: LoadResult, seconds: float) -> None:
    print(result.line())
    assert not result.errors, result.errors[:5]
    assert result.lost == 0
    assert result.reordered == 0
    # Steady memory: the second half of the run adds (almost) nothing.
    assert result.rss["end"] - result.rss["middle"] < 64, result.rss


@pytest.fixture(scope="module")
def shared_server() -> Iterator[SubprocessServer]:
    """One server process for the short runs (the soak runs get a fresh one each)."""
    with subprocess_server() as server:
        yield server


@each_shared_harness
def test_short_load(harness: TransportHarness, shared_server: SubprocessServer) -> None:
    streams, delay = LOADS.get(harness.name, DEFAULT_LOAD)
    result = asyncio.run(run_load(harness, streams, delay, SHORT_SECONDS, shared_server))
    _check(result, SHORT_SECONDS)


@pytest.mark.soak
@each_shared_harness
def test_soak(harness: TransportHarness) -> None:
    streams, delay = LOADS.get(harness.name, DEFAULT_LOAD)
    with subprocess_server() as server:
        result = asyncio.run(run_load(harness, streams, delay, SOAK_SECONDS, server))
    _check(result, SOAK_SECONDS)


# The Triton proxy at full rate (embedded demo backend) ---------------------------------------


async def proxy_load(seconds: float) -> tuple[LoadResult, float]:
    port = free_port()
    proxy = Proxy(port, "--max-in-flight", "64")
    result = LoadResult("triton-proxy", 1)
    try:
        pid = proxy.proc.pid
        result.rss["start"] = _rss(pid)
        deadline = time.monotonic() + seconds
        started = time.monotonic()

        async def frames() -> Any:
            i = 0
            while time.monotonic() < deadline:
                yield np.full((1, 4), i % 1000, np.float32).tobytes()
                i += 1
                if i % 64 == 0:
                    await asyncio.sleep(0)

        async def sample_middle() -> None:
            await asyncio.sleep(seconds / 2)
            result.rss["middle"] = _rss(pid)

        sampler = asyncio.ensure_future(sample_middle())
        async with AsyncTritonBytesStreamer(**settings(proxy.target), max_in_flight=32) as streamer:
            expect = 0
            async for seq, ack, outputs in streamer.stream_bytes("add_one_fp32", "1", frames()):
                if seq != expect or ack["status"] != "OK" or outputs is None:
                    result.reordered += 1
                elif outputs["OUTPUT"][0, 0] != (seq % 1000) + 1:
                    result.errors.append(f"frame {seq}: wrong output")
                expect = seq + 1
                result.items += 1
            result.expected = expect
        await sampler
        result.seconds = time.monotonic() - started
        result.rss["end"] = _rss(pid)
        result.server_cpu = _cpu(pid)
    finally:
        proxy.stop()
    return result, result.items / result.seconds


def test_short_proxy_load() -> None:
    result, rate = asyncio.run(proxy_load(SHORT_SECONDS))
    print(result.line(), f"frames_per_s={rate:.0f}")
    assert not result.errors
    assert result.reordered == 0
    assert result.items > 100


@pytest.mark.soak
def test_soak_proxy_full_rate() -> None:
    result, rate = asyncio.run(proxy_load(SOAK_SECONDS))
    print(result.line(), f"frames_per_s={rate:.0f}")
    assert not result.errors
    assert result.reordered == 0
    assert result.rss["end"] - result.rss["middle"] < 64, result.rss
