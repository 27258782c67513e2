"""Clients for the example gRPC server: the same typed reader, async and sync.

python -m examples.grpc_client 127.0.0.1:50051            # async (grpc.aio)
python -m examples.grpc_client 127.0.0.1:50051 --sync     # sync (grpc)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from examples.client import show_footer, show_header, show_item
from examples.shared_types import DETECTIONS
from transports.grpc import aconnect, connect, create_channel


def wait_serving(target: str, timeout: float = 20.0) -> None:
    """Poll the standard health service until the server reports SERVING."""
    deadline = time.monotonic() + timeout
    with create_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gRPC server at {target} is not SERVING after {timeout}s")
            time.sleep(0.1)


async def consume_async(target: str, frames: int = 5) -> int:
    """Read the detection stream over grpc.aio."""
    print("async, gRPC:")
    request = json.dumps({"frames": frames}).encode()
    count = 0
    async with aconnect(target, "Detections", DETECTIONS, request=request, timeout=30) as reader:
        show_header(await reader.read_header())
        async for item in reader.read_items():
            show_item(item)
            count += 1
        show_footer(await reader.read_footer())
    return count


def consume_sync(target: str, frames: int = 5) -> int:
    """The same over the sync ``grpc`` API."""
    print("sync, gRPC:")
    request = json.dumps({"frames": frames}).encode()
    count = 0
    with connect(target, "Detections", DETECTIONS, request=request, timeout=30) as reader:
        show_header(reader.read_header())
        for item in reader.read_items():
            show_item(item)
            count += 1
        show_footer(reader.read_footer())
    return count


def demo_segment(port: int) -> None:
    """``make demo``: run examples.grpc_server in a subprocess and read it both ways."""
    target = f"127.0.0.1:{port}"
    command = [sys.executable, "-m", "examples.grpc_server", "--listen", target]
    print("$ python", " ".join(command[1:]))
    process = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_serving(target)
        items = asyncio.run(consume_async(target, frames=3))
        items += consume_sync(target, frames=2)
        print(f"read {items} items over gRPC, async and sync")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        print(f"gRPC server stopped (exit status {process.returncode})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("target", nargs="?", default="127.0.0.1:50051")
    parser.add_argument("--sync", action="store_true", help="use the sync client")
    parser.add_argument("--frames", type=int, default=5)
    args = parser.parse_args()
    wait_serving(args.target)
    if args.sync:
        consume_sync(args.target, args.frames)
    else:
        asyncio.run(consume_async(args.target, args.frames))


if __name__ == "__main__":
    main()
