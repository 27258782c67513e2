"""Server-sent events: one SSE event per frame, readable by any SSE client.

Server: :func:`sse_response` turns a producer's frames into a Starlette response.
Client: :func:`aconnect` / :func:`connect` open the stream with httpx and give a
typed reader. The encoding (docs/transports.md is the full description)::

    event: item            header | item | footer | end | error (the frame kind)
    id: 7                  the frame's sequence number in the stream, from 0
    data: {"score":0.5}    the JSON payload (JSON codec), or base64 of the whole frame

- JSON-codec frames put their payload, the model's JSON, in ``data:`` as it is,
  so a browser's ``EventSource`` reads them with ``JSON.parse``. END events carry
  ``data: {}`` (``EventSource`` drops events with empty data).
- Other frames (msgpack) put the standard base64 (RFC 4648, padded) of the whole
  frame, tag included, in ``data:``. Base64 of a frame always starts with an
  uppercase letter (the tag byte), JSON never does: the reader tells them apart
  by the first character.
- Event data never breaks SSE framing: CR and LF split ``data:`` lines (only
  possible as JSON whitespace), and U+0085, U+2028 and U+2029, which some SSE
  parsers take for line breaks, are written as JSON ``\\u`` escapes, which decode
  to the same string.
- Comment lines (``: ping``) keep idle connections alive.
"""
# ruff: noqa: E402 - the extra is checked before the imports that need it

from __future__ import annotations

from transports._extras import require_extra

require_extra(__name__)

import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import TYPE_CHECKING, Any, Final

import anyio
import httpx
from starlette.exceptions import HTTPException

from truss_stream import (
    DEFAULT_MAX_FRAME_BYTES,
    AsyncStreamReader,
    Codec,
    StreamReader,
    StreamTypes,
)
from truss_stream._schema import FooterTT, HeaderTT, ItemT

from ._asgi import FrameEncoder, Frames, FrameStreamResponse
from ._compression import Compression
from ._httpclient import (
    ClientT,
    ClientTransport,
    FrameClock,
    StreamResponseError,
    aiter_timed,
    aopen_http_stream,
    iter_timed,
    open_http_stream,
)
from ._sse_client import (
    DONE,
    POSITION_HEADER,
    READ,
    RETRYABLE,
    STREAM_ID_HEADER,
    Connect,
    Failed,
    Sleep,
    SSEClientCore,
    SSEOptions,
    Step,
    StreamResumeError,
)
from ._sse_events import (
    PING,
    SSEEventTooLargeError,
    SSEFrameDecoder,
    encode_event,
    max_event_bytes_for,
)
from .base import (
    AsyncBaseTransport,
    BaseTransport,
    TransportError,
    aopen_reader,
    iterate_in_thread,
    open_reader,
)
from .shutdown import GracefulShutdown

if TYPE_CHECKING:
    from .observability import StreamMetrics

__all__ = [
    "MEDIA_TYPE",
    "AsyncSSETransport",
    "SSEEventTooLargeError",
    "SSEFrameDecoder",
    "SSEOptions",
    "SSETransport",
    "StreamResponseError",
    "StreamResumeError",
    "TransportError",
    "aconnect",
    "connect",
    "encode_event",
    "max_event_bytes_for",
    "replay_from",
    "resume_position",
    "sse_response",
]

MEDIA_TYPE: Final = "text/event-stream"


def sse_response(
    frames: Frames,
    *,
    ping_interval: float | None = 15.0,
    send_timeout: float | None = 30.0,
    headers: Mapping[str, str] | None = None,
    default_codec: Codec = Codec.MSGPACK,
    first_id: int = 0,
    stream_id: str | None = None,
    expose_errors: bool = True,
    shutdown: GracefulShutdown | None = None,
    compression: Compression | None = None,
    compression_level: int | None = None,
    metrics: StreamMetrics | bool | None = None,
) -> FrameStreamResponse:
    """Serve a producer's frames as server-sent events.

    The producer is guarded (:func:`transports.base.guard_frames`): END is added if
    it finishes without one, and an exception after its first frame becomes an
    ERROR event. An exception *before* its first frame gives HTTP 500 with a short
    text body (or the status and detail of a Starlette ``HTTPException``).

    Args:
        frames: the writer's frames, an async iterable, or a plain iterable (run in
            a worker thread, so it may block).
        ping_interval: seconds of silence before a ``: ping`` comment; None: never.
        send_timeout: seconds a send may block on a client that stops reading
            before the stream is aborted and the producer closed; None: wait forever.
        headers: extra response headers.
        default_codec: codec of the END/ERROR frames added for a producer that
            sent no frame of its own.
        expose_errors: False withholds a failed producer's message from the client,
            which gets the exception's type and an error id; the server logs the
            full error with that id (logger ``truss_stream.server``) either way.
        shutdown: a :class:`transports.shutdown.GracefulShutdown`: once it begins,
            this stream ends with a going-away ERROR frame after its grace period
            and new streams get 503.
        compression: ``"gzip"``, ``"zstd"`` (extra ``zstd``) or ``"auto"`` to
            compress the body when the client accepts it, flushed after each batch
            of frames; None (default): identity.
        compression_level: the coding's level (default gzip 1, zstd 3).
        first_id: the ``id:`` of the first event: the position ``frames`` starts
            at, when resuming (see :func:`resume_position`); sent as the
            ``Truss-Stream-Position`` header.
        stream_id: the stream's identity (``Truss-Stream-Id``), the same on every
            response that serves this stream, so a resuming client can check it
            got the same stream (docs/transports.md, "Resume integrity").
        metrics: where to record metrics (docs/observability.md): None, the default
            registry's when prometheus_client is installed; False, nowhere; or a
            :class:`transports.observability.StreamMetrics`.

    Returns:
        A Starlette response (usable from Starlette and FastAPI routes).
    """
    all_headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    all_headers[POSITION_HEADER] = str(first_id)
    if stream_id is not None:
        all_headers[STREAM_ID_HEADER] = stream_id
    all_headers.update(headers or {})
    encode = encode_event if not first_id else _offset(first_id)
    return FrameStreamResponse(
        frames,
        encode=encode,
        media_type=MEDIA_TYPE,
        headers=all_headers,
        send_timeout=send_timeout,
        ping_interval=ping_interval,
        ping_bytes=PING,
        default_codec=default_codec,
        expose_errors=expose_errors,
        shutdown=shutdown,
        compression=compression,
        compression_level=compression_level,
        metrics=metrics,
    )


def _offset(first_id: int) -> FrameEncoder:
    def encode(seq: int, frame: bytes | memoryview) -> bytes:
        return encode_event(seq + first_id, frame)

    return encode


def resume_position(headers: Mapping[str, str]) -> int:
    """Where a reconnecting client resumes: its ``Last-Event-ID`` + 1, or 0.

    Args:
        headers: the request's headers (``request.headers`` in Starlette).

    Returns:
        The position (sequence number) of the first frame to send.

    Raises:
        HTTPException: 400 for a ``Last-Event-ID`` that is not a sequence number.
    """
    last = headers.get("last-event-id")
    if last is None or last == "":
        return 0
    if not last.isdigit() or len(last) > 18:
        raise HTTPException(400, f"Last-Event-ID must be a sequence number, got {last[:40]!r}")
    return int(last) + 1


async def replay_from(frames: Frames, position: int) -> AsyncIterator[bytes | memoryview]:
    """Skip the first ``position`` frames of a producer that replays its stream.

    For producers that give the same frames again (cached or deterministic
    results); a producer that can start at ``position`` by itself should.

    Args:
        frames: the whole stream's frames, as on the first request.
        position: how many frames the client already has.

    Returns:
        The frames from ``position`` on.
    """
    # A sync producer is iterated in a worker thread, as the responses do.
    source = frames if isinstance(frames, AsyncIterable) else iterate_in_thread(frames)
    seen = 0
    try:
        async for frame in source:
            if seen >= position:
                yield frame if isinstance(frame, (bytes, memoryview)) else bytes(frame)
            seen += 1
    finally:
        # Closing this iterator closes the producer at once (its finally runs).
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


class _SSEClient(ClientTransport[ClientT, SSEOptions]):
    """What both drivers share: the request and the options, turned into a core."""

    def _default_options(self) -> SSEOptions:
        return SSEOptions()

    def _core(self) -> SSEClientCore:
        opts = self._options
        return SSEClientCore(opts, FrameClock(opts.idle_timeout, opts.total_timeout))

    def _connect_args(
        self, core: SSEClientCore, step: Step
    ) -> tuple[str, str, str, dict[str, Any]]:
        assert isinstance(step, Connect)
        return self._stream_args(MEDIA_TYPE, core.clock, step.headers)


class SSETransport(_SSEClient[httpx.Client], BaseTransport):
    """Sync SSE client transport: one stream over an ``httpx.Client``, frames out one by one.

    The decisions (parsing, resume and its integrity checks, time limits) are
    :class:`transports._sse_client.SSEClientCore`'s; this class only does its I/O.

    Args:
        client: the httpx client.
        method: HTTP method.
        url: the SSE endpoint.
        options: event size limit, resume attempts, idle and total timeouts
            (:class:`SSEOptions`).
        **httpx_kwargs: passed to ``client.stream``.
    """

    @contextlib.contextmanager
    def open_stream(self) -> Iterator[Iterator[bytes]]:
        """Open the stream; see :meth:`transports.base.BaseTransport.open_stream`."""
        core = self._core()
        with contextlib.ExitStack() as stack:
            response = stack.enter_context(self._open(core, core.advance()))
            body = iter_timed(response, core.clock, stack)

            def perform(step: Step) -> Any:
                nonlocal body
                try:
                    if step is READ:
                        return next(body, None)
                    if isinstance(step, Sleep):
                        time.sleep(step.seconds)
                        return None
                    new = stack.enter_context(self._open(core, step))
                    body = iter_timed(new, core.clock, stack)
                    return new.headers
                except RETRYABLE as exc:
                    return Failed(exc)

            def frames(reply: Any) -> Iterator[bytes]:
                while (step := core.advance(reply)) is not DONE:
                    # Frames go to the reader (which sends nothing back); other steps are I/O.
                    reply = (yield step) if type(step) is bytes else perform(step)

            yield frames(response.headers)

    def _open(self, core: SSEClientCore, step: Step) -> AbstractContextManager[httpx.Response]:
        method, url, media_type, kwargs = self._connect_args(core, step)
        return open_http_stream(self._client, method, url, media_type, **kwargs)


class AsyncSSETransport(_SSEClient[httpx.AsyncClient], AsyncBaseTransport):
    """Async SSE client transport over an ``httpx.AsyncClient``; see :class:`SSETransport`."""

    @contextlib.asynccontextmanager
    async def open_stream(self) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open the stream; see :meth:`transports.base.AsyncBaseTransport.open_stream`."""
        core = self._core()
        async with contextlib.AsyncExitStack() as stack:
            response = await stack.enter_async_context(self._open(core, core.advance()))
            body = aiter_timed(response, core.clock)

            async def perform(step: Step) -> Any:
                nonlocal body
                try:
                    if step is READ:
                        return await anext(body, None)
                    if isinstance(step, Sleep):
                        await anyio.sleep(step.seconds)
                        return None
                    new = await stack.enter_async_context(self._open(core, step))
                except RETRYABLE as exc:
                    return Failed(exc)
                body = aiter_timed(new, core.clock)
                return new.headers

            async def frames(reply: Any) -> AsyncIterator[bytes]:
                while (step := core.advance(reply)) is not DONE:
                    if type(step) is bytes:
                        reply = yield step  # the reader sends nothing back
                    else:
                        reply = await perform(step)

            yield frames(response.headers)

    def _open(self, core: SSEClientCore, step: Step) -> AbstractAsyncContextManager[httpx.Response]:
        method, url, media_type, kwargs = self._connect_args(core, step)
        return aopen_http_stream(self._client, method, url, media_type, **kwargs)


def _options(
    reader_options: Mapping[str, Any] | None, resume_attempts: int
) -> tuple[SSEOptions, dict[str, Any]]:
    """Split ``connect``'s arguments: the transport's options, and the reader's."""
    reader = dict(reader_options or {})
    # An event carries one frame: the reader's frame limit sets the event limit.
    max_frame = reader.get("max_frame_bytes", DEFAULT_MAX_FRAME_BYTES)
    options = SSEOptions(
        max_event_bytes=max_event_bytes_for(max_frame),
        resume_attempts=resume_attempts,
        # The transport holds the time limits: it alone knows frames from pings.
        idle_timeout=reader.pop("idle_timeout", None),
        total_timeout=reader.pop("total_timeout", None),
    )
    return options, reader


@contextlib.asynccontextmanager
async def aconnect(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    types: StreamTypes[ItemT, HeaderTT, FooterTT],
    *,
    reader_options: Mapping[str, Any] | None = None,
    resume_attempts: int = 0,
    **httpx_kwargs: Any,
) -> AsyncIterator[AsyncStreamReader[ItemT, HeaderTT, FooterTT]]:
    """Open an SSE stream and give its typed async reader.

    Args:
        client: the httpx client that sends the request.
        method: HTTP method (``"GET"``, ``"POST"``...).
        url: the SSE endpoint.
        types: the stream type both sides share.
        reader_options: keyword arguments for :func:`truss_stream.stream_reader`
            (``max_frame_bytes``, ``copy_arrays``...). ``idle_timeout`` and
            ``total_timeout`` are held by the transport: idle means no *frame*
            (pings and partial events do not count), total bounds the whole stream.
        resume_attempts: how many times to reconnect, with ``Last-Event-ID``, after
            the connection drops mid-stream or the server goes away (default 0: the
            drop raises). Each resumed response is checked to continue the same
            stream at the right position (docs/transports.md, "Resume integrity").
        **httpx_kwargs: passed to ``client.stream`` (``json=``, ``params=``, ``headers=``...).

    Returns:
        An async context manager giving the reader; leaving it closes the response.

    Raises:
        StreamResponseError: an HTTP error status, a non-SSE response, or a
            content coding this client did not ask for.
        TransportError: the request failed before a response arrived.
        StreamTruncatedError: (while reading) the connection dropped before END.
        StreamResumeError: (while reading) a resumed response is not the same stream.
        StreamTimeoutError: (while reading) ``idle_timeout`` or ``total_timeout`` expired.
    """
    options, reader = _options(reader_options, resume_attempts)
    transport = AsyncSSETransport(client, method, url, options=options, **httpx_kwargs)
    async with aopen_reader(transport, types, **reader) as stream:
        yield stream


@contextlib.contextmanager
def connect(
    client: httpx.Client,
    method: str,
    url: str,
    types: StreamTypes[ItemT, HeaderTT, FooterTT],
    *,
    reader_options: Mapping[str, Any] | None = None,
    resume_attempts: int = 0,
    **httpx_kwargs: Any,
) -> Iterator[StreamReader[ItemT, HeaderTT, FooterTT]]:
    """Open an SSE stream and give its typed sync reader; see :func:`aconnect`.

    The time limits hold for a sync reader too: a watchdog thread cuts a read
    that passes its deadline (docs/transports.md, "Time limits").
    """
    options, reader = _options(reader_options, resume_attempts)
    transport = SSETransport(client, method, url, options=options, **httpx_kwargs)
    with open_reader(transport, types, **reader) as stream:
        yield stream
