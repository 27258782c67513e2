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
        remote_message: the producer's message.
    """

    def __init__(self, remote_type: str, remote_message: str) -> None:
        super().__init__(f"remote {remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message
