"""gRPC typed stream vs raw grpc.aio, 4 MiB float32 tensor items.

Both variants talk to the same server process (its own core) over loopback:

- raw: a plain grpc.aio server-streaming handler yields one prebuilt 4 MiB
  ``bytes`` object per message; the client counts the bytes it receives.
- typed: a ``FrameStreamService`` producer writes each item with ``stream_writer``
  (msgpack, the array as an ext value); the client reads it with
  ``transports.grpc.aconnect`` and ``read_items()``, so every item is decoded and
  validated into a model holding a NumPy array.

Run: ``python -m benchmarks.bench_grpc`` (or through ``benchmarks/run.py``).
"""

from __future__ import annotations

import asyncio
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pydantic

from truss_stream import NDArray, stream_types, stream_writer

ITEM_BYTES = 4 * 1024 * 1024
ITEMS = int(os.environ.get("BENCH_GRPC_ITEMS", "256"))
REPEATS = int(os.environ.get("BENCH_GRPC_REPEATS", "5"))
RAW_PATH = "/bench.Raw/Bytes"


class Item(pydantic.BaseModel):
    index: int
    tensor: NDArray


TYPES = stream_types(Item)


def _tensor() -> np.ndarray[Any, Any]:
    return np.random.default_rng(0).random(ITEM_BYTES // 4, dtype=np.float32)


async def _serve() -> None:
    import grpc

    from transports.grpc import FrameStreamService, start_server

    tensor = _tensor()
    raw_message = tensor.tobytes()

    async def typed(body: bytes, context: Any) -> AsyncIterator[bytes | memoryview]:
        writer = stream_writer(TYPES)
        for i in range(int(body)):
            yield writer.yield_item(Item(index=i, tensor=tensor))

    async def raw(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for _ in range(int(request)):
            yield raw_message

    running = await start_server(FrameStreamService({"Tensors": typed}))
    running.server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "bench.Raw", {"Bytes": grpc.unary_stream_rpc_method_handler(raw)}
            )
        ]
    )
    print(running.port, flush=True)
    await running.server.wait_for_termination()


async def _raw_client(target: str) -> float:
    from transports.grpc import acreate_channel

    async with acreate_channel(target) as channel:
        call = channel.unary_stream(RAW_PATH, None, None)
        started = time.perf_counter()
        received = 0
        async for message in call(str(ITEMS).encode()):
            received += len(message)
        elapsed = time.perf_counter() - started
    assert received == ITEMS * ITEM_BYTES
    return received / elapsed


async def _typed_client(target: str) -> float:
    from transports.grpc import aconnect, acreate_channel

    async with acreate_channel(target) as channel:
        started = time.perf_counter()
        received = 0
        async with aconnect(channel, "Tensors", TYPES, request=str(ITEMS).encode()) as reader:
            async for item in reader.read_items():
                received += item.tensor.nbytes
        elapsed = time.perf_counter() - started
    assert received == ITEMS * ITEM_BYTES
    return received / elapsed


def run() -> list[dict[str, Any]]:
    """Run both variants against one server process; rows in MB/s (median of repeats)."""
    root = Path(__file__).resolve().parents[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_grpc", "--serve"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        target = f"127.0.0.1:{server.stdout.readline().strip()}"

        async def measure() -> dict[str, list[float]]:
            rates: dict[str, list[float]] = {"raw": [], "typed": []}
            await _raw_client(target)  # warm-up: connection, allocator
            await _typed_client(target)
            for _ in range(REPEATS):
                rates["raw"].append(await _raw_client(target))
                rates["typed"].append(await _typed_client(target))
            return rates

        rates = asyncio.run(measure())
    finally:
        server.terminate()
        server.wait()
    raw = statistics.median(rates["raw"]) / 1e6
    typed = statistics.median(rates["typed"]) / 1e6
    common = {"benchmark": "grpc_4mib_tensor_items", "items": ITEMS, "repeats": REPEATS}
    return [
        {**common, "variant": "raw grpc.aio bytes", "value": round(raw, 1), "unit": "MB/s"},
        {
            **common,
            "variant": "typed stream (transports.grpc)",
            "value": round(typed, 1),
            "unit": "MB/s",
        },
        {**common, "variant": "ratio typed/raw", "value": round(typed / raw, 3), "unit": "x"},
    ]


def main() -> None:
    if sys.argv[1:] == ["--serve"]:
        asyncio.run(_serve())
        return
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}")
    for row in run():
        print(f"{row['variant']:<34} {row['value']:>10} {row['unit']}")


if __name__ == "__main__":
    main()
