"""Core benchmarks: the writer -> reader round trip against msgpack-numpy and truss_chains.

Side by side, in one process and one run: the variants of each benchmark take turns
(interleaved rounds, each a warm-up call and timed calls), and the table gives the
median over the rounds with the spread (min-max); ratios are computed per round and
reported the same way.

1. tensor: one item holding a 16 MiB float32 array, writer -> reader (sync reader,
   the frame handed over as one chunk by a generator) vs one memcpy of the same
   bytes (``tobytes``) vs ``msgpack_numpy`` packb/unpackb vs
   ``truss_chains.streaming`` (JSON + base64, its async reader).
2. small items: 20k items (int, float, list of 8 strings) through the writer and the
   sync and the async reader, both codecs, fed two ways: one frame per chunk (a
   generator / async generator yielding each frame, as SSE and gRPC deliver them) and
   64 KiB socket reads (the frames' bytes cut every 64 KiB, frames or not, as a
   chunked-HTTP client's reads deliver them); vs the floor (what pydantic and the codec cost with
   no framing: msgpack ``to_python`` + ``Packer.pack`` + ``unpackb`` +
   ``validate_python``; JSON ``to_json`` + ``validate_json``) and truss_chains.
3. memory: a 1 GiB stream of 4 MiB float32 items, generated lazily and fed in 64 KiB
   chunks, read in a subprocess; peak RSS above the baseline shows how much is held.

Run: ``python -m benchmarks.bench_core`` (writes benchmarks/results/core.md), or
through ``python -m benchmarks.run``. Environment: ``BENCH_CORE_REPEATS`` (default 7,
at least 5), ``BENCH_CORE_SHARED`` (a note that the machine was shared, for the results),
``BENCH_CORE_SMALL_ITEMS`` (20000), ``BENCH_CORE_STREAM_MIB`` (1024).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack_numpy
import numpy as np
import pydantic

import truss_stream as ts

REPEATS = max(5, int(os.environ.get("BENCH_CORE_REPEATS", "7")))
SHARED = os.environ.get("BENCH_CORE_SHARED", "")
SMALL_ITEMS = int(os.environ.get("BENCH_CORE_SMALL_ITEMS", "20000"))
STREAM_MIB = int(os.environ.get("BENCH_CORE_STREAM_MIB", "1024"))
TENSOR_BYTES = 16 * 1024 * 1024
#: Two full rotations of the four tensor variants (see ``interleaved``).
TENSOR_ROUNDS = 8
#: One full rotation of the eleven small-item variants, at least REPEATS rounds.
SMALL_ROUNDS = max(REPEATS, 11)
STREAM_ITEM_BYTES = 4 * 1024 * 1024
STREAM_CHUNK = 64 * 1024
RESULTS = Path(__file__).parent / "results" / "core.md"


def interleaved(
    fns: dict[str, Callable[[], Any]], rounds: int = REPEATS, block: int = 1
) -> dict[str, list[float]]:
    """CPU seconds of each function in each round (the best of ``block`` timed calls).

    CPU time (``time.process_time``), not wall time: everything timed here runs on
    one thread, and on a shared machine wall time mostly measures the neighbours.
    The variants take turns, ``rounds`` times; each turn is one untimed warm-up call
    and ``block`` timed calls. Turns spread a burst of load from elsewhere over all
    variants alike; blocks keep one variant's allocations (a 16 MiB free right before)
    from skewing the next variant's first call. The collector runs once before each
    turn and not inside it (as in ``timeit``): a full collection right before each
    timed call, as this harness did before, left the CPU cache cold for the call and
    so charged each variant for its lines of Python rather than for its work. The
    order rotates by one variant per round, so with ``rounds`` a multiple of the
    number of variants each one runs in each position (right after each neighbour)
    equally often: the variant after a
    heavy one (truss_chains' 117 ms of base64 and 42k page faults) runs measurably
    slower for several calls, warm-up or not, and a fixed order always handed that
    penalty to the same variant. Wall times go to ``LAST_WALL``.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    wall: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for turn in range(rounds):
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            best, best_wall = float("inf"), float("inf")
            gc.collect()
            gc.disable()  # as timeit does: no collection inside a turn
            try:
                fn()
                for _ in range(block):
                    start_wall = time.perf_counter()
                    start = time.process_time()
                    fn()
                    best = min(best, time.process_time() - start)
                    best_wall = min(best_wall, time.perf_counter() - start_wall)
            finally:
                gc.enable()
            times[name].append(best)
            wall[name].append(best_wall)
    LAST_WALL.clear()
    LAST_WALL.update({name: statistics.median(v) for name, v in wall.items()})
    return times


LAST_WALL: dict[str, float] = {}


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], scale: float = 1.0, fmt: str = "{:.2f}") -> str:
    """The min-max range of ``values`` (times ``scale``), as text."""
    return f"{fmt.format(min(values) * scale)}-{fmt.format(max(values) * scale)}"


def ratios(numerators: list[float], denominators: list[float]) -> list[float]:
    """Per-round ratios: both lists were measured in the same rounds."""
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


# 1. One 16 MiB tensor -----------------------------------------------------------------


class TensorItem(pydantic.BaseModel):
    index: int
    tensor: ts.NDArray


TENSOR_TYPES = ts.stream_types(TensorItem)


def _tensor(nbytes: int) -> np.ndarray[Any, Any]:
    return np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)


def tensor_ours(array: np.ndarray[Any, Any]) -> Callable[[], None]:
    """Writer -> sync reader, the frames handed over by a generator as a transport does.

    The reader exists before its bytes arrive, as over any transport (and as in the
    small-item benchmark): right after the frame's 16 MiB copy the CPU cache holds
    little but that frame, and every line of Python then runs cache-cold (setting
    up a reader there cost 50-60 us, 7% of the copy).
    """

    def round_trip() -> None:
        writer = ts.stream_writer(TENSOR_TYPES)

        def frames() -> Iterator[bytes]:
            yield writer.yield_item(TensorItem(index=0, tensor=array))
            yield writer.yield_end()

        (item,) = ts.stream_reader(TENSOR_TYPES, frames()).read_items()
        assert item.tensor.shape == array.shape

    return round_trip


def tensor_memcpy(array: np.ndarray[Any, Any]) -> Callable[[], None]:
    """One copy of the array's bytes into a new ``bytes``: what the writer must do."""

    def copy() -> None:
        assert len(array.tobytes()) == array.nbytes

    return copy


def tensor_msgpack_numpy(array: np.ndarray[Any, Any]) -> Callable[[], None]:
    def round_trip() -> None:
        packed = msgpack_numpy.packb({"index": 0, "tensor": array})
        got = msgpack_numpy.unpackb(packed)
        assert got["tensor"].shape == array.shape

    return round_trip


def tensor_truss(array: np.ndarray[Any, Any]) -> Callable[[], None]:
    from truss_chains import streaming
    from truss_chains.pydantic_numpy import NumpyArrayField

    class TrussTensorItem(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
        index: int
        tensor: NumpyArrayField

    types = streaming.stream_types(TrussTensorItem)
    loop = asyncio.new_event_loop()

    async def read(frames: list[Any]) -> list[Any]:
        async def source() -> AsyncIterator[Any]:
            for frame in frames:
                yield frame

        reader = streaming.stream_reader(types, source())
        return [item async for item in reader.read_items()]

    def round_trip() -> None:
        writer = streaming.stream_writer(types)
        frames = [writer.yield_item(TrussTensorItem(index=0, tensor=NumpyArrayField(array)))]
        (item,) = loop.run_until_complete(read(frames))
        assert item.tensor.array.shape == array.shape

    return round_trip


def bench_tensor() -> list[dict[str, Any]]:
    array = _tensor(TENSOR_BYTES)
    mib = TENSOR_BYTES / 2**20
    times = interleaved(
        {
            "ours": tensor_ours(array),
            "memcpy": tensor_memcpy(array),
            "msgpack-numpy": tensor_msgpack_numpy(array),
            "truss": tensor_truss(array),
        },
        rounds=TENSOR_ROUNDS,
        block=3,
    )
    ours = times["ours"]
    t_ours = median(ours)
    wall = {k: f"wall {v * 1e3:.1f} ms" for k, v in LAST_WALL.items()}
    name = "16 MiB float32 item, writer -> reader"

    def row(variant: str, key: str, **extra: Any) -> dict[str, Any]:
        t = median(times[key])
        notes = [f"{mib / t / 1024:.2f} GiB/s", f"spread {spread(times[key], 1e3)} ms"]
        if key != "ours":
            per_round = ratios(times[key], ours)
            extra["ratio"] = median(per_round)
            notes.append(f"ratio spread {spread(per_round)}")
        notes.append(wall[key])
        return {"benchmark": name, "variant": variant, "value": t * 1e3, "unit": "ms CPU",
                "note": "; ".join(notes), **extra}  # fmt: skip

    return [
        {"benchmark": name, "variant": "truss_stream msgpack (sync, 1 chunk)",
         "value": t_ours * 1e3, "unit": "ms CPU",
         "note": f"{mib / t_ours / 1024:.2f} GiB/s; spread {spread(ours, 1e3)} ms; "
         f"{wall['ours']}"},
        row("memcpy of the same bytes (ndarray.tobytes)", "memcpy",
            ratio_vs="memcpy (its time / ours)",
            goal=">= 0.9x"),
        row("msgpack-numpy packb/unpackb", "msgpack-numpy", ratio_vs="msgpack-numpy",
            goal=">= 3x"),
        row("truss_chains JSON+base64 (async)", "truss", ratio_vs="truss_chains",
            goal=">= 40x"),
    ]  # fmt: skip


# 2. 20k small items, sync and async readers ------------------------------------------------


class SmallItem(pydantic.BaseModel):
    index: int
    score: float
    words: list[str]


def small_items(n: int) -> list[SmallItem]:
    return [
        SmallItem(index=i, score=i * 0.5, words=[f"word{i}-{j}" for j in range(8)])
        for i in range(n)
    ]


#: Chunk size of the "socket reads" feeding: what a chunked-HTTP client's reads give.
SOCKET_READ = 64 * 1024


def socket_reads(frames: Iterator[bytes], size: int = SOCKET_READ) -> Iterator[bytes]:
    """The bytes of ``frames`` cut every ``size`` bytes, frames or not, as a socket delivers.

    Frames are joined once per ``size`` bytes (a bytearray appended to and cut from
    the front costs more per frame than the reader).
    """
    parts: list[bytes] = []
    held = 0
    for frame in frames:
        parts.append(frame)
        held += len(frame)
        if held >= size:
            data = b"".join(parts)
            whole = len(data) - len(data) % size
            for at in range(0, whole, size):
                yield data[at : at + size]
            parts = [data[whole:]]
            held = len(parts[0])
    data = b"".join(parts)
    for at in range(0, len(data), size):
        yield data[at : at + size]


def small_sync(items: list[SmallItem], codec: str, reads: bool = False) -> Callable[[], None]:
    """Writer -> sync reader; the frames come from a generator, one per chunk.

    ``reads``: the frames' bytes in 64 KiB chunks instead (``socket_reads``).
    """
    types = ts.stream_types(SmallItem, codec=codec)  # type: ignore[call-overload]

    def frames() -> Iterator[bytes]:
        writer = ts.stream_writer(types)
        yield_item = writer.yield_item  # bound once, as the floor binds its calls
        for item in items:
            yield yield_item(item)
        yield writer.yield_end()

    def source() -> Iterator[bytes]:
        return socket_reads(frames()) if reads else frames()

    def run() -> None:
        # The loop does nothing with the items, as the floor's does nothing with its
        # results (a count here cost ours alone 2-3% of the floor); the last item and
        # the END frame show that the stream was read to its end.
        reader = ts.stream_reader(types, source())
        item = None
        for item in reader.read_items():  # noqa: B007 (the last one is checked)
            pass
        assert item is not None
        assert item.index == len(items) - 1
        assert reader.ended

    return run


def small_async(items: list[SmallItem], codec: str, reads: bool = False) -> Callable[[], None]:
    """Writer -> async reader; the frames come from an async generator, one per chunk.

    ``reads``: the frames' bytes in 64 KiB chunks instead (``socket_reads``).
    """
    types = ts.stream_types(SmallItem, codec=codec)  # type: ignore[call-overload]
    loop = asyncio.new_event_loop()

    def frames() -> Iterator[bytes]:
        writer = ts.stream_writer(types)
        yield_item = writer.yield_item  # bound once, as the floor binds its calls
        for item in items:
            yield yield_item(item)
        yield writer.yield_end()

    async def source() -> AsyncIterator[Any]:
        if reads:
            for chunk in socket_reads(frames()):
                yield chunk
            return
        writer = ts.stream_writer(types)  # as frames(), one generator level less
        yield_item = writer.yield_item
        for item in items:
            yield yield_item(item)
        yield writer.yield_end()

    async def read() -> int:
        frames = source()
        reader = ts.stream_reader(types, frames)
        item = None
        async for item in reader.read_items():  # noqa: B007 (as in small_sync)
            pass
        await frames.aclose()
        assert reader.ended
        return -1 if item is None else item.index + 1

    def run() -> None:
        assert loop.run_until_complete(read()) == len(items)

    return run


def small_truss(items: list[SmallItem]) -> Callable[[], None]:
    from truss_chains import streaming

    types = streaming.stream_types(SmallItem)
    loop = asyncio.new_event_loop()

    async def source() -> AsyncIterator[Any]:
        writer = streaming.stream_writer(types)
        yield_item = writer.yield_item
        for item in items:
            yield yield_item(item)

    async def read() -> int:
        frames = source()
        item = None
        async for item in streaming.stream_reader(types, frames).read_items():  # noqa: B007
            pass
        await frames.aclose()
        return -1 if item is None else item.index + 1

    def run() -> None:
        assert loop.run_until_complete(read()) == len(items)

    return run


def small_floor(items: list[SmallItem], codec: str) -> Callable[[], None]:
    """pydantic's and msgpack's own work per item, with no frames, writer or reader.

    Everything bound to locals first, so the floor is as low as plain Python gets.
    """
    import msgpack

    serializer = SmallItem.__pydantic_serializer__
    validator = SmallItem.__pydantic_validator__

    def run() -> None:
        if codec == "json":
            to_json, validate_json = serializer.to_json, validator.validate_json
            for item in items:
                validate_json(to_json(item))
        else:
            to_python, validate_python = serializer.to_python, validator.validate_python
            pack, unpackb = msgpack.Packer().pack, msgpack.unpackb
            for item in items:
                validate_python(unpackb(pack(to_python(item))))

    return run


def bench_small() -> list[dict[str, Any]]:
    items = small_items(SMALL_ITEMS)
    times = interleaved(
        {
            "floor-msgpack": small_floor(items, "msgpack"),
            "msgpack-sync": small_sync(items, "msgpack"),
            "msgpack-async": small_async(items, "msgpack"),
            "msgpack-sync-reads": small_sync(items, "msgpack", reads=True),
            "msgpack-async-reads": small_async(items, "msgpack", reads=True),
            "floor-json": small_floor(items, "json"),
            "json-sync": small_sync(items, "json"),
            "json-async": small_async(items, "json"),
            "json-sync-reads": small_sync(items, "json", reads=True),
            "json-async-reads": small_async(items, "json", reads=True),
            "truss": small_truss(items),
        },
        rounds=SMALL_ROUNDS,
    )
    name = f"{SMALL_ITEMS // 1000}k small items (int, float, 8 strings), writer + reader"

    def row(variant: str, key: str, **extra: Any) -> dict[str, Any]:
        t = median(times[key])
        notes = [
            f"spread {spread(times[key], 1e6 / SMALL_ITEMS)} µs/item",
            f"wall {SMALL_ITEMS / LAST_WALL[key]:,.0f} items/s",
        ]
        if "vs" in extra:
            # Throughput ratio: their time / ours, per round.
            per_round = ratios(times[extra.pop("vs")], times[key])
            extra["ratio"] = median(per_round)
            notes.insert(0, f"ratio spread {spread(per_round)}")
        return {
            "benchmark": name,
            "variant": variant,
            "value": SMALL_ITEMS / t,
            "unit": "items/s (CPU)",
            "us_per_item": t / SMALL_ITEMS * 1e6,
            "note": "; ".join(notes),
            **extra,
        }

    return [
        row("floor msgpack: to_python + Packer.pack + unpackb + validate_python",
            "floor-msgpack"),
        row("truss_stream msgpack, sync reader", "msgpack-sync", vs="floor-msgpack",
            ratio_vs="floor", goal=">= 0.8x"),
        row("truss_stream msgpack, async reader", "msgpack-async", vs="floor-msgpack",
            ratio_vs="floor", goal=">= 0.8x"),
        row("truss_stream msgpack: sync reader vs async reader", "msgpack-sync",
            vs="msgpack-async", ratio_vs="async reader", goal=">= 1.0x"),
        row(f"truss_stream msgpack, sync reader, {SOCKET_READ // 1024} KiB socket reads",
            "msgpack-sync-reads", vs="floor-msgpack", ratio_vs="floor", goal=">= 0.8x"),
        row(f"truss_stream msgpack, async reader, {SOCKET_READ // 1024} KiB socket reads",
            "msgpack-async-reads", vs="floor-msgpack", ratio_vs="floor", goal=">= 0.8x"),
        row("floor json: to_json + validate_json", "floor-json"),
        row("truss_stream json, sync reader", "json-sync", vs="floor-json",
            ratio_vs="floor", goal=">= 0.8x"),
        row("truss_stream json, async reader", "json-async", vs="floor-json",
            ratio_vs="floor", goal=">= 0.8x"),
        row("truss_stream json: sync reader vs async reader", "json-sync",
            vs="json-async", ratio_vs="async reader", goal=">= 1.0x"),
        row(f"truss_stream json, sync reader, {SOCKET_READ // 1024} KiB socket reads",
            "json-sync-reads", vs="floor-json", ratio_vs="floor", goal=">= 0.8x"),
        row(f"truss_stream json, async reader, {SOCKET_READ // 1024} KiB socket reads",
            "json-async-reads", vs="floor-json", ratio_vs="floor", goal=">= 0.8x"),
        row("truss_chains (json, async reader)", "truss"),
        row("truss_stream msgpack, async reader vs truss_chains", "msgpack-async",
            vs="truss", ratio_vs="truss_chains", goal=">= 1.3x"),
        row("truss_stream json, async reader vs truss_chains", "json-async",
            vs="truss", ratio_vs="truss_chains", goal=">= 3x"),
    ]  # fmt: skip


# 3. Memory: 1 GiB of 4 MiB tensor items in 64 KiB chunks ----------------------------------


def _stream_chunks(n_items: int, array: np.ndarray[Any, Any]) -> Iterator[memoryview]:
    writer = ts.stream_writer(TENSOR_TYPES)
    for i in range(n_items):
        frame = memoryview(writer.yield_item(TensorItem(index=i, tensor=array)))
        for at in range(0, len(frame), STREAM_CHUNK):
            yield frame[at : at + STREAM_CHUNK]
    yield memoryview(writer.yield_end())


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _memory_child() -> None:
    """Read the stream; print JSON with the RSS figures (KiB) and the time."""
    array = _tensor(STREAM_ITEM_BYTES)
    n_items = STREAM_MIB * 2**20 // STREAM_ITEM_BYTES
    # Warm up allocator and imports with one item, then take the baseline.
    for _ in ts.stream_reader(TENSOR_TYPES, _stream_chunks(1, array)).read_items():
        pass
    gc.collect()
    try:
        # Reset the peak RSS (VmHWM) so it covers the stream alone.
        Path("/proc/self/clear_refs").write_text("5")
        how = "VmHWM after clear_refs"
    except OSError:
        how = "ru_maxrss (includes earlier peaks)"
    baseline = _status_kib("VmRSS")
    start = time.perf_counter()
    count = 0
    total = 0.0
    for item in ts.stream_reader(TENSOR_TYPES, _stream_chunks(n_items, array)).read_items():
        count += 1
        total += float(item.tensor[-1])
    elapsed = time.perf_counter() - start
    if how.startswith("VmHWM"):
        peak = _status_kib("VmHWM")
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "items": count,
                "baseline_kib": baseline,
                "peak_kib": peak,
                "how": how,
                "seconds": elapsed,
                "stream_bytes": n_items * STREAM_ITEM_BYTES,
            }
        )
    )


def bench_memory() -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_core", "--memory-child"],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    ).stdout
    data = json.loads(out.strip().splitlines()[-1])
    delta_mib = (data["peak_kib"] - data["baseline_kib"]) / 1024
    frame_mib = STREAM_ITEM_BYTES / 2**20
    name = f"{STREAM_MIB} MiB stream of 4 MiB float32 items in 64 KiB chunks (sync reader)"
    return [
        {"benchmark": name, "variant": "peak RSS above baseline", "value": delta_mib,
         "unit": "MiB", "note": f"{delta_mib / frame_mib:.1f} frames of 4 MiB; baseline RSS "
         f"{data['baseline_kib'] / 1024:.0f} MiB; {data['items']} items; {data['how']}"},
        {"benchmark": name, "variant": "throughput (writer + 64 KiB chunking + reader)",
         "value": data["stream_bytes"] / 2**20 / data["seconds"], "unit": "MiB/s"},
    ]  # fmt: skip


# Driver -----------------------------------------------------------------------------------


def run() -> list[dict[str, Any]]:
    LOAD.append(os.getloadavg()[0])
    rows: list[dict[str, Any]] = []
    for part in (bench_tensor, bench_small, bench_memory):
        try:
            rows.extend(part())
        except Exception as exc:  # one failing part must not hide the others
            rows.append(
                {"benchmark": part.__name__, "variant": "error", "value": float("nan"),
                 "unit": "", "error": f"{type(exc).__name__}: {exc}"}
            )  # fmt: skip
    LOAD.append(os.getloadavg()[0])
    write_results(rows)
    return rows


LOAD: list[float] = []  # 1-minute load average before and after the run


#: The results file's hand-written part (profile summary, goals not met) starts at this
#: heading; a new run keeps it and rewrites only what comes before.
ANALYSIS_HEADING = "## Analysis"


def _analysis() -> list[str]:
    if not RESULTS.exists():
        return []
    lines = RESULTS.read_text().splitlines()
    for at, line in enumerate(lines):
        if line.startswith(ANALYSIS_HEADING):
            return lines[at:]
    return []


def write_results(rows: list[dict[str, Any]]) -> None:
    from benchmarks.machine import machine_lines
    from benchmarks.run import format_table

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    text = [
        "# Core benchmarks",
        "",
        "Written by `python -m benchmarks.bench_core` (also run by `make bench`). CPU time "
        "(wall time in the notes: on a shared machine wall time partly measures the "
        "neighbours). The variants of each benchmark take turns: "
        f"{SMALL_ROUNDS} interleaved rounds for small items (a warm-up and one timed pass of "
        f"{SMALL_ITEMS:,} items each), {TENSOR_ROUNDS} for the tensor (a warm-up and "
        "the best of 3 timed calls each). Values are medians over the rounds, with the "
        "spread (min-max); ratios are computed per round (times measured side by side) "
        "and given the same way.",
        "",
        *machine_lines(),
        f"- load average (1 min) before / after: {' / '.join(f'{v:.1f}' for v in LOAD)} "
        f"on {len(os.sched_getaffinity(0))} CPUs" + (f"; {SHARED}" if SHARED else ""),
        "",
        *format_table(rows),
        "",
        *_analysis(),
    ]
    RESULTS.write_text("\n".join(text))


if __name__ == "__main__":
    if "--memory-child" in sys.argv:
        _memory_child()
    else:
        from benchmarks.run import format_table

        for line in format_table(run()):
            print(line)
        print(f"\nwritten to {RESULTS}")
