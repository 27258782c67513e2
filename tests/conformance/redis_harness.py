"""Harness for streams through Redis: publish into a real redis-server, serve from it as SSE.

Each request publishes ``producer_factory()`` into a new Redis stream
(:func:`transports.redis.publish`) and answers with :func:`transports.redis.sse_response`
on that key, so every frame goes producer -> XADD -> Redis -> XREAD -> SSE. Here the
publisher is tied to the response (it is cancelled when the response ends, as when the
client leaves or the server is killed), so the suite's producer-lifetime cases apply; in
a real deployment the worker runs apart (docs/scale-out.md).

Every served app answers one warm-up stream (its own route, its own producer) before a
test gets its address, as a deployed replica has served before: the new pool's Redis
connections, the script in the new redis-server's cache and the process's first-stream
imports are then not inside the first frame wait of the test's first stream (under CPU
starvation each is several wake-ups of other processes; with a 0.25 s idle limit the
first frame missed it: the redis-sse case of test_idle_timeout_does_not_fire_on_a_steady_stream).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import anyio
import httpx
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
from truss_stream import Codec, end_frame

from .harness import ProducerFactory, ServedStream, TransportHarness
from .http_harness import _AsyncOwnClient, _OwnClient, _Served

#: Request -> the producer of its frames.
_Producer = Callable[[Request], AsyncIterator[bytes | memoryview]]


class _PublishAndServe:
    """An ASGI app: publish the request's stream into Redis while serving it from there."""

    def __init__(
        self, client: redis.asyncio.Redis, producer: _Producer, **sse_options: Any
    ) -> None:
        self._client, self._producer, self._options = client, producer, sse_options

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        key = tr.stream_key(uuid.uuid4().hex)
        response = tr.sse_response(self._client, key, request, **self._options)
        async with anyio.create_task_group() as tg:
            tg.start_soon(tr.publish, self._client, key, self._producer(request))
            await response(scope, receive, send)
            tg.cancel_scope.cancel()


async def _warm_up_frames(request: Request) -> AsyncIterator[bytes | memoryview]:
    yield end_frame(Codec.MSGPACK)


def _warm_up(url: str) -> None:
    """One whole stream through the app (publish into Redis and serve it from there)."""
    with httpx.Client(timeout=30) as client:
        response = client.get(url)
    if response.status_code != 200 or b"event: end" not in response.content:
        raise RuntimeError(f"redis-sse warm-up failed: {response.status_code} {response.text!r}")


class _ServedApp(_Served):
    """A running server with ``address`` and ``port`` (the reliability suite's ``ServedApp``)."""

    def __init__(self, served: _Served, address: str) -> None:
        super().__init__(served.server)
        self.address = address
        self.port = served.server.port


class RedisSSEHarness(TransportHarness):
    """Clients are the plain SSE clients; the server publishes into and serves from Redis."""

    name = "redis-sse"
    in_shared_server = False

    def __init__(self) -> None:
        self._url = ""

    @contextlib.contextmanager
    def _serve(self, producer: _Producer, **sse_options: Any) -> Iterator[_Served]:
        with redis_server() as running:
            client = redis.asyncio.Redis(port=running.port, max_connections=500)
            app = Starlette(
                routes=[
                    Route(f"/{self.name}", _PublishAndServe(client, producer, **sse_options)),
                    Route(f"/{self.name}-warm-up", _PublishAndServe(client, _warm_up_frames)),
                ]
            )
            with live_server(app) as server:
                _warm_up(f"{server.url}/{self.name}-warm-up")
                self._url = f"{server.url}/{self.name}"
                yield _Served(server)

    # The conformance suite's part.

    @contextlib.contextmanager
    def serve(self, producer_factory: ProducerFactory) -> Iterator[ServedStream]:
        with self._serve(lambda request: producer_factory()) as served:
            yield served

    @property
    def address(self) -> str:
        return self._url

    def sync_transport(self) -> BaseTransport:
        url = self._url
        return _OwnClient(lambda client: sse.SSETransport(client, "GET", url))

    def async_transport(self) -> AsyncBaseTransport:
        url = self._url
        return _AsyncOwnClient(lambda client: sse.AsyncSSETransport(client, "GET", url))

    # The reliability suite's part (the harness interface of the shutdown work), typed
    # loosely so this module also loads against the older, smaller interface.

    @contextlib.contextmanager
    def serve_params(self, producer: Any, **response_options: Any) -> Iterator[Any]:
        def from_request(request: Request) -> AsyncIterator[bytes | memoryview]:
            params: Mapping[str, Any] = dict(request.query_params)
            result: AsyncIterator[bytes | memoryview] = producer(params)
            return result

        with self._serve(from_request, **response_options) as served:
            yield _ServedApp(served, self._url)

    def address_in(self, *, http_url: str, grpc_target: str) -> str:
        raise NotImplementedError(
            "redis-sse needs a redis-server beside the shared reliability server"
        )

    def address_at(self, port: int) -> str:
        return f"http://127.0.0.1:{port}/{self.name}"

    @contextlib.contextmanager
    def connect(self, call: Any) -> Iterator[Any]:
        with (
            httpx.Client(timeout=_timeout(call.settings)) as client,
            sse.connect(client, "GET", call.address, call.types, **_kwargs(call)) as reader,
        ):
            yield reader

    @contextlib.asynccontextmanager
    async def aconnect(self, call: Any, *, client: Any = None) -> AsyncIterator[Any]:
        async with contextlib.AsyncExitStack() as stack:
            if client is None:
                client = await stack.enter_async_context(
                    httpx.AsyncClient(timeout=_timeout(call.settings))
                )
            yield await stack.enter_async_context(
                sse.aconnect(client, "GET", call.address, call.types, **_kwargs(call))
            )

    def async_client(
        self, address: str, *, max_streams: int
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        room = max_streams + 10
        limits = httpx.Limits(max_connections=room, max_keepalive_connections=room)
        return httpx.AsyncClient(timeout=httpx.Timeout(60.0), limits=limits)


def _timeout(settings: Any) -> httpx.Timeout:
    whole = settings.timeout
    connect = settings.connect_timeout if settings.connect_timeout is not None else whole
    read = settings.read_timeout if settings.read_timeout is not None else whole
    return httpx.Timeout(whole, connect=connect, read=read)


def _kwargs(call: Any) -> dict[str, Any]:
    return {"params": dict(call.params), "reader_options": call.settings.reader}


def harnesses() -> list[TransportHarness]:
    return [RedisSSEHarness()] if REDIS_SERVER is not None else []
