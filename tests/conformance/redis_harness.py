"""Harness for streams through Redis: publish into a real redis-server, serve from it as SSE.

Each request publishes ``producer_factory()`` into a new Redis stream
(:func:`transports.redis.publish`) and answers with :func:`transports.redis.sse_response`
on that key, so every frame goes producer -> XADD -> Redis -> XREAD -> SSE. Here the
publisher is tied to the response (it is cancelled when the response ends, as when the
client leaves or the server is killed), so the suite's producer-lifetime cases apply; in
a real deployment the worker runs apart (docs/scale-out.md).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import anyio
import redis.asyncio
from live_server import live_server
from redis_helpers import REDIS_SERVER, redis_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from transports import redis as tr
from transports import sse
from transports.base import AsyncBaseTransport, BaseTransport

from .harness import ProducerFactory, ServedStream, TransportHarness
from .http_harness import _AsyncOwnClient, _OwnClient, _Served


class _PublishAndServe:
    """An ASGI app: publish the request's stream into Redis while serving it from there."""

    def __init__(self, client: redis.asyncio.Redis, producer_factory: ProducerFactory) -> None:
        self._client, self._factory = client, producer_factory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = tr.stream_key(uuid.uuid4().hex)
        response = tr.sse_response(self._client, key, Request(scope))
        async with anyio.create_task_group() as tg:
            tg.start_soon(tr.publish, self._client, key, self._factory())
            await response(scope, receive, send)
            tg.cancel_scope.cancel()


class RedisSSEHarness(TransportHarness):
    name = "redis-sse"

    def __init__(self) -> None:
        self._url = ""

    @contextlib.contextmanager
    def serve(self, producer_factory: ProducerFactory) -> Iterator[ServedStream]:
        with redis_server() as running:
            client = redis.asyncio.Redis(port=running.port, max_connections=500)
            app = Starlette(routes=[Route("/stream", _PublishAndServe(client, producer_factory))])
            with live_server(app) as server:
                self._url = f"{server.url}/stream"
                yield _Served(server)

    def sync_transport(self) -> BaseTransport:
        url = self._url
        return _OwnClient(lambda client: sse.SSETransport(client, "GET", url))

    def async_transport(self) -> AsyncBaseTransport:
        url = self._url
        return _AsyncOwnClient(lambda client: sse.AsyncSSETransport(client, "GET", url))


def harnesses() -> list[TransportHarness]:
    return [RedisSSEHarness()] if REDIS_SERVER is not None else []
