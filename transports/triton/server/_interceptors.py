"""What the proxy's server interceptors (auth, observe) share: the base, and re-wrapping.

A grpc.aio server interceptor that changes a call replaces the call's method handler
with one of the same kind (unary or streaming, each way) and the same serializers
that runs other code: :func:`same_kind` builds it, :class:`MethodInterceptor` calls
:meth:`~MethodInterceptor.intercept` for the methods it applies to.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

__all__ = ["MethodInterceptor", "same_kind"]

if TYPE_CHECKING:  # generic in the stubs only
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor
    Handler = grpc.RpcMethodHandler


def same_kind(handler: Handler, behavior: Callable[..., Any]) -> Handler:
    """A handler of ``handler``'s kind and serializers whose code is ``behavior``.

    ``behavior(request_or_iterator, context)`` must fit the kind: a coroutine for unary
    responses, an async generator (or a coroutine writing with ``context.write``) for
    streaming ones.
    """
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(behavior, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(behavior, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(behavior, **kwargs)
    return grpc.unary_unary_rpc_method_handler(behavior, **kwargs)


class MethodInterceptor(_ServerInterceptor, abc.ABC):
    """A server interceptor that may replace the handler of each method it applies to."""

    def applies_to(self, method: str) -> bool:
        """Whether calls of ``method`` (``/package.Service/Method``) go to :meth:`intercept`."""
        return True

    @abc.abstractmethod
    async def intercept(
        self, handler: Handler, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler:
        """The handler to run the call with: ``handler`` itself, or one in its place."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        """The method's handler, passed through :meth:`intercept` if it applies."""
        handler = await continuation(handler_call_details)
        if handler is None or not self.applies_to(handler_call_details.method):
            return handler
        return await self.intercept(handler, handler_call_details)
