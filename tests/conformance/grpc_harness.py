"""Harness for the gRPC transport: a grpc.aio server on its own thread, grpc/grpc.aio clients."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from transports.base import AsyncBaseTransport, BaseTransport

from . import harness as h

_TIMEOUT = 30.0


class _Served(h.ServedStream):
    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def kill(self) -> None:
        # Cancels every open call at once, resetting its HTTP/2 stream (no going-away
        # frame: that is what stop(grace) sends).
        self._handle.kill()


class _ServedApp(h.ServedApp):
    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.address = handle.target
        self.port = handle.port

    def kill(self) -> None:
        self._handle.kill()


def _call_kwargs(call: h.StreamCall) -> dict[str, Any]:
    """gRPC's keywords for the call: the request, and its transport-neutral settings."""
    from transports.grpc import GrpcOptions

    settings = call.settings
    kwargs: dict[str, Any] = {
        "request": json.dumps(dict(call.params)).encode(),
        "timeout": settings.timeout,
        **settings.reader,
    }
    if settings.connect_timeout is not None:
        kwargs.update(timeout=settings.connect_timeout, wait_for_ready=True)
    elif settings.read_timeout is not None:
        kwargs["timeout"] = settings.read_timeout
    if settings.private_connection:
        kwargs["options"] = GrpcOptions(extra=[("grpc.use_local_subchannel_pool", 1)])
    return kwargs


class GrpcHarness(h.TransportHarness):
    """One FrameStreamService method, ``Stream``, serving ``producer_factory()``."""

    name = "grpc"

    def __init__(self) -> None:
        self._target = ""

    @contextlib.contextmanager
    def serve_params(
        self, producer: h.ParamProducer, **response_options: Any
    ) -> Iterator[h.ServedApp]:
        from transports.grpc import FrameStreamService, serve_in_thread

        def produce(body: bytes, context: Any) -> AsyncIterator[bytes | memoryview]:
            return producer(json.loads(body or b"{}"))

        service = FrameStreamService({"Stream": produce}, **response_options)
        with serve_in_thread(service, reflection=False, health=False, grace=0) as handle:
            yield _ServedApp(handle)

    def address_in(self, *, http_url: str, grpc_target: str) -> str:
        return grpc_target

    def address_at(self, port: int) -> str:
        return f"127.0.0.1:{port}"

    def connect(self, call: h.StreamCall) -> contextlib.AbstractContextManager[Any]:
        from transports import grpc as tgrpc

        return tgrpc.connect(call.address, "Stream", call.types, **_call_kwargs(call))

    def aconnect(
        self, call: h.StreamCall, *, client: Any = None
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        from transports import grpc as tgrpc

        channel = client if client is not None else call.address
        return tgrpc.aconnect(channel, "Stream", call.types, **_call_kwargs(call))

    @contextlib.asynccontextmanager
    async def async_client(self, address: str, *, max_streams: int) -> AsyncIterator[Any]:
        from transports.grpc import acreate_channel

        async with acreate_channel(address) as channel:
            yield channel

    @contextlib.contextmanager
    def serve(self, producer_factory: h.ProducerFactory) -> Iterator[h.ServedStream]:
        from transports.grpc import FrameStreamService, serve_in_thread

        def produce(body: bytes, context: Any) -> AsyncIterator[bytes | memoryview]:
            return producer_factory()

        service = FrameStreamService({"Stream": produce})
        with serve_in_thread(service, grace=0) as handle:
            self._target = handle.target
            yield _Served(handle)

    @property
    def address(self) -> str:
        return self._target

    def sync_transport(self) -> BaseTransport:
        from transports.grpc import GrpcTransport

        return GrpcTransport(self._target, "Stream", timeout=_TIMEOUT)

    def async_transport(self) -> AsyncBaseTransport:
        from transports.grpc import AsyncGrpcTransport

        return AsyncGrpcTransport(self._target, "Stream", timeout=_TIMEOUT)


def harnesses() -> list[h.TransportHarness]:
    try:
        import grpc  # noqa: F401
    except ModuleNotFoundError:
        return []
    return [GrpcHarness()]
