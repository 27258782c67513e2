"""gRPC typed stream vs raw grpc.aio, 4 MiB float32 tensor items.

All variants talk to one server process (its own core) over loopback:

- raw: a plain grpc.aio server-streaming handler yields one prebuilt 4 MiB
  ``bytes`` object per message; the client counts the bytes it receives.
- typed: a ``FrameStreamService`` producer writes each item with ``stream_writer``
  (msgpack, the array as an ext value); the client reads it with
  ``transports.grpc.aconnect`` and ``read_items()``, so every item is decoded and
  validated into a model holding a NumPy array.
- typed, pre-encoded frames: the same, but the producer yields one frame encoded
  up front, which isolates the transport and the reader from the writer's cost.

Besides throughput (median of interleaved runs) it reports CPU time per item on
each side, which a busy shared machine disturbs much less than wall time.

Run: ``python -m benchmarks.bench_grpc`` (or through ``benchmarks/run.py``);
``BENCH_GRPC_ITEMS`` and ``BENCH_GRPC_REPEATS`` change the sizes.
"""

from __future__ import annotations

import asyncio
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydantic

from truss_stream import NDArray, stream_types, stream_writer

ITEM_BYTES = 4 * 1024 * 1024
ITEMS = int(os.environ.get("BENCH_GRPC_ITEMS", "128"))
REPEATS = int(os.environ.get("BENCH_GRPC_REPEATS", "5"))
RAW_PATH = "/bench.Raw/Bytes"
RESULTS = Path(__file__).parent / "results" / "grpc.md"


class Item(pydantic.BaseModel):
    index: int
    tensor: NDArray


TYPES = stream_types(Item)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _tensor() -> np.ndarray[Any, Any]:
    return np.random.default_rng(0).random(ITEM_BYTES // 4, dtype=np.float32)


async def _serve() -> None:
    import grpc

    from transports.grpc import FrameStreamService, start_server

    tensor = _tensor()
    raw_message = tensor.tobytes()
    encoded = bytes(stream_writer(TYPES).yield_item(Item(index=0, tensor=tensor)))

    def metered(
        produce: Callable[[int], AsyncIterator[Any]],
    ) -> Callable[[bytes, Any], AsyncIterator[Any]]:
        async def producer(body: bytes, context: Any) -> AsyncIterator[Any]:
            started = _cpu_seconds()
            async for frame in produce(int(body)):
                yield frame
            print((_cpu_seconds() - started) / ITEMS, flush=True)

        return producer

    async def typed(count: int) -> AsyncIterator[bytes | memoryview]:
        writer = stream_writer(TYPES)
        for i in range(count):
            yield writer.yield_item(Item(index=i, tensor=tensor))

    async def pre_encoded(count: int) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield encoded

    async def raw(count: int) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield raw_message

    running = await start_server(
        FrameStreamService({"Tensors": metered(typed), "PreEncoded": metered(pre_encoded)})
    )
    raw_handler = grpc.unary_stream_rpc_method_handler(metered(raw))
    running.server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("bench.Raw", {"Bytes": raw_handler})]
    )
    print(running.port, flush=True)
    await running.server.wait_for_termination()


async def _raw_client(channel: Any) -> int:
    received = 0
    async for message in channel.unary_stream(RAW_PATH, None, None)(str(ITEMS).encode()):
        received += len(message)
    return received


async def _typed_client(channel: Any, method: str) -> int:
    from transports.grpc import aconnect

    received = 0
    async with aconnect(channel, method, TYPES, request=str(ITEMS).encode()) as reader:
        async for item in reader.read_items():
            received += item.tensor.nbytes
    return received


VARIANTS = {
    "raw grpc.aio bytes": lambda channel: _raw_client(channel),
    "typed stream (transports.grpc)": lambda channel: _typed_client(channel, "Tensors"),
    "typed, pre-encoded frames": lambda channel: _typed_client(channel, "PreEncoded"),
}


def run() -> list[dict[str, Any]]:
    """Run every variant against one server process, interleaved; rows as documented."""
    from transports.grpc import acreate_channel

    root = Path(__file__).resolve().parents[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_grpc", "--serve"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    client_cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    server_cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    try:
        assert server.stdout is not None
        stdout = server.stdout
        target = f"127.0.0.1:{stdout.readline().strip()}"

        async def measure() -> None:
            async with acreate_channel(target) as channel:
                for repeat in range(REPEATS + 1):  # the first round warms up
                    for name, variant in VARIANTS.items():
                        call: Awaitable[int] = variant(channel)
                        cpu, started = _cpu_seconds(), time.perf_counter()
                        received = await call
                        elapsed = time.perf_counter() - started
                        cpu = _cpu_seconds() - cpu
                        server_seconds = float(stdout.readline())
                        assert received == ITEMS * ITEM_BYTES
                        if repeat:
                            rates[name].append(received / elapsed / 1e6)
                            client_cpu[name].append(cpu / ITEMS * 1e3)
                            server_cpu[name].append(server_seconds * 1e3)

        asyncio.run(measure())
    finally:
        server.terminate()
        server.wait()
    raw = "raw grpc.aio bytes"
    benchmark = f"gRPC, {ITEMS} x 4 MiB float32 items, server process -> grpc.aio client"
    rows: list[dict[str, Any]] = []
    for name in VARIANTS:
        row: dict[str, Any] = {
            "benchmark": benchmark,
            "variant": name,
            "value": round(statistics.median(rates[name]), 1),
            "unit": "MB/s",
            "note": (
                f"CPU per item: server {statistics.median(server_cpu[name]):.2f} ms, "
                f"client {statistics.median(client_cpu[name]):.2f} ms"
            ),
        }
        if name != raw:
            paired = [ours / base for ours, base in zip(rates[name], rates[raw], strict=True)]
            row["ratio"] = round(statistics.median(paired), 3)
            row["ratio_vs"] = "raw (median of paired runs)"
        if name == "typed stream (transports.grpc)":
            row["goal"] = ">= 0.9x"
        rows.append(row)
    return rows


def main() -> None:
    if sys.argv[1:] == ["--serve"]:
        asyncio.run(_serve())
        return
    from benchmarks.machine import machine_lines
    from benchmarks.run import format_table

    table = format_table(run())
    print("\n".join(table))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        "\n".join(
            [
                "# gRPC benchmark",
                "",
                "Written by `python -m benchmarks.bench_grpc` (also run by `make bench`). "
                f"Median of {REPEATS} interleaved runs after a warm-up round; ratios are the "
                "median of the ratios of runs made side by side. See the module docstring "
                "for the variants.",
                "",
                *machine_lines(),
                "- load average at the end (2 cores shared with other jobs): "
                + ", ".join(f"{x:.1f}" for x in os.getloadavg()),
                "",
                *table,
                "",
                "Reading the rows: *pre-encoded* sends frames encoded once up front, so it "
                "measures the transport and the reader alone; the gap between it and *typed* "
                "is the writer's cost per item on the server (CPU per item says the same with "
                "less noise than throughput on a shared machine). Client CPU per item is about "
                "the same in every variant: the reader's arrays are views of the received "
                "messages. gRPC's Python API sends only `bytes` (its `SendMessageOperation` "
                "refuses a memoryview or bytearray) and copies each message into its own "
                "slices, so the writer's copy of a tensor into a `bytes` frame cannot be "
                "skipped; the raw variant sends one prebuilt `bytes` object and never pays it. "
                "See docs/grpc.md, Performance.",
                "",
            ]
        )
    )


if __name__ == "__main__":
    main()
