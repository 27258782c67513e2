"""Scale-out demo: a worker publishes a typed stream into Redis, two web replicas serve it
behind Envoy, and a client survives the replica it was reading from being killed.

Run it with ``make demo-scale`` (or ``python -m examples.scale_out``). The pieces:

- ``python -m examples.scale_out worker --redis URL --stream ID``: the model worker,
  publishing the demo detector's frames (examples/shared_types.py) into
  ``stream_key(ID)`` with :func:`transports.redis.publish`;
- ``uvicorn --factory examples.scale_out:app_from_env`` (``REDIS_URL`` set): a web
  replica; ``GET /streams/{id}`` serves the stream as SSE from Redis (event ids are
  Redis entry ids), ``GET /streams/{id}/chunked`` as binary chunked HTTP,
  ``GET /healthz`` for the load balancer;
- Envoy (examples/envoy/sse-replicas.yaml) in front of the replicas;
- the client: ``transports.sse.aconnect(..., resume_attempts=5)`` through Envoy.

:class:`ScaleOut` starts all of it on free loopback ports; the tests use it too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import redis.asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from examples.envoy_lb import Envoy, render
from examples.shared_types import DETECTIONS, DETECTIONS_JSON, detect
from transports import redis as redis_transport
from transports import sse

__all__ = ["ScaleOut", "app_from_env", "create_app", "run_worker"]

REPO = Path(__file__).resolve().parents[1]


def create_app(redis_url: str) -> Starlette:
    """A web replica: serves streams stored in Redis; holds no stream state itself."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.redis = redis.asyncio.Redis.from_url(redis_url, socket_connect_timeout=2)
        try:
            yield
        finally:
            await app.state.redis.aclose()

    def key(request: Request) -> str:
        return redis_transport.stream_key(request.path_params["stream_id"])

    async def stream_sse(request: Request) -> Response:
        return redis_transport.sse_response(request.app.state.redis, key(request), request)

    async def stream_chunked(request: Request) -> Response:
        return redis_transport.stream_response(request.app.state.redis, key(request), request)

    async def healthz(request: Request) -> Response:
        await request.app.state.redis.ping()
        return PlainTextResponse(f"ok {os.getpid()}")

    return Starlette(
        routes=[
            Route("/streams/{stream_id}", stream_sse),
            Route("/streams/{stream_id}/chunked", stream_chunked),
            Route("/healthz", healthz),
        ],
        lifespan=lifespan,
    )


def app_from_env() -> Starlette:
    """``uvicorn --factory examples.scale_out:app_from_env``, with ``REDIS_URL`` set."""
    return create_app(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))


async def run_worker(
    redis_url: str, stream_id: str, *, frames: int, delay: float, codec: str = "msgpack"
) -> int:
    """Publish one detector run into Redis; returns the number of entries."""
    types = DETECTIONS_JSON if codec == "json" else DETECTIONS
    client = redis.asyncio.Redis.from_url(redis_url, socket_connect_timeout=2)
    try:
        producer = detect(types, request_id=stream_id, frames=frames, delay=delay)
        key = redis_transport.stream_key(stream_id)
        return await redis_transport.publish(client, key, producer, ttl=3600)
    finally:
        await client.aclose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not come up")
        time.sleep(0.05)


class ScaleOut:
    """redis-server, N uvicorn replicas and Envoy, as subprocesses on free loopback ports."""

    def __init__(self, replicas: int = 2) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="truss-scale-")
        self._procs: list[subprocess.Popen[bytes]] = []
        self.redis_port = _free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.replica_ports = [_free_port() for _ in range(replicas)]
        self.replicas: dict[int, subprocess.Popen[bytes]] = {}
        self.envoy: Envoy | None = None
        self.url = ""

    def start(self) -> ScaleOut:
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise RuntimeError("redis-server is not installed (make redis)")
        self._spawn(
            [redis_server, "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--dir", self._dir.name, "--save", "", "--appendonly", "no"]
        )  # fmt: skip
        env = {**os.environ, "REDIS_URL": self.redis_url, "PYTHONPATH": str(REPO)}
        for port in self.replica_ports:
            self.replicas[port] = self._spawn(
                [sys.executable, "-m", "uvicorn", "--factory", "examples.scale_out:app_from_env",
                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                env=env,
            )  # fmt: skip
        for port in self.replica_ports:
            _wait_http(f"http://127.0.0.1:{port}/healthz")
        listen, admin = _free_port(), _free_port()
        config = render(
            "sse-replicas",
            listen_port=listen,
            admin_port=admin,
            upstream_ports=self.replica_ports,
            hc_interval="0.25s",
        )
        self.envoy = Envoy(config, admin_port=admin, listen_port=listen)
        self.envoy.wait_ready(healthy=len(self.replica_ports))
        self.url = f"http://127.0.0.1:{listen}"
        return self

    def _spawn(self, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
        self._procs.append(proc)
        return proc

    def worker(self, stream_id: str, *, frames: int, delay_ms: float) -> subprocess.Popen[bytes]:
        """Start a worker process publishing ``frames`` detections into ``stream_id``."""
        return self._spawn(
            [sys.executable, "-m", "examples.scale_out", "worker", "--redis", self.redis_url,
             "--stream", stream_id, "--frames", str(frames), "--delay-ms", str(delay_ms)],
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip

    def serving_replica(self) -> int | None:
        """The port of the replica with a request in progress (from Envoy's admin stats)."""
        assert self.envoy is not None
        for host, stats in self.envoy.host_stats().items():
            if int(stats.get("rq_active", "0")) > 0:
                return int(host.rsplit(":", 1)[1])
        return None

    def kill_replica(self, port: int) -> None:
        """SIGKILL the replica on ``port``: its open streams are cut mid-event."""
        proc = self.replicas[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self._dir.cleanup()


@contextlib.contextmanager
def scale_out(replicas: int = 2) -> Iterator[ScaleOut]:
    """:class:`ScaleOut` started for the ``with`` block."""
    running = ScaleOut(replicas)
    try:
        yield running.start()
    finally:
        running.stop()


async def read_through(
    url: str, *, kill_after: int | None = None, on_kill: Any = None
) -> tuple[list[int], int]:
    """Read the detections at ``url`` with resume; call ``on_kill()`` after item ``kill_after``.

    Returns:
        The frame indexes received, and the footer's frame count.
    """
    indexes: list[int] = []
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10, read=30)) as client,
        sse.aconnect(client, "GET", url, DETECTIONS, resume_attempts=5) as reader,
    ):
        await reader.read_header()
        async for item in reader.read_items():
            indexes.append(item.frame_index)
            if len(indexes) == kill_after and on_kill is not None:
                on_kill()
        footer = await reader.read_footer()
    return indexes, footer.frames


def demo(frames: int = 40, delay_ms: float = 50) -> int:
    """The replica handover, narrated."""
    with scale_out(replicas=2) as cluster:
        print(f"redis-server   {cluster.redis_url}")
        print(f"web replicas   {', '.join(f'127.0.0.1:{p}' for p in cluster.replica_ports)}")
        print(f"envoy          {cluster.url}  (examples/envoy/sse-replicas.yaml)")
        worker = cluster.worker("demo-1", frames=frames, delay_ms=delay_ms)
        print(f"worker         pid {worker.pid}: {frames} detections into 'truss:{{demo-1}}'")
        killed: list[int] = []

        def kill() -> None:
            port = cluster.serving_replica()
            if port is not None:
                cluster.kill_replica(port)
                killed.append(port)
                print(f"  ... item 10 read; SIGKILL the replica serving us (127.0.0.1:{port})")

        indexes, total = anyio.run(
            lambda: read_through(f"{cluster.url}/streams/demo-1", kill_after=10, on_kill=kill)
        )
        worker.wait(30)
        assert cluster.envoy is not None
        served = cluster.envoy.requests_per_host()
        print("envoy requests per replica (health checks excluded):", served)
        ok = indexes == list(range(frames)) and total == frames and bool(killed)
        print(
            f"client read    {len(indexes)} detections, frame_index 0..{indexes[-1]}, "
            f"footer {total}"
        )
        print("every item exactly once, in order:", "yes" if ok else "NO")
        return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.scale_out")
    sub = parser.add_subparsers(dest="command")
    work = sub.add_parser("worker", help="publish one detector run into Redis")
    work.add_argument("--redis", required=True)
    work.add_argument("--stream", required=True)
    work.add_argument("--frames", type=int, default=40)
    work.add_argument("--delay-ms", type=float, default=50)
    work.add_argument("--codec", choices=["msgpack", "json"], default="msgpack")
    args = parser.parse_args(argv)
    if args.command == "worker":
        count = anyio.run(
            lambda: run_worker(
                args.redis, args.stream, frames=args.frames, delay=args.delay_ms / 1000,
                codec=args.codec,
            )
        )  # fmt: skip
        print(f"published {count} entries", flush=True)
        return 0
    return demo()


if __name__ == "__main__":
    sys.exit(main())
