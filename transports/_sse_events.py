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
_BOM: Final = b"\xef\xbb\xbf"
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
    """Sans-IO SSE parser, by the WHATWG event-stream rules, giving back our frames.

    Feed it the body's chunks as they arrive (:meth:`receive_data`) and take the
    frames out one by one (:meth:`next_frame`), or both at once with
    :meth:`feed_frames` (a list) or :meth:`feed` (the frames concatenated).
    Parsing follows the HTML standard's event-stream interpretation:

    - lines end in CRLF, LF or CR, mixed freely; a CR ending one chunk and an LF
      starting the next are one line end;
    - a UTF-8 BOM at the start of the body is skipped;
    - ``:`` lines are comments; a field without a colon has an empty value; one
      space after the colon is dropped (none is fine); unknown fields are ignored;
    - ``data:`` lines join with LF; an event is dispatched at a blank line and
      only if it had ``data``; ``event`` defaults to ``message``;
    - ``id`` sets the last event id (kept across events; an ``id`` holding NUL is
      ignored); ``retry`` with only ASCII digits sets :attr:`retry_ms`.

    An event that is not one of ours (kind, base64) raises
    :class:`truss_stream.MalformedFrameError`. Nothing after the ``end`` or
    ``error`` event belongs to the stream: the rest of the body is ignored.

    Bytes are scanned once in the common LF-only case, and a ``data:`` value is
    decoded straight from the buffer.

    Args:
        max_event_bytes: most bytes one event may take; a server that sends more
            without ending the event raises :class:`SSEEventTooLargeError` instead
            of growing the buffer. The default fits a frame of the readers' default
            ``max_frame_bytes`` as base64.
    """

    def __init__(self, max_event_bytes: int = max_event_bytes_for(DEFAULT_MAX_FRAME_BYTES)) -> None:
        self._max_event = max_event_bytes
        self._buffer = bytearray()
        self._start = 0
        self._scanned = 0
        self._skip_lf = False
        self._bom = True
        #: The last event id (WHATWG: kept until an event sets another), for ``Last-Event-ID``.
        self.last_event_id: str | None = None
        #: The reconnection time the server asked for with ``retry:``, in ms.
        self.retry_ms: int | None = None
        #: True once an ``end`` or ``error`` event was decoded.
        self.ended = False
        #: Frame events decoded so far.
        self.frames = 0

    def receive_data(self, chunk: bytes | bytearray | memoryview) -> None:
        """Add the next chunk of the body (line ends are normalised to LF here)."""
        if self.ended or not chunk:
            return
        data = bytes(chunk) if not isinstance(chunk, bytes) else chunk
        if self._skip_lf:
            self._skip_lf = False
            if data[:1] == b"\n":
                data = data[1:]
        if b"\r" in data:
            # CR and CRLF become LF: SSE data never holds either, so this keeps meaning.
            self._skip_lf = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buf = self._buffer
        buf += data
        if self._bom:
            if len(buf) < 3 and _BOM.startswith(bytes(buf)):
                return  # too short to tell
            self._bom = False
            if buf.startswith(_BOM):
                del buf[:3]

    def next_frame(self) -> bytes | None:
        """The next whole frame, or None when more data is needed (or after END).

        Raises:
            MalformedFrameError: an event that is not one of ours.
            SSEEventTooLargeError: an event above ``max_event_bytes``.
        """
        buf = self._buffer
        while not self.ended and not self._bom:
            start = self._start
            end = buf.find(b"\n\n", max(self._scanned - 1, start))
            if end < 0:
                self._compact()
                return None
            self._start = self._scanned = end + 2
            with memoryview(buf) as view:
                frame = self._event(buf, view, start, end)
            if frame is not None:
                if self.ended:  # nothing after END belongs to the stream
                    buf.clear()
                    self._start = self._scanned = 0
                return frame
        return None

    def feed_frames(self, chunk: bytes | bytearray | memoryview) -> list[bytes]:
        """Add ``chunk``; return the frames it completed, one by one (possibly none)."""
        self.receive_data(chunk)
        out = []
        while (frame := self.next_frame()) is not None:
            out.append(frame)
        return out

    def feed(self, chunk: bytes | bytearray | memoryview) -> bytes:
        """Add ``chunk``; return the frames it completed, concatenated (b"" for none).

        A convenience for feeding a byte-stream reader; the SSE client itself takes
        frames one by one (:meth:`next_frame`), without joining them.
        """
        frames = self.feed_frames(chunk)
        return frames[0] if len(frames) == 1 else b"".join(frames)

    def _compact(self) -> None:
        buf = self._buffer
        if self._start:
            del buf[: self._start]
            self._start = 0
        if len(buf) > self._max_event:
            raise SSEEventTooLargeError(len(buf), self._max_event)
        self._scanned = len(buf)

    def _event(self, buf: bytearray, view: memoryview, start: int, end: int) -> bytes | None:
        """Interpret the lines in ``buf[start:end]`` (one event's, LF-separated)."""
        event: bytes | None = None
        data: list[memoryview] = []
        i = start
        while i < end and buf[i] == 0x0A:  # blank lines before the event: nothing to dispatch
            i += 1
        while i < end:
            nl = buf.find(b"\n", i, end)
            if nl < 0:
                nl = end
            colon = buf.find(b":", i, nl)
            if colon < 0:
                colon = value = nl
            else:
                value = colon + 2 if buf.startswith(b" ", colon + 1, nl) else colon + 1
            name_len = colon - i
            if name_len == 0:  # a comment (": ping")
                pass
            elif name_len == 4 and buf.startswith(b"data", i):
                data.append(view[value:nl])
            elif name_len == 5 and buf.startswith(b"event", i):
                event = bytes(buf[value:nl])
            elif name_len == 2 and buf.startswith(b"id", i):
                event_id = bytes(view[value:nl])
                if b"\0" not in event_id:
                    self.last_event_id = event_id.decode("utf-8", "replace")
            elif name_len == 5 and buf.startswith(b"retry", i):
                retry = bytes(view[value:nl])
                if retry and retry.isdigit() and retry.isascii():
                    self.retry_ms = int(retry)
            i = nl + 1
        if not data:
            return None
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        name = event or b"message"
        frame = _frame(name, payload)
        self.frames += 1
        if name in (b"end", b"error"):
            self.ended = True
        return frame

    def discard_partial(self) -> None:
        """Forget a partly received event and start a new body (a resumed connection)."""
        self.ended = False
        self._buffer.clear()
        self._start = self._scanned = 0
        self._skip_lf = False
        self._bom = True


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
