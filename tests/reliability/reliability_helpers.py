"""Shared pieces of the reliability suite: stream types, one producer served over SSE,
chunked HTTP and gRPC, a server in a subprocess (to SIGKILL and to measure), and a
loopback TCP proxy that cuts connections after N bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from transports import http, sse
from transports.grpc import FrameStreamService
from truss_stream import NDArray, stream_types, stream_writer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


class Header(pydantic.BaseModel):
    stream: int
    n: int


class Item(pydantic.BaseModel):
    index: int
    stream: int
    text: str = ""
    tensor: NDArray | None = None


class Footer(pydantic.BaseModel):
    count: int


TYPES = {
    c: stream_types(Item, header_type=Header, footer_type=Footer, codec=c)
    for c in ("msgpack", "json")
}  # type: ignore[call-overload]


class Tracker:
    """Counts what producers did, across threads: frames yielded, producers closed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = 0
        self.closed = 0
        self.produced = 0
        self.closed_event = threading.Event()

    def add(self, field: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, field, getattr(self, field) + n)
            if field == "closed":
                self.closed_event.set()

    def wait_all_closed(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self.closed >= self.started:
                    return True
            time.sleep(0.01)
        return False


def params_of(query: Any) -> dict[str, Any]:
    return {
        "stream": int(query.get("stream", 0)),
        "n": int(query.get("n", 10)),
        "delay": float(query.get("delay", 0)),
        "codec": query.get("codec", "msgpack"),
        "floats": int(query.get("floats", 0)),
        "fail_at": int(query.get("fail_at", -1)),
    }


async def produce(
    stream: int,
    n: int,
    delay: float = 0.0,
    codec: str = "msgpack",
    floats: int = 0,
    fail_at: int = -1,
    tracker: Tracker | None = None,
) -> AsyncIterator[bytes | memoryview]:
    """Header, ``n`` items (optionally carrying ``floats`` float32s), footer.

    ``n < 0`` produces forever; ``fail_at`` raises before that item.
    """
    writer = stream_writer(TYPES[codec])
    tensor = np.arange(floats, dtype=np.float32) if floats else None
    if tracker is not None:
        tracker.add("started")
    try:
        yield writer.yield_header(Header(stream=stream, n=n))
        i = 0
        while n < 0 or i < n:
            if i == fail_at:
                raise RuntimeError(f"producer failed at item {i}")
            yield writer.yield_item(
                Item(index=i, stream=stream, text=f"s{stream}-{i}", tensor=tensor)
            )
            if tracker is not None:
                tracker.add("produced")
            i += 1
            if delay:
                await asyncio.sleep(delay)
            elif i % 16 == 0:
                await asyncio.sleep(0)
        yield writer.yield_footer(Footer(count=n))
    finally:
        if tracker is not None:
            tracker.add("closed")


def endless_frames(stream: int = 0) -> Iterator[bytes]:
    """Header, then items forever, ready at once: callers pace them (sync or async)."""
    writer = stream_writer(TYPES["msgpack"])
    yield writer.yield_header(Header(stream=stream, n=-1))
    i = 0
    while True:
        yield writer.yield_item(Item(index=i, stream=stream))
        i += 1


def starlette_app(tracker: Tracker | None = None, **response_kwargs: Any) -> Starlette:
    """``/sse`` and ``/http`` serving :func:`produce` with the query's parameters."""

    async def sse_endpoint(request: Request) -> Response:
        return sse.sse_response(
            produce(**params_of(request.query_params), tracker=tracker), **response_kwargs
        )

    async def http_endpoint(request: Request) -> Response:
        return http.stream_response(
            produce(**params_of(request.query_params), tracker=tracker), **response_kwargs
        )

    return Starlette(routes=[Route("/sse", sse_endpoint), Route("/http", http_endpoint)])


def grpc_service(tracker: Tracker | None = None) -> FrameStreamService:
    """Method ``Stream``: the request body is the JSON of :func:`params_of`'s keys."""

    def stream(body: bytes, context: Any) -> AsyncIterator[bytes | memoryview]:
        return produce(**params_of(json.loads(body or b"{}")), tracker=tracker)

    return FrameStreamService({"Stream": stream})


def grpc_request(**params: Any) -> bytes:
    return json.dumps(params).encode()


# A server in a subprocess --------------------------------------------------------------


class SubprocessServer:
    """``reliability_server.py`` in its own process: SSE + HTTP on one port, gRPC on another."""

    def __init__(self, proc: subprocess.Popen[str], http_port: int, grpc_port: int) -> None:
        self.proc = proc
        self.http_url = f"http://127.0.0.1:{http_port}"
        self.grpc_target = f"127.0.0.1:{grpc_port}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@contextlib.contextmanager
def subprocess_server(
    *args: str, script: str = "reliability_server.py"
) -> Iterator[SubprocessServer]:
    """Run ``script`` (in this folder) until it prints ``READY <http_port> [<grpc_port>]``."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}"}
    proc = subprocess.Popen(
        [sys.executable, str(HERE / script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY"):
            proc.kill()
            raise RuntimeError(
                f"server did not start: {line!r} {proc.stderr.read() if proc.stderr else ''}"
            )
        _, http_port, *grpc_port = line.split()
        yield SubprocessServer(proc, int(http_port), int(grpc_port[0]) if grpc_port else 0)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# A loopback proxy that cuts connections --------------------------------------------------


class CutProxy:
    """Forwards TCP on 127.0.0.1; the server->client direction of each new connection
    is cut (both sides closed) after ``next_cut()`` bytes, or never for None.

    ``sent`` records, per connection, how many server bytes reached the client.
    """

    def __init__(self, upstream_port: int, next_cut: Callable[[], int | None]) -> None:
        self._upstream = upstream_port
        self._next_cut = next_cut
        self.sent: list[int] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    def __enter__(self) -> CutProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop
        ).result(5)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        cut = self._next_cut()
        index = len(self.sent)
        self.sent.append(0)
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self._upstream)
        except OSError:
            client_w.close()
            return

        async def pump_up() -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await client_r.read(65536):
                    up_w.write(data)
                    await up_w.drain()

        async def pump_down() -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await up_r.read(65536):
                    if cut is not None and self.sent[index] + len(data) >= cut:
                        data = data[: cut - self.sent[index]]
                        # Counted before the write: the client (another thread) may read
                        # these bytes and the test read `sent` before this line runs.
                        self.sent[index] += len(data)
                        client_w.write(data)
                        await client_w.drain()
                        return
                    self.sent[index] += len(data)
                    client_w.write(data)
                    await client_w.drain()

        up = asyncio.ensure_future(pump_up())
        try:
            await pump_down()
        finally:
            up.cancel()
            for w in (client_w, up_w):
                with contextlib.suppress(Exception):
                    w.transport.abort() if cut is not None else w.close()
