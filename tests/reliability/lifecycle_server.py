"""A uvicorn server in its own process, for the shutdown tests: SIGTERM it and watch.

``python lifecycle_server.py [--drain GRACE] [--timeout-graceful-shutdown S]``

- ``/sse``, ``/http``: endless streams (an item every 50 ms), async producers.
- ``/sync-sse``: an endless sync producer (``time.sleep`` between items).

``--drain GRACE`` serves every stream with a :class:`GracefulShutdown` and runs
uvicorn through ``GracefulShutdown.uvicorn_server`` (the documented recipe); without
it the server is a plain ``uvicorn.Server``, as before the recipe existed.
Prints ``READY <port>`` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import uvicorn
from reliability_helpers import endless_frames
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from transports import http, sse
from transports.shutdown import GracefulShutdown


async def endless() -> AsyncIterator[bytes]:
    for frame in endless_frames():
        yield frame
        await asyncio.sleep(0.05)


def endless_sync() -> Iterator[bytes]:
    for frame in endless_frames():
        yield frame
        time.sleep(0.05)


def app(drain: GracefulShutdown | None) -> Starlette:
    options: dict[str, Any] = {"shutdown": drain} if drain is not None else {}
    streams: dict[str, tuple[Callable[..., Response], Callable[[], Any]]] = {
        "/sse": (sse.sse_response, endless),
        "/sync-sse": (sse.sse_response, endless_sync),
        "/http": (http.stream_response, endless),
    }

    def endpoint(path: str) -> Callable[[Request], Awaitable[Response]]:
        respond, frames = streams[path]

        async def serve(request: Request) -> Response:
            if respond is sse.sse_response:
                return respond(frames(), ping_interval=None, **options)
            return respond(frames(), **options)

        return serve

    async def ping(request: Request) -> Response:
        return PlainTextResponse("pong")

    routes = [Route(path, endpoint(path)) for path in streams]
    return Starlette(routes=[*routes, Route("/ping", ping)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--drain", type=float, default=None)
    parser.add_argument("--timeout-graceful-shutdown", type=int, default=None)
    args = parser.parse_args()
    drain = GracefulShutdown(args.drain) if args.drain is not None else None
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app(drain),
        http="httptools",
        lifespan="off",
        ws="none",
        log_level="info",
        timeout_graceful_shutdown=args.timeout_graceful_shutdown,
    )
    server = drain.uvicorn_server(config) if drain is not None else uvicorn.Server(config)
    sock.listen(128)  # connections queue until uvicorn accepts them
    print("READY", sock.getsockname()[1], flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
