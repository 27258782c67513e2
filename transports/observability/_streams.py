"""One wrapper around a server's frame iterator: metrics, the stream span, the access record.

:func:`observe_stream` wraps the guarded frames a server sends (after
:func:`transports.base.guard_frames`, so END and ERROR frames are in sight) and
records, for each stream:

- metrics (:class:`~transports.observability.StreamMetrics`): started, active,
  ended by outcome, frames and bytes by kind, time to first frame, duration, send
  stalls. Frame and byte counts are kept in the wrapper and added to the
  collectors at most once a second and at the end, so a frame costs a few integer
  additions, not a lock;
- a span (OpenTelemetry, when an SDK is set up) whose parent is the request's
  ``traceparent``, current while the producer runs, with frames, bytes and the
  outcome as attributes and an error status on failure;
- one access record on the ``transports.access`` logger.

Outcomes: ``complete`` (END handed to the transport), ``producer_error`` (an ERROR
frame, or the producer failed before its first frame), ``rejected`` (the producer
refused the request before its first frame: a 4xx ``HTTPException``, a gRPC
abort), ``shutdown`` (an ERROR frame with ``reason: going_away``), ``timeout``
(the transport's send timeout or the call's deadline), ``client_gone`` (the
consumer stopped before the end).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

import msgpack

from . import _tracing
from ._logging import ACCESS_LOGGER, log_access

if TYPE_CHECKING:
    from ._metrics import StreamMetrics

__all__ = [
    "CLIENT_GONE",
    "COMPLETE",
    "OUTCOMES",
    "PRODUCER_ERROR",
    "REJECTED",
    "SHUTDOWN",
    "TIMEOUT",
    "ObservedStream",
    "asgi_route",
    "observe_asgi",
    "observe_grpc",
    "observe_stream",
    "resolve_stream_metrics",
]

COMPLETE: Final = "complete"
CLIENT_GONE: Final = "client_gone"
PRODUCER_ERROR: Final = "producer_error"
TIMEOUT: Final = "timeout"
SHUTDOWN: Final = "shutdown"
REJECTED: Final = "rejected"
OUTCOMES: Final = (COMPLETE, CLIENT_GONE, PRODUCER_ERROR, TIMEOUT, SHUTDOWN, REJECTED)

_access = logging.getLogger(ACCESS_LOGGER)
# Frame kinds by tag nibble (truss_stream._frames.FrameKind); the wrapper sits after
# guard_frames, so every frame is whole and well formed.
_KIND_NAMES: Final = {2: "header", 3: "item", 4: "footer", 5: "end", 6: "error"}
_END: Final = 5
_ERROR: Final = 6
_FLUSH_SECONDS: Final = 1.0
_LEVELS: Final = {PRODUCER_ERROR: logging.WARNING, TIMEOUT: logging.WARNING}


async def _with_context(
    frames: AsyncIterator[bytes | memoryview], ctx: Any
) -> AsyncGenerator[bytes | memoryview, None]:
    """``frames``, with ``ctx`` (the stream's span) current while each one is produced."""
    while True:
        token = _tracing.attach(ctx)
        try:
            frame = await frames.__anext__()
        except StopAsyncIteration:
            return
        finally:
            _tracing.detach(token)
        yield frame


_Group = TypeVar("_Group")


def resolve_metrics(
    metrics: _Group | bool | None, default: Callable[[], _Group], needs: str
) -> _Group | None:
    """The collectors for a ``metrics=`` argument: a group as given; None and True the
    default registry's, ``default()`` (which imports prometheus_client); False none.

    Raises:
        ImportError: ``metrics=True`` without prometheus_client installed (``needs``).
    """
    if metrics is False:
        return None
    if metrics is None or metrics is True:
        try:
            return default()
        except ImportError:
            if metrics is True:
                raise ImportError(needs) from None
            return None
    return metrics


def _default_stream_metrics() -> StreamMetrics:
    from ._metrics import StreamMetrics

    return StreamMetrics.for_registry()


def resolve_stream_metrics(metrics: StreamMetrics | bool | None) -> StreamMetrics | None:
    """The collectors a server records into for a ``metrics=`` argument.

    Raises:
        ImportError: ``metrics=True`` without prometheus_client installed.
    """
    return resolve_metrics(
        metrics,
        _default_stream_metrics,
        "metrics=True needs prometheus_client: install truss-stream[metrics]",
    )


def _error_details(frame: bytes) -> tuple[str | None, str | None, str | None]:
    """(type, error_id, reason) from an ERROR frame's payload; Nones when unreadable."""
    try:
        payload = frame[5:]
        body = msgpack.unpackb(payload) if frame[0] & 0x10 else json.loads(payload)
    except Exception:
        return None, None, None
    if not isinstance(body, dict):
        return None, None, None

    def text(key: str) -> str | None:
        value = body.get(key)
        return value if isinstance(value, str) else None

    return text("type"), text("error_id"), text("reason")


def _is_rejection(exc: BaseException) -> bool:
    status = getattr(exc, "status_code", None)  # starlette.exceptions.HTTPException
    if isinstance(status, int):
        return status < 500
    return type(exc).__name__ == "AbortError"  # grpc.aio.AbortError: the producer chose


class ObservedStream(AsyncIterator["bytes | memoryview"]):
    """The frames of one stream, passed through unchanged while being observed.

    Iterate it like the wrapped iterator; ``aclose()`` closes that iterator and
    ends the observation (it is idempotent).
    """

    __slots__ = (
        "_bytes",
        "_counts",
        "_ctx",
        "_done",
        "_error_frame",
        "_first_at",
        "_flushed",
        "_flushed_at",
        "_frames",
        "_gen",
        "_going_away",
        "_last_kind",
        "_metrics",
        "_peer",
        "_route",
        "_span",
        "_stall_s",
        "_stall_time",
        "_stalls",
        "_start",
        "_stream_id",
        "_timed_out",
        "_transport",
        "_yielded_at",
    )

    def __init__(
        self,
        frames: AsyncIterator[bytes | memoryview],
        *,
        transport: str,
        route: str,
        metrics: StreamMetrics | None,
        carrier: Iterable[tuple[Any, Any]] | None = None,
        peer: str | None = None,
        stream_id: str | None = None,
        timed_out: Callable[[], bool] | None = None,
        going_away: Callable[[], bool] | None = None,
    ) -> None:
        self._frames = frames
        self._metrics = metrics
        self._transport = transport
        self._route = metrics.routes.label(route) if metrics is not None else route
        self._peer = peer
        self._stream_id = stream_id or secrets.token_hex(8)
        self._timed_out = timed_out
        self._going_away = going_away
        self._start = self._flushed_at = time.monotonic()
        self._first_at: float | None = None
        self._yielded_at = 0.0
        self._counts = [0] * 16
        self._bytes = [0] * 16
        self._flushed = [0] * 32  # counts then bytes already added to the collectors
        self._last_kind = 0
        self._error_frame: bytes | None = None
        self._stalls = 0
        self._stall_time = 0.0
        self._stall_s = metrics.stall_seconds if metrics is not None else 0.1
        self._done = False
        self._gen = self._run()
        self._span = _tracing.start_span(
            f"{transport} {route}",
            carrier=carrier,
            attributes={
                "truss_stream.transport": transport,
                "truss_stream.route": route,
                "truss_stream.stream_id": self._stream_id,
            },
        )
        self._ctx = _tracing.span_context(self._span) if self._span is not None else None
        if metrics is not None:
            labels = (transport, self._route)
            metrics.started.labels(*labels).inc()
            metrics.active.labels(*labels).inc()

    @property
    def stream_id(self) -> str:
        """The id this stream is logged and traced under."""
        return self._stream_id

    def __aiter__(self) -> AsyncGenerator[bytes | memoryview, None]:
        # ``async for`` drives the generator itself: no extra call per frame.
        return self._gen

    def __anext__(self) -> Awaitable[bytes | memoryview]:
        return self._gen.__anext__()

    async def _run(self) -> AsyncGenerator[bytes | memoryview, None]:
        # The per-frame path: locals, one branch for everything rare (first frame,
        # ERROR frame, the once-a-second flush); _finish gets its state on the way out.
        frames = self._frames
        ctx = self._ctx
        source = frames if ctx is None else _with_context(frames, ctx)
        counts, sizes = self._counts, self._bytes
        monotonic = time.monotonic
        stall_s = self._stall_s
        check_at = 0.0  # the first frame takes the rare branch
        kind = 0
        now = 0.0
        holding = False
        exhausted = False
        failure: BaseException | None = None
        try:
            async for frame in source:
                kind = frame[0] & 0x0F
                counts[kind] += 1
                sizes[kind] += len(frame)
                now = monotonic()
                if now >= check_at or kind == _ERROR:
                    check_at = self._rare(frame, kind, now)
                holding = True
                yield frame
                holding = False
                # Back from the transport: the time it held the frame is a send stall.
                gap = monotonic() - now
                if gap >= stall_s:
                    self._stalls += 1
                    self._stall_time += gap
            exhausted = True
        except BaseException as exc:  # GeneratorExit when closed early, CancelledError...
            if not isinstance(exc, GeneratorExit):
                failure = exc
            raise
        finally:
            self._last_kind = kind
            self._yielded_at = now if holding else 0.0
            try:
                if source is not frames:
                    await cast("AsyncGenerator[Any, None]", source).aclose()
                aclose = getattr(frames, "aclose", None)
                if aclose is not None and not exhausted:
                    await aclose()
            finally:
                self._finish(failure, exhausted=exhausted)

    def _rare(self, frame: bytes | memoryview, kind: int, now: float) -> float:
        """First frame, ERROR frame, flush; returns when to come back here."""
        if self._first_at is None:
            self._first_at = now
        if kind == _ERROR:
            self._error_frame = bytes(frame)
        if now - self._flushed_at >= _FLUSH_SECONDS:
            self._flush(now)
        return self._flushed_at + _FLUSH_SECONDS

    async def aclose(self) -> None:
        """Close the wrapped iterator and record the stream's end (idempotent)."""
        await self._gen.aclose()
        if not self._done:  # closed before its first frame: the generator never ran
            aclose = getattr(self._frames, "aclose", None)
            try:
                if aclose is not None:
                    await aclose()
            finally:
                self._finish(None, exhausted=False)

    def _flush(self, now: float) -> None:
        self._flushed_at = now
        metrics = self._metrics
        if metrics is None:
            return
        transport, route = self._transport, self._route
        counts, sizes, flushed = self._counts, self._bytes, self._flushed
        for kind, name in _KIND_NAMES.items():
            new = counts[kind] - flushed[kind]
            if new:
                metrics.frames.labels(transport, route, name).inc(new)
                metrics.bytes.labels(transport, route, name).inc(sizes[kind] - flushed[16 + kind])
                flushed[kind], flushed[16 + kind] = counts[kind], sizes[kind]
        if self._stalls:
            metrics.stalls.labels(transport, route).inc(self._stalls)
            metrics.stall_time.labels(transport, route).inc(self._stall_time)
            self._stalls, self._stall_time = 0, 0.0

    def _outcome(self, exc: BaseException | None) -> tuple[str, str | None, str | None]:
        """(outcome, error type, error id)."""
        if self._last_kind == _ERROR and self._error_frame is not None:
            error_type, error_id, reason = _error_details(self._error_frame)
            return (SHUTDOWN if reason == "going_away" else PRODUCER_ERROR), error_type, error_id
        if self._last_kind == _END:
            return COMPLETE, None, None
        if isinstance(exc, Exception):
            return (REJECTED if _is_rejection(exc) else PRODUCER_ERROR), type(exc).__name__, None
        if self._going_away is not None and self._going_away():
            return SHUTDOWN, None, None
        if self._timed_out is not None and self._timed_out():
            return TIMEOUT, None, None
        return CLIENT_GONE, None, None

    def _finish(self, exc: BaseException | None, *, exhausted: bool) -> None:
        if self._done:
            return
        self._done = True
        end = time.monotonic()
        outcome: str
        error_type: str | None
        error_id: str | None
        if exhausted and self._last_kind not in (_END, _ERROR):
            outcome, error_type, error_id = PRODUCER_ERROR, "StreamTruncated", None
        else:
            outcome, error_type, error_id = self._outcome(exc)
        if not exhausted and self._yielded_at:
            # Stopped while the transport held the last frame: a send that never ended.
            gap = end - self._yielded_at
            if gap >= self._stall_s:
                self._stalls += 1
                self._stall_time += gap
        frames = sum(self._counts)
        items = self._counts[3]
        size = sum(self._bytes)
        self._flush(end)
        duration = end - self._start
        ttff = None if self._first_at is None else self._first_at - self._start
        metrics = self._metrics
        if metrics is not None:
            labels = (self._transport, self._route)
            metrics.ended.labels(*labels, outcome).inc()
            metrics.active.labels(*labels).dec()
            metrics.duration.labels(*labels).observe(duration)
            if ttff is not None:
                metrics.first_frame.labels(*labels).observe(ttff)
        fields: dict[str, Any] = {
            "event": "stream",
            "transport": self._transport,
            "route": self._route,
            "peer": self._peer,
            "stream_id": self._stream_id,
            "outcome": outcome,
            "frames": frames,
            "items": items,
            "bytes": size,
            "duration_s": round(duration, 6),
            "ttff_s": None if ttff is None else round(ttff, 6),
        }
        if error_type is not None:
            fields["error_type"] = error_type
        if error_id is not None:
            fields["error_id"] = error_id
        span = self._span
        if span is not None:
            fields["trace_id"], fields["span_id"] = _tracing.span_ids(span)
            failed = outcome in (PRODUCER_ERROR, TIMEOUT)
            _tracing.end_span(
                span,
                {
                    "truss_stream.outcome": outcome,
                    "truss_stream.frames": frames,
                    "truss_stream.items": items,
                    "truss_stream.bytes": size,
                    **({"truss_stream.error_type": error_type} if error_type else {}),
                    **({"truss_stream.error_id": error_id} if error_id else {}),
                },
                f"{outcome}: {error_type}" if failed else None,
            )
        log_access(_access, fields, level=_LEVELS.get(outcome, logging.INFO))


def observe_stream(
    frames: AsyncIterator[bytes | memoryview],
    *,
    transport: str,
    route: str,
    metrics: StreamMetrics | bool | None = None,
    carrier: Iterable[tuple[Any, Any]] | None = None,
    peer: str | None = None,
    stream_id: str | None = None,
    timed_out: Callable[[], bool] | None = None,
    going_away: Callable[[], bool] | None = None,
) -> ObservedStream:
    """Observe one stream's frames (see the module docstring).

    Args:
        frames: the guarded frames the server sends.
        transport: ``"sse"``, ``"http"``, ``"grpc"``... (a label: a fixed set).
        route: the route template or method path (a label: never a raw URL).
        metrics: None: the default registry's collectors when prometheus_client is
            installed; False: none; or a :class:`StreamMetrics` (another registry).
        carrier: the request's header or metadata pairs (for ``traceparent``).
        peer: the client's address, for the access record.
        stream_id: the stream's id; a random one by default.
        timed_out: tells, once the stream stopped early, whether a timeout did it.
        going_away: tells, once the stream stopped early, whether the server's
            shutdown ended it (the transport then sends the going-away ERROR frame).
    """
    return ObservedStream(
        frames,
        transport=transport,
        route=route,
        metrics=resolve_stream_metrics(metrics),
        carrier=carrier,
        peer=peer,
        stream_id=stream_id,
        timed_out=timed_out,
        going_away=going_away,
    )


def asgi_route(scope: Any) -> str:
    """The route template of an ASGI request (FastAPI's or Starlette's), never its raw path."""
    route = scope.get("route")  # FastAPI puts the matched APIRoute here
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    endpoint = scope.get("endpoint")
    if endpoint is None:
        return "unknown"
    for candidate in getattr(scope.get("router"), "routes", ()):
        if getattr(candidate, "endpoint", None) is endpoint:
            return str(getattr(candidate, "path", "unknown"))
    return str(getattr(endpoint, "__qualname__", "unknown"))


def observe_asgi(
    frames: AsyncIterator[bytes | memoryview],
    scope: Any,
    *,
    media_type: str | None,
    metrics: StreamMetrics | bool | None = None,
    stream_id: str | None = None,
    timed_out: Callable[[], bool] | None = None,
    going_away: Callable[[], bool] | None = None,
) -> ObservedStream:
    """:func:`observe_stream` for an ASGI response: route, peer and headers from ``scope``."""
    client = scope.get("client")
    return observe_stream(
        frames,
        transport="sse" if (media_type or "").startswith("text/event-stream") else "http",
        route=asgi_route(scope),
        metrics=metrics,
        carrier=scope.get("headers"),
        peer=f"{client[0]}:{client[1]}" if client else None,
        stream_id=stream_id,
        timed_out=timed_out,
        going_away=going_away,
    )


def observe_grpc(
    frames: AsyncIterator[bytes | memoryview],
    context: Any,
    *,
    route: str,
    metrics: StreamMetrics | bool | None = None,
    stream_id: str | None = None,
    going_away: Callable[[], bool] | None = None,
) -> ObservedStream:
    """:func:`observe_stream` for a gRPC call: peer, metadata and deadline from ``context``.

    Args:
        frames: the guarded frames.
        context: the call's ``grpc.aio.ServicerContext``.
        route: the method path (``/service/Method``).
        metrics, stream_id, going_away: see :func:`observe_stream`.
    """

    def timed_out() -> bool:
        left = context.time_remaining()
        return left is not None and left <= 0

    return observe_stream(
        frames,
        transport="grpc",
        route=route,
        metrics=metrics,
        carrier=context.invocation_metadata() or (),
        peer=context.peer(),
        stream_id=stream_id,
        timed_out=timed_out,
        going_away=going_away,
    )
