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

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import anyio
import httpx
from starlette.exceptions import HTTPException

from truss_stream import (
    DEFAULT_MAX_FRAME_BYTES,
    AsyncStreamReader,
    Codec,
    StreamReader,
    StreamTruncatedError,
    StreamTypes,
)
from truss_stream._schema import FooterTT, HeaderTT, ItemT

from ._asgi import FrameEncoder, Frames, FrameStreamResponse
from ._httpclient import (
    StreamResponseError,
    aiter_body,
    aopen_http_stream,
    iter_body,
    open_http_stream,
    sync_idle_timeout,
    with_accept,
)
from ._sse_events import (
    PING,
    SSEEventTooLargeError,
    SSEFrameDecoder,
    encode_event,
    max_event_bytes_for,
)
from .base import AsyncBaseTransport, BaseTransport, TransportError, aopen_reader, open_reader

if TYPE_CHECKING:
    from .observability import StreamMetrics

__all__ = [
    "MEDIA_TYPE",
    "AsyncSSETransport",
    "SSEEventTooLargeError",
    "SSEFrameDecoder",
    "SSETransport",
    "StreamResponseError",
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
    metrics: StreamMetrics | bool | None = None,
) -> FrameStreamResponse:
    """Serve a producer's frames as server-sent events.

    The producer is guarded (:func:`transports.base.guard_frames`): END is added if
    it finishes without one, and an exception after its first frame becomes an
    ERROR event. An exception *before* its first frame gives HTTP 500 with a short
    text body (or the status and detail of a Starlette ``HTTPException``).

    Args:
        frames: the writer's frames, an async iterable (or a plain iterable).
        ping_interval: seconds of silence before a ``: ping`` comment; None: never.
        send_timeout: seconds a send may block on a client that stops reading
            before the stream is aborted and the producer closed; None: wait forever.
        headers: extra response headers.
        default_codec: codec of the END/ERROR frames added for a producer that
            sent no frame of its own.
        first_id: the ``id:`` of the first event: the position ``frames`` starts
            at, when resuming (see :func:`resume_position`).
        metrics: where to record metrics (docs/observability.md): None, the default
            registry's when prometheus_client is installed; False, nowhere; or a
            :class:`transports.observability.StreamMetrics`.

    Returns:
        A Starlette response (usable from Starlette and FastAPI routes).
    """
    all_headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
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
    seen = 0
    if isinstance(frames, AsyncIterable):
        async for frame in frames:
            if seen >= position:
                yield frame if isinstance(frame, (bytes, memoryview)) else bytes(frame)
            seen += 1
    else:
        for frame in frames:
            if seen >= position:
                yield frame if isinstance(frame, (bytes, memoryview)) else bytes(frame)
            seen += 1


class _Resumer:
    """The reconnect policy of one client stream (``resume_attempts``).

    After the connection drops, the client reconnects with ``Last-Event-ID`` set
    to the last event it decoded whole; a partial event is discarded, so the reader
    sees every frame once, in order, if the server replays from that id.
    """

    def __init__(self, attempts: int, max_event_bytes: int) -> None:
        self.decoder = SSEFrameDecoder(max_event_bytes)
        self.left = attempts
        self._failures = 0

    def retry(self, exc: Exception) -> float:
        """Decide after ``exc``: the delay before reconnecting, or re-raise ``exc``."""
        if isinstance(exc, StreamResponseError) or self.left <= 0 or self.decoder.ended:
            raise exc
        self.left -= 1
        self._failures += 1
        self.decoder.discard_partial()
        return float(min(0.05 * 2**self._failures, 2.0))

    def headers(self) -> dict[str, str]:
        last = self.decoder.last_event_id
        return {} if last is None else {"Last-Event-ID": last}


class _HTTPSource:
    """What a transport needs to (re)send its request."""

    def __init__(self, method: str, url: str, kwargs: Mapping[str, Any]) -> None:
        self.method, self.url, self.kwargs = method, url, kwargs

    def request_kwargs(self, extra_headers: Mapping[str, str]) -> dict[str, Any]:
        kwargs = with_accept(self.kwargs, MEDIA_TYPE)
        kwargs["headers"].update(extra_headers)
        return kwargs


class SSETransport(BaseTransport):
    """Sync SSE client transport: one request over an ``httpx.Client``, frames out.

    Args:
        client: the httpx client.
        method: HTTP method.
        url: the SSE endpoint.
        max_event_bytes: bounds one event (see :class:`SSEFrameDecoder`).
        resume_attempts: reconnections allowed after the connection drops, each
            sending ``Last-Event-ID`` (the server must replay; see :func:`replay_from`).
        **httpx_kwargs: passed to ``client.stream``.
    """

    def __init__(
        self,
        client: httpx.Client,
        method: str,
        url: str,
        *,
        max_event_bytes: int | None = None,
        resume_attempts: int = 0,
        **httpx_kwargs: Any,
    ) -> None:
        self._client = client
        self._source = _HTTPSource(method, url, httpx_kwargs)
        self._max_event = max_event_bytes or max_event_bytes_for(DEFAULT_MAX_FRAME_BYTES)
        self._resume_attempts = resume_attempts

    @contextlib.contextmanager
    def open_stream(self) -> Iterator[Iterator[bytes]]:
        """Open the stream; see :meth:`transports.base.BaseTransport.open_stream`."""
        resumer = _Resumer(self._resume_attempts, self._max_event)
        with contextlib.ExitStack() as stack:
            response = stack.enter_context(self._open(resumer))
            yield self._frames(stack, response, resumer)

    def _open(self, resumer: _Resumer) -> contextlib.AbstractContextManager[httpx.Response]:
        src = self._source
        kwargs = src.request_kwargs(resumer.headers())
        return open_http_stream(self._client, src.method, src.url, MEDIA_TYPE, **kwargs)

    def _frames(
        self, stack: contextlib.ExitStack, response: httpx.Response, resumer: _Resumer
    ) -> Iterator[bytes]:
        decoder = resumer.decoder
        while True:
            try:
                for chunk in iter_body(response):
                    if frames := decoder.feed(chunk):
                        yield frames
                return
            except (StreamTruncatedError, TransportError) as exc:
                delay = resumer.retry(exc)
            while True:
                time.sleep(delay)
                try:
                    response = stack.enter_context(self._open(resumer))
                    break
                except (StreamTruncatedError, TransportError) as exc:
                    delay = resumer.retry(exc)


class AsyncSSETransport(AsyncBaseTransport):
    """Async SSE client transport over an ``httpx.AsyncClient``; see :class:`SSETransport`."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        *,
        max_event_bytes: int | None = None,
        resume_attempts: int = 0,
        **httpx_kwargs: Any,
    ) -> None:
        self._client = client
        self._source = _HTTPSource(method, url, httpx_kwargs)
        self._max_event = max_event_bytes or max_event_bytes_for(DEFAULT_MAX_FRAME_BYTES)
        self._resume_attempts = resume_attempts

    @contextlib.asynccontextmanager
    async def open_stream(self) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open the stream; see :meth:`transports.base.AsyncBaseTransport.open_stream`."""
        resumer = _Resumer(self._resume_attempts, self._max_event)
        async with contextlib.AsyncExitStack() as stack:
            response = await stack.enter_async_context(self._open(resumer))
            yield self._frames(stack, response, resumer)

    def _open(self, resumer: _Resumer) -> contextlib.AbstractAsyncContextManager[httpx.Response]:
        src = self._source
        kwargs = src.request_kwargs(resumer.headers())
        return aopen_http_stream(self._client, src.method, src.url, MEDIA_TYPE, **kwargs)

    async def _frames(
        self, stack: contextlib.AsyncExitStack, response: httpx.Response, resumer: _Resumer
    ) -> AsyncIterator[bytes]:
        decoder = resumer.decoder
        while True:
            try:
                async for chunk in aiter_body(response):
                    if frames := decoder.feed(chunk):
                        yield frames
                return
            except (StreamTruncatedError, TransportError) as exc:
                delay = resumer.retry(exc)
            while True:
                await anyio.sleep(delay)
                try:
                    response = await stack.enter_async_context(self._open(resumer))
                    break
                except (StreamTruncatedError, TransportError) as exc:
                    delay = resumer.retry(exc)


def _event_limit(reader_options: Mapping[str, Any] | None) -> int:
    # An event carries one frame: the reader's frame limit sets the event limit.
    max_frame = (reader_options or {}).get("max_frame_bytes", DEFAULT_MAX_FRAME_BYTES)
    return max_event_bytes_for(max_frame)


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
            (``max_frame_bytes``, ``copy_arrays``...).
        resume_attempts: how many times to reconnect, with ``Last-Event-ID``, after
            the connection drops mid-stream (default 0: the drop raises). Only for
            servers that replay from that id (:func:`resume_position`).
        **httpx_kwargs: passed to ``client.stream`` (``json=``, ``params=``, ``headers=``...).

    Returns:
        An async context manager giving the reader; leaving it closes the response.

    Raises:
        StreamResponseError: an HTTP error status or a non-SSE response.
        TransportError: the request failed before a response arrived.
        StreamTruncatedError: (while reading) the connection dropped before END.
    """
    transport = AsyncSSETransport(
        client,
        method,
        url,
        max_event_bytes=_event_limit(reader_options),
        resume_attempts=resume_attempts,
        **httpx_kwargs,
    )
    async with aopen_reader(transport, types, **(reader_options or {})) as reader:
        yield reader


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

    ``reader_options["idle_timeout"]`` becomes httpx's read timeout unless ``timeout=``
    is given: a sync read cannot be interrupted otherwise.
    """
    transport = SSETransport(
        client,
        method,
        url,
        max_event_bytes=_event_limit(reader_options),
        resume_attempts=resume_attempts,
        **sync_idle_timeout(client, httpx_kwargs, reader_options),
    )
    with open_reader(transport, types, **(reader_options or {})) as reader:
        yield reader
