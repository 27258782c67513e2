"""The SSE event encoding, sans IO: frames to events (server), events to frames (client).

See :mod:`transports.sse` and docs/transports.md for the rules.
"""

from __future__ import annotations

import base64
import binascii
import re
import sys
from typing import Final

from truss_stream import (
    DEFAULT_MAX_FRAME_BYTES,
    TAG_SIZE,
    Codec,
    FrameKind,
    FrameTooLargeError,
    MalformedFrameError,
    StreamError,
    end_frame,
    pack_tag,
    parse_tag,
)

__all__ = [
    "SSEEventTooLargeError",
    "SSEFrameDecoder",
    "encode_event",
    "max_event_bytes_for",
    "PING",
]

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
PING: Final = b": ping\n\n"
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


def encode_event(seq: int | bytes, frame: bytes | memoryview) -> bytes:
    """Encode one whole frame as one SSE event (see the module docstring).

    Args:
        seq: the event's ``id:``, the frame's position in the stream (or, as bytes,
            another cursor without CR/LF, such as a Redis entry id).
        frame: one whole frame, as the writer returns it.

    Returns:
        The event's bytes, ending with its blank line.
    """
    kind, codec = _TAG_LOOKUP[frame[0] & 0x1F]
    head = _PREFIXES[kind] + (b"%d\ndata: " if isinstance(seq, int) else b"%b\ndata: ") % seq
    if codec is not Codec.JSON:
        return head + base64.b64encode(frame) + b"\n\n"
    payload = frame[5:]
    if kind is FrameKind.END:
        payload = b"{}"
    elif _UNSAFE.search(payload) is not None:
        payload = _escape_json(bytes(payload))
    return b"".join((head, payload, b"\n\n"))


def _escape_json(payload: bytes) -> bytes:
    for raw, escaped in _ESCAPES:
        payload = payload.replace(raw, escaped)
    # CR/LF can only be JSON whitespace here; the client joins data lines with LF.
    return payload.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\ndata: ")


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
        #: The ``id:`` of the last whole event decoded (for ``Last-Event-ID``).
        self.last_event_id: str | None = None
        #: True once an ``end`` or ``error`` event was decoded.
        self.ended = False

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
        frame = _frame(event, payload)
        if event in (b"end", b"error"):
            self.ended = True
        return frame

    def discard_partial(self) -> None:
        """Drop a partly received event (before reading a resumed connection)."""
        self._buffer.clear()
        self._scanned = 0


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
