"""The transport seam: bytes in, bytes out, no pydantic.

A transport's client side opens one stream and hands back its bytes, in chunks of
any size; the typed :func:`truss_stream.stream_reader` sits on top. Its server side
takes the writer's frames as an async iterable (one producer serves every
transport) and moves them, each frame whole and in order.

Sync and async clients each implement one method, in the spirit of httpx's
``BaseTransport`` / ``AsyncBaseTransport``. :func:`open_reader` and
:func:`aopen_reader` turn any transport into a typed reader, so the conformance
suite in ``tests/conformance`` runs unchanged over every transport.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any

from truss_stream import (
    Codec,
    FrameKind,
    StreamError,
    StreamTimeoutError,
    end_frame,
    error_frame,
    frame_info,
    stream_reader,
)

__all__ = [
    "AsyncBaseTransport",
    "BaseTransport",
    "TransportError",
    "TransportTimeoutError",
    "aopen_reader",
    "guard_frames",
    "open_reader",
]


class TransportError(StreamError):
    """A transport could not open or carry a stream (status, content type, connection).

    Attributes:
        status: the transport's status code (HTTP status, gRPC status name), if any.
        body: what the server said instead of a stream (decoded text, truncated), if any.
    """

    def __init__(self, message: str, *, status: int | str | None = None, body: str = "") -> None:
        super().__init__(message if not body else f"{message}: {body}")
        self.status = status
        self.body = body


class TransportTimeoutError(TransportError, StreamTimeoutError):
    """A transport timed out before the stream started (connect, or the first response).

    Both a :class:`TransportError` and a :class:`truss_stream.StreamTimeoutError`
    (so also a ``TimeoutError``): ``except StreamTimeoutError`` catches every timeout.
    """


class BaseTransport(abc.ABC):
    """Sync client side of a transport: open one stream and yield its bytes."""

    @abc.abstractmethod
    def open_stream(self) -> contextlib.AbstractContextManager[Iterator[bytes]]:
        """Open the stream.

        Returns:
            A context manager giving an iterator of byte chunks; leaving it closes
            the connection.

        Raises:
            TransportError: the stream could not be opened (status, content type).
        """


class AsyncBaseTransport(abc.ABC):
    """Async client side of a transport: open one stream and yield its bytes."""

    @abc.abstractmethod
    def open_stream(self) -> contextlib.AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Open the stream; the async twin of :meth:`BaseTransport.open_stream`."""


@contextlib.contextmanager
def open_reader(transport: BaseTransport, types: Any, **reader_kwargs: Any) -> Iterator[Any]:
    """Open ``transport`` and give a sync typed reader over its bytes."""
    with transport.open_stream() as chunks:
        yield stream_reader(types, chunks, **reader_kwargs)


@contextlib.asynccontextmanager
async def aopen_reader(
    transport: AsyncBaseTransport, types: Any, **reader_kwargs: Any
) -> AsyncIterator[Any]:
    """Open ``transport`` and give an async typed reader over its bytes."""
    async with transport.open_stream() as chunks:
        yield stream_reader(types, chunks, **reader_kwargs)


async def guard_frames(
    frames: AsyncIterable[bytes | bytearray | memoryview]
    | Iterable[bytes | bytearray | memoryview],
    *,
    default_codec: Codec = Codec.MSGPACK,
) -> AsyncIterator[bytes | memoryview]:
    """Pass a producer's frames through, making sure the stream ends properly.

    - A producer that finishes without END gets one appended.
    - A producer that raises after its first frame gets an ERROR frame carrying
      the exception (type and message) and nothing after it; so does one that
      yields something other than one whole frame (``MalformedFrameError``).
    - A producer that raises before its first frame re-raises, so the server can
      still answer with an error status instead of a 200.
    - After END or ERROR the producer is closed: nothing follows them on the wire.

    The producer is closed (its ``finally`` runs) when the consumer stops early.
    """
    codec = default_codec
    first = True
    kind: FrameKind
    frame_codec: Codec
    iterator: Any
    iterator = frames.__aiter__() if isinstance(frames, AsyncIterable) else iter(frames)
    is_async = isinstance(frames, AsyncIterable)
    try:
        while True:
            try:
                if is_async:
                    frame = await iterator.__anext__()
                else:
                    frame = next(iterator)
                kind, frame_codec = frame_info(frame)
            except (StopAsyncIteration, StopIteration):
                break
            except Exception as exc:
                # A producer that raises, or yields something that is not one whole
                # frame, failed: before its first frame the server answers with an
                # error status, after it the reader gets an ERROR frame.
                if first:
                    raise
                yield error_frame(exc, codec)
                return
            codec = frame_codec
            first = False
            yield frame if isinstance(frame, (bytes, memoryview)) else bytes(frame)
            if kind in (FrameKind.END, FrameKind.ERROR):
                return
        yield end_frame(codec)
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
        else:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()
