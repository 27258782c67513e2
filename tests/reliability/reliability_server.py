"""A server for the reliability suite, run as its own process (so tests can SIGKILL it
and measure its memory): SSE and chunked HTTP on uvicorn, gRPC on grpc.aio, one loop.

Prints ``READY <http_port> <grpc_port>`` once both listen.
"""

from __future__ import annotations

import asyncio
import socket

import uvicorn
from reliability_helpers import grpc_service, starlette_app

from transports.grpc import start_server


async def main() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        starlette_app(),
        http="httptools",
        lifespan="off",
        ws="none",
        log_level="warning",
        backlog=2048,
        limit_concurrency=None,
    )
    server = uvicorn.Server(config)
    web = asyncio.ensure_future(server.serve(sockets=[sock]))
    running = await start_server(grpc_service(), "127.0.0.1:0", reflection=False)
    while not server.started:
        await asyncio.sleep(0.01)
    print("READY", sock.getsockname()[1], running.port, flush=True)
    await web


if __name__ == "__main__":
    asyncio.run(main())
