"""Server side: producers as server-streaming methods, and a server with sane defaults.

A producer is the same callable that feeds SSE and chunked HTTP: it returns the
writer's frames as an (async) iterable. :class:`FrameStreamService` exposes each one
as a method ``/<service>/<name>`` and sends one frame per message, unchanged, through
:func:`transports.base.guard_frames` (END appended, later failures as an ERROR frame).
A producer that fails before its first frame ends the call with status INTERNAL
instead, the gRPC twin of an HTTP 500. Failures are logged with an error id
(logger ``truss_stream.server``); ``expose_errors=False`` sends clients only the
exception's type and that id. A sync producer runs in a worker thread.

Shutdown: :meth:`RunningServer.stop` ends the open streams with a going-away ERROR
frame (:class:`truss_stream.ServerGoingAwayError`) once its grace period is over,
and new calls get UNAVAILABLE; see :class:`transports.shutdown.GracefulShutdown`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, NoReturn

import anyio
import anyio.lowlevel
import grpc
import grpc.aio
from google.protobuf.descriptor_pool import DescriptorPool

from transports.base import describe_failure, guard_frames, new_stream_id, report_failure
from transports.observability import observe_grpc
from transports.shutdown import GracefulShutdown
from truss_stream import ServerGoingAwayError, error_frame, frame_info

from ._options import GrpcOptions, ServerTLS
from ._wire import (
    DEFAULT_SERVICE_NAME,
    RAW_WIRE,
    WIRE_METADATA_KEY,
    build_descriptor_pool,
    check_method_name,
    check_service_name,
    encode_frame_message,
    frames_pool,
    message_class,
)

__all__ = [
    "FrameStreamService",
    "Producer",
    "RunningServer",
    "add_stream_method",
    "serve",
    "start_server",
]

if TYPE_CHECKING:
    from transports.observability import StreamMetrics

FrameLike = bytes | bytearray | memoryview
#: ``producer(request_body, context)`` returns the writer's frames for one call.
Producer = Callable[
    [bytes, grpc.aio.ServicerContext[Any, Any]], AsyncIterable[FrameLike] | Iterable[FrameLike]
]


def _as_bytes(frame: bytes | memoryview) -> bytes:
    # gRPC sends only bytes: a memoryview over a whole bytes object is unwrapped,
    # any other costs one copy.
    if isinstance(frame, bytes):
        return frame
    owner = frame.obj
    if type(owner) is bytes and frame.c_contiguous and frame.nbytes == len(owner):
        return owner
    return bytes(frame)


def _raw_wire_requested(details: grpc.HandlerCallDetails) -> bool:
    return any(
        key == WIRE_METADATA_KEY and value == RAW_WIRE
        for key, value in (details.invocation_metadata or ())
    )


class FrameStreamService(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """A gRPC service whose methods are stream producers, one frame per message.

    Add it to a ``grpc.aio`` server with ``server.add_generic_rpc_handlers([service])``,
    or let :func:`start_server` / :func:`serve` do that together with health and
    reflection. Methods can be added until the server starts.

    Args:
        producers: method name -> producer.
        service_name: the package-qualified service name.
        expose_errors: False withholds a failed producer's message from clients,
            which get its type and an error id; the server logs the full error.
        shutdown: the :class:`transports.shutdown.GracefulShutdown` that ends this
            service's streams; by default the service has its own, which
            :meth:`RunningServer.stop` begins. Pass one to share it with HTTP routes.
        metrics: where to record stream metrics (docs/observability.md): None, the
            default registry's when prometheus_client is installed; False, nowhere.
    """

    def __init__(
        self,
        producers: Mapping[str, Producer] | None = None,
        *,
        service_name: str = DEFAULT_SERVICE_NAME,
        expose_errors: bool = True,
        shutdown: GracefulShutdown | None = None,
        metrics: StreamMetrics | bool | None = None,
    ) -> None:
        self._metrics = metrics
        self._service_name = check_service_name(service_name)
        self._expose_errors = expose_errors
        self.shutdown = shutdown if shutdown is not None else GracefulShutdown(grace=1.0)
        self._producers: dict[str, Producer] = {}
        self._request_type = message_class(frames_pool(), "StreamRequest")
        for name, producer in (producers or {}).items():
            self.add(name, producer)

    @property
    def service_name(self) -> str:
        """The package-qualified service name, e.g. ``truss_stream.FrameStream``."""
        return self._service_name

    @property
    def method_names(self) -> list[str]:
        """The method names served, in the order they were added."""
        return list(self._producers)

    def add(self, name: str, producer: Producer) -> None:
        """Serve ``producer`` as ``/<service_name>/<name>``.

        Raises:
            ValueError: ``name`` is not a valid method name or is already taken.
        """
        if check_method_name(name) in self._producers:
            raise ValueError(f"method {name!r} is already served by {self._service_name}")
        self._producers[name] = producer

    def descriptor_pool(self, *, extra_files: Sequence[bytes] = ()) -> DescriptorPool:
        """A private protobuf descriptor pool describing this service (for reflection)."""
        return build_descriptor_pool(self._service_name, self._producers, extra_files=extra_files)

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        """Return the handler for a call to one of the producers, or ``None``."""
        service, _, name = handler_call_details.method.lstrip("/").partition("/")
        producer = self._producers.get(name) if service == self._service_name else None
        if producer is None:
            return None
        return grpc.unary_stream_rpc_method_handler(
            self._behavior(producer, handler_call_details.method, self._metrics),
            request_deserializer=self._request_type.FromString,
            response_serializer=None
            if _raw_wire_requested(handler_call_details)
            else encode_frame_message,
        )

    def _behavior(
        self, producer: Producer, route: str, metrics: StreamMetrics | bool | None
    ) -> Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Any]:
        drain, expose = self.shutdown, self._expose_errors

        async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            if drain.shutting_down:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            with drain.track():
                await _serve_call(producer, request, context, drain, expose, route, metrics)

        return handle


async def _serve_call(
    producer: Producer,
    request: Any,
    context: grpc.aio.ServicerContext[Any, Any],
    drain: GracefulShutdown,
    expose: bool,
    route: str,
    metrics: StreamMetrics | bool | None,
) -> None:
    # A coroutine writing with context.write, not an async generator: when the
    # client cancels, the CancelledError lands here and the finally below closes
    # the producer at once, not whenever the generator is collected.
    stream_id = new_stream_id()
    # Cancelled once the shutdown's grace is over (entered below, created here so the
    # observer can tell a stream ended by the shutdown from one the client left).
    scope = anyio.CancelScope()
    try:
        frames = observe_grpc(
            guard_frames(
                producer(bytes(request.body), context),
                expose_errors=expose,
                stream_id=stream_id,
            ),
            context,
            route=route,
            metrics=metrics,
            stream_id=stream_id,
            going_away=lambda: scope.cancel_called,
        )
    except Exception as exc:
        await _abort_before_first_frame(context, exc, stream_id, expose)
    codec = None
    try:
        # A cancel scope, not a task group: a task group would wrap the AbortError
        # grpc needs to see in an ExceptionGroup.
        with scope:
            watcher = asyncio.ensure_future(_cancel_when_due(drain, scope))
            try:
                try:
                    first = await frames.__anext__()
                except StopAsyncIteration:  # pragma: no cover - guard_frames always ends
                    return
                except Exception as exc:
                    await _abort_before_first_frame(context, exc, stream_id, expose)
                codec = frame_info(first)[1]
                with anyio.CancelScope() as writing:  # shielded during each write (_write)
                    await _write(context, _as_bytes(first), writing, scope)
                    del first  # a long stream must not pin its first frame until it ends
                    async for frame in frames:
                        await _write(context, _as_bytes(frame), writing, scope)
            finally:
                watcher.cancel()
        if scope.cancelled_caught:
            if codec is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            # The producer is closed before the last frame goes out.
            with anyio.CancelScope(shield=True):
                await frames.aclose()
            await context.write(error_frame(ServerGoingAwayError(), codec))
    finally:
        # Always, however the call ended: the client cancelled (CancelledError) or
        # went away mid-write (grpc's ExecuteBatchError), the deadline passed...
        # A suspended generator left to the garbage collector would keep the
        # producer (and a sync producer's worker thread) open for an unbounded time.
        with anyio.CancelScope(shield=True):
            await frames.aclose()


async def _write(
    context: grpc.aio.ServicerContext[Any, Any],
    message: bytes,
    writing: anyio.CancelScope,
    scope: anyio.CancelScope,
) -> None:
    # ``writing`` (inside the shutdown's ``scope``) is shielded while the write is under
    # way: cancelling `await context.write()` does not take the write back, the message
    # stays queued in gRPC core until flow control lets it out, and the going-away frame
    # written next was then a second write on the call (GRPC_CALL_ERROR_TOO_MANY_
    # OPERATIONS). A write waits for a slow reader, more often under CPU load. So the
    # cancellation lands once the write is done (the checkpoint below: a producer that
    # never awaits between frames has no other). One scope toggled, not one per frame:
    # entering a scope costs several times a toggle. A client that cancels or goes away
    # still ends a write at once (gRPC fails it and cancels the task natively, which no
    # anyio shield holds back); one that never reads again is cut by the server's own
    # stop when ``wait_idle`` gives up.
    writing.shield = True
    try:
        await context.write(message)
    finally:
        writing.shield = False
    if scope.cancel_called:
        await anyio.lowlevel.checkpoint()


async def _cancel_when_due(drain: GracefulShutdown, scope: anyio.CancelScope) -> None:
    await drain.wait_until_due()
    scope.cancel()


async def _abort_before_first_frame(
    context: grpc.aio.ServicerContext[Any, Any], exc: Exception, stream_id: str, expose: bool
) -> NoReturn:
    if isinstance(exc, grpc.aio.AbortError):  # the producer chose its own status
        raise exc
    error_id = report_failure(exc, stream_id=stream_id, frames_sent=0)
    await context.abort(grpc.StatusCode.INTERNAL, describe_failure(exc, error_id, expose=expose))


def add_stream_method(
    server: grpc.aio.Server,
    name: str,
    producer: Producer,
    *,
    service_name: str = DEFAULT_SERVICE_NAME,
) -> FrameStreamService:
    """Serve one producer on an existing ``grpc.aio`` server as ``/<service_name>/<name>``.

    For several methods, health and reflection, build a :class:`FrameStreamService`
    and use :func:`start_server` instead.

    Returns:
        The service registered on ``server``.
    """
    service = FrameStreamService({name: producer}, service_name=service_name)
    server.add_generic_rpc_handlers([service])
    return service


@dataclasses.dataclass
class RunningServer:
    """A started server and what clients need to reach it.

    Attributes:
        server: the ``grpc.aio.Server``.
        port: the bound port (useful with port 0).
        host: the host part of the listen address.
        health: the health servicer, or ``None`` when health checking is off; set a
            status with ``await running.health.set(name, status)``.
    """

    server: grpc.aio.Server
    port: int
    host: str
    health: Any = None
    service: FrameStreamService | None = None

    @property
    def target(self) -> str:
        """``host:port`` for a client channel."""
        return f"{self.host}:{self.port}"

    async def stop(self, grace: float | None = 1.0, *, drain: float = 0.0) -> None:
        """Report NOT_SERVING, then stop, letting open calls finish for ``grace`` seconds.

        Streams still open when ``grace`` is over end with a going-away ERROR frame
        (the reader raises :class:`truss_stream.ServerGoingAwayError`), then the
        server stops; new calls get UNAVAILABLE from the moment the grace begins.

        Args:
            grace: seconds open calls may take to finish once new calls are refused;
                ``0`` or ``None`` ends open streams at once.
            drain: seconds to keep accepting calls while health checks already say
                NOT_SERVING, so load balancers can take the server out first.
        """
        if self.health is not None:
            await self.health.enter_graceful_shutdown()
        if drain > 0:
            await asyncio.sleep(drain)
        if self.service is not None:
            self.service.shutdown.begin(grace or 0.0)
            # Streams end at the deadline and need a moment to write their last frame.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.service.shutdown.wait_idle(), (grace or 0.0) + 1.0)
        await self.server.stop(grace)

    async def kill(self) -> None:
        """Stop at once, cancelling open calls without a going-away frame (a crash, for tests)."""
        await self.server.stop(0)


def _split_host(address: str) -> str:
    host = address.rpartition(":")[0]
    return host.strip("[]") if host else "127.0.0.1"


async def start_server(
    service: FrameStreamService,
    address: str = "127.0.0.1:0",
    *,
    options: GrpcOptions | None = None,
    tls: ServerTLS | None = None,
    health: bool = True,
    reflection: bool = True,
    interceptors: Sequence[Any] = (),
) -> RunningServer:
    """Start a ``grpc.aio`` server for ``service`` with matched settings.

    Args:
        service: the producers to serve.
        address: ``host:port`` to listen on; port 0 picks a free port.
        options: message size and keepalive settings; give clients the same.
        tls: serve TLS with this identity; ``None`` serves plaintext.
        health: add the standard ``grpc.health.v1.Health`` service, reporting
            SERVING for the server ("") and for ``service.service_name``.
        reflection: add server reflection describing ``service`` (grpcurl works).
        interceptors: ``grpc.aio.ServerInterceptor`` instances.

    Returns:
        The running server; stop it with ``await running.stop()``.

    Raises:
        RuntimeError: the address could not be bound.
    """
    opts = options or GrpcOptions()
    server = grpc.aio.server(interceptors=list(interceptors), options=opts.server_options())
    server.add_generic_rpc_handlers([service])
    health_servicer = None
    service_names = [service.service_name]
    extra_files: list[bytes] = []
    if health:
        from grpc_health.v1 import health as health_module
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        # grpc_health's stubs omit its asyncio servicer.
        health_servicer = health_module.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        for name in ("", service.service_name):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        service_names.append(health_module.SERVICE_NAME)
        extra_files.append(health_pb2.DESCRIPTOR.serialized_pb)
    if reflection:
        from grpc_reflection.v1alpha import reflection as reflection_module
        from grpc_reflection.v1alpha import reflection_pb2

        service_names.append(reflection_module.SERVICE_NAME)
        extra_files.append(reflection_pb2.DESCRIPTOR.serialized_pb)
        reflection_module.enable_server_reflection(
            service_names, server, pool=service.descriptor_pool(extra_files=extra_files)
        )
    port = (
        server.add_secure_port(address, tls.credentials())
        if tls is not None
        else server.add_insecure_port(address)
    )
    if not port:
        raise RuntimeError(f"could not bind gRPC server to {address}")
    await server.start()
    return RunningServer(
        server=server,
        port=port,
        host=_split_host(address),
        health=health_servicer,
        service=service,
    )


@contextlib.asynccontextmanager
async def serve(
    service: FrameStreamService,
    address: str = "127.0.0.1:0",
    *,
    grace: float | None = 1.0,
    **kwargs: Any,
) -> AsyncIterator[RunningServer]:
    """Run a server for the duration of an ``async with`` block.

    Takes the arguments of :func:`start_server`; on exit the server stops, giving
    open calls ``grace`` seconds.
    """
    running = await start_server(service, address, **kwargs)
    try:
        yield running
    finally:
        await running.stop(grace)
