"""Streaming (decoupled) Triton responses: through the proxy vs ``stream_infer`` direct.

One real Triton (PyTriton, ``tests/triton/streaming_models.py``, in its own
virtualenv) serves ``stream_count``: a decoupled generator model, COUNT int32 [1] ->
COUNT responses (INDEX int32 [1], TOKEN uint8 [-1]), two instances. The proxy runs as
its own process through its CLI (``python -m transports.triton.proxy``),
unauthenticated. Same model, same requests, one run, interleaved rounds:

- (a) ``tritonclient.grpc.aio`` ``stream_infer`` straight to Triton, one stream, up to
  ``IN_FLIGHT`` requests open at once (a request is done after its COUNT responses:
  the aio client cannot ask for Triton's empty final response, so it counts);
- (b) :class:`~transports.triton.AsyncTritonBytesStreamer` ``stream_responses``
  through the proxy, one ``Chat`` call, ``max_in_flight=IN_FLIGHT`` (the proxy asks
  Triton for the empty final response, so it sees COUNT + 1 responses per request).

Measured: responses/s (``FRAMES`` requests of ``RESPONSES`` responses each), and time
to first response (``TTFR_REQUESTS`` requests one after another on an open stream, each
timed from handing the request to the client to its first response arriving).

Goals (DESIGN.md): b >= 0.8x a in responses/s; b's first response within 2 ms of a's.
Until ``stream_responses`` exists (issue 10) the (b) rows say "not available".

Run: ``python -m benchmarks.bench_triton_stream``; env ``TRUSS_STREAM_TRITON_PYTHON``
names the PyTriton interpreter (default ``.venv-triton/bin/python``),
``BENCH_TRITON_STREAM_FRAMES`` requests per variant and round (default 64),
``BENCH_TRITON_STREAM_RESPONSES`` responses per request (default 100),
``BENCH_TRITON_STREAM_ROUNDS`` the interleaved rounds (default 5). Also reported: the
ratio's spread over the rounds, the load average, and CPU per response of the client, the
proxy and Triton's process tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_triton import (
    CpuMeter,
    _free_port,
    _stop,
    _triton_env,
    _wait_for_file,
    running_proxy,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL = "stream_count"
FRAMES = int(os.environ.get("BENCH_TRITON_STREAM_FRAMES", "64"))
RESPONSES = int(os.environ.get("BENCH_TRITON_STREAM_RESPONSES", "100"))
ROUNDS = int(os.environ.get("BENCH_TRITON_STREAM_ROUNDS", "5"))
IN_FLIGHT = 8
TTFR_REQUESTS = 30
TTFR_RESPONSES = 4


@contextlib.contextmanager
def running_streaming_triton() -> Iterator[tuple[str, int]]:
    """PyTriton with the decoupled test models on free loopback ports; (target, pid)."""
    python, env = _triton_env()
    script = ROOT / "tests" / "triton" / "streaming_models.py"
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "triton.log", "w+") as log:
        for attempt in range(3):  # PyTriton's start-up now and then fails on a busy machine
            grpc_port = _free_port()
            ready = Path(tmp) / f"ready-{attempt}"
            proc = subprocess.Popen(
                [
                    str(python),
                    str(script),
                    f"--grpc-port={grpc_port}",
                    f"--http-port={_free_port()}",
                    f"--metrics-port={_free_port()}",
                    f"--ready-file={ready}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
            if _wait_for_file(proc, ready, 240):
                break
            _stop(proc, group=True)
            if attempt == 2:
                log.seek(0)
                raise RuntimeError(f"Triton did not start: {log.read()[-3000:]}")
        try:
            yield f"127.0.0.1:{grpc_port}", proc.pid
        finally:
            _stop(proc, group=True)


def _count_frame(n: int) -> bytes:
    return np.array([n], dtype=np.int32).tobytes()


# (a) tritonclient.grpc.aio stream_infer straight to Triton ------------------------------------


async def direct_stream_infer(
    triton_url: str, frames: int, responses: int, in_flight: int
) -> tuple[float, int]:
    """(responses/s, responses) of ``frames`` requests on one stream_infer call."""
    import tritonclient.grpc.aio as tc

    client = tc.InferenceServerClient(triton_url)
    slots = asyncio.Semaphore(in_flight)

    async def requests() -> AsyncIterator[dict[str, Any]]:
        for i in range(frames):
            await slots.acquire()
            tensor = tc.InferInput("COUNT", [1], "INT32")
            tensor.set_data_from_numpy(np.array([responses], dtype=np.int32))
            yield {"model_name": MODEL, "inputs": [tensor], "request_id": str(i)}

    seen: dict[str, int] = {}
    total = 0
    try:
        started = time.perf_counter()
        stream = client.stream_infer(requests())
        async for result, error in stream:
            if error is not None:
                raise RuntimeError(f"direct stream_infer failed: {error}")
            rid = result.get_response().id
            result.as_numpy("TOKEN")
            total += 1
            seen[rid] = seen.get(rid, 0) + 1
            if seen[rid] == responses:
                slots.release()
                if len(seen) == frames and all(v == responses for v in seen.values()):
                    break
        elapsed = time.perf_counter() - started
        stream.cancel()
        return total / elapsed, total
    finally:
        await client.close()


async def direct_first_response(triton_url: str, requests: int, responses: int) -> list[float]:
    """Milliseconds from handing each request to stream_infer to its first response."""
    import tritonclient.grpc.aio as tc

    client = tc.InferenceServerClient(triton_url)
    done = asyncio.Event()
    sent_at: list[float] = []

    async def inputs() -> AsyncIterator[dict[str, Any]]:
        for i in range(requests):
            done.clear()
            tensor = tc.InferInput("COUNT", [1], "INT32")
            tensor.set_data_from_numpy(np.array([responses], dtype=np.int32))
            sent_at.append(time.perf_counter())
            yield {"model_name": MODEL, "inputs": [tensor], "request_id": str(i)}
            await done.wait()

    out: list[float] = []
    try:
        stream = client.stream_infer(inputs())
        count = 0
        async for _result, error in stream:
            now = time.perf_counter()
            if error is not None:
                raise RuntimeError(f"direct stream_infer failed: {error}")
            if count == 0:
                out.append((now - sent_at[-1]) * 1000.0)
            count += 1
            if count == responses:
                count = 0
                done.set()
                if len(out) == requests:
                    break
        stream.cancel()
        return out
    finally:
        await client.close()


# (b) AsyncTritonBytesStreamer.stream_responses through the proxy --------------------------------


def proxy_streaming_available() -> str | None:
    """None when the client has ``stream_responses``; else why the (b) rows cannot run."""
    try:
        from transports.triton import AsyncTritonBytesStreamer
    except ImportError as exc:
        return f"not available: {exc}"
    if not hasattr(AsyncTritonBytesStreamer, "stream_responses"):
        return "not available: AsyncTritonBytesStreamer.stream_responses does not exist yet"
    return None


def _streamer(proxy: str, in_flight: int) -> Any:
    from transports.triton import AsyncTritonBytesStreamer
    from transports.triton.protocol import multimodal_pb2 as pb

    return AsyncTritonBytesStreamer(
        proxy, "COUNT", (1,), pb.DT_INT32, ("INDEX", "TOKEN"), max_in_flight=in_flight
    )


async def proxy_stream_responses(
    proxy: str, frames: int, responses: int, in_flight: int
) -> tuple[float, int]:
    """(responses/s, model responses) of ``frames`` frames on one stream_responses call.

    Counted: every result carrying outputs (the model's responses); the empty final
    results that end each frame are not counted, as (a) never sees them.
    """
    async with _streamer(proxy, in_flight) as streamer:
        await streamer.wait_for_ready(MODEL, timeout_s=60)
        total = finals = 0
        started = time.perf_counter()
        async for result in streamer.stream_responses(
            MODEL, "1", [_count_frame(responses)] * frames
        ):
            if result.status != "OK":
                raise RuntimeError(f"frame {result.seq} failed: {result.ack}")
            if result.outputs:
                total += 1
            finals += bool(result.final)
        elapsed = time.perf_counter() - started
    if finals != frames or total != frames * responses:
        raise RuntimeError(f"expected {frames} x {responses}, got {total} in {finals} frames")
    return total / elapsed, total


async def proxy_first_response(proxy: str, requests: int, responses: int) -> list[float]:
    """Milliseconds from handing each frame to stream_responses to its first result."""
    done = asyncio.Event()
    sent_at: list[float] = []

    async def frames() -> AsyncIterator[bytes]:
        for _ in range(requests):
            done.clear()
            sent_at.append(time.perf_counter())
            yield _count_frame(responses)
            await done.wait()

    out: list[float] = []
    async with _streamer(proxy, 1) as streamer:
        await streamer.wait_for_ready(MODEL, timeout_s=60)
        async for result in streamer.stream_responses(MODEL, "1", frames()):
            now = time.perf_counter()
            if result.index == 0:
                out.append((now - sent_at[result.seq]) * 1000.0)
            if result.final:
                done.set()
    return out


# The run ---------------------------------------------------------------------------------------


def _measure(triton_url: str, proxy: str | None, meter: CpuMeter | None = None) -> dict[str, Any]:
    rates: dict[str, list[float]] = {"a": [], "b": []}
    ttfr: dict[str, list[float]] = {"a": [], "b": []}
    cpu: dict[str, dict[str, float]] = {"a": {}, "b": {}}
    counted: dict[str, int] = {"a": 0, "b": 0}
    loads: list[float] = []

    def timed(variant: str, fn: Any) -> float:
        before = meter.snapshot() if meter is not None else {}
        rate, responses = fn()
        if meter is not None:
            after = meter.snapshot()
            for group in after:
                if group == "proxy" and variant == "a":
                    continue
                cpu[variant][group] = cpu[variant].get(group, 0.0) + after[group] - before[group]
        counted[variant] += responses
        return float(rate)

    async def through_proxy() -> tuple[float, int]:
        assert proxy is not None
        return await proxy_stream_responses(proxy, FRAMES, RESPONSES, IN_FLIGHT)

    # Warm-up: connections, both model instances, the proxy's channel and config cache.
    asyncio.run(direct_stream_infer(triton_url, 8, 10, IN_FLIGHT))
    if proxy is not None:
        asyncio.run(proxy_stream_responses(proxy, 8, 10, IN_FLIGHT))
    for _ in range(ROUNDS):
        loads.append(os.getloadavg()[0])
        rates["a"].append(
            timed(
                "a",
                lambda: asyncio.run(direct_stream_infer(triton_url, FRAMES, RESPONSES, IN_FLIGHT)),
            )
        )
        ttfr["a"] += asyncio.run(direct_first_response(triton_url, TTFR_REQUESTS, TTFR_RESPONSES))
        if proxy is not None:
            rates["b"].append(timed("b", lambda: asyncio.run(through_proxy())))
            ttfr["b"] += asyncio.run(proxy_first_response(proxy, TTFR_REQUESTS, TTFR_RESPONSES))
    loads.append(os.getloadavg()[0])
    per_response = {
        v: {k: sec * 1e6 / counted[v] for k, sec in groups.items()}
        for v, groups in cpu.items()
        if counted[v]
    }
    return {"rates": rates, "ttfr": ttfr, "cpu": per_response, "loads": loads}


def run() -> list[dict[str, Any]]:
    """Start Triton (and the proxy when the client can stream); interleaved rounds; rows."""
    missing = proxy_streaming_available()
    with running_streaming_triton() as (triton_url, triton_pid):
        if missing is None:
            with running_proxy(triton_url) as (proxy, proxy_pid):
                meter = CpuMeter({"proxy": proxy_pid}, triton_pid)
                m = _measure(triton_url, proxy, meter)
        else:
            m = _measure(triton_url, None)
    common = {
        "benchmark": "triton_stream_count",
        "frames": FRAMES,
        "responses_per_frame": RESPONSES,
        "rounds": ROUNDS,
    }

    def row(variant: str, value: Any, unit: str, **extra: Any) -> dict[str, Any]:
        return {**common, "variant": variant, "value": value, "unit": unit, **extra}

    def spread(values: list[float], digits: int = 1) -> str:
        return f"{min(values):.{digits}f}-{max(values):.{digits}f}"

    rates, ttfr = m["rates"], m["ttfr"]
    a_rate = statistics.median(rates["a"])
    a_ttfr = statistics.median(ttfr["a"])
    rows = [
        row(
            f"(a) tritonclient.grpc.aio stream_infer direct, {IN_FLIGHT} requests open",
            round(a_rate, 1),
            "responses/s",
            spread=f"rounds {spread(rates['a'], 0)}",
        ),
        row("(a) time to first response, one request at a time", round(a_ttfr, 3), "ms"),
    ]
    if missing is not None:
        rows += [
            row("(b) AsyncTritonBytesStreamer.stream_responses via proxy", None, "", note=missing),
            row("(b) time to first response via proxy", None, "", note=missing),
        ]
        return rows
    b_rate = statistics.median(rates["b"])
    b_ttfr = statistics.median(ttfr["b"])
    ratios = [b / a for b, a in zip(rates["b"], rates["a"], strict=True)]
    paired = statistics.median(ratios)
    rows += [
        row(
            f"(b) AsyncTritonBytesStreamer.stream_responses via proxy, max_in_flight={IN_FLIGHT}",
            round(b_rate, 1),
            "responses/s",
            spread=f"rounds {spread(rates['b'], 0)}",
        ),
        row(
            "ratio b/a (goal >= 0.8x), median of paired rounds",
            round(paired, 3),
            "x",
            spread=f"rounds {spread(ratios, 3)}",
            ratio=paired,
            ratio_vs="(a)",
            goal=">= 0.8x",
        ),
        row("(b) time to first response via proxy", round(b_ttfr, 3), "ms"),
        row(
            "(b) - (a) time to first response (goal <= 2 ms)",
            round(b_ttfr - a_ttfr, 3),
            "ms",
            note="met" if b_ttfr - a_ttfr <= 2.0 else "NOT met",
        ),
        row(
            "load average (1 min) at each round's start and the end",
            round(statistics.median(m["loads"]), 2),
            "",
            spread=" ".join(f"{x:.1f}" for x in m["loads"]),
        ),
    ]
    for variant in ("a", "b"):
        for group, us in m["cpu"].get(variant, {}).items():
            rows.append(row(f"({variant}) CPU per response: {group}", round(us, 1), "us"))
    return rows


def main() -> None:
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}")
    for r in run():
        value = "" if r["value"] is None else r["value"]
        spread = f" ({r['spread']})" if "spread" in r else ""
        print(f"{r['variant']:<78} {value:>10} {r['unit']}{spread} {r.get('note', '')}")


if __name__ == "__main__":
    main()
