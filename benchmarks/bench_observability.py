"""What metrics cost: the same streams with Prometheus metrics on and off, side by side.

1. SSE, small typed items (``Small``: int, float, 8 strings; msgpack), served by
   ``sse_response`` under uvicorn[standard] in its own process and read with
   ``transports.sse.aconnect`` here. One server process serves both routes:
   ``/on`` records into prometheus_client's default registry (``metrics=None``, the
   default; ``/metrics`` is mounted with ``make_asgi_app()``) and ``/off`` passes
   ``metrics=False``. Both keep the access-record and tracing hooks (no SDK set up).
2. The Triton proxy, pipelined (``AsyncTritonBytesStreamer``, one Chat call, 32 in
   flight, FP32 [1, 16] frames to a real PyTriton Triton): one proxy through its CLI
   with ``--metrics-listen`` (metrics on), one started with prometheus_client made
   unimportable (metrics off: what a proxy without the ``metrics`` extra does).

Variants take turns for ``BENCH_OBS_ROUNDS`` rounds (default 7 for SSE, 5 for the
proxy); figures are medians, ratios the medians of each round's on/off ratio.
Goal (DESIGN.md): on >= 0.95x off for both.

Run: ``python -m benchmarks.bench_observability [sse] [proxy]`` (writes
benchmarks/results/observability.md), or through ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydantic

from benchmarks._servers import (
    cpu_seconds,
    free_port,
    load_average,
    results_table,
    run_uvicorn,
    subprocess_server,
)
from truss_stream import stream_types, stream_writer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "observability.md"
SSE_ITEMS = int(os.environ.get("BENCH_OBS_SSE_ITEMS", "20000"))
SSE_ROUNDS = int(os.environ.get("BENCH_OBS_ROUNDS", "7"))
PROXY_FRAMES = int(os.environ.get("BENCH_OBS_PROXY_FRAMES", "3000"))
PROXY_ROUNDS = int(os.environ.get("BENCH_OBS_PROXY_ROUNDS", "5"))
WORDS = [f"word{i}" for i in range(8)]
_NO_PROMETHEUS = (
    "import importlib.abc, runpy, sys\n"
    "class _Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'prometheus_client' or name.startswith('prometheus_client.'):\n"
    "            raise ImportError('blocked for the metrics-off benchmark')\n"
    "sys.meta_path.insert(0, _Block())\n"
    "sys.argv[0] = 'transports.triton.proxy'\n"
    "runpy.run_module('transports.triton.proxy', run_name='__main__')\n"
)


class Small(pydantic.BaseModel):
    index: int
    score: float
    words: list[str]


SMALL = stream_types(Small)


def app() -> Any:
    from prometheus_client import make_asgi_app
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Mount, Route

    from transports.sse import sse_response

    async def small(n: int) -> AsyncIterator[bytes | memoryview]:
        writer = stream_writer(SMALL)
        for i in range(n):
            yield writer.yield_item(Small(index=i, score=i * 0.5, words=WORDS))

    async def on(request: Request) -> Response:
        return sse_response(small(int(request.query_params["n"])))

    async def off(request: Request) -> Response:
        return sse_response(small(int(request.query_params["n"])), metrics=False)

    return Starlette(
        routes=[Route("/on", on), Route("/off", off), Mount("/metrics", make_asgi_app())]
    )


def serve(port: int) -> None:
    run_uvicorn(app(), port)


@contextlib.contextmanager
def sse_server() -> Iterator[tuple[str, int]]:
    port = free_port()
    args = ["--serve", str(port)]
    with subprocess_server("benchmarks.bench_observability", args, port) as process:
        yield f"http://127.0.0.1:{port}", process.pid


async def read_sse(client: httpx.AsyncClient, route: str) -> float:
    from transports.sse import aconnect

    start = time.perf_counter()
    count = 0
    async with aconnect(client, "GET", route, SMALL, params={"n": SSE_ITEMS}) as reader:
        async for item in reader.read_items():
            count += item.index >= 0
    assert count == SSE_ITEMS
    return SSE_ITEMS / (time.perf_counter() - start)


def wrapper_cost() -> dict[str, float]:
    """Microseconds per frame the stream wrapper adds, in-process, vs iterating bare.

    The SSE figures compare metrics on and off, both wrapped (the off route keeps the
    access record's counters and the tracing hook); this is what the wrapper itself
    costs a frame, metrics on, against no observability at all.
    """
    from prometheus_client import CollectorRegistry

    from transports.observability import StreamMetrics, observe_stream

    frame = bytes(stream_writer(SMALL).yield_item(Small(index=1, score=0.5, words=WORDS)))
    n = 200_000
    metrics = StreamMetrics.for_registry(CollectorRegistry())

    async def frames() -> AsyncIterator[bytes]:
        for _ in range(n - 1):
            yield frame
        yield stream_writer(SMALL).yield_end()

    async def drain(source: Any) -> float:
        start = time.perf_counter()
        async for _ in source:
            pass
        return (time.perf_counter() - start) / n * 1e6

    async def once() -> tuple[float, float]:
        bare = await drain(frames())
        wrapped = await drain(
            observe_stream(frames(), transport="sse", route="/x", metrics=metrics)
        )
        return bare, wrapped

    runs = [asyncio.run(once()) for _ in range(5)]
    return {
        "bare": statistics.median(r[0] for r in runs),
        "wrapped": statistics.median(r[1] for r in runs),
    }


def _paired(on: list[float], off: list[float]) -> dict[str, float]:
    return {
        "on": statistics.median(on),
        "off": statistics.median(off),
        "ratio": statistics.median(a / b for a, b in zip(on, off, strict=True)),
    }


async def measure_sse() -> dict[str, float]:
    """Items/s on and off, and the server's CPU microseconds per item on and off."""
    on: list[float] = []
    off: list[float] = []
    cpu: dict[str, list[float]] = {"/on": [], "/off": []}
    with sse_server() as (url, pid):
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            await read_sse(client, "/on")  # warm-up, both routes
            await read_sse(client, "/off")
            for i in range(SSE_ROUNDS):
                # Alternate which goes first, so neither always follows the other.
                order = ("/on", "/off") if i % 2 == 0 else ("/off", "/on")
                for route in order:
                    before = cpu_seconds(pid)
                    (on if route == "/on" else off).append(await read_sse(client, route))
                    cpu[route].append((cpu_seconds(pid) - before) / SSE_ITEMS * 1e6)
            scrape = (await client.get("/metrics/")).text
    assert 'truss_stream_streams_ended_total{outcome="complete",route="/on"' in scrape
    assert 'route="/off"' not in scrape
    result = _paired(on, off)
    result["cpu_on_us"] = statistics.median(cpu["/on"])
    result["cpu_off_us"] = statistics.median(cpu["/off"])
    return result


@contextlib.contextmanager
def _proxy(triton_url: str, *, metrics: bool) -> Iterator[tuple[str, int]]:
    from benchmarks.bench_triton import listening

    args = ["--listen", "127.0.0.1:0", "--triton-url", triton_url, "--max-in-flight", "256"]
    args += ["--log-level", "WARNING"]
    if metrics:
        cmd = [sys.executable, "-m", "transports.triton.proxy", *args, "--metrics-listen"]
        cmd.append("127.0.0.1:0")
    else:
        cmd = [sys.executable, "-c", _NO_PROMETHEUS, *args]
    with listening(cmd) as (target, pid, line):
        assert ("metrics=" in line) == metrics, line
        yield target, pid


def measure_proxy() -> dict[str, float]:
    """Frames/s on and off, and each proxy process's CPU microseconds per frame."""
    from benchmarks.bench_triton import _frames, running_triton, streamer_through_proxy

    frames = _frames(PROXY_FRAMES)
    rates: dict[str, list[float]] = {"on": [], "off": []}
    cpu: dict[str, list[float]] = {"on": [], "off": []}
    with (
        running_triton() as (triton_url, _, _),
        _proxy(triton_url, metrics=True) as proxy_on,
        _proxy(triton_url, metrics=False) as proxy_off,
    ):
        proxies = {"on": proxy_on, "off": proxy_off}
        for target, _pid in proxies.values():  # warm-up
            asyncio.run(streamer_through_proxy(target, frames[:300], 32))
        for i in range(PROXY_ROUNDS):
            for key in ("on", "off") if i % 2 == 0 else ("off", "on"):
                target, pid = proxies[key]
                before = cpu_seconds(pid)
                rates[key].append(asyncio.run(streamer_through_proxy(target, frames, 32)))
                cpu[key].append((cpu_seconds(pid) - before) / PROXY_FRAMES * 1e6)
    result = _paired(rates["on"], rates["off"])
    result["cpu_on_us"] = statistics.median(cpu["on"])
    result["cpu_off_us"] = statistics.median(cpu["off"])
    return result


def run(which: tuple[str, ...] = ("sse", "proxy")) -> list[dict[str, Any]]:
    """Rows for benchmarks/run.py."""
    rows: list[dict[str, Any]] = []
    if "sse" in which:
        sse = asyncio.run(measure_sse())
        bench = f"SSE, {SSE_ITEMS} small msgpack items, metrics on vs off"
        rows += [
            {"benchmark": bench, "variant": "metrics off (metrics=False)", "value": round(sse["off"], 1), "unit": "items/s", "note": f"server CPU {sse['cpu_off_us']:.2f} us/item"},  # noqa: E501
            {"benchmark": bench, "variant": "metrics on (default registry)", "value": round(sse["on"], 1), "unit": "items/s", "ratio": round(sse["ratio"], 3), "goal": ">= 0.95x", "note": f"server CPU {sse['cpu_on_us']:.2f} us/item"},  # noqa: E501
        ]  # fmt: skip
        cost = wrapper_cost()
        rows.append(
            {
                "benchmark": "stream wrapper alone, in-process, 200k small frames",
                "variant": "observe_stream (metrics on) minus a bare async iteration",
                "value": round(cost["wrapped"] - cost["bare"], 3),
                "unit": "us/frame",
                "note": f"bare {cost['bare']:.3f} us/frame, wrapped {cost['wrapped']:.3f}",
            }
        )
    if "proxy" in which:
        proxy = measure_proxy()
        bench = f"Triton proxy, pipelined, {PROXY_FRAMES} frames, 32 in flight, metrics on vs off"
        rows += [
            {"benchmark": bench, "variant": "metrics off (no prometheus_client)", "value": round(proxy["off"], 1), "unit": "frames/s", "note": f"proxy CPU {proxy['cpu_off_us']:.0f} us/frame"},  # noqa: E501
            {"benchmark": bench, "variant": "metrics on (--metrics-listen)", "value": round(proxy["on"], 1), "unit": "frames/s", "ratio": round(proxy["ratio"], 3), "goal": ">= 0.95x", "note": f"proxy CPU {proxy['cpu_on_us']:.0f} us/frame"},  # noqa: E501
        ]  # fmt: skip
    return rows


def write_results(rows: list[dict[str, Any]]) -> None:
    from benchmarks.machine import machine_lines

    load = load_average()
    lines = [
        "# Metrics on vs off",
        "",
        *machine_lines(),
        "",
        f"Load average when the table was written (other jobs share the cores): {load}.",
        f"Rounds: SSE {SSE_ROUNDS}, proxy {PROXY_ROUNDS}; variants take turns (the first of",
        "each pair alternates); values are medians, the ratio is the median of each round's",
        "on/off ratio. Produced by `python -m benchmarks.bench_observability`.",
        "",
        *results_table(
            rows,
            ratio_header="ratio on/off",
            value_format=",",
            ratio_format=".3f",
            notes_key="note",
        ),
    ]
    RESULTS.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("which", nargs="*", default=["sse", "proxy"])
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    rows = run(tuple(args.which))
    for row in rows:
        print(row)
    write_results(rows)


if __name__ == "__main__":
    main()
