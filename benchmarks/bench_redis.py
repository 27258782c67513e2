"""Through Redis (transports.redis) vs direct SSE, side by side in one run.

One uvicorn[standard] server process serves both paths; a redis-server (no
persistence) runs beside it; the clients run here, async, over loopback.

- direct: ``transports.sse.sse_response(producer)``.
- through Redis: the request starts ``transports.redis.publish(producer)`` into a new
  key (in the server process, as a worker would) and answers with
  ``transports.redis.sse_response`` on that key, which follows it live: every frame
  goes producer -> XADD -> Redis -> XREAD -> SSE event.

Measurements, variants taking turns (medians of ``BENCH_REDIS_REPEATS`` rounds):

1. 20k small typed items (msgpack and JSON codecs): items/s (goal >= 0.5x direct).
2. 50 x 4 MiB float32 tensors (msgpack, base64 in SSE on both paths): MB/s (goal >= 0.5x).
3. Latency: one item every 10 ms stamped with ``time.monotonic_ns()``: p50/p99 delivery
   on both paths (all rounds pooled) and the added latency: the median over rounds of
   (through Redis - direct), each round measuring both paths back to back (goal: p99
   added < 5 ms).
4. Fan-out: 100 concurrent SSE consumers of one stream of 1,000 small items in Redis
   (one producer run), vs 100 direct SSE streams (100 producer runs): items/s delivered
   in all; and 100 readers straight from Redis (``transports.redis.aconnect``).

Run: ``python -m benchmarks.bench_redis`` (writes benchmarks/results/redis.md), or
through ``benchmarks/run.py redis``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks._servers import (
    free_port,
    load_average,
    machine_summary,
    results_table,
    run_uvicorn,
    stop,
    subprocess_server,
)
from benchmarks.bench_http import (
    SMALL,
    TENSORS,
    TICKS,
    _interleaved,
    bench_tensor,
    small_frames,
    tensor_frames,
    tick_frames,
)

SMALL_ITEMS = int(os.environ.get("BENCH_REDIS_SMALL_ITEMS", "20000"))
TENSOR_ITEMS = int(os.environ.get("BENCH_REDIS_TENSOR_ITEMS", "50"))
TENSOR_BYTES = 4 * 1024 * 1024
TICK_ITEMS = int(os.environ.get("BENCH_REDIS_TICK_ITEMS", "300"))
FAN_CONSUMERS = 100
FAN_ITEMS = int(os.environ.get("BENCH_REDIS_FAN_ITEMS", "1000"))
REPEATS = int(os.environ.get("BENCH_REDIS_REPEATS", "5"))
LATENCY_ROUNDS = int(os.environ.get("BENCH_REDIS_LATENCY_ROUNDS", "5"))
RESULTS = Path(__file__).parent / "results" / "redis.md"
#: Keys expire soon after a round: 50 x 4 MiB per tensor round would pile up otherwise.
TTL = 20


# Server (a subprocess: ``--serve``) --------------------------------------------------------


def app(redis_port: int) -> Any:
    import redis.asyncio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    from transports import redis as tr
    from transports import sse

    client = redis.asyncio.Redis(port=redis_port, max_connections=400)
    tensor = bench_tensor()
    tasks: set[asyncio.Task[int]] = set()
    small = small_frames

    def tensors(n: int) -> AsyncIterator[bytes | memoryview]:
        return tensor_frames(tensor, n)

    ticks = tick_frames

    def producer(request: Request) -> AsyncIterator[bytes | memoryview]:
        q = request.query_params
        kind, n = request.path_params["kind"], int(q["n"])
        if kind == "small":
            return small(q.get("codec", "msgpack"), n)
        return tensors(n) if kind == "tensors" else ticks(n)

    def start_publish(key: str, frames: AsyncIterator[bytes | memoryview]) -> None:
        task = asyncio.create_task(tr.publish(client, key, frames, ttl=TTL))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def direct(request: Request) -> Response:
        return sse.sse_response(producer(request))

    async def through_redis(request: Request) -> Response:
        key = tr.stream_key(uuid.uuid4().hex)
        start_publish(key, producer(request))
        return tr.sse_response(client, key, request)

    async def shared(request: Request) -> Response:
        return tr.sse_response(client, tr.stream_key(request.path_params["sid"]), request)

    async def publish_shared(request: Request) -> Response:
        key = tr.stream_key(request.path_params["sid"])
        count = await tr.publish(
            client, key, small("msgpack", int(request.query_params["n"])), ttl=TTL
        )
        return PlainTextResponse(str(count))

    return Starlette(
        routes=[
            Route("/direct/{kind}", direct),
            Route("/redis/{kind}", through_redis),
            Route("/shared/{sid}", shared),
            Route("/publish/{sid}", publish_shared, methods=["POST"]),
        ]
    )


def serve(port: int, redis_port: int) -> None:
    run_uvicorn(app(redis_port), port)


def _answers(port: int) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/direct/small?n=1", timeout=1)
        return True
    return False


@contextlib.contextmanager
def services() -> Iterator[tuple[str, int, int]]:
    """redis-server and the benchmark server; yields (url, server pid, redis port)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (make redis)")
    redis_port, port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as tmp:
        redis_proc = subprocess.Popen(
            [binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", tmp,
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            args = ["--serve", "--port", str(port), "--redis-port", str(redis_port)]
            with subprocess_server(
                "benchmarks.bench_redis", args, port, ready=lambda: _answers(port)
            ) as server:
                yield f"http://127.0.0.1:{port}", server.pid, redis_port
        finally:
            stop(redis_proc)


# Clients -------------------------------------------------------------------------------------


async def small_items(client: httpx.AsyncClient, path: str, codec: str) -> float:
    from transports.sse import aconnect

    start = time.perf_counter()
    count = 0
    params = {"codec": codec, "n": SMALL_ITEMS}
    async with aconnect(client, "GET", f"/{path}/small", SMALL[codec], params=params) as reader:
        async for item in reader.read_items():
            count += item.index >= 0
    assert count == SMALL_ITEMS
    return SMALL_ITEMS / (time.perf_counter() - start)


async def tensor_items(client: httpx.AsyncClient, path: str) -> float:
    from transports.sse import aconnect

    start = time.perf_counter()
    total = 0
    params = {"n": TENSOR_ITEMS}
    async with aconnect(client, "GET", f"/{path}/tensors", TENSORS, params=params) as reader:
        async for item in reader.read_items():
            total += item.tensor.nbytes
    assert total == TENSOR_ITEMS * TENSOR_BYTES
    return total / (time.perf_counter() - start) / 1e6


async def latency(client: httpx.AsyncClient, path: str) -> list[float]:
    from transports.sse import aconnect

    delays: list[float] = []
    params = {"n": TICK_ITEMS}
    async with aconnect(client, "GET", f"/{path}/ticks", TICKS, params=params) as reader:
        async for item in reader.read_items():
            delays.append((time.monotonic_ns() - item.sent_ns) / 1e6)
    return delays


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def _consume(client: httpx.AsyncClient, url: str, params: dict[str, Any]) -> int:
    from transports.sse import aconnect

    count = 0
    async with aconnect(client, "GET", url, SMALL["msgpack"], params=params) as reader:
        async for _ in reader.read_items():
            count += 1
    return count


async def fan_out(client: httpx.AsyncClient, path: str, redis_port: int) -> float:
    """Items/s delivered to 100 consumers in all (from the first request to the last item)."""
    import anyio
    import redis.asyncio

    from transports import redis as tr

    counts: list[int] = []
    sid = uuid.uuid4().hex
    start = time.perf_counter()

    async def one(url: str, params: dict[str, Any]) -> None:
        counts.append(await _consume(client, url, params))

    async def one_redis(rclient: redis.asyncio.Redis) -> None:
        count = 0
        async with tr.aconnect(rclient, tr.stream_key(sid), SMALL["msgpack"]) as reader:
            async for _ in reader.read_items():
                count += 1
        counts.append(count)

    async with anyio.create_task_group() as tg, redis.asyncio.Redis(
        port=redis_port, max_connections=FAN_CONSUMERS + 10
    ) as rclient:  # fmt: skip
        for _ in range(FAN_CONSUMERS):
            # Staggered (all variants alike): 100 redis-py connects at once on a loaded
            # machine once failed inside redis-py (AttributeError in its connect).
            await anyio.sleep(0.002)
            if path == "direct":
                tg.start_soon(one, "/direct/small", {"n": FAN_ITEMS, "codec": "msgpack"})
            elif path == "shared":
                tg.start_soon(one, f"/shared/{sid}", {})
            else:
                tg.start_soon(one_redis, rclient)
        if path != "direct":
            await client.post(f"/publish/{sid}", params={"n": FAN_ITEMS})
    elapsed = time.perf_counter() - start
    assert counts == [FAN_ITEMS] * FAN_CONSUMERS, counts[:3]
    return FAN_CONSUMERS * FAN_ITEMS / elapsed


async def measure() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with services() as (url, pid, redis_port):
        limits = httpx.Limits(max_connections=FAN_CONSUMERS + 20)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            await small_items(client, "direct", "msgpack")  # warm-up
            await small_items(client, "redis", "msgpack")
            for codec in ("msgpack", "json"):
                variants = {
                    f"small_{codec}_direct": (
                        lambda c=codec: small_items(client, "direct", c), pid, SMALL_ITEMS
                    ),
                    f"small_{codec}_redis": (
                        lambda c=codec: small_items(client, "redis", c), pid, SMALL_ITEMS
                    ),
                }  # fmt: skip
                out.update(await _rounds(variants, REPEATS))
            tensors = {
                f"tensor_{path}": (lambda p=path: tensor_items(client, p), pid, TENSOR_ITEMS)
                for path in ("direct", "redis")
            }
            out.update(await _rounds(tensors, REPEATS))
            direct_lat: list[float] = []
            redis_lat: list[float] = []
            added: dict[str, list[float]] = {"p50": [], "p99": []}
            for _ in range(LATENCY_ROUNDS):
                direct_round = await latency(client, "direct")
                redis_round = await latency(client, "redis")
                direct_lat += direct_round
                redis_lat += redis_round
                for q, frac in (("p50", 0.5), ("p99", 0.99)):
                    added[q].append(_pct(redis_round, frac) - _pct(direct_round, frac))
            out["lat"] = {
                "direct_p50": statistics.median(direct_lat),
                "direct_p99": _pct(direct_lat, 0.99),
                "redis_p50": statistics.median(redis_lat),
                "redis_p99": _pct(redis_lat, 0.99),
                "added_p50": statistics.median(added["p50"]),
                "added_p99": statistics.median(added["p99"]),
                **{f"added_{q}_range": (min(v), max(v)) for q, v in added.items()},
            }
            units = FAN_CONSUMERS * FAN_ITEMS
            out.update(
                await _rounds(
                    {
                        "fan_direct": (lambda: fan_out(client, "direct", redis_port), pid, units),
                        "fan_shared": (lambda: fan_out(client, "shared", redis_port), pid, units),
                        "fan_redis": (lambda: fan_out(client, "redis", redis_port), pid, units),
                    },
                    REPEATS,
                )
            )  # fmt: skip
    return out


async def _rounds(variants: dict[str, Any], repeats: int) -> dict[str, dict[str, float]]:
    """:func:`_interleaved`, one round at a time, keeping each ratio's spread.

    Each variant gets its medians (value, ratio, CPU per unit) as ``_interleaved`` gives
    them, plus ``ratio_min`` / ``ratio_max`` over the rounds and the load average
    (1 min) at the start and the end.
    """
    runs: list[dict[str, dict[str, float]]] = []
    load_start = os.getloadavg()[0]
    for _ in range(repeats):
        runs.append(await _interleaved(variants, 1))
    load_end = os.getloadavg()[0]
    out: dict[str, dict[str, float]] = {}
    for key in variants:
        fields = runs[0][key]
        summary = {f: statistics.median(r[key][f] for r in runs) for f in fields}
        summary["ratio_min"] = min(r[key]["ratio"] for r in runs)
        summary["ratio_max"] = max(r[key]["ratio"] for r in runs)
        summary["load_start"], summary["load_end"] = load_start, load_end
        out[key] = summary
    return out


def _spread(r: dict[str, float]) -> str:
    return (
        f"ratio over {REPEATS} rounds {r['ratio_min']:.2f}-{r['ratio_max']:.2f}, "
        f"load {r['load_start']:.1f}-{r['load_end']:.1f}; "
    )


def rows_from(m: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def pair(bench: str, direct: str, through: str, unit: str, per: str, goal: str) -> None:
        for key, variant in ((direct, "direct SSE"), (through, "through Redis, SSE")):
            r = m[key]
            row: dict[str, Any] = {"benchmark": bench, "variant": variant, "value": r["value"]}
            row["unit"] = unit
            row["notes"] = (
                (_spread(r) if key == through else "")
                + f"CPU per {per}: client {r['client_cpu'] * 1e6:,.0f} us, "
                f"server {r['server_cpu'] * 1e6:,.0f} us (redis-server not counted)"
            )
            if key == through:
                row.update(ratio=r["ratio"], ratio_vs="direct SSE", goal=goal)
            rows.append(row)

    for codec in ("msgpack", "json"):
        pair(
            f"{SMALL_ITEMS} small items, {codec}",
            f"small_{codec}_direct", f"small_{codec}_redis", "items/s", "item", ">= 0.5x",
        )  # fmt: skip
    pair(
        f"{TENSOR_ITEMS} x 4 MiB float32, msgpack",
        "tensor_direct", "tensor_redis", "MB/s", "4 MiB item", ">= 0.5x",
    )  # fmt: skip
    lat = m["lat"]
    bench = f"latency, 1 item / 10 ms ({LATENCY_ROUNDS} x {TICK_ITEMS} items)"
    for key, label in (
        ("direct_p50", "direct SSE: p50"),
        ("direct_p99", "direct SSE: p99"),
        ("redis_p50", "through Redis: p50"),
        ("redis_p99", "through Redis: p99"),
    ):
        rows.append({"benchmark": bench, "variant": label, "value": lat[key], "unit": "ms"})
    for q in ("p50", "p99"):
        added = lat[f"added_{q}"]  # median over rounds of (through Redis - direct)
        goal = "< 5 ms" if q == "p99" else ""
        low, high = lat[f"added_{q}_range"]
        notes = f"median of {LATENCY_ROUNDS} rounds ({low:.2f} to {high:.2f})"
        if goal:
            notes += "; met" if added < 5 else "; not met"
        rows.append(
            {"benchmark": bench, "variant": f"added by Redis: {q}", "value": added, "unit": "ms",
             "goal": goal, "notes": notes}
        )  # fmt: skip
    fan = f"fan-out, {FAN_CONSUMERS} consumers x {FAN_ITEMS} small items"
    for key, variant in (
        ("fan_direct", "direct SSE: 100 streams, 100 producer runs"),
        ("fan_shared", "through Redis, SSE: 1 producer run, 100 consumers"),
        ("fan_redis", "straight from Redis (aconnect): 1 producer run, 100 consumers"),
    ):
        r = m[key]
        row = {"benchmark": fan, "variant": variant, "value": r["value"], "unit": "items/s"}
        if key != "fan_direct":
            row.update(ratio=r["ratio"], ratio_vs="direct SSE", notes=_spread(r).rstrip("; "))
        rows.append(row)
    return rows


def to_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Through Redis vs direct SSE",
        "",
        f"Machine: {machine_summary()}; "
        "redis-server 7.0 (no persistence), one uvicorn[standard] server process serving "
        "both paths (and running the publisher), async httpx clients, loopback. Median of "
        f"{REPEATS} rounds, variants taking turns; a ratio is the median of the ratios of "
        "rounds made side by side. Produced by `python -m benchmarks.bench_redis`.",
        "",
        "Load average when the table was written (other jobs share the 2 cores): "
        + load_average()
        + ".",
        "",
        *results_table(rows),
    ]
    return "\n".join(lines) + "\n"


def run() -> list[dict[str, Any]]:
    """Run every measurement, write benchmarks/results/redis.md, return the rows."""
    rows = rows_from(asyncio.run(measure()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(to_markdown(rows))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--redis-port", type=int, default=6379)
    args = parser.parse_args()
    if args.serve:
        serve(args.port, args.redis_port)
        return
    run()
    print(RESULTS.read_text())


if __name__ == "__main__":
    main()
