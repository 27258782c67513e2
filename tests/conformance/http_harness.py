"""Harnesses for the SSE and chunked HTTP transports: Starlette on uvicorn, httpx clients."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
from live_server import LiveServer, live_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from transports import http, sse
from transports.base import AsyncBaseTransport, BaseTransport

from .harness import ProducerFactory, ServedStream, TransportHarness

_TIMEOUT = httpx.Timeout(30.0)


class _Served(ServedStream):
    def __init__(self, server: LiveServer) -> None:
        self.server = server

    def kill(self) -> None:
        self.server.kill()


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
    sync_cls: Any
    async_cls: Any

    def __init__(self) -> None:
        self._url = ""

    @contextlib.contextmanager
    def serve(self, producer_factory: ProducerFactory) -> Iterator[ServedStream]:
        async def endpoint(request: Request) -> Response:
            return type(self).respond(producer_factory())

        app = Starlette(routes=[Route("/stream", endpoint, methods=["GET", "POST"])])
        with live_server(app) as server:
            self._url = f"{server.url}/stream"
            yield _Served(server)

    def sync_transport(self) -> BaseTransport:
        url, cls = self._url, self.sync_cls
        return _OwnClient(lambda client: cls(client, "GET", url))

    def async_transport(self) -> AsyncBaseTransport:
        url, cls = self._url, self.async_cls
        return _AsyncOwnClient(lambda client: cls(client, "GET", url))


class SSEHarness(_StarletteHarness):
    name = "sse"
    respond = staticmethod(sse.sse_response)
    sync_cls = sse.SSETransport
    async_cls = sse.AsyncSSETransport


class HTTPHarness(_StarletteHarness):
    name = "http"
    respond = staticmethod(http.stream_response)
    sync_cls = http.HTTPTransport
    async_cls = http.AsyncHTTPTransport


def harnesses() -> list[TransportHarness]:
    return [SSEHarness(), HTTPHarness()]
