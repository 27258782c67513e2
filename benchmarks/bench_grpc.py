"""gRPC typed stream vs raw grpc.aio, 4 MiB float32 tensor items.

All variants talk to one server process (its own core) over loopback, on one
client channel, taking turns round after round:

- raw, prebuilt bytes: a plain grpc.aio server-streaming handler yields one
  ``bytes`` object, built once, for every message; the client counts the bytes.
  No tensor is turned into bytes per item: the transport alone.
- raw, ``tensor.tobytes()`` per item: the same handler as a model server must
  write it, turning each item's ndarray into a new ``bytes`` (gRPC's Python API
  sends nothing else). The anchor of the goal: like the typed stream it starts
  from an ndarray per item.
- typed: a ``FrameStreamService`` producer writes each item with ``stream_writer``
  (msgpack, the array as an ext value); the client reads it with
  ``transports.grpc.aconnect`` and ``read_items()``, so every item is decoded and
  validated into a model holding a NumPy array.
- typed, pre-encoded frames: the same, but the producer yields one frame encoded
  up front, which isolates the transport and the reader from the writer's cost.
- control: pre-encoded frames plus one discarded 4 MiB copy per item on the
  server, which shows what one server-side copy does to the *client's* CPU on a
  machine whose two cores both sides share.

Besides throughput it reports CPU time and minor page faults per item on each
side, which a busy shared machine disturbs much less than wall time. A ratio is
the median of the ratios of runs made side by side, given with its spread.

glibc's allocator hands each fresh 4 MiB message new pages unless told to keep
freed memory; run with ``MALLOC_MMAP_THRESHOLD_=67108864
MALLOC_TRIM_THRESHOLD_=268435456`` (the server process inherits the
environment) to see the difference (docs/grpc.md, Performance).

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
REPEATS = int(os.environ.get("BENCH_GRPC_REPEATS", "15"))
RESULTS = Path(__file__).parent / "results" / "grpc.md"
_MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


class Item(pydantic.BaseModel):
    index: int
    tensor: NDArray


TYPES = stream_types(Item)

RAW = "raw grpc.aio, one prebuilt bytes object"
TOBYTES = "raw grpc.aio, tensor.tobytes() per item"
TYPED = "typed stream (transports.grpc)"
PRE_ENCODED = "typed, pre-encoded frames"
CONTROL = "control: pre-encoded + one 4 MiB copy per item on the server"
#: variant -> (server method path, the variant its ratio is taken against)
VARIANTS: dict[str, tuple[str, str | None]] = {
    RAW: ("/bench.Raw/Bytes", None),
    TOBYTES: ("/bench.Raw/ToBytes", RAW),
    TYPED: ("Tensors", TOBYTES),
    PRE_ENCODED: ("PreEncoded", RAW),
    CONTROL: ("PreEncodedCopy", PRE_ENCODED),
}

_SHORT = {RAW: "prebuilt", TOBYTES: "tobytes", PRE_ENCODED: "pre-encoded"}


def _usage() -> tuple[float, int]:
    """(CPU seconds, minor page faults) of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_minflt


def _waits() -> int:
    """How often this process's threads have waited (voluntary context switches)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw


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
            cpu, faults = _usage()
            async for frame in produce(int(body)):
                yield frame
            cpu_end, faults_end = _usage()
            print((cpu_end - cpu) / ITEMS, (faults_end - faults) / ITEMS, flush=True)

        return producer

    async def typed(count: int) -> AsyncIterator[bytes]:
        writer = stream_writer(TYPES)
        for i in range(count):
            yield writer.yield_item(Item(index=i, tensor=tensor))

    async def pre_encoded(count: int) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield encoded

    async def pre_encoded_copy(count: int) -> AsyncIterator[bytes]:
        for _ in range(count):
            tensor.tobytes()  # the writer's copy, without the writer
            yield encoded

    async def raw(count: int) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield raw_message

    async def raw_tobytes(count: int) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield tensor.tobytes()

    running = await start_server(
        FrameStreamService(
            {
                "Tensors": metered(typed),
                "PreEncoded": metered(pre_encoded),
                "PreEncodedCopy": metered(pre_encoded_copy),
            }
        )
    )
    raw_handlers = {
        "Bytes": grpc.unary_stream_rpc_method_handler(metered(raw)),
        "ToBytes": grpc.unary_stream_rpc_method_handler(metered(raw_tobytes)),
    }
    running.server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("bench.Raw", raw_handlers)]
    )
    print(running.port, flush=True)
    await running.server.wait_for_termination()


async def _raw_client(channel: Any, path: str) -> int:
    received = 0
    async for message in channel.unary_stream(path, None, None)(str(ITEMS).encode()):
        received += len(message)
    return received


async def _typed_client(channel: Any, method: str) -> int:
    from transports.grpc import aconnect

    received = 0
    async with aconnect(channel, method, TYPES, request=str(ITEMS).encode()) as reader:
        async for item in reader.read_items():
            received += item.tensor.nbytes
    return received


def _client(channel: Any, method: str) -> Awaitable[int]:
    if method.startswith("/"):
        return _raw_client(channel, method)
    return _typed_client(channel, method)


def _paired(ours: list[float], base: list[float]) -> list[float]:
    return [a / b for a, b in zip(ours, base, strict=True)]


def _spread(ratios: list[float]) -> str:
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def _cpu_ratio(
    name: str, anchor: str, server: dict[str, list[float]], client: dict[str, list[float]]
) -> float:
    """The anchor's CPU per item (both sides) over ours: what the ratio would be if CPU bound."""

    def total(variant: str) -> float:
        return statistics.median(server[variant]) + statistics.median(client[variant])

    return total(anchor) / total(name)


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def run() -> list[dict[str, Any]]:
    """Run every variant against one server process, interleaved; rows as documented."""
    from transports.grpc import acreate_channel

    root = Path(__file__).resolve().parents[1]
    load_before = _load()
    server = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_grpc", "--serve"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    names = list(VARIANTS)
    rates: dict[str, list[float]] = {name: [] for name in names}
    client_cpu: dict[str, list[float]] = {name: [] for name in names}
    client_faults: dict[str, list[float]] = {name: [] for name in names}
    client_waits: dict[str, list[float]] = {name: [] for name in names}
    server_cpu: dict[str, list[float]] = {name: [] for name in names}
    server_faults: dict[str, list[float]] = {name: [] for name in names}
    try:
        assert server.stdout is not None
        stdout = server.stdout
        target = f"127.0.0.1:{stdout.readline().strip()}"

        async def measure() -> None:
            async with acreate_channel(target) as channel:
                for repeat in range(REPEATS + 1):  # the first round warms up
                    # Rotate the order each round: no variant always follows another.
                    shift = repeat % len(names)
                    for name in names[shift:] + names[:shift]:
                        call = _client(channel, VARIANTS[name][0])
                        waits = _waits()
                        (cpu, faults), started = _usage(), time.perf_counter()
                        received = await call
                        elapsed = time.perf_counter() - started
                        cpu_end, faults_end = _usage()
                        waits = _waits() - waits
                        seconds, server_fault_count = map(float, stdout.readline().split())
                        assert received == ITEMS * ITEM_BYTES
                        if repeat:
                            rates[name].append(received / elapsed / 1e6)
                            client_cpu[name].append((cpu_end - cpu) / ITEMS * 1e3)
                            client_faults[name].append((faults_end - faults) / ITEMS)
                            client_waits[name].append(waits / ITEMS)
                            server_cpu[name].append(seconds * 1e3)
                            server_faults[name].append(server_fault_count)

        asyncio.run(measure())
    finally:
        server.terminate()
        server.wait()
    benchmark = f"gRPC, {ITEMS} x 4 MiB float32 items, server process -> grpc.aio client"
    load = f"load {load_before} before, {_load()} after"
    rows: list[dict[str, Any]] = []
    for name in names:
        median = statistics.median
        note = (
            f"CPU per item: server {median(server_cpu[name]):.2f} ms, "
            f"client {median(client_cpu[name]):.2f} ms; page faults per item: server "
            f"{median(server_faults[name]):.0f}, client {median(client_faults[name]):.0f}; "
            f"client waits per item {median(client_waits[name]):.1f}"
        )
        row: dict[str, Any] = {
            "benchmark": benchmark,
            "variant": name,
            "value": round(median(rates[name]), 1),
            "unit": "MB/s",
        }
        anchor = VARIANTS[name][1]
        if anchor is not None:
            paired = _paired(rates[name], rates[anchor])
            row["ratio"] = round(median(paired), 3)
            row["ratio_vs"] = _SHORT[anchor]
            cpu = _cpu_ratio(name, anchor, server_cpu, client_cpu)
            note = f"runs {_spread(paired)}; CPU ratio {cpu:.2f}; {note}"
        if name == TYPED:
            row["goal"] = ">= 0.9x"
            versus_raw = _paired(rates[name], rates[RAW])
            note = (
                f"{note}; vs prebuilt bytes {median(versus_raw):.2f}x (runs {_spread(versus_raw)})"
            )
        if name == RAW:
            note = f"{note}; {load}"
        row["note"] = note
        row["load"] = load
        rows.append(row)
    return rows


def main() -> None:
    if sys.argv[1:] == ["--serve"]:
        asyncio.run(_serve())
        return
    from benchmarks.machine import machine_lines
    from benchmarks.run import format_table

    rows = run()
    table = format_table(rows)
    print("\n".join(table))
    tuned = [f"{k}={os.environ[k]}" for k in _MALLOC_ENV if k in os.environ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        "\n".join(
            [
                "# gRPC benchmark",
                "",
                "Written by `python -m benchmarks.bench_grpc` (also run by `make bench`). "
                f"Median of {REPEATS} interleaved rounds after a warm-up round (the order "
                "rotates each round); a ratio is the median of the ratios of runs made side "
                "by side, *runs* its spread (lowest-highest). See the module docstring for "
                "the variants.",
                "",
                *machine_lines(),
                f"- {rows[0]['load']} (load average; 2 cores shared with other jobs)",
                "- glibc malloc: " + (", ".join(tuned) if tuned else "defaults"),
                "",
                *table,
                "",
                "Reading the rows (copies per 4 MiB item, user space, besides the kernel's "
                "socket copies on each side):",
                "",
                "- *CPU ratio*: the anchor's CPU per item, server plus client, over the "
                "variant's; what the throughput ratio would be if both sides were bound by "
                "CPU alone, and much steadier than it on a loaded machine.",
                "- The goal is reported against *tensor.tobytes() per item*: a server "
                "streaming a model's tensors over gRPC's Python API must turn each new "
                "ndarray into a new `bytes` (its `SendMessageOperation` accepts nothing "
                "else), which is exactly the writer's one copy. *One prebuilt bytes object* "
                "never pays that copy; the typed row's ratio against it is in its notes.",
                "- Server: prebuilt raw 1 copy (gRPC copies every message into its own "
                "slice); tobytes 2 (the tensor into `bytes`, then gRPC's); typed 2 (the "
                'writer\'s `b"".join` lays the frame out around the tensor with one copy, '
                "then gRPC's); pre-encoded 1.",
                "- Client, every variant alike: gRPC's receive path copies each slice into "
                "a `bytes` chunk and joins the chunks into the message (2 copies); the "
                "typed reader adds none (the arrays are read-only views of the message).",
                "- *control* adds one discarded 4 MiB copy per item to pre-encoded frames on "
                "the server, and nothing on the client: any change in its client CPU per "
                "item against *pre-encoded* comes from the two processes sharing 2 cores "
                "(and from the load of other jobs), not from the bytes received.",
                "- See docs/grpc.md, Performance.",
                "",
            ]
        )
    )


if __name__ == "__main__":
    main()
