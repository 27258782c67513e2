"""The example producer served over gRPC, with health checking and reflection.

    python -m examples.grpc_server --listen 127.0.0.1:50051

Method ``/truss_stream.FrameStream/Detections``: the request body is JSON,
``{"frames": 8, "delay_ms": 0}`` (both optional); the stream is the msgpack
detection stream of ``examples.shared_types``, the same producer the SSE and
HTTP server uses. Try it with grpcurl::

    grpcurl -plaintext 127.0.0.1:50051 describe truss_stream.FrameStream
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator
from typing import Any

from examples.shared_types import DETECTIONS, detect
from transports.grpc import FrameStreamService, start_server

MAX_FRAMES = 10_000


def detections(body: bytes, context: Any) -> AsyncIterator[bytes | memoryview]:
    """Parse the request and start the detector; bad requests fail before any frame."""
    params = json.loads(body or b"{}")
    frames = int(params.get("frames", 8))
    if not 0 <= frames <= MAX_FRAMES:
        raise ValueError(f"frames must be within 0..{MAX_FRAMES}")
    delay = float(params.get("delay_ms", 0)) / 1000
    return detect(DETECTIONS, request_id=uuid.uuid4().hex[:8], frames=frames, delay=delay)


async def run(listen: str) -> None:
    """Serve until SIGINT or SIGTERM, then drain open calls for up to 5 seconds."""
    running = await start_server(FrameStreamService({"Detections": detections}), listen)
    print(f"gRPC server on {running.target} (health + reflection)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await running.stop(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT")
    asyncio.run(run(parser.parse_args().listen))


if __name__ == "__main__":
    main()
