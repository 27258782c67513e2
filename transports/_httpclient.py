"""The client half shared by the SSE and chunked HTTP transports (httpx).

Both transports open a streaming request, check the status, content type and
content coding, then hand the decoded body chunks to a transport-specific decoder.

- Content coding: httpx advertises what it can decode (``Accept-Encoding: gzip,
  deflate``, plus ``br`` / ``zstd`` when brotli / zstandard are installed) and
  its decoders undo it incrementally, chunk by chunk (``iter_bytes``): a stream
  behind ``GZipMiddleware`` or a compressing proxy stays a stream. A coding
  httpx cannot decode is refused (:class:`StreamResponseError`), never read raw.
- Time limits (:class:`FrameClock`): ``idle_timeout`` bounds each wait for the
  next *frame* (pings and partial frames do not reset it), ``total_timeout`` the
  whole stream. Async reads wait under the deadline; a sync read, which nothing
  can interrupt, is cut by a watchdog thread that shuts the socket down at the
  deadline.

Lower-layer httpx errors are translated here, at the boundary, ``raise ... from exc``:

- the connection failing before a response: :class:`transports.base.TransportError`
  (:class:`transports.base.TransportTimeoutError` when it timed out);
- an error status or a body that is not the expected stream:
  :class:`StreamResponseError` (with ``status``, ``content_type`` and ``body``);
- the connection dropping mid-body: :class:`truss_stream.StreamTruncatedError`;
- httpx's read timeout expiring mid-body (the idle limit of a sync reader):
  :class:`truss_stream.StreamTimeoutError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Final, Generic, TypeVar

import httpx
from httpx._decoders import SUPPORTED_DECODERS

from truss_stream import TAG_SIZE, StreamTimeoutError, StreamTruncatedError

from .base import TransportError, TransportTimeoutError
from .observability import inject_headers

__all__ = [
    "BODY_READ_BYTES",
    "ClientTransport",
    "FrameClock",
    "FrameCounter",
    "StreamResponseError",
    "aiter_body",
    "aiter_timed",
    "aopen_http_stream",
    "iter_body",
    "iter_timed",
    "open_http_stream",
    "request_timeout",
    "with_accept",
]

_MAX_BODY = 4096
# How much of a body that is not text goes into an error message (as a repr).
_MAX_BINARY_PREVIEW = 32

#: How much one socket read of a binary stream's body asks for (httpcore's default
#: is 64 KiB). A 4 MiB frame then arrives in a handful of chunks, not ~130, and
#: every chunk costs httpcore, h11, httpx and the reader a pass of Python work.
BODY_READ_BYTES: Final = 1024 * 1024
# The attributes leading from an httpx response's stream to httpcore's HTTP/1.1
# connection (httpx 0.28 / httpcore 1.0), which holds the read size.
_TO_CONNECTION = ("_stream", "_httpcore_stream", "_stream", "_connection")

# Errors that mean "the bytes stopped coming": the stream is truncated.
_CUT = (httpx.RemoteProtocolError, httpx.ReadError, httpx.StreamClosed)


class StreamResponseError(TransportError):
    """The server answered with something other than the expected stream.

    Either an HTTP error status, or a success status with another content type.

    Attributes:
        status: the HTTP status code.
        content_type: the response's ``Content-Type`` header.
        body: the start of the response body, decoded as text (at most 4 KiB).
    """

    def __init__(self, message: str, *, status: int, content_type: str, body: str) -> None:
        super().__init__(message, status=status, body=body)
        self.content_type = content_type


def _media_type(response: httpx.Response) -> str:
    content_type: str = response.headers.get("content-type", "")
    return content_type.split(";", 1)[0].strip().lower()


def _body_text(body: bytes) -> str:
    """A body for an error message: text as text (at most 4 KiB), anything else as a short repr."""
    head = body[:_MAX_BODY]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not just a character cut at the 4 KiB mark
            return f"<{len(body)}+ bytes of binary data: {body[:_MAX_BINARY_PREVIEW]!r}...>"
        text = head[: exc.start].decode("utf-8")
    if any(ch < " " and ch not in "\t\n\r" for ch in text):
        return f"<{len(body)}+ bytes of binary data: {body[:_MAX_BINARY_PREVIEW]!r}...>"
    return text


def _error(response: httpx.Response, expected: str, body: bytes) -> StreamResponseError:
    content_type = response.headers.get("content-type", "")
    text = _body_text(body)
    if not response.is_success:
        message = f"HTTP {response.status_code} {response.reason_phrase}"
    elif _media_type(response) != expected:
        message = f"expected {expected}, got {content_type or 'no content type'}"
    else:
        coding = response.headers.get("content-encoding", "")
        message = f"the response's Content-Encoding {coding!r} is not one this client decodes"
        text = ""
    return StreamResponseError(
        message, status=response.status_code, content_type=content_type, body=text
    )


def _decodable(response: httpx.Response) -> bool:
    """True when every content coding of ``response`` is one the request advertised.

    httpx advertises the codings it decodes (``SUPPORTED_DECODERS``); a request
    may narrow that with its own ``Accept-Encoding`` (``identity``: none).
    """
    coding = response.headers.get("content-encoding", "")
    if not coding:
        return True
    accepted = response.request.headers.get("accept-encoding", "")
    offered = {value.split(";", 1)[0].strip().lower() for value in accepted.split(",")}
    for value in coding.split(","):
        value = value.strip().lower()
        if value in ("", "identity"):
            continue
        if value not in offered or value not in SUPPORTED_DECODERS:
            return False
    return True


def _acceptable(response: httpx.Response, media_type: str) -> bool:
    return response.is_success and _media_type(response) == media_type and _decodable(response)


def _translate(exc: httpx.TransportError, method: str, url: str) -> Exception:
    if isinstance(exc, _CUT):
        return StreamTruncatedError(f"connection lost before the stream started: {exc!r}")
    if isinstance(exc, httpx.TimeoutException):
        return TransportTimeoutError(f"{method} {url} timed out: {exc!r}")
    return TransportError(f"{method} {url} failed: {exc!r}")


@contextlib.contextmanager
def open_http_stream(
    client: httpx.Client, method: str, url: str, media_type: str, **httpx_kwargs: Any
) -> Iterator[httpx.Response]:
    """Send a streaming request and check that the response is a ``media_type`` stream.

    Raises:
        TransportError: the request failed before a response arrived.
        StreamResponseError: an error status or another content type.
    """
    with contextlib.ExitStack() as stack:
        try:
            response = stack.enter_context(client.stream(method, url, **httpx_kwargs))
            if not _acceptable(response, media_type):
                body = bytearray()
                for chunk in response.iter_raw():
                    body += chunk
                    if len(body) >= _MAX_BODY:
                        break
                raise _error(response, media_type, bytes(body))
        except httpx.TransportError as exc:
            raise _translate(exc, method, url) from exc
        yield response


@contextlib.asynccontextmanager
async def aopen_http_stream(
    client: httpx.AsyncClient, method: str, url: str, media_type: str, **httpx_kwargs: Any
) -> AsyncIterator[httpx.Response]:
    """The async twin of :func:`open_http_stream`."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            response = await stack.enter_async_context(client.stream(method, url, **httpx_kwargs))
            if not _acceptable(response, media_type):
                body = bytearray()
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) >= _MAX_BODY:
                        break
                raise _error(response, media_type, bytes(body))
        except httpx.TransportError as exc:
            raise _translate(exc, method, url) from exc
        yield response


ClientT = TypeVar("ClientT", httpx.Client, httpx.AsyncClient)
OptionsT = TypeVar("OptionsT")


class ClientTransport(Generic[ClientT, OptionsT]):
    """The request an httpx client transport sends (again, when resuming), and its options.

    The one constructor of the SSE and chunked-HTTP transports, sync and async.

    Args:
        client: the httpx client (``httpx.Client`` or ``httpx.AsyncClient``).
        method: HTTP method.
        url: the endpoint.
        options: the transport's options object (None: its defaults).
        **httpx_kwargs: passed to ``client.stream``.
    """

    def __init__(
        self,
        client: ClientT,
        method: str,
        url: str,
        *,
        options: OptionsT | None = None,
        **httpx_kwargs: Any,
    ) -> None:
        self._client: ClientT = client
        self._method, self._url, self._kwargs = method, url, httpx_kwargs
        self._options = options if options is not None else self._default_options()

    def _default_options(self) -> OptionsT:
        raise NotImplementedError

    def _stream_args(
        self, media_type: str, clock: FrameClock, headers: Mapping[str, str] | None = None
    ) -> tuple[str, str, str, dict[str, Any]]:
        """``open_http_stream``'s arguments after the client: method, url, media type, kwargs."""
        kwargs = request_timeout(self._client, with_accept(self._kwargs, media_type), clock)
        kwargs["headers"].update(headers or {})
        return self._method, self._url, media_type, kwargs


def request_timeout(
    client: httpx.Client | httpx.AsyncClient, httpx_kwargs: Mapping[str, Any], clock: FrameClock
) -> dict[str, Any]:
    """``httpx_kwargs`` with httpx's timeout cut to what is left of ``clock``'s wait.

    Until the response headers arrive (our servers send them with the first frame)
    httpx's own timeouts are the only limit a sync request has, so they are bounded
    by the current frame wait. An explicit ``timeout=`` in ``httpx_kwargs`` wins.
    """
    deadline = clock.deadline()
    if deadline is None or "timeout" in httpx_kwargs:
        return dict(httpx_kwargs)
    left = max(deadline - time.monotonic(), 0.001)
    base = client.timeout

    def cut(value: float | None) -> float:
        return left if value is None else min(value, left)

    timeout = httpx.Timeout(
        connect=cut(base.connect), read=cut(base.read), write=base.write, pool=cut(base.pool)
    )
    return {**httpx_kwargs, "timeout": timeout}


def with_accept(kwargs: Mapping[str, Any], media_type: str) -> dict[str, Any]:
    """Copy httpx keyword arguments, adding ``Accept: media_type`` unless set.

    The current OpenTelemetry trace context (``traceparent``...) is added too, when
    there is one (docs/observability.md).
    """
    headers = httpx.Headers(kwargs.get("headers"))
    headers.setdefault("Accept", media_type)
    inject_headers(headers)
    return {**kwargs, "headers": headers}


@contextlib.contextmanager
def wide_reads(response: httpx.Response, size: int = BODY_READ_BYTES) -> Iterator[bool]:
    """Read ``response``'s body in socket reads of up to ``size`` bytes while inside.

    httpcore reads an HTTP/1.1 body 64 KiB at a time (``READ_NUM_BYTES``, a class
    attribute of its connection), with no public option. This sets it on the one
    connection serving ``response``, and puts the default back on exit (the
    connection returns to the pool). Gives True when it could; when the httpx /
    httpcore internals are not the expected ones (another transport, HTTP/2, a
    new version), nothing changes and it gives False: reads stay 64 KiB, slower
    but correct.
    """
    target: Any = response.stream
    for name in _TO_CONNECTION:
        target = getattr(target, name, None)
    default = getattr(type(target), "READ_NUM_BYTES", None)
    if not isinstance(default, int) or isinstance(default, bool):
        yield False
        return
    target.READ_NUM_BYTES = max(size, default)
    try:
        yield True
    finally:
        with contextlib.suppress(AttributeError):
            del target.READ_NUM_BYTES


def iter_body(response: httpx.Response) -> Iterator[bytes]:
    """Yield the decoded body chunks as they arrive; a dropped connection is a truncation.

    Raises:
        StreamTruncatedError: the connection dropped before the body ended.
        StreamTimeoutError: httpx's read timeout expired between chunks.
    """
    try:
        yield from response.iter_bytes()
    except _CUT as exc:
        raise StreamTruncatedError(f"connection lost mid-stream: {exc!r}") from exc
    except httpx.TimeoutException as exc:
        raise StreamTimeoutError(f"no data within httpx's read timeout: {exc!r}") from exc
    except httpx.DecodingError as exc:
        raise StreamTruncatedError(f"the compressed body is cut or corrupt: {exc!r}") from exc


async def aiter_body(response: httpx.Response) -> AsyncIterator[bytes]:
    """The async twin of :func:`iter_body`."""
    try:
        async for chunk in response.aiter_bytes():
            yield chunk
    except _CUT as exc:
        raise StreamTruncatedError(f"connection lost mid-stream: {exc!r}") from exc
    except httpx.TimeoutException as exc:
        raise StreamTimeoutError(f"no data within httpx's read timeout: {exc!r}") from exc
    except httpx.DecodingError as exc:
        raise StreamTruncatedError(f"the compressed body is cut or corrupt: {exc!r}") from exc


# Time limits ----------------------------------------------------------------------------


def _limit(name: str, seconds: float | None) -> float | None:
    if seconds is not None and not seconds > 0:
        raise ValueError(f"{name} must be > 0 or None, got {seconds!r}")
    return seconds


class FrameClock:
    """The idle and total limits of one client stream, sans IO.

    A *wait* starts when the consumer asks for data after the last frame it got
    and ends at the next whole frame (:meth:`frame`); pings, partial frames and
    reconnections inside it do not reset it. Its deadline is ``idle_timeout``
    after its start, and never later than ``total_timeout`` after the clock's
    creation. Deadlines are ``time.monotonic()`` values.

    Args:
        idle_timeout: most seconds one wait for a frame may take; None: no limit.
        total_timeout: most seconds for the whole stream; None: no limit.
    """

    __slots__ = ("_idle", "_total", "_total_deadline", "_wait")

    def __init__(self, idle_timeout: float | None, total_timeout: float | None) -> None:
        self._idle = _limit("idle_timeout", idle_timeout)
        self._total = _limit("total_timeout", total_timeout)
        self._total_deadline = None if total_timeout is None else time.monotonic() + total_timeout
        self._wait: float | None = None

    @property
    def active(self) -> bool:
        """True when some limit is set."""
        return self._idle is not None or self._total is not None

    def deadline(self) -> float | None:
        """The current wait's deadline (starting a wait if none is running), or None."""
        if self._wait is None:
            wait = None if self._idle is None else time.monotonic() + self._idle
            total = self._total_deadline
            if total is not None:
                wait = total if wait is None else min(wait, total)
            self._wait = wait
        return self._wait

    def frame(self) -> None:
        """A whole frame arrived: the next request for data starts a new wait."""
        if self._idle is not None:
            self._wait = None

    def expired(self) -> StreamTimeoutError:
        """The error for a wait that reached its deadline."""
        total = self._total_deadline
        if total is not None and time.monotonic() >= total - 0.001:
            return StreamTimeoutError(f"the stream took longer than total_timeout={self._total}s")
        return StreamTimeoutError(f"no frame for idle_timeout={self._idle}s")


class FrameCounter:
    """Counts the whole frames in a binary body, chunk by chunk, without copying them.

    What the chunked transport's clock needs to tell a frame from a partial one;
    a tag it cannot read stops the count (the reader reports the bad tag itself).
    """

    __slots__ = ("_skip", "_tag")

    def __init__(self) -> None:
        self._tag = bytearray()
        self._skip = -1  # payload bytes left in the current frame; -1: reading a tag

    def feed(self, chunk: bytes) -> int:
        """The number of frames ``chunk`` completed."""
        done = 0
        pos, size = 0, len(chunk)
        while pos < size:
            if self._skip < 0:
                take = min(TAG_SIZE - len(self._tag), size - pos)
                self._tag += chunk[pos : pos + take]
                pos += take
                if len(self._tag) < TAG_SIZE:
                    break
                self._skip = int.from_bytes(self._tag[1:TAG_SIZE], "big")
                self._tag.clear()
            take = min(self._skip, size - pos)
            pos += take
            self._skip -= take
            if self._skip == 0:
                done += 1
                self._skip = -1
        return done


class _Watchdog:
    """Shuts a socket down when a sync read outlives its deadline.

    A blocking ``recv`` cannot be interrupted from its own thread, and httpx's
    read timeout restarts with every byte (a ping, part of a frame), so a thread
    waits for the deadline and ``shutdown()`` wakes the read with an EOF.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._closed = False
        self.fired = False
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float) -> None:
        with self._cond:
            self._deadline = deadline
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="truss-stream-watchdog", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._deadline = None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                deadline = self._deadline
                if deadline is None:
                    self._cond.wait()
                    continue
                left = deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self.fired = True
                self._deadline = None
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)


def _socket_of(response: httpx.Response) -> socket.socket | None:
    stream = response.extensions.get("network_stream")
    get = getattr(stream, "get_extra_info", None)
    sock = get("socket") if get is not None else None
    return sock if isinstance(sock, socket.socket) else None


def iter_timed(
    response: httpx.Response,
    clock: FrameClock,
    stack: contextlib.ExitStack,
    frames: FrameCounter | None = None,
) -> Iterator[bytes]:
    """:func:`iter_body` with ``clock``'s deadlines held by a watchdog (see :class:`_Watchdog`).

    Without a socket to watch (a custom httpx transport) the deadline is checked
    between chunks and httpx's read timeout (see :func:`request_timeout`) is the limit.
    With ``frames``, a chunk that completes a frame ends the clock's wait (a body
    of raw frames); otherwise the caller tells the clock.

    Raises:
        StreamTimeoutError: the current wait passed its deadline.
    """
    chunks = iter_body(response)
    if not clock.active:
        yield from chunks
        return
    sock = _socket_of(response)
    watchdog = None if sock is None else _Watchdog(sock)
    if watchdog is not None:
        stack.callback(watchdog.close)
    while True:
        deadline = clock.deadline()
        assert deadline is not None
        if deadline <= time.monotonic():
            raise clock.expired()
        if watchdog is not None:
            watchdog.arm(deadline)
        try:
            chunk = next(chunks, None)
        except (StreamTruncatedError, StreamTimeoutError) as exc:
            # The watchdog's cut, or httpx's read timeout (cut to this wait's budget).
            if (watchdog is not None and watchdog.fired) or time.monotonic() >= deadline - 0.05:
                raise clock.expired() from exc
            raise
        finally:
            if watchdog is not None:
                watchdog.disarm()
        if watchdog is not None and watchdog.fired:
            raise clock.expired()  # cut just as the chunk came: the socket is gone
        if chunk is None:
            return
        if frames is not None and frames.feed(chunk):
            clock.frame()
        yield chunk


async def aiter_timed(
    response: httpx.Response, clock: FrameClock, frames: FrameCounter | None = None
) -> AsyncIterator[bytes]:
    """The async twin of :func:`iter_timed`: each read waits under the current deadline."""
    chunks = aiter_body(response)
    if not clock.active:
        async for chunk in chunks:
            yield chunk
        return
    while True:
        deadline = clock.deadline()
        assert deadline is not None
        left = deadline - time.monotonic()
        if left <= 0:
            raise clock.expired()
        try:
            chunk = await asyncio.wait_for(chunks.__anext__(), left)
        except asyncio.TimeoutError:
            raise clock.expired() from None
        except StopAsyncIteration:
            return
        if frames is not None and frames.feed(chunk):
            clock.frame()
        yield chunk
