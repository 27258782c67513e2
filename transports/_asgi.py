"""The server half shared by the SSE and chunked HTTP responses.

:class:`FrameStreamResponse` is a Starlette response that streams a producer's
frames through :func:`transports.base.guard_frames`, encoding each one with a
transport-specific function. What it adds over Starlette's ``StreamingResponse``:

- The first frame is pulled *before* the response starts, so a producer that
  fails straight away gets a real error status (500, or the status of a
  Starlette ``HTTPException``) and a short text body instead of a 200.
- A client that disconnects cancels the stream at once; the producer is then
  closed (its ``finally`` runs) inside a shielded scope.
- ``send_timeout``: uvicorn applies TCP flow control, so ``send`` blocks while
  the client does not read and the server holds at most one frame plus the
  socket buffers. A send blocked longer than ``send_timeout`` aborts the stream:
  the producer is closed and the connection is dropped, so the client sees a
  truncated stream, never a complete one.
- Optional keep-alive bytes (SSE comment pings) when nothing was sent for
  ``ping_interval`` seconds.
- Frames produced back to back are coalesced into one send of up to 64 KiB;
  a frame is never held back while the producer is waiting (see ``_ResponseRun``).
- A sync producer runs in a worker thread (``guard_frames``); failures are logged
  with an error id, and ``expose_errors=False`` withholds their messages.
- ``shutdown``: a :class:`transports.shutdown.GracefulShutdown`; once it begins,
  new responses are 503 and open ones end, after its grace period, with a
  going-away ERROR frame and a normal end of the body.
- ``compression``: the body is compressed (gzip or zstd, negotiated with the
  request's ``Accept-Encoding``) one batch at a time, each batch flushed, so the
  client can decode every frame as soon as its batch arrives.

One timer task watches both the send timeout and the ping interval, so the
per-send cost is two attribute writes rather than a cancel scope per send.
"""

from __future__ import annotations

import logging
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
)
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from truss_stream import Codec, ServerGoingAwayError, error_frame, frame_info

from ._compression import Compression, StreamCompressor, negotiate
from .base import describe_failure, guard_frames, new_stream_id, report_failure
from .observability import observe_asgi
from .shutdown import GracefulShutdown

if TYPE_CHECKING:
    from .observability import StreamMetrics

__all__ = ["FrameEncoder", "FrameStreamResponse", "Frames"]

logger = logging.getLogger("transports")

#: What a response takes: the writer's frames, async (preferred) or sync. A sync
#: iterable runs in a worker thread (each ``next()``), so it may block.
Frames = AsyncIterable[bytes | bytearray | memoryview] | Iterable[bytes | bytearray | memoryview]
#: Turns (sequence number, frame) into the bytes that go on the wire.
FrameEncoder = Callable[[int, "bytes | memoryview"], "bytes | memoryview"]

_MAX_ERROR_BODY = 1024
#: A batch of small frames is sent once it holds this many bytes.
_BATCH_BYTES = 64 * 1024


class FrameStreamResponse(Response):
    """Stream a producer's frames, each encoded by ``encode``, as one HTTP response."""

    def __init__(
        self,
        frames: Frames,
        *,
        encode: FrameEncoder,
        media_type: str,
        headers: Mapping[str, str] | None = None,
        send_timeout: float | None = 30.0,
        ping_interval: float | None = None,
        ping_bytes: bytes = b"",
        default_codec: Codec = Codec.MSGPACK,
        expose_errors: bool = True,
        shutdown: GracefulShutdown | None = None,
        compression: Compression | None = None,
        compression_level: int | None = None,
        metrics: StreamMetrics | bool | None = None,
    ) -> None:
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)
        self._frames = frames
        self._encode = encode
        self._send_timeout = send_timeout
        self._ping_interval = ping_interval if ping_bytes else None
        self._ping_bytes = ping_bytes
        self._default_codec = default_codec
        self._expose_errors = expose_errors
        self._shutdown = shutdown
        negotiate(compression, "gzip")  # a bad value fails here, in the route
        self._compression = compression
        self._compression_level = compression_level
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        drain = self._shutdown
        if drain is None:
            await self._serve(scope, receive, send)
            return
        if drain.shutting_down:
            await _send_going_away_response(send, drain.retry_after)
            return
        with drain.track():
            await self._serve(scope, receive, send)

    def _coding(self, scope: Scope) -> str | None:
        accept = ""
        for key, value in scope.get("headers", ()):
            if key == b"accept-encoding":
                accept = value.decode("latin-1")
        return negotiate(self._compression, accept)

    def _start_headers(self, coding: str | None) -> list[tuple[bytes, bytes]]:
        # Read when the response starts, after the first frame: a producer may set
        # headers while it makes that frame (transports.redis sets where it starts).
        headers = list(self.raw_headers)
        if self._compression is not None:
            headers.append((b"vary", b"accept-encoding"))
        if coding is not None:
            headers.append((b"content-encoding", coding.encode()))
        return headers

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream_id = new_stream_id()
        coding = self._coding(scope)
        compressor = (
            StreamCompressor(coding, self._compression_level) if coding is not None else None
        )
        run = _ResponseRun(self, send, compressor)
        guarded = observe_asgi(
            guard_frames(
                self._frames,
                default_codec=self._default_codec,
                expose_errors=self._expose_errors,
                stream_id=stream_id,
            ),
            scope,
            media_type=self.media_type,
            metrics=self._metrics,
            stream_id=stream_id,
            timed_out=lambda: run.timed_out,
            going_away=lambda: run.going_away,
        )
        complete = False
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(run.cancel_on_disconnect, receive, tg.cancel_scope)
                if self._shutdown is not None:
                    tg.start_soon(run.end_when_due, self._shutdown, tg.cancel_scope)
                try:
                    first = await guarded.__anext__()
                except Exception as exc:
                    await _send_error_response(send, exc, stream_id, self._expose_errors)
                    tg.cancel_scope.cancel()
                    return
                run.codec = frame_info(first)[1]
                # Pending until the flusher starts, after the response start; then let
                # go: a long stream must not pin its first frame (a tensor) until it ends.
                run.add_first(self._encode(0, first))
                del first
                headers = self._start_headers(coding)
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                run.started = True
                tg.start_soon(run.flush_when_idle)
                if self._send_timeout is not None or self._ping_interval is not None:
                    tg.start_soon(run.watch, tg.cancel_scope)
                try:
                    await run.pump(guarded, self._encode)
                    complete = True
                except OSError:  # the client went away (ASGI spec >= 2.4 servers)
                    pass
                tg.cancel_scope.cancel()  # the flusher and the timer stop here
            if run.going_away:
                # A client that stopped reading must not hold the shutdown up: past
                # the send timeout the body just ends unterminated (a truncation).
                with anyio.move_on_after(self._send_timeout or 5.0):
                    await run.send_going_away(self._encode, self._shutdown)
            elif complete:
                await run.finish()
        except OSError:
            pass
        finally:
            with anyio.CancelScope(shield=True):
                await guarded.aclose()
        if run.timed_out:
            logger.warning(
                "stream %s aborted: a send blocked longer than %ss", stream_id, self._send_timeout
            )


class _ResponseRun:
    """Per-response state shared by the pump, the flusher and the timer task.

    Frames are coalesced: the pump encodes frames into a pending list and the
    flusher task sends them as soon as the pump waits for its producer, so a
    slow producer's frame goes out one event-loop turn after it was yielded,
    while a fast producer's frames leave in batches of up to ``_BATCH_BYTES``
    (one ``send`` and, for the client, one read for many small frames). The pump
    sends itself (and gives other tasks a turn) whenever the batch is full,
    which is also where backpressure from a slow client stops it. With
    compression on, each batch is compressed and flushed as one unit.
    """

    def __init__(
        self, response: FrameStreamResponse, send: Send, compressor: StreamCompressor | None
    ) -> None:
        self._send = send
        self._compressor = compressor
        self._send_timeout = response._send_timeout
        self._ping_interval = response._ping_interval
        self._ping_bytes = response._ping_bytes
        self._pending: list[bytes | memoryview] = []
        self._pending_bytes = 0
        self._wake = anyio.Event()
        self._lock = anyio.Lock()
        self._sending_since: float | None = None
        self._last_sent = time.monotonic()
        self.seq = 0
        self.codec = response._default_codec
        self.started = False
        self.disconnected = False
        self.going_away = False
        self.timed_out = False
        self._unsent: bytes | memoryview = b""

    def add_first(self, data: bytes | memoryview) -> None:
        """Put the first frame, encoded, in the pending batch."""
        self._add(data)
        self.seq = 1

    async def pump(self, frames: AsyncIterator[bytes | memoryview], encode: FrameEncoder) -> None:
        """Encode every frame after the first into the pending batch; send when it is full."""
        async for frame in frames:
            self._add(encode(self.seq, frame))
            self.seq += 1
            if self._pending_bytes >= _BATCH_BYTES:
                await self._flush()
                await anyio.lowlevel.checkpoint()
        await self._flush()

    def _add(self, data: bytes | memoryview) -> None:
        self._pending.append(data)
        self._pending_bytes += len(data)
        self._wake.set()

    async def flush_when_idle(self) -> None:
        """Send what is pending whenever the pump lets the event loop run."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await self._flush()

    async def _flush(self, *, last: bool = False) -> None:
        async with self._lock:
            pending = self._pending
            if not pending and not last:
                return
            body: bytes | memoryview = pending[0] if len(pending) == 1 else b"".join(pending)
            self._pending = []
            self._pending_bytes = 0
            if self._compressor is not None:
                # A batch is compressed once; if its send is cancelled, nothing of it
                # was written (uvicorn waits for the socket before writing) and the
                # compressed bytes must still go out, in order: keep them as they are.
                body = self._compressor.compress(body) if body else b""
                if last:
                    body += self._compressor.finish()
            self._sending_since = time.monotonic()
            try:
                await self._send(
                    {"type": "http.response.body", "body": body, "more_body": not last}
                )
            except anyio.get_cancelled_exc_class():
                if self._compressor is None:
                    self._pending[:0] = pending
                    self._pending_bytes += sum(len(p) for p in pending)
                else:
                    self._unsent = body
                raise
            finally:
                self._sending_since = None
            self._last_sent = time.monotonic()

    async def finish(self) -> None:
        """End the body: what is pending and, when compressing, the coding's trailer."""
        await self._flush(last=True)

    async def send_going_away(self, encode: FrameEncoder, drain: GracefulShutdown | None) -> None:
        """End the stream with a ServerGoingAwayError ERROR frame (or 503 before it started)."""
        if not self.started:
            await _send_going_away_response(self._send, drain.retry_after if drain else 1)
            return
        if self._unsent:
            unsent, self._unsent = self._unsent, b""
            await self._send({"type": "http.response.body", "body": unsent, "more_body": True})
        self._add(encode(self.seq, error_frame(ServerGoingAwayError(), self.codec)))
        await self._flush(last=True)

    async def cancel_on_disconnect(self, receive: Receive, scope: anyio.CancelScope) -> None:
        """Cancel the stream as soon as the client disconnects."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                scope.cancel()
                return

    async def end_when_due(self, drain: GracefulShutdown, scope: anyio.CancelScope) -> None:
        """Stop the stream once the server's grace period after shutdown is over."""
        await drain.wait_until_due()
        self.going_away = True
        scope.cancel()

    async def watch(self, scope: anyio.CancelScope) -> None:
        """Abort a send blocked past the timeout; queue pings when idle."""
        periods = [p for p in (self._send_timeout, self._ping_interval) if p is not None]
        tick = max(min(periods) / 4, 0.01)
        while True:
            await anyio.sleep(tick)
            now = time.monotonic()
            since = self._sending_since
            if since is not None:
                if self._send_timeout is not None and now - since > self._send_timeout:
                    self.timed_out = True
                    scope.cancel()
                    return
                continue
            if self._ping_interval is not None and now - self._last_sent >= self._ping_interval:
                self._last_sent = now
                self._add(self._ping_bytes)


async def _send_going_away_response(send: Send, retry_after: int) -> None:
    body = b"the server is shutting down"
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(retry_after).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _send_error_response(send: Send, exc: Exception, stream_id: str, expose: bool) -> None:
    """Answer a producer that failed before its first frame with an error status."""
    if isinstance(exc, HTTPException):
        status, text = exc.status_code, str(exc.detail)
    else:
        error_id = report_failure(exc, stream_id=stream_id, frames_sent=0)
        detail = describe_failure(exc, error_id, expose=expose)
        status, text = 500, f"stream failed before its first frame: {detail}"
    body = text.encode("utf-8", "replace")[:_MAX_ERROR_BODY]
    headers: list[tuple[bytes, bytes]] = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]
    extra: Any = getattr(exc, "headers", None)
    if isinstance(extra, Mapping):
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})
