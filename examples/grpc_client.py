"""Clients for the example gRPC server: the same typed reader, async and sync.

python -m examples.grpc_client 127.0.0.1:50051            # async (grpc.aio)
python -m examples.grpc_client 127.0.0.1:50051 --sync     # sync (grpc)
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
