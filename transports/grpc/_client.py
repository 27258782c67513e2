"""Client side: one server-streaming call, its messages handed to the typed reader.

The sync (``grpc``) and async (``grpc.aio``) transports differ only in how they
call and iterate; both ask for the raw wire (``truss-stream-wire: frames``), so each
message is one frame, fed to the reader as is. gRPC errors are translated here, at
the boundary, into :class:`GrpcStatusError` (``raise ... from`` the original).

Both read the first message before handing the stream over, so a call that fails
before its first frame (an unknown method, a producer that raised, a deadline, a
refused connection) raises when the stream is opened, as an HTTP error status would.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc
import grpc.aio

from transports.base import (
    AsyncBaseTransport,
    BaseTransport,
    TransportError,
    aopen_reader,
    open_reader,
)
from truss_stream import (
    AsyncStreamReader,
    StreamReader,
    StreamTimeoutError,
    StreamTruncatedError,
    StreamTypes,
)
from truss_stream._schema import FooterTT, HeaderTT, ItemT

from ._options import ClientTLS, GrpcOptions, acreate_channel, create_channel
from ._wire import DEFAULT_SERVICE_NAME, RAW_WIRE, WIRE_METADATA_KEY, encode_request, method_path

__all__ = [
    "AsyncGrpcTransport",
    "GrpcStatusError",
    "GrpcStreamTruncatedError",
    "GrpcTransport",
    "aconnect",
    "connect",
]

Metadata = Sequence[tuple[str, str | bytes]]


class GrpcStatusError(TransportError):
    """A gRPC call ended with a status other than OK.

    Attributes:
        code: the ``grpc.StatusCode``.
        status: the status code's name (``"DEADLINE_EXCEEDED"``, ...).
        details: the status message from the server (or the local gRPC library).
        method: the full method path called.
    """

    def __init__(self, method: str, code: grpc.StatusCode, details: str) -> None:
        body = details
        if code is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
            body += (
                " (one gRPC message carries one frame: give the client and the server "
                "the same GrpcOptions(max_message_bytes=...), large enough for a frame)"
            )
        super().__init__(f"gRPC call {method} failed with {code.name}", status=code.name, body=body)
        self.code = code
        self.details = details
        self.method = method


class GrpcStreamTruncatedError(GrpcStatusError, StreamTruncatedError):
    """A call that had started streaming ended with a status other than OK.

    The server was stopped or killed, the connection was lost, the deadline passed
    mid-stream, ...: the stream ended before its END frame, so this is both a
    :class:`GrpcStatusError` (with the status) and a ``StreamTruncatedError``, like
    a dropped connection on the other transports.
    """


def _cut_short(exc: GrpcStatusError) -> GrpcStreamTruncatedError:
    return GrpcStreamTruncatedError(exc.method, exc.code, exc.details)


def _status_error(method: str, exc: grpc.RpcError) -> GrpcStatusError:
    # Errors raised before a call exists (e.g. a bad target) may lack code()/details().
    try:
        code, details = exc.code(), exc.details() or ""
    except (AttributeError, TypeError):
        code, details = grpc.StatusCode.UNKNOWN, str(exc)
    return GrpcStatusError(method, code, details)


class _CallSpec:
    """What both transports send: the method path, the request and the call options."""

    def __init__(
        self,
        method: str,
        request: bytes,
        timeout: float | None,
        metadata: Metadata | None,
        service_name: str,
        wait_for_ready: bool | None,
    ) -> None:
        self.path = method_path(method, service_name)
        self.request = encode_request(request)
        self.timeout = timeout
        self.metadata: tuple[tuple[str, str | bytes], ...] = (
            *(metadata or ()),
            (WIRE_METADATA_KEY, RAW_WIRE),
        )
        self.wait_for_ready = wait_for_ready


class _IdleWatchdog:
    """Cancels a sync call blocked longer than ``idle`` seconds waiting for a message.

    The sync ``grpc`` iterator has no per-message timeout; one thread per call checks
    the time spent inside ``next()`` (time the consumer spends elsewhere is not idle).
    """

    def __init__(self, call: Any, idle: float) -> None:
        self.idle = idle
        self.waiting_since: float | None = None
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(call,), name="grpc-idle-watchdog", daemon=True
        )
        self._thread.start()

    def _run(self, call: Any) -> None:
        tick = min(self.idle / 4, 0.25)
        while not self._stop.wait(tick):
            since = self.waiting_since
            if since is not None and time.monotonic() - since > self.idle:
                self.fired = True
                call.cancel()
                return

    def stop(self) -> None:
        self._stop.set()


class GrpcTransport(BaseTransport):
    """Sync transport: one call to a FrameStream method over a ``grpc.Channel``.

    Args:
        channel: an open ``grpc.Channel`` (left open), or a target string (a channel
            is opened with ``options`` and ``tls`` for each stream and closed after).
        method: the method name (``/<service_name>/<method>``) or a full ``/path``.
        request: the request body the producer receives.
        timeout: the call's deadline in seconds, covering the whole stream.
        metadata: extra call metadata (``(key, value)`` pairs).
        service_name: the service serving ``method``.
        options: channel settings when ``channel`` is a target.
        tls: TLS when ``channel`` is a target; ``None`` is plaintext.
        wait_for_ready: queue the call until the channel connects instead of failing
            fast with UNAVAILABLE.
        idle_timeout: most seconds to wait for each message; past it the call is
            cancelled and :class:`truss_stream.StreamTimeoutError` raised (the sync
            twin of the async reader's ``idle_timeout``).
    """

    def __init__(
        self,
        channel: grpc.Channel | str,
        method: str,
        *,
        request: bytes = b"",
        timeout: float | None = None,
        metadata: Metadata | None = None,
        service_name: str = DEFAULT_SERVICE_NAME,
        options: GrpcOptions | None = None,
        tls: ClientTLS | None = None,
        wait_for_ready: bool | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self._channel = channel
        self._spec = _CallSpec(method, request, timeout, metadata, service_name, wait_for_ready)
        self._options = options
        self._tls = tls
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be > 0 or None")
        self._idle = idle_timeout

    def open_stream(self) -> contextlib.AbstractContextManager[Iterator[bytes]]:
        """Start the call and give its messages, one frame each.

        Raises:
            GrpcStatusError: the call failed before its first message.
        """
        return self._open()

    @contextlib.contextmanager
    def _open(self) -> Iterator[Iterator[bytes]]:
        with contextlib.ExitStack() as stack:
            channel = self._channel
            if isinstance(channel, str):
                channel = stack.enter_context(
                    create_channel(channel, options=self._options, tls=self._tls)
                )
            spec = self._spec
            call = channel.unary_stream(spec.path, None, None)(
                spec.request,
                timeout=spec.timeout,
                metadata=spec.metadata,
                wait_for_ready=spec.wait_for_ready,
            )
            stack.callback(call.cancel)
            watchdog = None
            if self._idle is not None:
                watchdog = _IdleWatchdog(call, self._idle)
                stack.callback(watchdog.stop)
            messages = iter(call)
            first = self._next(messages, watchdog)
            yield self._chunks(messages, first, watchdog)

    def _next(self, messages: Iterator[bytes], watchdog: _IdleWatchdog | None) -> bytes | None:
        if watchdog is not None:
            watchdog.waiting_since = time.monotonic()
        try:
            return next(messages)
        except StopIteration:
            return None
        except grpc.RpcError as exc:
            if watchdog is not None and watchdog.fired:
                raise StreamTimeoutError(
                    f"no message for idle_timeout={watchdog.idle}s on {self._spec.path}"
                ) from exc
            raise _status_error(self._spec.path, exc) from exc
        finally:
            if watchdog is not None:
                watchdog.waiting_since = None

    def _chunks(
        self, messages: Iterator[bytes], first: bytes | None, watchdog: _IdleWatchdog | None
    ) -> Iterator[bytes]:
        message = first
        while message is not None:
            yield message
            try:
                message = self._next(messages, watchdog)
            except GrpcStatusError as exc:
                raise _cut_short(exc) from exc.__cause__


class AsyncGrpcTransport(AsyncBaseTransport):
    """Async transport over ``grpc.aio``; the twin of :class:`GrpcTransport`.

    ``channel`` is an open ``grpc.aio.Channel`` (left open) or a target string.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel | str,
        method: str,
        *,
        request: bytes = b"",
        timeout: float | None = None,
        metadata: Metadata | None = None,
        service_name: str = DEFAULT_SERVICE_NAME,
        options: GrpcOptions | None = None,
        tls: ClientTLS | None = None,
        wait_for_ready: bool | None = None,
    ) -> None:
        self._channel = channel
        self._spec = _CallSpec(method, request, timeout, metadata, service_name, wait_for_ready)
        self._options = options
        self._tls = tls

    def open_stream(self) -> contextlib.AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Start the call and give its messages, one frame each.

        Raises:
            GrpcStatusError: the call failed before its first message.
        """
        return self._open()

    @contextlib.asynccontextmanager
    async def _open(self) -> AsyncIterator[AsyncIterator[bytes]]:
        async with contextlib.AsyncExitStack() as stack:
            channel = self._channel
            if isinstance(channel, str):
                channel = await stack.enter_async_context(
                    acreate_channel(channel, options=self._options, tls=self._tls)
                )
            spec = self._spec
            call = channel.unary_stream(spec.path, None, None)(
                spec.request,
                timeout=spec.timeout,
                metadata=spec.metadata,
                wait_for_ready=spec.wait_for_ready,
            )
            stack.callback(call.cancel)
            messages = call.__aiter__()
            first = await self._next(messages)
            yield self._chunks(messages, first)

    async def _next(self, messages: AsyncIterator[bytes]) -> bytes | None:
        try:
            return await messages.__anext__()
        except StopAsyncIteration:
            return None
        except grpc.RpcError as exc:
            raise _status_error(self._spec.path, exc) from exc

    async def _chunks(
        self, messages: AsyncIterator[bytes], first: bytes | None
    ) -> AsyncIterator[bytes]:
        message = first
        while message is not None:
            yield message
            try:
                message = await self._next(messages)
            except GrpcStatusError as exc:
                raise _cut_short(exc) from exc.__cause__


@contextlib.contextmanager
def connect(
    channel: grpc.Channel | str,
    method: str,
    types: StreamTypes[ItemT, HeaderTT, FooterTT],
    *,
    request: bytes = b"",
    timeout: float | None = None,
    metadata: Metadata | None = None,
    service_name: str = DEFAULT_SERVICE_NAME,
    options: GrpcOptions | None = None,
    tls: ClientTLS | None = None,
    wait_for_ready: bool | None = None,
    **reader_kwargs: Any,
) -> Iterator[StreamReader[ItemT, HeaderTT, FooterTT]]:
    """Call a FrameStream method and give a sync typed reader over its stream.

    Args:
        channel: a ``grpc.Channel`` (left open) or a target string.
        method: the method name, or a full ``/package.Service/Method`` path.
        types: the stream type (``truss_stream.stream_types(...)``).
        request: the request body for the producer.
        timeout: deadline in seconds for the whole stream.
        metadata: extra call metadata.
        service_name: the service serving ``method``.
        options: channel settings when ``channel`` is a target.
        tls: TLS when ``channel`` is a target.
        wait_for_ready: wait for the channel to connect instead of failing fast.
        **reader_kwargs: passed to ``truss_stream.stream_reader`` (``require_end``,
            ``max_frame_bytes``, ``copy_arrays``, ``total_timeout``); ``idle_timeout``
            also goes to the transport, which enforces it for the sync reader.

    Returns:
        A context manager giving the reader; leaving it cancels the call.

    Raises:
        GrpcStatusError: the call failed (on entry if before the first frame, else
            while reading).
        StreamError: the stream was truncated, malformed, or failed remotely.
    """
    transport = GrpcTransport(
        channel,
        method,
        request=request,
        timeout=timeout,
        metadata=metadata,
        service_name=service_name,
        options=options,
        tls=tls,
        wait_for_ready=wait_for_ready,
        idle_timeout=reader_kwargs.get("idle_timeout"),
    )
    with open_reader(transport, types, **reader_kwargs) as reader:
        yield reader


@contextlib.asynccontextmanager
async def aconnect(
    channel: grpc.aio.Channel | str,
    method: str,
    types: StreamTypes[ItemT, HeaderTT, FooterTT],
    *,
    request: bytes = b"",
    timeout: float | None = None,
    metadata: Metadata | None = None,
    service_name: str = DEFAULT_SERVICE_NAME,
    options: GrpcOptions | None = None,
    tls: ClientTLS | None = None,
    wait_for_ready: bool | None = None,
    **reader_kwargs: Any,
) -> AsyncIterator[AsyncStreamReader[ItemT, HeaderTT, FooterTT]]:
    """The async twin of :func:`connect`, over a ``grpc.aio.Channel`` or a target."""
    transport = AsyncGrpcTransport(
        channel,
        method,
        request=request,
        timeout=timeout,
        metadata=metadata,
        service_name=service_name,
        options=options,
        tls=tls,
        wait_for_ready=wait_for_ready,
    )
    async with aopen_reader(transport, types, **reader_kwargs) as reader:
        yield reader
