"""The SSE client's decisions, sans IO: framing, resume, resume integrity, time limits.

:meth:`SSEClientCore.advance` is one step machine both drivers run
(:class:`transports.sse.SSETransport` and :class:`transports.sse.AsyncSSETransport`,
in the manner of httpx's ``_auth.py``): it answers each reply of the driver (a
response's headers, a body chunk, a failure) with the next step, :class:`Connect`,
:data:`READ`, :class:`Sleep`, a frame (``bytes``, handed on to the reader one by
one) or :data:`DONE`. The drivers only do the I/O a step names.

Resume integrity (docs/transports.md, "Resume integrity"): every response may
declare its stream's identity (``Truss-Stream-Id``) and the position of its first
event (``Truss-Stream-Position``); after a reconnect both must continue what the
reader already has, or :class:`StreamResumeError` is raised before any frame of
the new response is handed on.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Generator, Mapping
from typing import Any, Final

from truss_stream import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameKind,
    ServerGoingAwayError,
    StreamTruncatedError,
    frame_info,
)
from truss_stream._codec import MsgpackLimits, decode_error

from ._httpclient import FrameClock, StreamResponseError
from ._sse_events import SSEFrameDecoder, max_event_bytes_for
from .base import TransportError

__all__ = [
    "DONE",
    "POSITION_HEADER",
    "READ",
    "RETRYABLE",
    "STREAM_ID_HEADER",
    "Connect",
    "Failed",
    "SSEClientCore",
    "SSEOptions",
    "Sleep",
    "StreamResumeError",
]

#: Response header: the identity of the logical stream, the same on every response serving it.
STREAM_ID_HEADER: Final = "Truss-Stream-Id"
#: Response header: the stream position (frame index) of the response's first event.
POSITION_HEADER: Final = "Truss-Stream-Position"
#: What a driver hands back to the core as :class:`Failed` (anything else propagates).
RETRYABLE: Final = (StreamTruncatedError, TransportError)


class StreamResumeError(StreamTruncatedError):
    """A reconnection did not continue the same stream where the reader stopped.

    Raised before any frame of the new response reaches the reader; the stream is
    as truncated as if the connection had not been resumed.

    Attributes:
        expected_stream_id: the first response's ``Truss-Stream-Id`` (None: none).
        stream_id: the resumed response's ``Truss-Stream-Id`` (None: none).
        expected_position: the frames the reader already has.
        position: where the resumed response starts (None: it did not say).
    """

    def __init__(
        self,
        message: str,
        *,
        expected_stream_id: str | None,
        stream_id: str | None,
        expected_position: int,
        position: int | None,
    ) -> None:
        super().__init__(message)
        self.expected_stream_id = expected_stream_id
        self.stream_id = stream_id
        self.expected_position = expected_position
        self.position = position


@dataclasses.dataclass(frozen=True)
class SSEOptions:
    """How an SSE client reads one stream (one object for both transports and connects).

    Attributes:
        max_event_bytes: bounds one event (see :class:`transports.sse.SSEFrameDecoder`);
            None: what the reader's default ``max_frame_bytes`` needs.
        resume_attempts: reconnections allowed after the connection drops (or the
            server goes away), each sending ``Last-Event-ID`` and checked for
            integrity; 0: a drop raises.
        idle_timeout: most seconds to wait for the next frame (pings, partial
            events and reconnections do not reset it); None: no limit.
        total_timeout: most seconds for the whole stream, reconnections included.
    """

    max_event_bytes: int | None = None
    resume_attempts: int = 0
    idle_timeout: float | None = None
    total_timeout: float | None = None

    def __post_init__(self) -> None:
        if self.resume_attempts < 0:
            raise ValueError("resume_attempts must be >= 0")
        if self.max_event_bytes is not None and self.max_event_bytes <= 0:
            raise ValueError("max_event_bytes must be > 0 or None")


@dataclasses.dataclass(frozen=True)
class Connect:
    """Send the request with these extra headers; reply with the response's headers."""

    headers: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Sleep:
    """Wait this many seconds, then reply None."""

    seconds: float


@dataclasses.dataclass(frozen=True)
class Failed:
    """The driver's reply when its I/O for a step raised one of :data:`RETRYABLE`."""

    error: Exception


class _Step(enum.Enum):
    READ = "read"
    DONE = "done"


#: Read the next body chunk; reply with it, or None at the end of the body.
READ: Final = _Step.READ
#: The stream is over; stop.
DONE: Final = _Step.DONE

Step = Connect | Sleep | bytes | _Step


class _GoingAway(Exception):
    """A going-away ERROR event that a resume will replace (never leaves the core)."""


class SSEClientCore:
    """The state of one client stream across its connections; no I/O.

    Args:
        options: the client's options.
        clock: the stream's time limits; its waits end at each frame handed on.
    """

    def __init__(self, options: SSEOptions, clock: FrameClock) -> None:
        max_event = options.max_event_bytes or max_event_bytes_for(DEFAULT_MAX_FRAME_BYTES)
        self.decoder = SSEFrameDecoder(max_event)
        self.clock = clock
        self._left = options.resume_attempts
        self._failures = 0
        self._steps = self._run()
        self._stream_id: str | None = None
        #: The stream position of the next frame (frames handed on, counted from the
        #: first response's ``Truss-Stream-Position``), and the ``id:`` of the last one.
        self.position = 0
        self._last_id: str | None = None
        self._check_id = False

    def advance(self, reply: Any = None) -> Step:
        """Give the driver's reply to the last step; return the next step."""
        try:
            return self._steps.send(reply)
        except StopIteration:
            return DONE

    def _run(self) -> Generator[Step, Any, None]:
        resuming = False
        while True:
            try:
                reply = yield Connect(self._request_headers())
                if isinstance(reply, Failed):
                    raise reply.error
                self._check_response(reply, resuming)
                while (chunk := (yield READ)) is not None:
                    if isinstance(chunk, Failed):
                        raise chunk.error
                    self.decoder.receive_data(chunk)
                    while (frame := self._next_frame()) is not None:
                        yield frame
                if self.decoder.ended or not self._left:
                    return  # the reader reports a missing END itself
                raise StreamTruncatedError("the body ended before the stream's END event")
            except (*RETRYABLE, _GoingAway) as exc:
                delay = self._retry(exc)
            yield Sleep(delay)
            resuming = True

    def _request_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self._last_id is not None:
            headers["Last-Event-ID"] = self._last_id
        if self._stream_id is not None:
            headers[STREAM_ID_HEADER] = self._stream_id
        return headers

    def _check_response(self, headers: Mapping[str, str], resuming: bool) -> None:
        stream_id = headers.get(STREAM_ID_HEADER)
        raw = headers.get(POSITION_HEADER)
        position = int(raw) if raw is not None and raw.isdigit() and len(raw) < 19 else None
        self._check_id = False
        if not resuming:
            # Not 0 when the request carried its own Last-Event-ID (a resume by the caller).
            self._stream_id = stream_id
            self.position = position or 0
            return
        self.decoder.discard_partial()
        if stream_id != self._stream_id:
            raise self._mismatch(
                f"the resumed response is another stream ({STREAM_ID_HEADER} {stream_id!r}, "
                f"expected {self._stream_id!r})",
                stream_id,
                position,
            )
        if raw is not None and position is None:
            raise self._mismatch(f"bad {POSITION_HEADER} {raw[:40]!r}", stream_id, None)
        if position is None:
            self._check_id = True  # an older server: its ids are positions
        elif position != self.position:
            raise self._mismatch(
                f"the resumed response starts at frame {position}, expected {self.position}",
                stream_id,
                position,
            )

    def _mismatch(
        self, message: str, stream_id: str | None = None, position: int | None = None
    ) -> StreamResumeError:
        return StreamResumeError(
            message,
            expected_stream_id=self._stream_id,
            stream_id=stream_id,
            expected_position=self.position,
            position=position,
        )

    def _next_frame(self) -> bytes | None:
        decoder = self.decoder
        frame = decoder.next_frame()
        if frame is None:
            return None
        event_id = decoder.last_event_id
        if self._check_id:
            self._check_id = False
            if event_id != str(self.position):
                raise self._mismatch(
                    f"cannot verify the resumed position: its first id is {event_id!r}, "
                    f"expected {str(self.position)!r} (and no {POSITION_HEADER} header)",
                    self._stream_id,
                    int(event_id) if event_id is not None and event_id.isdigit() else None,
                )
        if self._left and frame_info(frame)[0] is FrameKind.ERROR and self._going_away(frame):
            raise _GoingAway
        self.position += 1
        self._last_id = event_id
        self.clock.frame()
        return frame

    @staticmethod
    def _going_away(frame: bytes) -> bool:
        codec = frame_info(frame)[1]
        try:
            error = decode_error(codec, memoryview(frame)[5:], MsgpackLimits())
        except ValueError:
            return False  # malformed: the reader reports it
        return isinstance(error, ServerGoingAwayError)

    def _retry(self, exc: Exception) -> float:
        """The delay before reconnecting after ``exc``, or raise (``exc``, or a timeout)."""
        if isinstance(exc, (StreamResponseError, StreamResumeError)):
            raise exc
        if self._left <= 0 or (self.decoder.ended and not isinstance(exc, _GoingAway)):
            raise exc
        self._left -= 1
        self._failures += 1
        retry_ms = self.decoder.retry_ms
        delay = min(retry_ms / 1000, 30.0) if retry_ms is not None else 0.05 * 2**self._failures
        delay = float(min(delay, 2.0)) if retry_ms is None else delay
        deadline = self.clock.deadline()
        if deadline is not None and time.monotonic() + delay >= deadline:
            raise self.clock.expired() from exc
        return delay
