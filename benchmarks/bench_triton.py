"""The Triton proxy, pipelined, against tritonclient straight to Triton and the seed's pattern.

One real Triton (PyTriton, ``tests/triton/pytriton_server.py``, in its own
virtualenv) serves ``add_one_fp32`` (FP32 [1, 16] per frame); the proxy runs as its
own process through its CLI (``python -m transports.triton.proxy``), unauthenticated.
Same model, same frames, one run:

- (a) ``tritonclient.grpc.aio`` straight to Triton, 32 requests in flight;
- (b) :class:`~transports.triton.AsyncTritonBytesStreamer` through the proxy, one
  ``Chat`` call, ``max_in_flight=32``;
- (c) the seed's pattern: one short ``Chat`` call per frame (sync ``grpc``, as the
  seed's ``mm_client_api.py`` does), through the same proxy.

Also measured: (bc) as (b), through a second proxy started with ``--coalesce 32``
(packets arriving together go to Triton as one batched request); (b') 64 in flight;
(b'') the sync client; (a8)/(b8) 8 frames per request on both sides (tritonclient with
a batch of 8, the client with ``frames_per_packet=8``).

Goals (DESIGN.md): b >= 0.8x a, b >= 4x c. Also reported: the per-frame time split
from the Acks' timings (Triton call inside the proxy, rest of the proxy, client and
wire), and, with ``--profile``, a cProfile summary of the proxy process.

Run: ``python -m benchmarks.bench_triton [--profile]``; env ``TRUSS_STREAM_TRITON_PYTHON``
names the PyTriton interpreter (default ``.venv-triton/bin/python``),
``BENCH_TRITON_FRAMES`` the frames per variant and round (default 3000; the seed's
pattern gets a tenth of them), ``BENCH_TRITON_ROUNDS`` the interleaved rounds (default 3;
rates are medians, b/a and b/c the medians of the rounds' paired ratios).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import pstats
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "add_one_fp32"
WIDTH = 16
IN_FLIGHT = 32
FRAMES = int(os.environ.get("BENCH_TRITON_FRAMES", "3000"))
WARMUP = 200
ROUNDS = int(os.environ.get("BENCH_TRITON_ROUNDS", "3"))
COALESCE = 32


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _triton_python() -> Path:
    env = os.environ.get("TRUSS_STREAM_TRITON_PYTHON")
    return Path(env) if env else ROOT / ".venv-triton" / "bin" / "python"


def _read_line(proc: subprocess.Popen[str], prefix: str, timeout: float) -> str:
    """The first stdout line starting with ``prefix`` (PyTriton logs a lot first)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"process exited before printing {prefix!r}")
        if line.startswith(prefix):
            return line
    raise TimeoutError(f"no {prefix!r} line after {timeout}s")


def _stop(proc: subprocess.Popen[Any], *, group: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(40)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_triton() -> Iterator[tuple[str, int]]:
    """A real Triton on free loopback ports; yields its gRPC target and pid."""
    python = _triton_python()
    if not python.exists():
        raise RuntimeError(f"no PyTriton interpreter at {python}; run `make triton-venv`")
    libdir = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    env = dict(os.environ)
    # The python backend stub links the system libpython3.11 (see DESIGN.md).
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "triton.log", "w+") as log:
        # PyTriton's start-up sometimes fails when the machine is busy (a model's
        # handshake socket refused); a fresh attempt on fresh ports succeeds.
        for attempt in range(3):
            grpc_port = _free_port()
            ready = Path(tmp) / f"ready-{attempt}"
            proc = subprocess.Popen(
                [
                    str(python),
                    str(ROOT / "tests" / "triton" / "pytriton_server.py"),
                    f"--grpc-port={grpc_port}",
                    f"--http-port={_free_port()}",
                    f"--metrics-port={_free_port()}",
                    f"--ready-file={ready}",  # its stdout interleaves with Triton's log
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


def _wait_for_file(proc: subprocess.Popen[Any], path: Path, timeout: float) -> bool:
    """Whether ``path`` appeared before ``proc`` exited and ``timeout`` ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


@contextlib.contextmanager
def running_proxy(
    triton_url: str, profile_to: Path | None = None, extra: tuple[str, ...] = ()
) -> Iterator[tuple[str, int]]:
    """The proxy through its CLI in its own process; yields its target and pid."""
    prefix = [sys.executable]
    if profile_to is not None:
        prefix += ["-m", "cProfile", "-o", str(profile_to)]
    proc = subprocess.Popen(
        [
            *prefix,
            "-m",
            "transports.triton.proxy",
            "--listen",
            "127.0.0.1:0",
            "--triton-url",
            triton_url,
            "--max-in-flight",
            "256",
            "--log-level",
            "WARNING",
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = _read_line(proc, "LISTENING", 60)
        yield f"127.0.0.1:{line.split()[1].rsplit(':', 1)[1]}", proc.pid
    finally:
        _stop(proc)


def _frames(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    return [rng.random((1, WIDTH), dtype=np.float32).tobytes() for _ in range(n)]


# (a) tritonclient.grpc.aio straight to Triton -----------------------------------------------


async def direct_tritonclient(
    triton_url: str, frames: list[bytes], in_flight: int, per_request: int = 1
) -> float:
    """Frames/s of ``in_flight`` workers calling ``infer`` on a shared aio client.

    ``per_request`` > 1 stacks that many frames along the batch dim per request.
    """
    import tritonclient.grpc.aio as tc

    client = tc.InferenceServerClient(triton_url)
    queue = [frames[i : i + per_request] for i in range(0, len(frames), per_request)][::-1]

    async def worker() -> None:
        while queue:
            group = queue.pop()
            inp = tc.InferInput("INPUT", [len(group), WIDTH], "FP32")
            batch = np.frombuffer(b"".join(group), np.float32).reshape(len(group), WIDTH)
            inp.set_data_from_numpy(batch)
            result = await client.infer(MODEL, [inp], outputs=[tc.InferRequestedOutput("OUTPUT")])
            result.as_numpy("OUTPUT")

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(in_flight)))
        return len(frames) / (time.perf_counter() - started)
    finally:
        await client.close()


# (b) the async streamer through the proxy ----------------------------------------------------


async def streamer_through_proxy(
    proxy: str,
    frames: list[bytes],
    in_flight: int,
    timings: dict[str, list[float]] | None = None,
    per_packet: int = 1,
) -> float:
    """Frames/s of one pipelined Chat call; collects the Acks' timings if asked."""
    from transports.triton import AsyncTritonBytesStreamer
    from transports.triton.protocol import multimodal_pb2 as pb

    async with AsyncTritonBytesStreamer(
        proxy,
        "INPUT",
        (1, WIDTH),
        pb.DT_FP32,
        ("OUTPUT",),
        max_in_flight=in_flight,
        frames_per_packet=per_packet,
    ) as streamer:
        await streamer.wait_for_ready(MODEL, timeout_s=60)
        started = time.perf_counter()
        count = 0
        async for result in streamer.stream_results(MODEL, "1", frames):
            if not result.ok:
                raise RuntimeError(f"frame {result.seq} failed: {result.ack}")
            count += 1
            if timings is not None:
                for key, value in result.timings.items():
                    timings.setdefault(key, []).append(value)
        return count / (time.perf_counter() - started)


# (c) the seed's pattern: one Chat call per frame ----------------------------------------------


def seed_one_call_per_frame(proxy: str, frames: list[bytes]) -> float:
    """Frames/s of the seed's ``_drain_stream``: a fresh single-packet Chat per frame."""
    import grpc

    from transports.triton.protocol import multimodal_pb2 as pb
    from transports.triton.protocol import multimodal_pb2_grpc as pbg

    spec = pb.InputSpec(name="INPUT", shape=pb.Shape(dims=[1, WIDTH]), dtype=pb.DT_FP32)
    setattr(spec, "from", pb.SRC_TENSOR)
    with grpc.insecure_channel(proxy) as channel:
        stub = pbg.MultimodalServiceStub(channel)
        started = time.perf_counter()
        for seq, data in enumerate(frames):
            control = pb.Control(
                model=MODEL,
                model_version="1",
                timeout_secs=30.0,
                inputs=[spec],
                outputs=[pb.OutputSpec(name="OUTPUT")],
            )
            packet = pb.DataPacket(
                meta=pb.Meta(correlation_id=f"cam-001:{seq}"),
                control=control,
                tensor=pb.Tensor(dtype=pb.DT_FP32, shape=pb.Shape(dims=[1, WIDTH]), data=data),
                event=pb.SEV_DATA,
            )
            for ack in stub.Chat(iter([packet]), timeout=600.0):
                if ack.status != pb.OK:
                    raise RuntimeError(ack.message)
        return len(frames) / (time.perf_counter() - started)


# The run ---------------------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds (user + system) of this process, the proxies and Triton's process tree."""

    def __init__(self, proxy_pids: list[int], triton_pid: int) -> None:
        import psutil

        self._procs = {
            "client": [psutil.Process()],
            "proxy": [psutil.Process(pid) for pid in proxy_pids],
            "triton": [psutil.Process(triton_pid)],
        }

    def _cpu(self, name: str) -> float:
        procs = list(self._procs[name])
        if name == "triton":
            procs += procs[0].children(recursive=True)
        total = 0.0
        for p in procs:
            with contextlib.suppress(Exception):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    def snapshot(self) -> dict[str, float]:
        """CPU seconds so far, per process group."""
        return {name: self._cpu(name) for name in self._procs}


def sync_streamer_through_proxy(proxy: str, frames: list[bytes], in_flight: int) -> float:
    """Frames/s of the sync client, one pipelined Chat call."""
    from transports.triton import TritonBytesStreamer
    from transports.triton.protocol import multimodal_pb2 as pb

    with TritonBytesStreamer(
        proxy, "INPUT", (1, WIDTH), pb.DT_FP32, ("OUTPUT",), max_in_flight=in_flight
    ) as streamer:
        streamer.wait_for_ready(MODEL, timeout_s=60)
        started = time.perf_counter()
        count = sum(1 for result in streamer.stream_results(MODEL, "1", frames) if result.ok)
        return count / (time.perf_counter() - started)


def _measure(triton_url: str, proxy: str, coalescing: str, meter: CpuMeter) -> dict[str, Any]:
    frames = _frames(FRAMES)
    seed_frames = frames[: max(FRAMES // 10, 100)]
    timings: dict[str, list[float]] = {}
    rates: dict[str, list[float]] = {}
    cpu_s: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}

    variants = {
        "a": lambda: asyncio.run(direct_tritonclient(triton_url, frames, IN_FLIGHT)),
        "b": lambda: asyncio.run(streamer_through_proxy(proxy, frames, IN_FLIGHT, timings)),
        "bc": lambda: asyncio.run(streamer_through_proxy(coalescing, frames, IN_FLIGHT)),
        "b64": lambda: asyncio.run(streamer_through_proxy(proxy, frames, 2 * IN_FLIGHT)),
        "bsync": lambda: sync_streamer_through_proxy(proxy, frames, IN_FLIGHT),
        # Batching, both sides alike: 8 frames per request, 64 frames in flight.
        "a8": lambda: asyncio.run(direct_tritonclient(triton_url, frames, 8, per_request=8)),
        "b8": lambda: asyncio.run(streamer_through_proxy(proxy, frames, 64, per_packet=8)),
        "c": lambda: seed_one_call_per_frame(proxy, seed_frames),
    }
    # Warm-up: connections, Triton's model instances, the proxy's channel.
    asyncio.run(direct_tritonclient(triton_url, frames[:WARMUP], IN_FLIGHT))
    asyncio.run(streamer_through_proxy(proxy, frames[:WARMUP], IN_FLIGHT))
    seed_one_call_per_frame(proxy, seed_frames[:20])
    # Interleaved rounds: other load on the machine hits every variant alike.
    for _ in range(ROUNDS):
        for name, fn in variants.items():
            before = meter.snapshot()
            rates.setdefault(name, []).append(fn())
            after = meter.snapshot()
            acc = cpu_s.setdefault(name, dict.fromkeys(after, 0.0))
            for k in after:
                acc[k] += after[k] - before[k]
            counts[name] = counts.get(name, 0) + len(seed_frames if name == "c" else frames)
    cpu = {v: {k: sec * 1000.0 / counts[v] for k, sec in d.items()} for v, d in cpu_s.items()}

    def paired(num: str, den: str) -> float:
        return statistics.median(n / d for n, d in zip(rates[num], rates[den], strict=True))

    return {
        "rates": {k: statistics.median(v) for k, v in rates.items()},
        "b_over_a": paired("b", "a"),
        "b_over_c": paired("b", "c"),
        "bc_over_a": paired("bc", "a"),
        "timings": timings,
        "cpu": cpu,
        "seeds": len(seed_frames),
    }


def run() -> list[dict[str, Any]]:
    """Start Triton and the proxy, run the variants in interleaved rounds; frames/s, ratios."""
    with (
        running_triton() as (triton_url, triton_pid),
        running_proxy(triton_url) as (proxy, pid),
        running_proxy(triton_url, extra=("--coalesce", str(COALESCE))) as (coalescing, c_pid),
    ):
        m = _measure(triton_url, proxy, coalescing, CpuMeter([pid, c_pid], triton_pid))
    common = {"benchmark": "triton_proxy_add_one_fp32", "frames": FRAMES, "rounds": ROUNDS}
    t = m["timings"]
    r = m["rates"]

    def row(variant: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
        return {**common, "variant": variant, "value": value, "unit": unit, **extra}

    def med(key: str) -> float:
        return round(statistics.median(t[key]), 3) if t.get(key) else 0.0

    n = IN_FLIGHT
    rows = [
        row(f"(a) tritonclient.grpc.aio direct, {n} in flight", round(r["a"], 1), "frames/s"),
        row(f"(b) AsyncTritonBytesStreamer via proxy, {n} in flight", round(r["b"], 1), "frames/s"),
        row(
            "(c) seed pattern: one Chat call per frame",
            round(r["c"], 1),
            "frames/s",
            frames=m["seeds"],
        ),
        row("ratio b/a (goal >= 0.8), median of paired rounds", round(m["b_over_a"], 3), "x"),
        row("ratio b/c (goal >= 4), median of paired rounds", round(m["b_over_c"], 2), "x"),
        row(f"(bc) the same via a proxy with --coalesce {COALESCE}", round(r["bc"], 1), "frames/s"),
        row("ratio bc/a, median of paired rounds", round(m["bc_over_a"], 3), "x"),
        row(
            f"(b') AsyncTritonBytesStreamer via proxy, {2 * n} in flight",
            round(r["b64"], 1),
            "frames/s",
        ),
        row(
            f"(b'') TritonBytesStreamer (sync) via proxy, {n} in flight",
            round(r["bsync"], 1),
            "frames/s",
        ),
        row(
            "(a8) tritonclient direct, 8 frames per request, 64 in flight",
            round(r["a8"], 1),
            "frames/s",
        ),
        row(
            "(b8) async streamer, frames_per_packet=8, 64 in flight", round(r["b8"], 1), "frames/s"
        ),
        row("ratio b8/a8 (batched, both sides alike)", round(r["b8"] / r["a8"], 3), "x"),
        row("ratio b8/a (batched client vs the 1-frame baseline)", round(r["b8"] / r["a"], 3), "x"),
        row("(b) median triton_infer_ms (proxy's Triton call)", med("triton_infer_ms"), "ms"),
        row("(b) median total_ms (packet inside the proxy)", med("total_ms"), "ms"),
        row("(b) median client_ms (client round trip)", med("client_ms"), "ms"),
    ]
    for variant in ("a", "b", "bc", "b64", "bsync", "a8", "b8", "c"):
        for proc, ms in m["cpu"][variant].items():
            rows.append(row(f"({variant}) CPU per frame: {proc}", round(ms, 3), "ms"))
    return rows


def profile_proxy(out: Path, top: int = 25) -> str:
    """Run (b) against a proxy under cProfile; return the summary (cumulative, tottime)."""
    prof = out.with_suffix(".prof")
    with running_triton() as (triton_url, _):
        with running_proxy(triton_url, profile_to=prof) as (proxy, _):
            rate = asyncio.run(streamer_through_proxy(proxy, _frames(FRAMES), IN_FLIGHT))
        for _ in range(100):  # the proxy writes the profile as it exits
            if prof.exists() and prof.stat().st_size:
                break
            time.sleep(0.1)
    import io

    buf = io.StringIO()
    stats = pstats.Stats(str(prof), stream=buf).strip_dirs()
    buf.write(f"(b) under cProfile: {rate:.1f} frames/s\n")
    stats.sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def main() -> None:
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}")
    if "--profile" in sys.argv[1:]:
        print(profile_proxy(Path(tempfile.gettempdir()) / "bench_triton_proxy"))
        return
    for row in run():
        print(f"{row['variant']:<60} {row['value']:>10} {row['unit']}")


if __name__ == "__main__":
    main()
