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

import base64
import binascii
import contextlib
import re
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Final

import httpx

from truss_stream import (
    DEFAULT_MAX_FRAME_BYTES,
    TAG_SIZE,
    AsyncStreamReader,
    Codec,
    FrameKind,
    FrameTooLargeError,
    MalformedFrameError,
    StreamError,
    StreamReader,
    StreamTypes,
    end_frame,
    pack_tag,
    parse_tag,
    stream_reader,
)
from truss_stream._schema import FooterTT, HeaderTT, ItemT

from ._asgi import Frames, FrameStreamResponse
from ._httpclient import (
    StreamResponseError,
    aiter_body,
    aopen_http_stream,
    iter_body,
    open_http_stream,
    with_accept,
)
from .base import AsyncBaseTransport, BaseTransport, TransportError

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
    "sse_response",
]

MEDIA_TYPE: Final = "text/event-stream"

_EVENT_NAMES: Final = {
    FrameKind.HEADER: b"header",
    FrameKind.ITEM: b"item",
    FrameKind.FOOTER: b"footer",
    FrameKind.END: b"end",
    FrameKind.ERROR: b"error",
}
_KINDS_BY_NAME: Final = {name: kind for kind, name in _EVENT_NAMES.items()}
_PREFIXES: Final = {kind: b"event: " + name + b"\nid: " for kind, name in _EVENT_NAMES.items()}
_TAG_BYTES: Final = {
    (kind, codec): pack_tag(kind, codec, 0)[0] for kind in FrameKind for codec in Codec
}
_TAG_LOOKUP: Final = {byte: key for key, byte in _TAG_BYTES.items()}
_UNSAFE: Final = re.compile(rb"[\r\n]|\xc2\x85|\xe2\x80[\xa8\xa9]")
_ESCAPES: Final = (
    (b"\xc2\x85", b"\\u0085"),
    (b"\xe2\x80\xa8", b"\\u2028"),
    (b"\xe2\x80\xa9", b"\\u2029"),
)
_PING: Final = b": ping\n\n"
# Room for the "event:"/"id:"/"data:" lines around a frame's base64.
_EVENT_OVERHEAD: Final = 64 * 1024


def max_event_bytes_for(max_frame_bytes: int) -> int:
    """The SSE event size that carries a frame of ``max_frame_bytes`` (as base64)."""
    return -(-max_frame_bytes // 3) * 4 + _EVENT_OVERHEAD


class SSEEventTooLargeError(FrameTooLargeError):
    """An SSE event grew past ``max_event_bytes`` before its closing blank line."""

    def __init__(self, length: int, limit: int) -> None:
        StreamError.__init__(
            self, f"SSE event of more than {length} bytes, above max_event_bytes={limit}"
        )
        self.length = length
        self.limit = limit


def encode_event(seq: int, frame: bytes | memoryview) -> bytes:
    """Encode one whole frame as one SSE event (see the module docstring).

    Args:
        seq: the event's ``id:``, the frame's position in the stream.
        frame: one whole frame, as the writer returns it.

    Returns:
        The event's bytes, ending with its blank line.
    """
    kind, codec = _TAG_LOOKUP[frame[0] & 0x1F]
    head = _PREFIXES[kind] + b"%d\ndata: " % seq
    if codec is not Codec.JSON:
        return head + base64.b64encode(frame) + b"\n\n"
    payload = frame[5:]
    if kind is FrameKind.END:
        payload = b"{}"
    elif _UNSAFE.search(payload) is not None:
        payload = _escape_json(bytes(payload))
        return b"".join((head, payload, b"\n\n"))
    return b"".join((head, payload, b"\n\n"))


def _escape_json(payload: bytes) -> bytes:
    for raw, escaped in _ESCAPES:
        payload = payload.replace(raw, escaped)
    # CR/LF can only be JSON whitespace here; the client joins data lines with LF.
    return payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\ndata: ")


def sse_response(
    frames: Frames,
    *,
    ping_interval: float | None = 15.0,
    send_timeout: float | None = 30.0,
    headers: Mapping[str, str] | None = None,
    default_codec: Codec = Codec.MSGPACK,
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

    Returns:
        A Starlette response (usable from Starlette and FastAPI routes).
    """
    all_headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    all_headers.update(headers or {})
    return FrameStreamResponse(
        frames,
        encode=encode_event,
        media_type=MEDIA_TYPE,
        headers=all_headers,
        send_timeout=send_timeout,
        ping_interval=ping_interval,
        ping_bytes=_PING,
        default_codec=default_codec,
    )


class SSEFrameDecoder:
    """Sans-IO SSE parser giving back the frames the server encoded.

    Feed it the body's chunks as they arrive; each call returns the bytes of the
    frames completed by that chunk (possibly empty), ready for a stream reader.
    Bytes are scanned once (the search for an event's end resumes where it
    stopped) and a ``data:`` value is decoded straight from the buffer. Lines end
    with LF, as :func:`sse_response` writes them.

    Args:
        max_event_bytes: most bytes one event may take; a server that sends more
            without ending the event raises :class:`SSEEventTooLargeError` instead
            of growing the buffer. The default fits a frame of the readers' default
            ``max_frame_bytes`` as base64.
    """

    def __init__(self, max_event_bytes: int = max_event_bytes_for(DEFAULT_MAX_FRAME_BYTES)) -> None:
        self._max_event = max_event_bytes
        self._buffer = bytearray()
        self._scanned = 0
        self.last_event_id: str | None = None

    def feed(self, chunk: bytes | bytearray | memoryview) -> bytes:
        """Add ``chunk``; return the frames it completed, concatenated.

        Raises:
            MalformedFrameError: an event that is not one of ours.
            SSEEventTooLargeError: an event above ``max_event_bytes``.
        """
        buf = self._buffer
        buf += chunk
        out: list[bytes] = []
        start = 0
        pos = max(self._scanned - 1, 0)
        with memoryview(buf) as view:
            while (end := buf.find(b"\n\n", pos)) >= 0:
                frame = self._event(buf, view, start, end)
                if frame is not None:
                    out.append(frame)
                start = pos = end + 2
        if start:
            del buf[:start]
        if len(buf) > self._max_event:
            raise SSEEventTooLargeError(len(buf), self._max_event)
        self._scanned = len(buf)
        return out[0] if len(out) == 1 else b"".join(out)

    def _event(self, buf: bytearray, view: memoryview, start: int, end: int) -> bytes | None:
        event = b"message"
        data: list[memoryview] = []
        i = start
        while i < end:
            nl = buf.find(b"\n", i, end)
            if nl < 0:
                nl = end
            colon = buf.find(b":", i, nl)
            if colon < 0:
                colon = value = nl
            else:
                value = colon + 2 if buf.startswith(b" ", colon + 1, nl) else colon + 1
            if colon == i:  # a comment (": ping")
                pass
            elif buf.startswith(b"data", i, colon) and colon - i == 4:
                data.append(view[value:nl])
            elif buf.startswith(b"event", i, colon) and colon - i == 5:
                event = bytes(view[value:nl])
            elif buf.startswith(b"id", i, colon) and colon - i == 2:
                self.last_event_id = bytes(view[value:nl]).decode("utf-8", "replace")
            i = nl + 1
        if not data and event == b"message":
            return None
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        return _frame(event, payload)


if sys.version_info >= (3, 11):

    def _b64decode(data: bytes | memoryview) -> bytes:
        return binascii.a2b_base64(data, strict_mode=True)

else:  # pragma: no cover - lenient decoding; the reader still checks the frame

    def _b64decode(data: bytes | memoryview) -> bytes:
        return binascii.a2b_base64(data)


def _frame(event: bytes, data: bytes | memoryview) -> bytes:
    kind = _KINDS_BY_NAME.get(event)
    if kind is None:
        raise MalformedFrameError(f"unexpected SSE event {event[:40]!r}")
    if data and 0x41 <= data[0] <= 0x5A:  # A-Z: base64 of a whole binary frame
        try:
            frame = _b64decode(data)
        except (binascii.Error, ValueError) as exc:
            raise MalformedFrameError(f"bad base64 in SSE {event.decode()} event") from exc
        if len(frame) < TAG_SIZE or parse_tag(frame[:TAG_SIZE])[0] is not kind:
            raise MalformedFrameError(f"SSE {event.decode()} event holds another frame kind")
        return frame
    if kind is FrameKind.END:
        return end_frame(Codec.JSON)
    return pack_tag(kind, Codec.JSON, len(data)) + data


def _frames(chunks: Iterator[bytes], max_event_bytes: int) -> Iterator[bytes]:
    decoder = SSEFrameDecoder(max_event_bytes)
    for chunk in chunks:
        if frames := decoder.feed(chunk):
            yield frames


async def _aframes(chunks: AsyncIterator[bytes], max_event_bytes: int) -> AsyncIterator[bytes]:
    decoder = SSEFrameDecoder(max_event_bytes)
    async for chunk in chunks:
        if frames := decoder.feed(chunk):
            yield frames


class SSETransport(BaseTransport):
    """Sync SSE client transport: one request over an ``httpx.Client``, frames out.

    ``max_event_bytes`` bounds one event (see :class:`SSEFrameDecoder`).
    """

    def __init__(
        self,
        client: httpx.Client,
        method: str,
        url: str,
        *,
        max_event_bytes: int | None = None,
        **httpx_kwargs: Any,
    ) -> None:
        self._client, self._method, self._url, self._kwargs = client, method, url, httpx_kwargs
        self._max_event = max_event_bytes or max_event_bytes_for(DEFAULT_MAX_FRAME_BYTES)

    @contextlib.contextmanager
    def open_stream(self) -> Iterator[Iterator[bytes]]:
        """Open the stream; see :meth:`transports.base.BaseTransport.open_stream`."""
        kwargs = with_accept(self._kwargs, MEDIA_TYPE)
        with open_http_stream(
            self._client, self._method, self._url, MEDIA_TYPE, **kwargs
        ) as response:
            yield _frames(iter_body(response), self._max_event)


class AsyncSSETransport(AsyncBaseTransport):
    """Async SSE client transport over an ``httpx.AsyncClient``."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        method: str,
        url: str,
        *,
        max_event_bytes: int | None = None,
        **httpx_kwargs: Any,
    ) -> None:
        self._client, self._method, self._url, self._kwargs = client, method, url, httpx_kwargs
        self._max_event = max_event_bytes or max_event_bytes_for(DEFAULT_MAX_FRAME_BYTES)

    @contextlib.asynccontextmanager
    async def open_stream(self) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open the stream; see :meth:`transports.base.AsyncBaseTransport.open_stream`."""
        kwargs = with_accept(self._kwargs, MEDIA_TYPE)
        async with aopen_http_stream(
            self._client, self._method, self._url, MEDIA_TYPE, **kwargs
        ) as response:
            yield _aframes(aiter_body(response), self._max_event)


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
        **httpx_kwargs: passed to ``client.stream`` (``json=``, ``params=``, ``headers=``...).

    Returns:
        An async context manager giving the reader; leaving it closes the response.

    Raises:
        StreamResponseError: an HTTP error status or a non-SSE response.
        TransportError: the request failed before a response arrived.
        StreamTruncatedError: (while reading) the connection dropped before END.
    """
    transport = AsyncSSETransport(
        client, method, url, max_event_bytes=_event_limit(reader_options), **httpx_kwargs
    )
    async with transport.open_stream() as chunks:
        yield stream_reader(types, chunks, **(reader_options or {}))


@contextlib.contextmanager
def connect(
    client: httpx.Client,
    method: str,
    url: str,
    types: StreamTypes[ItemT, HeaderTT, FooterTT],
    *,
    reader_options: Mapping[str, Any] | None = None,
    **httpx_kwargs: Any,
) -> Iterator[StreamReader[ItemT, HeaderTT, FooterTT]]:
    """Open an SSE stream and give its typed sync reader; see :func:`aconnect`."""
    transport = SSETransport(
        client, method, url, max_event_bytes=_event_limit(reader_options), **httpx_kwargs
    )
    with transport.open_stream() as chunks:
        yield stream_reader(types, chunks, **(reader_options or {}))
