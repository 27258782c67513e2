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
import logging
import secrets
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, TypeVar

import anyio
import anyio.to_thread

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
from truss_stream._codec import REDACTED_MESSAGE

__all__ = [
    "AsyncBaseTransport",
    "BaseTransport",
    "TransportError",
    "TransportTimeoutError",
    "aopen_reader",
    "describe_failure",
    "guard_frames",
    "iterate_in_thread",
    "new_stream_id",
    "open_reader",
    "report_failure",
    "server_logger",
]

T = TypeVar("T")

#: Where servers log producer failures (with tracebacks and error ids).
server_logger = logging.getLogger("truss_stream.server")


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


def new_stream_id() -> str:
    """A random id naming one served stream in the server's logs."""
    return secrets.token_hex(8)


def report_failure(exc: BaseException, *, stream_id: str, frames_sent: int) -> str:
    """Log a producer's failure with its traceback under a new error id; return the id.

    Logged on ``logging.getLogger("truss_stream.server")`` at ERROR level, with the
    stream's id and how many frames it had sent, so an id a client quotes (from
    its :class:`truss_stream.RemoteStreamError` or error body) finds the traceback.
    """
    error_id = secrets.token_hex(8)
    where = "before its first frame" if not frames_sent else f"after {frames_sent} frame(s)"
    server_logger.error(
        "stream %s: producer failed %s (error id %s): %s: %s",
        stream_id,
        where,
        error_id,
        type(exc).__name__,
        exc,
        exc_info=exc,
    )
    return error_id


def describe_failure(exc: BaseException, error_id: str, *, expose: bool) -> str:
    """The text a client gets for a failure: type, message unless redacted, error id."""
    if expose:
        return f"{type(exc).__name__}: {exc} (error id {error_id})"
    return f"{type(exc).__name__}: {REDACTED_MESSAGE} (error id {error_id})"


_DONE: Any = object()


class _ThreadedIterator:
    """A sync iterator driven from worker threads, one call at a time.

    ``close`` waits for a ``next`` still running in another thread (a cancelled
    caller does not stop that thread): a generator cannot be closed while it runs.
    StopIteration cannot cross a thread boundary (nor leave a coroutine): ``next``
    returns a sentinel instead.
    """

    def __init__(self, frames: Iterable[Any]) -> None:
        self._lock = threading.Lock()
        self._iterator = iter(frames)

    def next(self) -> Any:
        with self._lock:
            return next(self._iterator, _DONE)

    def close(self) -> None:
        with self._lock:
            close = getattr(self._iterator, "close", None)
            if close is not None:
                close()


async def iterate_in_thread(
    items: Iterable[T], *, limiter: anyio.CapacityLimiter | None = None
) -> AsyncIterator[T]:
    """Iterate a sync iterable off the event loop: each ``next()`` in a worker thread.

    For producers that block (a model loop, ``time.sleep``, blocking I/O). Closing
    this async iterator closes ``items`` (a generator's ``finally`` runs), also in a
    worker thread, once a ``next()`` still running there has returned. ``limiter``
    bounds the threads (default: anyio's, 40, shared with Starlette's threadpool).
    """
    iterator = await anyio.to_thread.run_sync(_ThreadedIterator, items, limiter=limiter)
    try:
        while (item := await anyio.to_thread.run_sync(iterator.next, limiter=limiter)) is not _DONE:
            yield item
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(iterator.close, limiter=limiter)


async def guard_frames(
    frames: AsyncIterable[bytes | bytearray | memoryview]
    | Iterable[bytes | bytearray | memoryview],
    *,
    default_codec: Codec = Codec.MSGPACK,
    expose_errors: bool = True,
    stream_id: str | None = None,
    limiter: anyio.CapacityLimiter | None = None,
) -> AsyncIterator[bytes | memoryview]:
    """Pass a producer's frames through, making sure the stream ends properly.

    - A producer that finishes without END gets one appended.
    - A producer that raises after its first frame gets an ERROR frame carrying
      the exception and nothing after it; so does one that yields something
      other than one whole frame (``MalformedFrameError``). The failure is logged
      with its traceback (:func:`report_failure`) and its error id goes into the
      ERROR frame; ``expose_errors=False`` withholds the message from the client.
    - A producer that raises before its first frame re-raises, so the server can
      still answer with an error status instead of a 200.
    - After END or ERROR the producer is closed: nothing follows them on the wire.
    - A sync iterable runs in a worker thread (``anyio.to_thread``, bounded by
      ``limiter``, default anyio's 40 threads): each ``next()`` and the final
      ``close()`` happen off the event loop, so a blocking model loop never
      stalls other requests.

    The producer is closed (its ``finally`` runs) when the consumer stops early.
    A sync producer blocked in ``next()`` is closed once that call returns.
    """
    codec = default_codec
    sent = 0
    kind: FrameKind
    frame_codec: Codec
    source: AsyncIterable[Any]
    if isinstance(frames, AsyncIterable):
        source = frames
    elif isinstance(frames, (list, tuple)):
        source = _aiter_ready(frames)  # ready frames cannot block: no thread for them
    else:
        source = iterate_in_thread(frames, limiter=limiter)
    iterator: Any = source.__aiter__()
    try:
        while True:
            try:
                frame = await iterator.__anext__()
                kind, frame_codec = frame_info(frame)
            except StopAsyncIteration:
                break
            except Exception as exc:
                # A producer that raises, or yields something that is not one whole
                # frame, failed: before its first frame the server answers with an
                # error status, after it the reader gets an ERROR frame.
                if not sent:
                    raise
                error_id = report_failure(exc, stream_id=stream_id or "-", frames_sent=sent)
                yield error_frame(exc, codec, error_id=error_id, expose=expose_errors)
                return
            codec = frame_codec
            sent += 1
            yield frame if isinstance(frame, (bytes, memoryview)) else bytes(frame)
            if kind in (FrameKind.END, FrameKind.ERROR):
                return
        yield end_frame(codec)
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


async def _aiter_ready(frames: Iterable[Any]) -> AsyncIterator[Any]:
    for frame in frames:
        yield frame
