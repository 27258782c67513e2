"""The clients' errors: one class, :class:`TritonClientError`, and how gRPC failures map to it."""

from __future__ import annotations

import grpc

from transports.base import TransportError

__all__ = [
    "HEALTH_CHECK_METHOD",
    "HEALTH_CHECK_REQUEST",
    "TritonClientError",
    "closed_error",
    "connect_probe_error",
    "not_ready_error",
    "status_error",
]

TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
"""Failures that may pass by themselves: readiness polling keeps going through them."""


class TritonClientError(TransportError, grpc.RpcError):
    """A call to the Triton proxy failed as a whole (transport, auth, deadline, protocol).

    Both a ``grpc.RpcError`` with the methods of a failed gRPC call (``code()``,
    ``details()``), so the seed's ``except grpc.RpcError`` code catches it, and a
    :class:`~transports.base.TransportError` (so a ``truss_stream.StreamError``).

    Per-frame failures are not raised: they arrive as results whose ``status`` is not
    ``"OK"``. This is raised when the gRPC call itself fails: ``code()`` is
    ``UNAVAILABLE`` when the proxy cannot be reached (within ``connect_timeout_sec``),
    ``UNAUTHENTICATED`` for rejected credentials, ``DEADLINE_EXCEEDED`` for a call
    deadline, ``INTERNAL`` when the proxy breaks the protocol (an Ack for an unknown
    frame, a missing Ack).

    Attributes:
        status: the code's name (``"UNAVAILABLE"``, ...).
        method: the RPC that failed (``"Chat"``, ``"connect"``, ...).
    """

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(
            f"gRPC call {method} failed with {code.name}", status=code.name, body=details
        )
        self._code = code
        self._details = details
        self.method = method

    def code(self) -> grpc.StatusCode:
        """The gRPC status code, as ``grpc.RpcError.code()``."""
        return self._code

    def details(self) -> str:
        """The status message from the proxy (or the local gRPC library)."""
        return self._details


def status_error(method: str, exc: BaseException) -> TritonClientError:
    """Translate a gRPC error (sync or aio) into a :class:`TritonClientError`."""
    code_fn = getattr(exc, "code", None)
    details_fn = getattr(exc, "details", None)
    try:
        code = code_fn() if code_fn is not None else grpc.StatusCode.UNKNOWN
        details = (details_fn() if details_fn is not None else None) or str(exc)
    except (AttributeError, TypeError):
        code, details = grpc.StatusCode.UNKNOWN, str(exc)
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    return TritonClientError(method, code, details)


def not_ready_error(what: str, timeout_s: float, last: str) -> TritonClientError:
    """The error :meth:`wait_for_ready` raises when time runs out."""
    return TritonClientError(
        "ModelReady",
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"{what} not ready after {timeout_s:g}s" + (f": {last}" if last else ""),
    )


HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"
"""The connect probe: the standard gRPC health check (answered by the proxy itself)."""

HEALTH_CHECK_REQUEST = b""
"""A serialized ``HealthCheckRequest`` for the whole server (``service=""``)."""


def connect_probe_error(
    addr: str, timeout_s: float, exc: TritonClientError
) -> TritonClientError | None:
    """What the connect probe's failure means: None (connected after all) or the error.

    The probe is a health check with ``wait_for_ready`` and the connect timeout as its
    deadline: it waits for the channel to connect, as gRPC retries, and no longer. Any
    answer but a transient failure or an auth refusal means the channel is connected
    (a proxy without the health service, e.g. the seed's, says ``UNIMPLEMENTED``).
    """
    if exc.code() in TRANSIENT:
        return TritonClientError(
            "connect",
            grpc.StatusCode.UNAVAILABLE,
            f"could not connect to the Triton proxy at {addr} within {timeout_s:g}s "
            f"({exc.code().name}: {exc.details()})",
        )
    if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return exc
    return None


def closed_error() -> TritonClientError:
    """The error a call on a closed client raises."""
    return TritonClientError("connect", grpc.StatusCode.CANCELLED, "the client is closed")
