"""Server-side streaming compression: bytes saved and what it costs.

``sse_response`` / ``stream_response`` with ``compression=None | "gzip" | "zstd"``
under uvicorn[standard] in a thread of this process, async httpx client over
loopback (httpx decodes gzip and, with ``zstandard`` installed, zstd). For each
coding:

1. small typed items (int, float, 8 strings), SSE and chunked HTTP: wire bytes
   per item and items/s;
2. 4 MiB float32 tensors over chunked HTTP, two kinds of data: a smooth ramp
   (compressible) and Gaussian noise (close to incompressible): wire ratio, MB/s;
3. latency: one item every 10 ms, p50 / p99 of send-to-decode latency.

Run: ``python -m benchmarks.bench_compression`` (writes
benchmarks/results/compression.md), or ``python -m benchmarks.run compression``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydantic
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from benchmarks.bench_http import WORDS, Small, Tensor
from benchmarks.machine import machine_lines
from benchmarks.run import format_table
from transports import http, sse
from transports.sse import SSEFrameDecoder
from truss_stream import stream_reader, stream_types, stream_writer

SMALL_ITEMS = int(os.environ.get("BENCH_COMPRESSION_SMALL_ITEMS", "5000"))
TENSOR_ITEMS = int(os.environ.get("BENCH_COMPRESSION_TENSOR_ITEMS", "12"))
TICK_ITEMS = int(os.environ.get("BENCH_COMPRESSION_TICK_ITEMS", "100"))
REPEATS = int(os.environ.get("BENCH_COMPRESSION_REPEATS", "3"))
TENSOR_FLOATS = 1024 * 1024  # 4 MiB of float32
CODINGS: tuple[str | None, ...] = (None, "gzip", "zstd")
RESULTS = Path(__file__).parent / "results" / "compression.md"


class Tick(pydantic.BaseModel):
    index: int
    sent_ns: int


SMALL = stream_types(Small)
TENSOR = stream_types(Tensor)
TICK = stream_types(Tick)
RNG = np.random.default_rng(0)
DATA = {
    "ramp": np.linspace(0, 1, TENSOR_FLOATS, dtype=np.float32),
    "noise": RNG.standard_normal(TENSOR_FLOATS).astype(np.float32),
}


async def small_frames() -> AsyncIterator[bytes]:
    writer = stream_writer(SMALL)
    for i in range(SMALL_ITEMS):
        yield writer.yield_item(Small(index=i, score=i / 7, words=WORDS))
        if i % 64 == 0:
            await asyncio.sleep(0)


async def tensor_frames(kind: str) -> AsyncIterator[bytes | memoryview]:
    writer = stream_writer(TENSOR)
    for i in range(TENSOR_ITEMS):
        yield writer.yield_item(Tensor(index=i, tensor=DATA[kind]))


async def tick_frames() -> AsyncIterator[bytes]:
    writer = stream_writer(TICK)
    for i in range(TICK_ITEMS):
        yield writer.yield_item(Tick(index=i, sent_ns=time.monotonic_ns()))
        await asyncio.sleep(0.010)


def app() -> Starlette:
    async def endpoint(request: Request) -> Response:
        q = request.query_params
        coding: Any = q.get("coding") or None
        what = q["what"]
        frames: Any
        if what == "small":
            frames = small_frames()
        elif what == "tick":
            frames = tick_frames()
        else:
            frames = tensor_frames(what)
        respond = sse.sse_response if q["transport"] == "sse" else http.stream_response
        return respond(frames, compression=coding)

    return Starlette(routes=[Route("/", endpoint)])


class Server:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/"
        config = uvicorn.Config(app(), http="httptools", lifespan="off", log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=lambda: self.server.run(sockets=[self.sock]), daemon=True
        )

    def __enter__(self) -> Server:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


async def read(
    client: httpx.AsyncClient, url: str, types: Any, transport: str, coding: str | None
) -> tuple[int, list[Any], list[float]]:
    """(wire bytes, items, per-item receive times) for one stream."""
    wire = 0
    items: list[Any] = []
    times: list[float] = []
    headers = {"accept-encoding": coding or "identity"}
    async with client.stream("GET", url, headers=headers) as response:
        assert response.headers.get("content-encoding") == coding, response.headers
        decoder = SSEFrameDecoder() if transport == "sse" else None

        async def frames() -> AsyncIterator[bytes]:
            nonlocal wire
            # httpx decodes the content coding; count what crossed the wire.
            async for chunk in response.aiter_bytes():
                wire = response.num_bytes_downloaded
                yield decoder.feed(chunk) if decoder is not None else chunk

        reader = stream_reader(types, frames())
        async for item in reader.read_items():
            items.append(item)
            times.append(time.monotonic_ns())
    return wire, items, times


async def measure() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    samples: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    latencies: dict[tuple[str, str], list[float]] = {}
    with Server() as server:
        async with httpx.AsyncClient(timeout=60) as client:
            for _ in range(REPEATS):
                for coding in CODINGS:
                    name = coding or "identity"
                    cases = [("small", "sse"), ("small", "http"), ("ramp", "http")]
                    cases.append(("noise", "http"))
                    for what, transport in cases:
                        url = (
                            f"{server.url}?what={what}&transport={transport}&coding={coding or ''}"
                        )
                        start = time.perf_counter()
                        types = SMALL if what == "small" else TENSOR
                        wire, items, _ = await read(client, url, types, transport, coding)
                        seconds = time.perf_counter() - start
                        samples.setdefault((what, transport, name), []).append(
                            (wire / len(items), len(items) / seconds)
                        )
                    for transport in ("sse", "http"):
                        url = f"{server.url}?what=tick&transport={transport}&coding={coding or ''}"
                        _, items, times = await read(client, url, TICK, transport, coding)
                        latencies.setdefault((transport, name), []).extend(
                            (t - i.sent_ns) / 1e6 for i, t in zip(items, times, strict=True)
                        )
    for (what, transport, name), values in samples.items():
        per_item = statistics.median(v[0] for v in values)
        rate = statistics.median(v[1] for v in values)
        identity = statistics.median(v[0] for v in samples[(what, transport, "identity")])
        identity_rate = statistics.median(v[1] for v in samples[(what, transport, "identity")])
        label = "small items" if what == "small" else f"4 MiB tensors ({what})"
        rows.append(
            {
                "benchmark": f"compression {transport}, {label}",
                "variant": name,
                "value": per_item,
                "unit": "wire bytes/item",
                "ratio": identity / per_item,
                "ratio_vs": "identity bytes (higher: smaller)",
                "throughput": f"{rate:,.0f} items/s ({rate / identity_rate:.2f}x identity)",
            }
        )
    for (transport, name), ms in latencies.items():
        ordered = sorted(ms)
        rows.append(
            {
                "benchmark": f"compression {transport}, latency (item every 10 ms)",
                "variant": name,
                "value": statistics.median(ordered),
                "unit": "ms p50",
                "throughput": f"p99 {ordered[int(len(ordered) * 0.99) - 1]:.2f} ms",
            }
        )
    return rows


_HOW = (
    "uvicorn[standard] in a thread of the client's process, async httpx, loopback; median of "
    "{repeats} rounds, codings taking turns; gzip level 1, zstd level 3 (the defaults). "
    "`ratio` is identity's wire bytes over the coding's (higher: smaller); `notes` has "
    "throughput and latency. Load average at the end: {load} (2 cores shared with other "
    "jobs: absolute figures move with the load). Produced by "
    "`python -m benchmarks.bench_compression`."
)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """The results file: the machine, how it was measured, the table."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    how = _HOW.format(repeats=REPEATS, load=load)
    lines = ["# Streaming compression benchmarks", "", *machine_lines(), "", how, ""]
    return "\n".join(lines + format_table(rows)) + "\n"


def run() -> list[dict[str, Any]]:
    """Measure, write benchmarks/results/compression.md, return the rows."""
    rows = asyncio.run(measure())
    RESULTS.write_text(to_markdown(rows))
    return rows


if __name__ == "__main__":
    run()
    print(RESULTS.read_text())
