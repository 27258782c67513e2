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

The floor: (f) as (b) through ``benchmarks/_floor_proxy.py``, a bare grpc.aio proxy that
only turns each packet into a unary ``ModelInfer`` and the response into an Ack (no
validation, limits, metrics or logs): what any Python grpc.aio proxy pays per frame, so
(b) - (f) is the proxy's own work; (fs) the same floor with one ``ModelStreamInfer``
stream to Triton per Chat call.

Also measured: (bc) as (b), through a second proxy started with ``--coalesce 32``
(packets arriving together go to Triton as one batched request; one Chat call's packets
never arrive together, so it coalesces nothing here); (bci) through a third started with
``--coalesce 32 --coalesce-in-flight 2`` (packets arriving while two coalesced requests
run go together); (b') 64 in flight;
(b'') the sync client; (a8)/(b8) 8 frames per request on both sides (tritonclient with
a batch of 8, the client with ``frames_per_packet=8``).

Goals (DESIGN.md): b >= 0.8x a, b >= 4x c. Also reported: each variant's CPU per frame
per process (client, proxy, Triton's process tree) and Triton's own counters (requests,
model executions, rows: rows per execution is the mean batch its dynamic batcher ran,
which sets most of Triton's CPU per frame); the per-frame time split
from the Acks' timings (Triton call inside the proxy, rest of the proxy, client and
wire), and, with ``--profile``, a cProfile summary of the proxy process; with
``--py-spy``, where the CPU of the proxy and of the floor proxy goes (ours, grpc.aio,
kernel, asyncio, protobuf), sampled with py-spy; with ``--syscalls``, the syscalls per
frame of the client, the proxy and tritonserver during (a), (b) and (bci) (``perf stat``).

Run: ``python -m benchmarks.bench_triton [--profile | --py-spy | --syscalls]``; env
``TRUSS_STREAM_TRITON_PYTHON``
names the PyTriton interpreter (default ``.venv-triton/bin/python``),
``BENCH_TRITON_FRAMES`` the frames per variant and round (default 3000; the seed's
pattern gets a tenth of them), ``BENCH_TRITON_ROUNDS`` the interleaved rounds (default 5;
rates are medians, ratios the medians of the rounds' paired ratios, with their spread).
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
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "add_one_fp32"
WIDTH = 16
IN_FLIGHT = 32
FRAMES = int(os.environ.get("BENCH_TRITON_FRAMES", "3000"))
WARMUP = 200
ROUNDS = int(os.environ.get("BENCH_TRITON_ROUNDS", "5"))
COALESCE = 32
COALESCE_IN_FLIGHT = 2  # Triton runs 2 instances of the model


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _triton_python() -> Path:
    env = os.environ.get("TRUSS_STREAM_TRITON_PYTHON")
    return Path(env) if env else ROOT / ".venv-triton" / "bin" / "python"


def _triton_env() -> tuple[Path, dict[str, str]]:
    """The PyTriton interpreter and the environment to start it with."""
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
    return python, env


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


class TritonProcess(NamedTuple):
    """A running Triton: its gRPC target, pid and PyTriton's statistics token."""

    url: str
    pid: int
    token: str


@contextlib.contextmanager
def running_triton() -> Iterator[TritonProcess]:
    """A real Triton on free loopback ports (its target, pid and statistics token)."""
    python, env = _triton_env()
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
        token = ready.read_text().split("token=", 1)[1].split()[0]
        try:
            yield TritonProcess(f"127.0.0.1:{grpc_port}", proc.pid, token)
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
def listening(cmd: list[str]) -> Iterator[tuple[str, int, str]]:
    """``cmd``, a server that prints ``LISTENING host:port ...``, in its own process;
    yields its loopback target, its pid and that line, and stops it afterwards."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        line = _read_line(proc, "LISTENING", 60)
        yield f"127.0.0.1:{line.split()[1].rsplit(':', 1)[1]}", proc.pid, line
    finally:
        _stop(proc)


@contextlib.contextmanager
def running_proxy(
    triton_url: str, profile_to: Path | None = None, extra: tuple[str, ...] = ()
) -> Iterator[tuple[str, int]]:
    """The proxy through its CLI in its own process; yields its target and pid."""
    prefix = [sys.executable]
    if profile_to is not None:
        prefix += ["-m", "cProfile", "-o", str(profile_to)]
    args = ["--listen", "127.0.0.1:0", "--triton-url", triton_url, "--max-in-flight", "256"]
    args += ["--log-level", "WARNING", *extra]
    with listening([*prefix, "-m", "transports.triton.proxy", *args]) as (target, pid, _):
        yield target, pid


@contextlib.contextmanager
def running_floor_proxy(triton_url: str, *extra: str) -> Iterator[tuple[str, int]]:
    """The floor proxy (``benchmarks._floor_proxy``) in its own process; (target, pid)."""
    cmd = [sys.executable, "-m", "benchmarks._floor_proxy", "--triton-url", triton_url, *extra]
    with listening(cmd) as (target, pid, _):
        yield target, pid


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


# (o) the proxy's own work per packet, in process: no gRPC, no Triton -----------------------------


def ours_in_process(packets: int = 20000, metrics: bool = False) -> float:
    """CPU microseconds per packet of ``MultimodalProxy.Chat`` over a backend that answers at
    once, in this process: validation, budgets, the backend call's wrapper, the Ack (JSON,
    binary outputs), the access-log record and, with ``metrics``, the Prometheus hooks.
    Best of 5; what the proxy adds per frame on top of grpc.aio's own work.
    """
    import logging

    from transports.triton.protocol import multimodal_pb2 as pb
    from transports.triton.server.backend import Backend, InferRequest, OutputTensor
    from transports.triton.server.servicer import MultimodalProxy

    class Echo(Backend):
        name = "triton"

        async def infer(self, request: InferRequest) -> dict[str, OutputTensor]:
            return {"OUTPUT": OutputTensor("OUTPUT", "FP32", request.shape, request.data)}

        async def model_metadata(self, model: str, version: str) -> pb.ModelMetadataResponse:
            raise NotImplementedError

        async def server_ready(self) -> tuple[bool, str]:
            return True, ""

        async def model_ready(self, model: str, version: str) -> tuple[bool, str]:
            return True, ""

    class Context:
        def peer(self) -> str:
            return "ipv4:127.0.0.1:1"

        def cancelled(self) -> bool:
            return False

        def add_done_callback(self, callback: Any) -> None:
            pass  # the call never ends early here; Chat's own finally stops its work

    spec = pb.InputSpec(name="INPUT", shape=pb.Shape(dims=[1, WIDTH]), dtype=pb.DT_FP32)
    setattr(spec, "from", pb.SRC_TENSOR)
    control = pb.Control(
        model=MODEL,
        model_version="1",
        inputs=[spec],
        outputs=[pb.OutputSpec(name="OUTPUT")],
        binary_outputs=True,
    )
    wire = [
        pb.DataPacket(
            meta=pb.Meta(correlation_id=f"s:{i}"),
            control=control,
            tensor=pb.Tensor(dtype=pb.DT_FP32, shape=pb.Shape(dims=[1, WIDTH]), data=data),
            event=pb.SEV_DATA,
        ).SerializeToString()
        for i, data in enumerate(_frames(packets))
    ]
    parsed = [pb.DataPacket.FromString(b) for b in wire]  # as grpc hands them over
    access = logging.getLogger("transports.triton.access")
    level = access.level
    access.setLevel(logging.WARNING)
    if metrics:
        from prometheus_client import CollectorRegistry

        from transports.observability import ProxyMetrics

        chosen: Any = ProxyMetrics.for_registry(CollectorRegistry())
    else:
        chosen = False
    proxy = MultimodalProxy(Echo(), max_in_flight=IN_FLIGHT, metrics=chosen)

    async def stream() -> Any:
        for packet in parsed:
            yield packet

    async def once() -> float:
        started = time.process_time()
        count = 0
        async for _ack in proxy.Chat(stream(), Context()):  # type: ignore[arg-type]
            count += 1
        assert count == packets
        return (time.process_time() - started) / packets * 1e6

    try:
        return min(asyncio.run(once()) for _ in range(5))
    finally:
        access.setLevel(level)


# The run ---------------------------------------------------------------------------------------


class CpuMeter:
    """CPU seconds (user + system) of this process, each proxy and Triton's process tree."""

    def __init__(self, proxies: dict[str, int], triton_pid: int) -> None:
        import psutil

        self._procs = {"client": psutil.Process()}
        self._procs.update({name: psutil.Process(pid) for name, pid in proxies.items()})
        self._procs["triton"] = psutil.Process(triton_pid)

    def _cpu(self, name: str) -> float:
        procs = [self._procs[name]]
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


class TritonCounts:
    """``add_one_fp32``'s counters from Triton's own statistics (PyTriton's token).

    ``requests`` inference requests, ``executions`` model executions (batches the
    dynamic batcher formed), ``rows`` batch rows inferred: rows per execution is the
    mean batch Triton ran, which sets most of its CPU per frame (see results/triton.md).
    """

    def __init__(self, url: str, token: str) -> None:
        self._url = url
        self._headers = {"triton-grpc-protocol-triton-access-token": token}

    def snapshot(self) -> dict[str, int]:
        """The counters so far."""
        import tritonclient.grpc as triton_grpc

        client = triton_grpc.InferenceServerClient(self._url)
        try:
            stats = client.get_inference_statistics(MODEL, headers=self._headers, as_json=True)
        finally:
            client.close()
        models = stats["model_stats"]
        return {
            "requests": sum(int(m["inference_stats"]["success"].get("count", 0)) for m in models),
            "executions": sum(int(m.get("execution_count", 0)) for m in models),
            "rows": sum(int(m.get("inference_count", 0)) for m in models),
        }


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


# Reference variants whose failure (a NaN round, noted in the rows) does not end the run.
_OPTIONAL = {"fs"}

# Which proxy each variant goes through (its CPU is "proxy" in the tables).
_VIA = {"b": "proxy", "b64": "proxy", "bsync": "proxy", "b8": "proxy", "c": "proxy"}
_VIA.update({"bc": "coalescing", "bci": "coalescing_in_flight"})
_VIA.update({"f": "floor", "fs": "floor_stream"})


def _measure(
    triton_url: str, targets: dict[str, str], meter: CpuMeter, triton: TritonCounts
) -> dict[str, Any]:
    frames = _frames(FRAMES)
    seed_frames = frames[: max(FRAMES // 10, 100)]
    timings: dict[str, list[float]] = {}
    rates: dict[str, list[float]] = {}
    cpu_s: dict[str, dict[str, float]] = {}
    counts: dict[str, int] = {}
    batches: dict[str, dict[str, int]] = {}
    proxy, floor = targets["proxy"], targets["floor"]

    variants = {
        "a": lambda: asyncio.run(direct_tritonclient(triton_url, frames, IN_FLIGHT)),
        "b": lambda: asyncio.run(streamer_through_proxy(proxy, frames, IN_FLIGHT, timings)),
        # The floor of any Python grpc.aio proxy (benchmarks/_floor_proxy.py), same client.
        "f": lambda: asyncio.run(streamer_through_proxy(floor, frames, IN_FLIGHT)),
        "fs": lambda: asyncio.run(
            streamer_through_proxy(targets["floor_stream"], frames, IN_FLIGHT)
        ),
        "bc": lambda: asyncio.run(streamer_through_proxy(targets["coalescing"], frames, IN_FLIGHT)),
        "bci": lambda: asyncio.run(
            streamer_through_proxy(targets["coalescing_in_flight"], frames, IN_FLIGHT)
        ),
        "b64": lambda: asyncio.run(streamer_through_proxy(proxy, frames, 2 * IN_FLIGHT)),
        "bsync": lambda: sync_streamer_through_proxy(proxy, frames, IN_FLIGHT),
        # Batching, both sides alike: 8 frames per request, 64 frames in flight.
        "a8": lambda: asyncio.run(direct_tritonclient(triton_url, frames, 8, per_request=8)),
        "b8": lambda: asyncio.run(streamer_through_proxy(proxy, frames, 64, per_packet=8)),
        "c": lambda: seed_one_call_per_frame(proxy, seed_frames),
    }
    # Warm-up: connections, Triton's model instances, the proxies' channels.
    asyncio.run(direct_tritonclient(triton_url, frames[:WARMUP], IN_FLIGHT))
    for target in targets.values():
        asyncio.run(streamer_through_proxy(target, frames[:WARMUP], IN_FLIGHT))
    seed_one_call_per_frame(proxy, seed_frames[:20])
    loads: list[float] = []
    failures: dict[str, str] = {}
    # Interleaved rounds: other load on the machine hits every variant alike.
    for _ in range(ROUNDS):
        loads.append(os.getloadavg()[0])
        for name, fn in variants.items():
            triton_before = triton.snapshot()
            before = meter.snapshot()
            try:
                rates.setdefault(name, []).append(fn())
            except Exception as exc:
                if name not in _OPTIONAL:
                    raise
                failures[name] = f"{type(exc).__name__}: {exc}"[:300]
                rates[name].append(float("nan"))
            after = meter.snapshot()
            triton_after = triton.snapshot()
            seen = batches.setdefault(name, {})
            for key, value in triton_after.items():
                seen[key] = seen.get(key, 0) + value - triton_before[key]
            acc = cpu_s.setdefault(name, {"client": 0.0, "proxy": 0.0, "triton": 0.0})
            for group in ("client", "triton"):
                acc[group] += after[group] - before[group]
            if name in _VIA:
                acc["proxy"] += after[_VIA[name]] - before[_VIA[name]]
            counts[name] = counts.get(name, 0) + len(seed_frames if name == "c" else frames)
    loads.append(os.getloadavg()[0])
    cpu = {v: {k: sec * 1000.0 / counts[v] for k, sec in d.items()} for v, d in cpu_s.items()}

    def paired(num: str, den: str) -> tuple[float, float, float]:
        pairs = zip(rates[num], rates[den], strict=True)
        ratios = [n / d for n, d in pairs if n == n and d == d] or [float("nan")]
        return statistics.median(ratios), min(ratios), max(ratios)

    return {
        "rates": rates,
        "ratios": {
            key: paired(num, den)
            for key, (num, den) in {
                "b/a": ("b", "a"),
                "b/c": ("b", "c"),
                "f/a": ("f", "a"),
                "fs/a": ("fs", "a"),
                "b/f": ("b", "f"),
                "bc/a": ("bc", "a"),
                "bci/a": ("bci", "a"),
                "b8/a8": ("b8", "a8"),
                "b8/a": ("b8", "a"),
            }.items()
        },
        "timings": timings,
        "cpu": cpu,
        "batches": batches,
        "seeds": len(seed_frames),
        "loads": loads,
        "failures": failures,
    }


def run() -> list[dict[str, Any]]:
    """Start Triton and the proxies, run the variants in interleaved rounds; frames/s, ratios."""
    with (
        running_triton() as (triton_url, triton_pid, token),
        running_proxy(triton_url) as (proxy, pid),
        running_proxy(triton_url, extra=("--coalesce", str(COALESCE))) as (coalescing, c_pid),
        running_proxy(
            triton_url,
            extra=("--coalesce", str(COALESCE), "--coalesce-in-flight", str(COALESCE_IN_FLIGHT)),
        ) as (coalescing_in_flight, ci_pid),
        running_floor_proxy(triton_url) as (floor, f_pid),
        running_floor_proxy(triton_url, "--stream") as (floor_stream, fs_pid),
    ):
        pids = {"proxy": pid, "coalescing": c_pid, "floor": f_pid, "floor_stream": fs_pid}
        pids["coalescing_in_flight"] = ci_pid
        targets = {"proxy": proxy, "coalescing": coalescing, "floor": floor}
        targets["floor_stream"] = floor_stream
        targets["coalescing_in_flight"] = coalescing_in_flight
        counts = TritonCounts(triton_url, token)
        m = _measure(triton_url, targets, CpuMeter(pids, triton_pid), counts)
    common = {"benchmark": "triton_proxy_add_one_fp32", "frames": FRAMES, "rounds": ROUNDS}
    t = m["timings"]
    ours_off, ours_on = ours_in_process(), ours_in_process(metrics=True)

    def row(variant: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
        return {**common, "variant": variant, "value": value, "unit": unit, **extra}

    def rate(variant: str, label: str, **extra: Any) -> dict[str, Any]:
        values = [v for v in m["rates"][variant] if v == v] or [float("nan")]
        if variant in m["failures"]:
            extra["error"] = f"a round failed: {m['failures'][variant]}"
        spread = f"rounds {min(values):.0f}-{max(values):.0f}"
        return row(label, round(statistics.median(values), 1), "frames/s", spread=spread, **extra)

    def ratio(key: str, label: str, digits: int = 3, goal: str = "") -> dict[str, Any]:
        med, low, high = m["ratios"][key]
        spread = f"rounds {low:.{digits}f}-{high:.{digits}f}"
        extra: dict[str, Any] = {"ratio": med, "ratio_vs": key, "goal": goal} if goal else {}
        return row(label, round(med, digits), "x", spread=spread, **extra)

    def med(key: str) -> float:
        return round(statistics.median(t[key]), 3) if t.get(key) else 0.0

    n = IN_FLIGHT
    rows = [
        rate("a", f"(a) tritonclient.grpc.aio direct, {n} in flight"),
        rate("b", f"(b) AsyncTritonBytesStreamer via proxy, {n} in flight"),
        rate("c", "(c) seed pattern: one Chat call per frame", frames=m["seeds"]),
        ratio("b/a", "ratio b/a (goal >= 0.8), median of paired rounds", goal=">= 0.8x"),
        ratio("b/c", "ratio b/c (goal >= 4), median of paired rounds", 2, goal=">= 4x"),
        rate("f", "(f) floor: a bare grpc.aio proxy (unary ModelInfer), same client"),
        ratio("f/a", "ratio f/a: the floor of any Python grpc.aio proxy"),
        ratio("b/f", "ratio b/f: the proxy vs that floor"),
        rate("fs", "(fs) floor, one ModelStreamInfer stream to Triton per Chat call"),
        ratio("fs/a", "ratio fs/a"),
        rate("bc", f"(bc) the same via a proxy with --coalesce {COALESCE}"),
        ratio("bc/a", "ratio bc/a, median of paired rounds"),
        rate(
            "bci",
            f"(bci) via a proxy with --coalesce {COALESCE} --coalesce-in-flight "
            f"{COALESCE_IN_FLIGHT}",
        ),
        ratio("bci/a", "ratio bci/a, median of paired rounds"),
        rate("b64", f"(b') AsyncTritonBytesStreamer via proxy, {2 * n} in flight"),
        rate("bsync", f"(b'') TritonBytesStreamer (sync) via proxy, {n} in flight"),
        rate("a8", "(a8) tritonclient direct, 8 frames per request, 64 in flight"),
        rate("b8", "(b8) async streamer, frames_per_packet=8, 64 in flight"),
        ratio("b8/a8", "ratio b8/a8 (batched, both sides alike)"),
        ratio("b8/a", "ratio b8/a (batched client vs the 1-frame baseline)"),
        row(
            "(o) the proxy's own CPU per packet, in process, metrics off", round(ours_off, 1), "us"
        ),
        row("(o) the same with Prometheus metrics on", round(ours_on, 1), "us"),
        row("(b) median triton_infer_ms (proxy's Triton call)", med("triton_infer_ms"), "ms"),
        row("(b) median total_ms (packet inside the proxy)", med("total_ms"), "ms"),
        row("(b) median client_ms (client round trip)", med("client_ms"), "ms"),
        row(
            "load average (1 min) at each round's start and the end",
            round(statistics.median(m["loads"]), 2),
            "",
            spread=" ".join(f"{x:.1f}" for x in m["loads"]),
        ),
    ]
    for variant in ("a", "b", "f", "fs", "bc", "bci", "b64", "bsync", "a8", "b8", "c"):
        for proc, ms in m["cpu"][variant].items():
            if proc == "proxy" and variant.startswith("a"):
                continue
            rows.append(row(f"({variant}) CPU per frame: {proc}", round(ms, 3), "ms"))
        seen = m["batches"][variant]
        rows.append(
            row(
                f"({variant}) Triton: rows per execution (mean dynamic batch)",
                round(seen["rows"] / max(seen["executions"], 1), 2),
                "",
                spread=f"{seen['requests']} requests, {seen['executions']} executions, "
                f"{seen['rows']} rows",
            )
        )
    return rows


def profile_proxy(out: Path, top: int = 25) -> str:
    """Run (b) against a proxy under cProfile; return the summary (cumulative, tottime)."""
    prof = out.with_suffix(".prof")
    with running_triton() as (triton_url, _, _):
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


_SYSCALLS = {"sendmsg", "recvmsg", "write", "read", "recv", "send", "syscall", "getpid"}
_IDLE = {"epoll_wait", "poll", "select", "epoll_pwait"}


def _category(frames: list[str]) -> str:
    """Where one py-spy ``--native`` sample's CPU went: the leaf's owner.

    Syscalls and grpc's Cython/C core are grpc.aio's (the proxy's only I/O is gRPC);
    a leaf in the interpreter or the standard library goes to the nearest caller that
    is ours, grpc's, asyncio's or protobuf's.
    """
    leaf = frames[-1]
    name = leaf.split(" ", 1)[0]
    if name in _IDLE:
        return "idle"
    if name in _SYSCALLS:
        return "kernel (syscalls)"
    for frame in reversed(frames):
        # py-spy names Python files relative to their sys.path entry: "(grpc/aio/...".
        if "cygrpc" in frame or "(grpc/" in frame or "libgrpc" in frame:
            return "grpc.aio (Python, Cython, C core)"
        if "(tritonclient/" in frame:
            return "tritonclient (Python)"
        if "_message" in frame or "(google/protobuf/" in frame:
            return "protobuf (upb)"
        if "(transports/" in frame or "(benchmarks/" in frame:
            return "ours (transports/, or the floor proxy's code)"
        if "(asyncio/" in frame or "_asyncio" in frame:
            return "asyncio event loop"
    return "other (interpreter, gc, threads)"


def spy_proxies(seconds: float = 8.0) -> str:
    """py-spy (``--native``) the proxy and the floor proxy during (b) and (f), and this
    process, the client, during (b) and (a).

    Needs ``py-spy`` on PATH or next to this interpreter (``pip install py-spy``);
    returns the share of busy samples per owner, for each.
    """
    import shutil
    from collections import Counter

    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        return "py-spy is not installed (pip install py-spy)"
    frames = _frames(FRAMES * 4)
    lines = []
    with (
        running_triton() as (triton_url, _, _),
        running_proxy(triton_url) as (proxy, pid),
        running_floor_proxy(triton_url) as (floor, f_pid),
    ):
        asyncio.run(direct_tritonclient(triton_url, frames[:WARMUP], IN_FLIGHT))
        for target in (proxy, floor):
            asyncio.run(streamer_through_proxy(target, frames[:WARMUP], IN_FLIGHT))
        sampled: tuple[tuple[str, int, Callable[[], Coroutine[Any, Any, float]]], ...] = (
            ("(b) the proxy", pid, lambda: streamer_through_proxy(proxy, frames, IN_FLIGHT)),
            ("(f) floor", f_pid, lambda: streamer_through_proxy(floor, frames, IN_FLIGHT)),
            (
                "(b) the client (AsyncTritonBytesStreamer)",
                os.getpid(),
                lambda: streamer_through_proxy(proxy, frames, IN_FLIGHT),
            ),
            (
                "(a) the client (tritonclient.grpc.aio)",
                os.getpid(),
                lambda: direct_tritonclient(triton_url, frames, IN_FLIGHT),
            ),
        )
        for label, target_pid, variant in sampled:
            with tempfile.TemporaryDirectory() as tmp:
                raw = Path(tmp) / "spy.txt"
                args = [spy, "record", "-p", str(target_pid), "-r", "250", "-d", str(int(seconds))]
                args += ["--native", "-f", "raw", "-o", str(raw)]
                proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                time.sleep(1.0)
                rate = asyncio.run(variant())
                _, err = proc.communicate(timeout=seconds + 60)
                if not raw.exists():
                    raise RuntimeError(f"py-spy failed: {err.decode()[-2000:]}")
                counts: Counter[str] = Counter()
                for line in raw.read_text().splitlines():
                    stack, _, samples = line.rpartition(" ")
                    counts[_category(stack.split(";"))] += int(samples)
            busy = sum(n for k, n in counts.items() if k != "idle")
            lines.append(f"{label}: {rate:.0f} frames/s under py-spy, {busy} busy samples")
            for key, n in counts.most_common():
                if key != "idle":
                    lines.append(f"  {100.0 * n / busy:5.1f} %  {key}")
    return "\n".join(lines)


_SYSCALL_EVENTS = ("sendmsg", "recvmsg", "write", "read", "epoll_wait", "futex")


def count_syscalls() -> str:
    """Syscalls per frame of the client, the proxy and tritonserver during (a), (b), (bci).

    Counted with ``perf stat`` on the syscall tracepoints (needs ``perf`` on PATH and
    tracepoint access, as root here); each process's threads, over one variant's run.
    """
    import re
    import shutil

    import psutil

    perf = shutil.which("perf")
    if perf is None:
        return "perf is not installed (apt-get install linux-perf)"
    events = ",".join(f"syscalls:sys_enter_{name}" for name in _SYSCALL_EVENTS)
    frames = _frames(FRAMES)
    lines = []
    coalesce = ("--coalesce", str(COALESCE), "--coalesce-in-flight", str(COALESCE_IN_FLIGHT))
    with (
        running_triton() as triton,
        running_proxy(triton.url) as (proxy, pid),
        running_proxy(triton.url, extra=coalesce) as (coalescing, c_pid),
    ):
        server = next(
            p.pid
            for p in psutil.Process(triton.pid).children(recursive=True)
            if p.name().startswith("tritonserver")
        )
        asyncio.run(direct_tritonclient(triton.url, frames[:WARMUP], IN_FLIGHT))
        for target in (proxy, coalescing):
            asyncio.run(streamer_through_proxy(target, frames[:WARMUP], IN_FLIGHT))
        sampled: tuple[tuple[str, int | None, Callable[[], Coroutine[Any, Any, float]]], ...] = (
            ("(a)", None, lambda: direct_tritonclient(triton.url, frames, IN_FLIGHT)),
            ("(b)", pid, lambda: streamer_through_proxy(proxy, frames, IN_FLIGHT)),
            ("(bci)", c_pid, lambda: streamer_through_proxy(coalescing, frames, IN_FLIGHT)),
        )
        for label, proxy_pid, variant in sampled:
            procs = {"client": os.getpid(), "tritonserver": server}
            if proxy_pid is not None:
                procs["proxy"] = proxy_pid
            with tempfile.TemporaryDirectory() as tmp:
                outs = {name: Path(tmp) / f"{name}.txt" for name in procs}
                stats = [
                    subprocess.Popen(
                        [perf, "stat", "-x", ",", "-e", events, "-p", str(p), "-o", str(outs[n])]
                    )
                    for n, p in procs.items()
                ]
                time.sleep(0.5)
                rate = asyncio.run(variant())
                for stat in stats:
                    stat.send_signal(signal.SIGINT)
                for stat in stats:
                    stat.wait(30)
                lines.append(f"{label} {rate:.0f} frames/s; syscalls per frame:")
                for name, out in outs.items():
                    found = re.findall(r"^(\d+),,syscalls:sys_enter_(\w+)", out.read_text(), re.M)
                    each = " ".join(f"{call} {int(n) / len(frames):.2f}" for n, call in found)
                    total = sum(int(n) for n, _ in found) / len(frames)
                    lines.append(f"  {name:<12} {total:5.1f}  ({each})")
    return "\n".join(lines)


def main() -> None:
    print(f"python {platform.python_version()}, {os.cpu_count()} cores, {platform.machine()}")
    if "--profile" in sys.argv[1:]:
        print(profile_proxy(Path(tempfile.gettempdir()) / "bench_triton_proxy"))
        return
    if "--py-spy" in sys.argv[1:]:
        print(spy_proxies())
        return
    if "--syscalls" in sys.argv[1:]:
        print(count_syscalls())
        return
    for row in run():
        spread = f"  ({row['spread']})" if "spread" in row else ""
        print(f"{row['variant']:<66} {row['value']:>10} {row['unit']}{spread}")


if __name__ == "__main__":
    main()
