"""Errors raised by truss_stream.

Every error about a malformed, misordered, truncated or remotely failed stream
is a :class:`StreamError`, which is a :class:`ValueError`::

    StreamError(ValueError)
    ├── StreamOrderError        a read or write call out of order (header, items, footer);
    │                           the reader consumes nothing when it raises this
    ├── StreamConsumedError     a stream (or its items) read a second time
    ├── StreamTruncatedError    the source ended before an END frame, or inside a frame
    ├── FrameTooLargeError      a frame declares more bytes than ``max_frame_bytes``
    ├── MalformedFrameError     bytes that do not form a valid frame or payload
    │   ├── UnknownCodecError   a frame tag names a codec this reader does not know
    │   └── UnknownExtError     a msgpack ext code, or an array dtype, it does not know
    ├── StreamTimeoutError      idle or total timeout (also a TimeoutError)
    ├── RemoteStreamError       the producer failed and said so with an ERROR frame
    │   └── ServerGoingAwayError  the server shut down and ended the stream (retryable:
    │                           the same request, or a resume, may succeed elsewhere)
    └── UnsupportedValueError   the writer was given a value it cannot put on the wire
                                (object or void arrays, for example)

A payload that parses but does not match the stream type's models raises
:class:`pydantic.ValidationError`, unchanged.

Transports add their own subclasses (HTTP status errors, gRPC status errors) so
``except StreamError`` catches anything this library reports about a stream.
"""

from __future__ import annotations

__all__ = [
    "FrameTooLargeError",
    "MalformedFrameError",
    "RemoteStreamError",
    "ServerGoingAwayError",
    "StreamConsumedError",
    "StreamError",
    "StreamOrderError",
    "StreamTimeoutError",
    "StreamTruncatedError",
    "UnknownCodecError",
    "UnknownExtError",
    "UnsupportedValueError",
]


class StreamError(ValueError):
    """Base of every error about a stream's bytes, order or remote failure."""


class StreamOrderError(StreamError):
    """A read or write call came out of order.

    The reader raises this *before* consuming the frame it looked at, so the
    frame is still there for the right call.
    """


class StreamConsumedError(StreamError):
    """The stream, or the part asked for, was already read."""


class StreamTruncatedError(StreamError):
    """The source ended before the stream's END frame, or in the middle of a frame."""


class StreamTimeoutError(StreamError, TimeoutError):
    """No data within the idle timeout, or the whole stream took over its total timeout."""


class FrameTooLargeError(StreamError):
    """A frame declared a length above the reader's ``max_frame_bytes``.

    Raised from the 5-byte tag alone, before any of the payload is buffered.
    """

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame declares {length} bytes, above max_frame_bytes={limit}")
        self.length = length
        self.limit = limit


class MalformedFrameError(StreamError):
    """Bytes that do not form a valid frame, payload or array."""


class UnknownCodecError(MalformedFrameError):
    """A frame tag names a codec this reader does not implement."""


class UnknownExtError(MalformedFrameError):
    """A msgpack ext type code, or an array dtype, this reader does not know."""


class UnsupportedValueError(StreamError):
    """The writer was given a value it cannot encode (object or void arrays, ...)."""


class RemoteStreamError(StreamError):
    """The producer failed; its ERROR frame carried the failure to the reader.

    Attributes:
        remote_type: the exception class name on the producer's side.
        remote_message: the producer's message (a placeholder when the server
            redacts errors).
        error_id: the id under which the server logged the failure, when it sent
            one (servers that redact errors always do); quote it to the operator.
    """

    def __init__(
        self, remote_type: str, remote_message: str, *, error_id: str | None = None
    ) -> None:
        text = f"remote {remote_type}: {remote_message}"
        if error_id is not None and error_id not in remote_message:
            text += f" (error id {error_id})"
        super().__init__(text)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.error_id = error_id


class ServerGoingAwayError(RemoteStreamError):
    """The server is shutting down and ended the stream before its end.

    Sent as an ERROR frame whose payload carries ``"reason": "going_away"``
    (docs/wire-format.md, section 5). The stream is incomplete but nothing went
    wrong with the request: a client may retry it, or resume it where the
    transport supports that, against another (or the restarted) server.
    A server raises or passes this exception itself to say so.
    """

    #: The ERROR payload's ``reason`` value that marks this error on the wire.
    REASON = "going_away"

    def __init__(
        self,
        remote_type: str = "ServerGoingAwayError",
        remote_message: str = "the server is shutting down",
        *,
        error_id: str | None = None,
    ) -> None:
        super().__init__(remote_type, remote_message, error_id=error_id)
