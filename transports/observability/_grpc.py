"""gRPC client interceptors that send the current trace context along as metadata.

Added by ``transports.grpc.create_channel`` / ``acreate_channel`` (so the gRPC
transport's clients and the Triton clients) only when an OpenTelemetry SDK is set
up when the channel is made: a channel made without tracing has no interceptor
and costs nothing.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from . import _tracing
from ._tracing import tracing_configured

__all__ = ["aio_trace_interceptors", "trace_channel"]

if TYPE_CHECKING:
    _AioUU = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _AioUS = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _AioSU = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _AioSS = grpc.aio.StreamStreamClientInterceptor[Any, Any]
    _UU = grpc.UnaryUnaryClientInterceptor[Any, Any]
    _US = grpc.UnaryStreamClientInterceptor[Any, Any]
    _SU = grpc.StreamUnaryClientInterceptor[Any, Any]
    _SS = grpc.StreamStreamClientInterceptor[Any, Any]
else:  # generic in the stubs only
    _AioUU = grpc.aio.UnaryUnaryClientInterceptor
    _AioUS = grpc.aio.UnaryStreamClientInterceptor
    _AioSU = grpc.aio.StreamUnaryClientInterceptor
    _AioSS = grpc.aio.StreamStreamClientInterceptor
    _UU = grpc.UnaryUnaryClientInterceptor
    _US = grpc.UnaryStreamClientInterceptor
    _SU = grpc.StreamUnaryClientInterceptor
    _SS = grpc.StreamStreamClientInterceptor


def _aio_details(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    trace = _tracing.trace_metadata()
    if not trace:
        return details
    metadata = grpc.aio.Metadata(*(details.metadata or ()), *trace)
    return grpc.aio.ClientCallDetails(
        details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
    )


# grpc.aio files each interceptor under one call type only (the first ABC it is an
# instance of), so each call type gets its own class.
class _AioUnaryUnary(_AioUU):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(_aio_details(details), request)


class _AioUnaryStream(_AioUS):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return await continuation(_aio_details(details), request)


class _AioStreamUnary(_AioSU):
    async def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_aio_details(details), request_iterator)


class _AioStreamStream(_AioSS):
    async def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(_aio_details(details), request_iterator)


def aio_trace_interceptors() -> list[Any]:
    """Interceptors for a ``grpc.aio`` channel: one per call type when tracing is set up."""
    if not tracing_configured():
        return []
    return [_AioUnaryUnary(), _AioUnaryStream(), _AioStreamUnary(), _AioStreamStream()]


class _Details(
    collections.namedtuple(
        "_Details",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


def _sync_details(details: Any) -> Any:
    trace = _tracing.trace_metadata()
    if not trace:
        return details
    return _Details(
        details.method,
        details.timeout,
        [*(details.metadata or ()), *trace],
        details.credentials,
        getattr(details, "wait_for_ready", None),
        getattr(details, "compression", None),
    )


class _SyncTraceInterceptor(_UU, _US, _SU, _SS):
    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(_sync_details(details), request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        return continuation(_sync_details(details), request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], details: Any, request_iterator: Any
    ) -> Any:
        return continuation(_sync_details(details), request_iterator)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], details: Any, request_iterator: Any
    ) -> Any:
        return continuation(_sync_details(details), request_iterator)


def trace_channel(channel: grpc.Channel) -> grpc.Channel:
    """``channel``, intercepted to send the trace context when tracing is set up."""
    if not tracing_configured():
        return channel
    return grpc.intercept_channel(channel, _SyncTraceInterceptor())
