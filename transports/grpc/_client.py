"""Client side: one server-streaming call, its messages handed to the typed reader.

One sans-IO core (:class:`_CallCore`: the call's path, request, metadata, and every
decision about what an event means: which error a status becomes, whether a
timeout fired) and two thin drivers, :class:`GrpcTransport` over ``grpc`` and
:class:`AsyncGrpcTransport` over ``grpc.aio``, which only call and iterate. Every
setting lives in one :class:`GrpcClientOptions`; the keyword arguments of the
transports and of ``connect`` / ``aconnect`` (:class:`GrpcCallKwargs`) map into it.

Both ask for the raw wire (``truss-stream-wire: frames``), so each message is one
frame, fed to the reader as is. gRPC errors are translated here, at the boundary,
into :class:`GrpcStatusError` (``raise ... from`` the original). Both read the first
message before handing the stream over, so a call that fails before its first frame
(an unknown method, a producer that raised, a deadline, a refused connection) raises
when the stream is opened, as an HTTP error status would.

Timeouts: ``idle_timeout`` is the most seconds between two messages (one message is
one frame; HTTP/2 keepalive pings are not messages and do not count) and
``total_timeout`` bounds the whole stream. Both raise
:class:`truss_stream.StreamTimeoutError`, sync and async, from the core's one
deadline: the async driver bounds each message wait by the core's budget; the sync
driver runs a watchdog thread that cancels a call blocked past either limit (a
blocking ``next()`` cannot be interrupted otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import anyio
import grpc
import grpc.aio
from typing_extensions import TypedDict, Unpack

from transports.base import (
    AsyncBaseTransport,
    BaseTransport,
    TransportError,
    aopen_reader,
    open_reader,
)
from truss_stream import (
    AsyncStreamReader,
    MsgpackLimits,
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
    "GrpcCallKwargs",
    "GrpcClientOptions",
    "GrpcConnectKwargs",
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


class GrpcCallKwargs(TypedDict, total=False):
    """The keyword arguments the transports, ``connect`` and ``aconnect`` take.

    Each maps onto the :class:`GrpcClientOptions` field of the same name
    (``options`` onto ``channel_options``).
    """

    request: bytes
    timeout: float | None
    metadata: Metadata | None
    service_name: str
    options: GrpcOptions | None
    tls: ClientTLS | None
    wait_for_ready: bool | None
    idle_timeout: float | None
    total_timeout: float | None


class GrpcConnectKwargs(GrpcCallKwargs, total=False):
    """:class:`GrpcCallKwargs` plus the reader's own (``truss_stream.stream_reader``)."""

    require_end: bool
    max_frame_bytes: int
    copy_arrays: bool
    msgpack_limits: MsgpackLimits | None


_READER_KEYS = ("require_end", "max_frame_bytes", "copy_arrays", "msgpack_limits")


@dataclasses.dataclass(frozen=True)
class GrpcClientOptions:
    """Everything about one client call, in one place.

    Attributes:
        request: the request body the producer receives.
        timeout: the call's gRPC deadline in seconds, covering the whole stream
            (past it the call ends with DEADLINE_EXCEEDED).
        metadata: extra call metadata (``(key, value)`` pairs).
        service_name: the service serving the method.
        channel_options: channel settings when the channel is given as a target
            (the ``options=`` keyword).
        tls: TLS when the channel is given as a target; ``None`` is plaintext.
        wait_for_ready: queue the call until the channel connects instead of
            failing fast with UNAVAILABLE.
        idle_timeout: most seconds between two messages (frames); keepalive pings
            do not count. Past it: :class:`truss_stream.StreamTimeoutError`.
        total_timeout: most seconds for the whole stream, from the call's start.
            Past it: :class:`truss_stream.StreamTimeoutError`.
    """

    request: bytes = b""
    timeout: float | None = None
    metadata: Metadata | None = None
    service_name: str = DEFAULT_SERVICE_NAME
    channel_options: GrpcOptions | None = None
    tls: ClientTLS | None = None
    wait_for_ready: bool | None = None
    idle_timeout: float | None = None
    total_timeout: float | None = None

    def __post_init__(self) -> None:
        for name in ("idle_timeout", "total_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 or None")

    def with_kwargs(self, **kwargs: Unpack[GrpcCallKwargs]) -> GrpcClientOptions:
        """These options with the given keyword arguments applied on top.

        Raises:
            TypeError: an unknown keyword.
        """
        fields: dict[str, Any] = dict(kwargs)
        if "options" in fields:
            fields["channel_options"] = fields.pop("options")
        unknown = set(fields) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"unknown gRPC client option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **fields) if fields else self


def _options_of(
    client_options: GrpcClientOptions | None, kwargs: GrpcCallKwargs
) -> GrpcClientOptions:
    return (client_options or GrpcClientOptions()).with_kwargs(**kwargs)


class _CallCore:
    """The sans-IO half of one call: what to send, and what each outcome means.

    The drivers report events (a message, the end, an ``RpcError``) and get back
    bytes to hand on, or the exception to raise; they never decide anything.
    """

    def __init__(self, method: str, options: GrpcClientOptions) -> None:
        self.options = options
        self.path = method_path(method, options.service_name)
        self.request = encode_request(options.request)
        self.metadata: tuple[tuple[str, str | bytes], ...] = (
            *(options.metadata or ()),
            (WIRE_METADATA_KEY, RAW_WIRE),
        )
        self.started = False
        self.timed_out: str | None = None  # "idle" / "total", once a limit passed
        total = options.total_timeout
        self.deadline = None if total is None else time.monotonic() + total
        self._total_binds = False

    def call_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the stub's unary-stream call."""
        return {
            "timeout": self.options.timeout,
            "metadata": self.metadata,
            "wait_for_ready": self.options.wait_for_ready,
        }

    def message(self, message: bytes) -> bytes:
        """A message arrived: it is one frame, handed on as it is."""
        self.started = True
        return message

    def failed(self, exc: grpc.RpcError) -> Exception:
        """The exception to raise for a call that ended with ``exc``."""
        if self.timed_out is not None:
            return self.timeout_error()
        error = _status_error(self.path, exc)
        return _cut_short(error) if self.started else error

    def budget(self) -> float | None:
        """Seconds the next message may take, or None for no limit (the async driver)."""
        idle = self.options.idle_timeout
        if self.deadline is None:
            self._total_binds = False
            return idle
        left = max(self.deadline - time.monotonic(), 0.0)
        # Which limit this budget is, for timeout_error(): a timer may fire a hair
        # before the deadline, so "now >= deadline" could name the wrong one.
        self._total_binds = idle is None or left <= idle
        return left if idle is None else min(left, idle)

    def timeout_error(self) -> StreamTimeoutError:
        """The error for a limit that passed (``timed_out``, else whichever it was)."""
        if self.timed_out is None:
            self.timed_out = "total" if self._total_binds else "idle"
        if self.timed_out == "total":
            return StreamTimeoutError(
                f"the stream took longer than total_timeout={self.options.total_timeout}s "
                f"on {self.path}"
            )
        return StreamTimeoutError(
            f"no message for idle_timeout={self.options.idle_timeout}s on {self.path}"
        )

    def watchdog(self, call: Any) -> _Watchdog | None:
        """For the sync driver: a thread enforcing the timeouts, or None if none are set."""
        idle, total = self.options.idle_timeout, self.options.total_timeout
        if idle is None and total is None:
            return None
        return _Watchdog(self, call, idle)


class _Watchdog:
    """Cancels a sync call blocked past ``idle`` (per message) or ``total`` seconds.

    The sync ``grpc`` iterator has no per-message timeout; one thread per call checks
    the time spent inside ``next()`` (time the consumer spends elsewhere is not idle)
    and the time since the call started.
    """

    def __init__(self, core: _CallCore, call: Any, idle: float | None) -> None:
        self._core = core
        self._idle = idle
        self.waiting_since: float | None = None
        self._stop = threading.Event()
        periods = [p for p in (idle, core.options.total_timeout) if p is not None]
        self._tick = min(min(periods) / 4, 0.25)
        self._thread = threading.Thread(
            target=self._run, args=(call,), name="grpc-timeout-watchdog", daemon=True
        )
        self._thread.start()

    def _run(self, call: Any) -> None:
        while not self._stop.wait(self._tick):
            now = time.monotonic()
            deadline = self._core.deadline
            if deadline is not None and now > deadline:
                self._core.timed_out = "total"
            since = self.waiting_since
            if self._idle is not None and since is not None and now - since > self._idle:
                self._core.timed_out = "idle"
            if self._core.timed_out is not None:
                call.cancel()
                return

    def stop(self) -> None:
        self._stop.set()


class GrpcTransport(BaseTransport):
    """Sync transport: one call to a FrameStream method over a ``grpc.Channel``.

    Args:
        channel: an open ``grpc.Channel`` (left open), or a target string (a channel
            is opened with the options' ``channel_options`` and ``tls`` for each
            stream and closed after).
        method: the method name (``/<service_name>/<method>``) or a full ``/path``.
        client_options: the call's settings (:class:`GrpcClientOptions`).
        **kwargs: any :class:`GrpcClientOptions` field by its keyword
            (:class:`GrpcCallKwargs`), applied on top of ``client_options``.
    """

    def __init__(
        self,
        channel: grpc.Channel | str,
        method: str,
        *,
        client_options: GrpcClientOptions | None = None,
        **kwargs: Unpack[GrpcCallKwargs],
    ) -> None:
        self._channel = channel
        self._method = method
        self.options = _options_of(client_options, kwargs)

    def open_stream(self) -> contextlib.AbstractContextManager[Iterator[bytes]]:
        """Start the call and give its messages, one frame each.

        Raises:
            GrpcStatusError: the call failed before its first message.
            StreamTimeoutError: a timeout passed before the first message.
        """
        return self._open(_CallCore(self._method, self.options))

    @contextlib.contextmanager
    def _open(self, core: _CallCore) -> Iterator[Iterator[bytes]]:
        with contextlib.ExitStack() as stack:
            channel = self._channel
            if isinstance(channel, str):
                opts = self.options
                channel = stack.enter_context(
                    create_channel(channel, options=opts.channel_options, tls=opts.tls)
                )
            call = channel.unary_stream(core.path, None, None)(core.request, **core.call_kwargs())
            stack.callback(call.cancel)
            watchdog = core.watchdog(call)
            if watchdog is not None:
                stack.callback(watchdog.stop)
            messages = iter(call)
            first = _next(core, messages, watchdog)
            yield _chunks(core, messages, first, watchdog)


def _next(core: _CallCore, messages: Iterator[bytes], watchdog: _Watchdog | None) -> bytes | None:
    if watchdog is not None:
        watchdog.waiting_since = time.monotonic()
    try:
        return core.message(next(messages))
    except StopIteration:
        return None
    except grpc.RpcError as exc:
        raise core.failed(exc) from exc
    finally:
        if watchdog is not None:
            watchdog.waiting_since = None


def _chunks(
    core: _CallCore, messages: Iterator[bytes], first: bytes | None, watchdog: _Watchdog | None
) -> Iterator[bytes]:
    message = first
    while message is not None:
        yield message
        message = _next(core, messages, watchdog)


class AsyncGrpcTransport(AsyncBaseTransport):
    """Async transport over ``grpc.aio``: the other driver of the same core.

    Takes the arguments of :class:`GrpcTransport`; ``channel`` is an open
    ``grpc.aio.Channel`` (left open) or a target string. It enforces
    ``idle_timeout`` and ``total_timeout`` itself, per message.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel | str,
        method: str,
        *,
        client_options: GrpcClientOptions | None = None,
        **kwargs: Unpack[GrpcCallKwargs],
    ) -> None:
        self._channel = channel
        self._method = method
        self.options = _options_of(client_options, kwargs)

    def open_stream(self) -> contextlib.AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Start the call and give its messages, one frame each.

        Raises:
            GrpcStatusError: the call failed before its first message.
        """
        return self._open(_CallCore(self._method, self.options))

    @contextlib.asynccontextmanager
    async def _open(self, core: _CallCore) -> AsyncIterator[AsyncIterator[bytes]]:
        async with contextlib.AsyncExitStack() as stack:
            channel = self._channel
            if isinstance(channel, str):
                opts = self.options
                channel = await stack.enter_async_context(
                    acreate_channel(channel, options=opts.channel_options, tls=opts.tls)
                )
            call = channel.unary_stream(core.path, None, None)(core.request, **core.call_kwargs())
            stack.push_async_callback(_settle, call)
            first = await _anext(core, call)
            yield _achunks(core, call, first)


async def _settle(call: Any) -> None:
    """Cancel ``call`` and wait until grpc has finished with it.

    A read cut short by a timeout leaves an operation pending in grpc's completion
    queue; if the event loop closes before it completes, grpc later delivers it to
    the closed loop ("Event loop is closed" raised in whatever loop runs next).
    Waiting for the call's status (immediate once it is cancelled) settles it here.
    """
    call.cancel()
    with (
        anyio.CancelScope(shield=True),
        anyio.move_on_after(1.0),
        contextlib.suppress(Exception),
    ):
        await call.code()


async def _anext(core: _CallCore, call: Any) -> bytes | None:
    budget = core.budget()
    try:
        message = await call.read() if budget is None else await _read_within(core, call, budget)
    except grpc.RpcError as exc:
        raise core.failed(exc) from exc
    if message is grpc.aio.EOF:  # type: ignore[attr-defined]  # (missing from grpc-stubs)
        return None
    return core.message(message)


async def _read_within(core: _CallCore, call: Any, budget: float) -> Any:
    """``call.read()`` within ``budget`` seconds, else :meth:`_CallCore.timeout_error`.

    grpc's read itself is never cancelled: a read cancelled mid-flight leaves its
    operation in grpc's completion queue, which later delivers it to the (by then
    perhaps closed) event loop. The call is cancelled instead, and the read let finish.
    """
    read = asyncio.ensure_future(call.read())
    try:
        done, _ = await asyncio.wait({read}, timeout=budget)
    finally:
        if not read.done():
            call.cancel()
            with anyio.CancelScope(shield=True), contextlib.suppress(BaseException):
                await read
    if not done:
        raise core.timeout_error()
    return read.result()


async def _achunks(core: _CallCore, call: Any, first: bytes | None) -> AsyncIterator[bytes]:
    message = first
    while message is not None:
        yield message
        message = await _anext(core, call)


def _split(
    client_options: GrpcClientOptions | None, kwargs: GrpcConnectKwargs
) -> tuple[GrpcClientOptions, dict[str, Any]]:
    """(call options, reader keyword arguments) from ``connect``'s keywords."""
    call: dict[str, Any] = {k: v for k, v in kwargs.items() if k not in _READER_KEYS}
    options = (client_options or GrpcClientOptions()).with_kwargs(**call)
    reader = {k: v for k, v in kwargs.items() if k in _READER_KEYS}
    reader["idle_timeout"] = options.idle_timeout
    reader["total_timeout"] = options.total_timeout
    return options, reader


@contextlib.contextmanager
def connect(
    channel: grpc.Channel | str,
    method: str,
    types: StreamTypes[ItemT, HeaderTT, FooterTT],
    *,
    client_options: GrpcClientOptions | None = None,
    **kwargs: Unpack[GrpcConnectKwargs],
) -> Iterator[StreamReader[ItemT, HeaderTT, FooterTT]]:
    """Call a FrameStream method and give a sync typed reader over its stream.

    Args:
        channel: a ``grpc.Channel`` (left open) or a target string.
        method: the method name, or a full ``/package.Service/Method`` path.
        types: the stream type (``truss_stream.stream_types(...)``).
        client_options: the call's settings (:class:`GrpcClientOptions`: request,
            timeout, metadata, service_name, channel options, tls, wait_for_ready,
            idle_timeout, total_timeout).
        **kwargs: any of those by keyword (``request=b"..."``, ``timeout=30``,
            ``options=GrpcOptions(...)``...), applied on top of ``client_options``,
            and the reader's ``require_end``, ``max_frame_bytes``, ``copy_arrays``,
            ``msgpack_limits``.

    Returns:
        A context manager giving the reader; leaving it cancels the call.

    Raises:
        GrpcStatusError: the call failed (on entry if before the first frame, else
            while reading, as :class:`GrpcStreamTruncatedError`).
        StreamTimeoutError: ``idle_timeout`` or ``total_timeout`` passed.
        StreamError: the stream was truncated, malformed, or failed remotely.
    """
    options, reader_kwargs = _split(client_options, kwargs)
    transport = GrpcTransport(channel, method, client_options=options)
    with open_reader(transport, types, **reader_kwargs) as reader:
        yield reader


@contextlib.asynccontextmanager
async def aconnect(
    channel: grpc.aio.Channel | str,
    method: str,
    types: StreamTypes[ItemT, HeaderTT, FooterTT],
    *,
    client_options: GrpcClientOptions | None = None,
    **kwargs: Unpack[GrpcConnectKwargs],
) -> AsyncIterator[AsyncStreamReader[ItemT, HeaderTT, FooterTT]]:
    """The async twin of :func:`connect`, over a ``grpc.aio.Channel`` or a target."""
    options, reader_kwargs = _split(client_options, kwargs)
    transport = AsyncGrpcTransport(channel, method, client_options=options)
    async with aopen_reader(transport, types, **reader_kwargs) as reader:
        yield reader
