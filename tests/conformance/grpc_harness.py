"""Harness for the gRPC transport: a grpc.aio server on its own thread, grpc/grpc.aio clients."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from transports.base import AsyncBaseTransport, BaseTransport

from .harness import ProducerFactory, ServedStream, TransportHarness

_TIMEOUT = 30.0


class _Served(ServedStream):
    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def kill(self) -> None:
        # Cancels every open call at once, resetting its HTTP/2 stream (no going-away
        # frame: that is what stop(grace) sends).
        self._handle.kill()


class GrpcHarness(TransportHarness):
    """One FrameStreamService method, ``Stream``, serving ``producer_factory()``."""

    name = "grpc"

    def __init__(self) -> None:
        self._target = ""

    @contextlib.contextmanager
    def serve(self, producer_factory: ProducerFactory) -> Iterator[ServedStream]:
        from transports.grpc import FrameStreamService, serve_in_thread

        def produce(body: bytes, context: Any) -> AsyncIterator[bytes | memoryview]:
            return producer_factory()

        service = FrameStreamService({"Stream": produce})
        with serve_in_thread(service, grace=0) as handle:
            self._target = handle.target
            yield _Served(handle)

    def sync_transport(self) -> BaseTransport:
        from transports.grpc import GrpcTransport

        return GrpcTransport(self._target, "Stream", timeout=_TIMEOUT)

    def async_transport(self) -> AsyncBaseTransport:
        from transports.grpc import AsyncGrpcTransport

        return AsyncGrpcTransport(self._target, "Stream", timeout=_TIMEOUT)


def harnesses() -> list[TransportHarness]:
    try:
        import grpc  # noqa: F401
    except ModuleNotFoundError:
        return []
    return [GrpcHarness()]
