"""Harnesses for the SSE and chunked HTTP transports: Starlette on uvicorn, httpx clients."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from types import ModuleType
from typing import Any

import httpx
from live_server import LiveServer, live_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from transports import http, sse
from transports.base import AsyncBaseTransport, BaseTransport

from .harness import (
    ClientSettings,
    ParamProducer,
    ProducerFactory,
    ServedApp,
    ServedStream,
    StreamCall,
    TransportHarness,
)

_TIMEOUT = httpx.Timeout(30.0)


class _Served(ServedStream):
    def __init__(self, server: LiveServer) -> None:
        self.server = server

    def kill(self) -> None:
        self.server.kill()


class _ServedApp(ServedApp):
    def __init__(self, server: LiveServer, address: str) -> None:
        self.server = server
        self.address = address
        self.port = server.port

    def kill(self) -> None:
        self.server.kill()


def _httpx_timeout(settings: ClientSettings) -> httpx.Timeout:
    whole = settings.timeout
    return httpx.Timeout(
        whole,
        connect=settings.connect_timeout if settings.connect_timeout is not None else whole,
        read=settings.read_timeout if settings.read_timeout is not None else whole,
    )


def _kwargs(call: StreamCall) -> dict[str, Any]:
    return {"params": dict(call.params), "reader_options": call.settings.reader}


class _OwnClient(BaseTransport):
    """Opens each stream with its own short-lived ``httpx.Client``."""

    def __init__(self, make: Callable[[httpx.Client], BaseTransport]) -> None:
        self._make = make

    @contextlib.contextmanager
    def open_stream(self) -> Iterator[Iterator[bytes]]:
        with (
            httpx.Client(timeout=_TIMEOUT, verify=False) as client,
            self._make(client).open_stream() as chunks,
        ):
            yield chunks


class _AsyncOwnClient(AsyncBaseTransport):
    def __init__(self, make: Callable[[httpx.AsyncClient], AsyncBaseTransport]) -> None:
        self._make = make

    @contextlib.asynccontextmanager
    async def open_stream(self) -> AsyncIterator[AsyncIterator[bytes]]:
        async with (
            httpx.AsyncClient(timeout=_TIMEOUT, verify=False) as client,
            self._make(client).open_stream() as chunks,
        ):
            yield chunks


class _StarletteHarness(TransportHarness):
    respond: Callable[..., Response]
    module: ModuleType
    sync_cls: Any
    async_cls: Any

    def __init__(self) -> None:
        self._url = ""

    @contextlib.contextmanager
    def serve_params(self, producer: ParamProducer, **response_options: Any) -> Iterator[ServedApp]:
        respond = type(self).respond

        async def endpoint(request: Request) -> Response:
            return respond(producer(dict(request.query_params)), **response_options)

        app = Starlette(routes=[Route(f"/{self.name}", endpoint)])
        with live_server(app) as server:
            yield _ServedApp(server, f"{server.url}/{self.name}")

    def address_in(self, *, http_url: str, grpc_target: str) -> str:
        return f"{http_url}/{self.name}"

    def address_at(self, port: int) -> str:
        return f"http://127.0.0.1:{port}/{self.name}"

    @contextlib.contextmanager
    def connect(self, call: StreamCall) -> Iterator[Any]:
        with (
            httpx.Client(timeout=_httpx_timeout(call.settings)) as client,
            self.module.connect(client, "GET", call.address, call.types, **_kwargs(call)) as r,
        ):
            yield r

    @contextlib.asynccontextmanager
    async def aconnect(self, call: StreamCall, *, client: Any = None) -> AsyncIterator[Any]:
        async with contextlib.AsyncExitStack() as stack:
            if client is None:
                client = await stack.enter_async_context(
                    httpx.AsyncClient(timeout=_httpx_timeout(call.settings))
                )
            yield await stack.enter_async_context(
                self.module.aconnect(client, "GET", call.address, call.types, **_kwargs(call))
            )

    def async_client(
        self, address: str, *, max_streams: int
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        room = max_streams + 10
        return httpx.AsyncClient(
            timeout=httpx.Timeout(60.0),
            limits=httpx.Limits(max_connections=room, max_keepalive_connections=room),
        )

    @contextlib.contextmanager
    def serve(self, producer_factory: ProducerFactory) -> Iterator[ServedStream]:
        async def endpoint(request: Request) -> Response:
            return type(self).respond(producer_factory())

        app = Starlette(routes=[Route("/stream", endpoint, methods=["GET", "POST"])])
        with live_server(app) as server:
            self._url = f"{server.url}/stream"
            yield _Served(server)

    @property
    def address(self) -> str:
        return self._url

    def sync_transport(self) -> BaseTransport:
        url, cls = self._url, self.sync_cls
        return _OwnClient(lambda client: cls(client, "GET", url))

    def async_transport(self) -> AsyncBaseTransport:
        url, cls = self._url, self.async_cls
        return _AsyncOwnClient(lambda client: cls(client, "GET", url))


class SSEHarness(_StarletteHarness):
    name = "sse"
    respond = staticmethod(sse.sse_response)
    module = sse
    sync_cls = sse.SSETransport
    async_cls = sse.AsyncSSETransport


class HTTPHarness(_StarletteHarness):
    name = "http"
    respond = staticmethod(http.stream_response)
    module = http
    sync_cls = http.HTTPTransport
    async_cls = http.AsyncHTTPTransport


def harnesses() -> list[TransportHarness]:
    return [SSEHarness(), HTTPHarness()]
