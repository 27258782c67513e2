"""``make demo``: the example server under uvicorn, read by the example clients.

Starts ``examples.sse_server:app`` with uvicorn on a free loopback port (a
subprocess), streams detections from it over SSE and chunked HTTP with the async
and sync clients (header, items with tensor shapes and dtypes, footer), and
shuts the server down cleanly; then serves the same producer over gRPC, and
streams tensors through the Triton thin proxy running its embedded demo backend
(no Triton needed). Each step is a function called from :func:`main`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx

from examples.client import consume_async, consume_sync
from examples.grpc_client import consume_async as grpc_consume_async
from examples.grpc_client import consume_sync as grpc_consume_sync
from examples.grpc_client import wait_serving
from examples.triton_client import run_async as triton_run_async
from examples.triton_client import run_sync as triton_run_sync
from examples.triton_client import run_tokens as triton_run_tokens
from examples.triton_client import run_typed as triton_run_typed


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Poll ``url`` until the server answers, or fail if it died or took too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the server did not answer at {url} within {timeout}s")


@contextlib.contextmanager
def example_server(port: int) -> Iterator[str]:
    """Run the example app under uvicorn in a subprocess; yield its base URL."""
    command = [
        sys.executable, "-m", "uvicorn", "examples.sse_server:app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    print("$ python", " ".join(command[1:]))
    process = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url + "/", process)
        yield base_url
    finally:
        shutdown(process)


def shutdown(process: subprocess.Popen[bytes], name: str = "server") -> None:
    """Stop a server gracefully (SIGINT), killing it only if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    print(f"{name} stopped (exit status {process.returncode})")


def grpc_segment(port: int) -> None:
    """Run examples.grpc_server in a subprocess and read it, async and sync."""
    target = f"127.0.0.1:{port}"
    command = [sys.executable, "-m", "examples.grpc_server", "--listen", target]
    print("$ python", " ".join(command[1:]))
    process = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_serving(target)
        items = asyncio.run(grpc_consume_async(target, frames=3))
        items += grpc_consume_sync(target, frames=2)
        print(f"read {items} items over gRPC, async and sync")
    finally:
        shutdown(process, "gRPC server")


def stream_segment(base_url: str) -> None:
    """Read the detection stream with both clients, over both transports."""
    items = asyncio.run(consume_async(base_url, frames=4))
    items += consume_sync(base_url, frames=3)
    print(f"read {items} items over SSE and chunked HTTP, async and sync")
    print(f"browser page: {base_url}/ (the JS package, js/: SSE over fetch and binary heatmaps)")


@contextlib.contextmanager
def demo_proxy(port: int) -> Iterator[str]:
    """Run the Triton thin proxy with its embedded demo backend (no Triton needed)."""
    command = [
        sys.executable, "-m", "transports.triton.proxy",
        "--listen", f"127.0.0.1:{port}", "--backend", "demo",
    ]  # fmt: skip
    print("$ python", " ".join(command[1:]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DOMINO_HOST", None)  # the demo proxy runs unauthenticated, and says so
    process = subprocess.Popen(command, env=env)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        shutdown(process, "proxy")


def triton_segment(port: int) -> None:
    """Stream tensors through the proxy: sync, async (pipelined), and the typed view."""
    with demo_proxy(port) as addr:
        frames = triton_run_sync(addr, 4)
        frames += asyncio.run(triton_run_async(addr, 4))
        frames += asyncio.run(triton_run_typed(addr, 4))
        print(f"streamed {frames} frames through the proxy, one Chat call per run")
        print("-- a streaming (decoupled) model: one Ack per token, the last one final")
        responses = triton_run_tokens(addr)
        print(f"got {responses} responses from streaming models (stream_responses)")


def main() -> None:
    with example_server(free_port()) as base_url:
        print(f"serving on {base_url}")
        stream_segment(base_url)
    print("\n== gRPC: the same producer as a server-streaming method")
    grpc_segment(free_port())
    print("\n== Triton thin proxy: embedded demo backend, pipelined clients, typed view")
    triton_segment(free_port())


if __name__ == "__main__":
    main()
