"""The Triton thin proxy: ``python -m transports.triton.proxy``.

Clients stream ``DataPacket`` messages over ``MultimodalService.Chat`` (or send one
with ``SendUnary``); the proxy authenticates the call (see :mod:`.auth`), validates
each packet (see :mod:`._packets`), forwards it to Triton (or to an embedded Python
backend) and answers every packet with exactly one ``Ack`` carrying its correlation
id. On one Chat call, up to ``--max-in-flight`` packets are worked on at once and
Acks are sent as they complete, so they may overtake each other: match them by
``correlation_id``. A client that goes away cancels its in-flight backend calls.
Across all calls, packets read and not yet answered hold at most ``--max-inflight-mb``
of packet bytes; past it the proxy stops reading from calls until Acks go out.

Logging: one access record per Chat/SendUnary call at INFO on the
``transports.triton.access`` logger (peer, models, packets, statuses, duration, never
credentials); each failed packet at DEBUG.

Command line (flags win over the environment)::

    python -m transports.triton.proxy --listen HOST:PORT --triton-url TARGET
        [--auth-url URL] [--backend triton|demo|python:module:callable]
        [--max-in-flight N] [--default-timeout S] [--max-message-mb N]
        [--tls-cert PEM --tls-key PEM] [--coalesce N]
        [--metrics-listen HOST:PORT] [--log-format text|json]
        [--triton-probe-secs S] [--no-health-follows-triton]

    TRITON_URL   default of --triton-url
    DOMINO_HOST  default of --auth-url, as $DOMINO_HOST/v4/auth/principal

Tracing is configured by OpenTelemetry's standard OTEL_* variables
(``OTEL_TRACES_EXPORTER``...). See ``docs/triton-proxy.md`` for the protocol,
scale-out and where the time goes, ``docs/observability.md`` for metrics, traces,
logs and health probes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer as AsyncHealthServicer
from grpc_reflection.v1alpha import reflection

from transports.grpc import GrpcOptions
from transports.observability import configure_tracing, use_json_logs
from transports.triton import multimodal_pb2 as pb
from transports.triton import multimodal_pb2_grpc as pbg
from transports.triton._backends import Backend, PythonBackend, TritonBackend, load_backend
from transports.triton._observe import (
    ProxyObservability,
    observe_packet_stream,
    observe_packets,
    resolve_proxy_metrics,
)
from transports.triton._packets import (
    BackendError,
    PacketError,
    check_correlation_id,
    error_ack,
    ok_ack,
    parse_packet,
    status_name,
)
from transports.triton.auth import DominoAuthInterceptor, principal_url

if TYPE_CHECKING:
    from transports.observability import ProxyMetrics

__all__ = [
    "Backend",
    "InflightBudget",
    "MultimodalProxy",
    "ProxyConfig",
    "ProxyServer",
    "ProxyStats",
    "PythonBackend",
    "TritonBackend",
    "main",
    "start_proxy",
]

_log = logging.getLogger("transports.triton.proxy")
_access = logging.getLogger("transports.triton.access")
_MODELS_LOGGED = 8  # model names per access record; a call may use any number
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MultimodalService"].full_name
_Context = grpc.aio.ServicerContext[Any, Any]
# A packet answered on a Chat call: (its model or None, its Ack, budget bytes held). Not
# the packet itself: its bytes need not wait with the Ack for a slow reader.
_Answered = tuple[str | None, pb.Ack, int]


@dataclass
class ProxyStats:
    """Counters of one proxy instance (for tests, logs and benchmarks).

    Attributes:
        packets: packets received.
        ok: Acks with status OK.
        failed: Acks with any other status.
        cancelled: backend calls cancelled because their Chat call ended early.
    """

    packets: int = 0
    ok: int = 0
    failed: int = 0
    cancelled: int = 0
    budget_waits: int = 0
    """Packets that waited for the proxy-wide in-flight byte budget."""
    oversized_acks: int = 0
    """Acks replaced by an error because they would exceed the message limit."""


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


class InflightBudget:
    """Bytes of packets read and not yet answered, shared by every call of one proxy.

    A call acquires a packet's size before working on it and releases it once the
    packet's Ack is sent; while the budget is spent, the call waits and so stops
    reading its request stream (gRPC flow control then holds the client back). No
    packet is dropped. Waiters are served first come, first served, and a packet
    larger than the whole budget is admitted alone once nothing else is in flight,
    so every packet the message limit lets in makes progress.

    Args:
        limit: bytes; 0 or less turns the budget off.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, size: int) -> bool:
        return self.limit <= 0 or self.used == 0 or self.used + size <= self.limit

    def _take(self, size: int) -> None:
        self.used += size
        self.peak = max(self.peak, self.used)

    def try_acquire(self, size: int) -> bool:
        """Take ``size`` bytes now if they fit and nobody waits before us."""
        if self._waiters or not self._fits(size):
            return False
        self._take(size)
        return True

    async def acquire(self, size: int) -> None:
        """Wait until ``size`` bytes fit, then take them."""
        if self.try_acquire(size):
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, granted)
        self._waiters.append(entry)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self.release(size)  # granted just as we were cancelled
            else:
                with contextlib.suppress(ValueError):  # _wake may have dropped it already
                    self._waiters.remove(entry)
                self._wake()
            raise

    def release(self, size: int) -> None:
        """Give back ``size`` bytes and admit whoever now fits, in order."""
        self.used -= size
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            size, granted = self._waiters[0]
            if granted.done():  # its waiter was cancelled and has not run yet
                self._waiters.popleft()
                continue
            if not self._fits(size):
                return
            self._waiters.popleft()
            self._take(size)
            granted.set_result(None)


def _model_of(packet: pb.DataPacket) -> str | None:
    return packet.control.model if packet.HasField("control") else None


def _printable(name: str) -> str:
    # Names come from clients: a newline or a space must not forge a log line or field.
    return name if name.isprintable() and " " not in name and "," not in name else repr(name)


class _CallRecord:
    """What one call did, for its access-log record (no credentials, bounded size)."""

    def __init__(self, rpc: str, context: _Context) -> None:
        self.rpc = rpc
        try:
            self.peer = str(context.peer())
        except Exception:  # a context without a peer (tests, closed transport)
            self.peer = "unknown"
        self.started = time.perf_counter()
        self.packets = 0
        self.statuses: Counter[str] = Counter()
        self.models: dict[str, None] = {}  # insertion-ordered set
        self.outcome = "ok"

    def packet(self, model: str | None, ack: pb.Ack) -> None:
        self.packets += 1
        status = status_name(ack.status)
        self.statuses[status] += 1
        if model is not None and len(self.models) < _MODELS_LOGGED:
            self.models.setdefault(model[:256], None)
        if ack.status != pb.OK and _access.isEnabledFor(logging.DEBUG):
            # A failed Ack is a few KiB at most (see _packets): reading it back is cheap.
            try:
                error = str(json.loads(ack.message).get("error", ""))
            except (ValueError, AttributeError):
                error = ack.message[:256]
            _access.debug(
                "%s packet %r from %s failed: %s: %r",
                self.rpc,
                ack.correlation_id,
                self.peer,
                status,
                error,
                extra={
                    "rpc": self.rpc,
                    "peer": self.peer,
                    "cid": ack.correlation_id,
                    "status": status,
                    "error": error,
                },
            )

    def emit(self) -> None:
        duration_ms = round(_ms(self.started), 3)
        statuses = dict(self.statuses)
        models = list(self.models)
        _access.info(
            "%s peer=%s models=%s packets=%d statuses=%s duration_ms=%.1f outcome=%s",
            self.rpc,
            self.peer,
            ",".join(_printable(m) for m in models) or "-",
            self.packets,
            ",".join(f"{k}:{v}" for k, v in sorted(statuses.items())) or "-",
            duration_ms,
            self.outcome,
            extra={
                "rpc": self.rpc,
                "peer": self.peer,
                "models": models,
                "packets": self.packets,
                "statuses": statuses,
                "errors": sum(v for k, v in statuses.items() if k != "OK"),
                "duration_ms": duration_ms,
                "outcome": self.outcome,
            },
        )


class MultimodalProxy(pbg.MultimodalServiceServicer):
    """The ``MultimodalService`` implementation over a :class:`Backend`.

    Args:
        backend: where inferences go.
        max_in_flight: packets worked on at once per Chat call; also bounds the Acks
            waiting to be sent, so a client that stops reading stalls its own call.
        default_timeout: backend deadline in seconds when ``Control.timeout_secs`` is 0.
        max_message_bytes: the server's send limit: an Ack that would exceed it is
            replaced by a small error Ack instead of ending the call.
        max_inflight_bytes: the proxy-wide :class:`InflightBudget` (0: off).
        metrics: Prometheus metrics (docs/observability.md): None, the default
            registry's when prometheus_client is installed; False, none.
        max_held_acks: Acks of one Chat call waiting for a slow reader, at most
            (a streaming model's responses); past it the backend is not read on.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        max_in_flight: int = 32,
        default_timeout: float = 30.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        max_inflight_bytes: int = 256 * 1024 * 1024,
        metrics: ProxyMetrics | bool | None = None,
        max_held_acks: int = 64,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        if max_held_acks < 1:
            raise ValueError("max_held_acks must be >= 1")
        self.max_held_acks = max_held_acks
        self.backend = backend
        self.max_in_flight = max_in_flight
        self.default_timeout = default_timeout
        self.max_message_bytes = max_message_bytes
        self.budget = InflightBudget(max_inflight_bytes)
        self.stats = ProxyStats()
        self.metrics = resolve_proxy_metrics(metrics)

    def _count(self, ack: pb.Ack) -> pb.Ack:
        if ack.status == pb.OK:
            self.stats.ok += 1
        else:
            self.stats.failed += 1
        return ack

    def _fit(self, ack: pb.Ack, packet: pb.DataPacket, received: float) -> pb.Ack:
        size = ack.ByteSize()
        if size <= self.max_message_bytes:
            return ack
        # Sending it would fail the whole call (every in-flight Ack with it).
        self.stats.oversized_acks += 1
        error = (
            f"the Ack would be {size} bytes, above the proxy's {self.max_message_bytes}-byte "
            "message limit (ask for binary_outputs, fewer outputs, or a larger "
            "--max-message-mb on both ends)"
        )
        return error_ack(
            packet,
            pb.INTERNAL,
            error,
            backend=self.backend.name,
            triton_infer_ms=ack.timing.triton_infer_ms,
            total_ms=_ms(received),
        )

    @observe_packets
    async def handle(self, packet: pb.DataPacket, received: float | None = None) -> pb.Ack:
        """Answer one packet with one Ack (``SendUnary``). Never raises, except when cancelled.

        A packet for a streaming (decoupled) model is refused with UNSUPPORTED: one
        Ack cannot carry its responses; send it over ``Chat``.

        Args:
            packet: the packet.
            received: ``time.perf_counter()`` when it arrived (for ``total_ms``).
        """
        received = time.perf_counter() if received is None else received
        async with contextlib.aclosing(self._respond(packet, received, unary=True)) as acks:
            async for ack in acks:
                return ack
        raise AssertionError("every packet gets an Ack")  # pragma: no cover

    @observe_packet_stream
    async def respond(
        self, packet: pb.DataPacket, received: float | None = None
    ) -> AsyncGenerator[pb.Ack, None]:
        """Answer one packet on ``Chat``: one Ack per model response, the last one final.

        Never raises, except when cancelled; closing the iterator early cancels the
        backend's work on the packet.
        """
        received = time.perf_counter() if received is None else received
        async with contextlib.aclosing(self._respond(packet, received, unary=False)) as acks:
            async for ack in acks:
                yield ack

    async def _respond(
        self, packet: pb.DataPacket, received: float, *, unary: bool
    ) -> AsyncGenerator[pb.Ack, None]:
        self.stats.packets += 1
        index = 0
        final = False
        try:
            async with contextlib.aclosing(self._infer(packet, received, unary)) as acks:
                async for ack in acks:
                    ack = self._fit(ack, packet, received)
                    final = ack.final
                    ack.index = index
                    index += 1
                    yield self._count(ack) if final else ack
                    if final:
                        return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the proxy: still a final Ack, no exception text
            _log.exception("packet %r: no Ack could be built", packet.meta.correlation_id[:256])
            error = f"proxy error ({type(exc).__name__}); see the proxy's log"
            ack = error_ack(packet, pb.INTERNAL, error, backend="proxy", total_ms=_ms(received))
            ack.index, ack.final = index, True
            yield self._count(ack)

    async def _infer(
        self, packet: pb.DataPacket, received: float, unary: bool
    ) -> AsyncGenerator[pb.Ack, None]:
        name = self.backend.name
        try:
            if packet.event in (pb.SEV_START, pb.SEV_END):
                # The proxy keeps no per-stream state: start/end markers are no-ops.
                cid = check_correlation_id(packet)
                body = {"backend": name, "cid": cid, "event": pb.StreamEvent.Name(packet.event)}
                yield pb.Ack(correlation_id=cid, status=pb.OK, message=json.dumps(body), final=True)
                return
            request = parse_packet(packet, default_timeout=self.default_timeout)
        except PacketError as exc:
            ack = error_ack(packet, exc.status, str(exc), backend=name, total_ms=_ms(received))
            ack.final = True
            yield ack
            return
        started = time.perf_counter()
        index = 0
        try:
            if not await self.backend.decoupled(request):
                outputs = await self.backend.infer(request)
                ack = ok_ack(
                    request,
                    outputs,
                    backend=name,
                    triton_infer_ms=_ms(started),
                    total_ms=_ms(received),
                )
                ack.final = True
                yield ack
                return
            if unary:
                ack = error_ack(
                    packet,
                    pb.UNSUPPORTED,
                    f"model {request.model!r} is decoupled (streaming: any number of "
                    "responses per request); SendUnary answers with one Ack, send it over "
                    "Chat (TritonBytesStreamer.stream_responses)",
                    backend=name,
                    total_ms=_ms(received),
                )
                ack.final = True
                yield ack
                return
            no_outputs = dataclasses.replace(request, outputs=())
            async with contextlib.aclosing(self.backend.stream_infer(request)) as responses:
                async for response in responses:
                    empty = response.final and not response.outputs
                    ack = ok_ack(
                        no_outputs if empty else request,
                        response.outputs,
                        backend=name,
                        triton_infer_ms=_ms(started),
                        total_ms=_ms(received),
                    )
                    ack.final = response.final
                    index += 1
                    yield ack
                    if response.final:
                        return
                    started = time.perf_counter()
            # The backend ended without flagging a final response: end the packet here.
            ack = ok_ack(no_outputs, {}, backend=name, triton_infer_ms=0.0, total_ms=_ms(received))
            ack.final = True
            yield ack
        except Exception as exc:
            if isinstance(exc, BackendError):
                status, error = exc.status, str(exc)
            else:  # a bug or an unexpected backend failure: still one Ack
                _log.exception("packet %r: unexpected backend failure", request.cid)
                status, error = pb.INTERNAL, f"{type(exc).__name__}: {exc}"
            ack = error_ack(
                packet,
                status,
                error,
                backend=name,
                triton_infer_ms=_ms(started),
                total_ms=_ms(received),
            )
            if index:  # mid-stream: the error, then the packet's final Ack
                yield ack
                ack = error_ack(
                    packet,
                    status,
                    f"the packet's responses ended by the error above (after {index})",
                    backend=name,
                    total_ms=_ms(received),
                )
            ack.final = True
            yield ack

    async def Chat(
        self, request_iterator: AsyncIterator[pb.DataPacket], context: _Context
    ) -> AsyncGenerator[pb.Ack, None]:
        """Many packets per call, up to ``max_in_flight`` at once; Acks in completion order.

        A packet to a streaming model gets one Ack per response, in order, the last one
        ``final``; its in-flight slot and budget bytes are held until that final Ack is
        sent. At most ``max_held_acks`` Acks wait for a slow reader: past that the
        packets' backend streams are not read on, and gRPC flow control holds Triton.
        """
        record = _CallRecord("Chat", context)
        slots = asyncio.Semaphore(self.max_in_flight)
        budget = self.budget
        held = [0]  # budget bytes this call holds
        acks: asyncio.Queue[_Answered | BaseException | None] = asyncio.Queue(self.max_held_acks)
        tasks: set[asyncio.Task[None]] = set()

        async def answer(packet: pb.DataPacket, received: float, size: int) -> None:
            model = _model_of(packet)
            async with contextlib.aclosing(self.respond(packet, received)) as responses:
                async for ack in responses:
                    await acks.put((model, ack, size if ack.final else -1))

        async def read() -> None:
            try:
                async for packet in request_iterator:
                    received = time.perf_counter()
                    size = packet.ByteSize()
                    await slots.acquire()
                    if not budget.try_acquire(size):
                        self.stats.budget_waits += 1
                        await budget.acquire(size)  # not reading on: back-pressure
                    held[0] += size
                    task = asyncio.create_task(answer(packet, received, size))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.wait(set(tasks))
                await acks.put(None)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # the request stream broke: end the call with it
                await acks.put(exc)

        reader = asyncio.create_task(read())
        try:
            while True:
                item = await acks.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                model, ack, size = item
                if size >= 0:
                    record.packet(model, ack)
                del item
                yield ack
                del ack
                if size >= 0:  # the packet's final Ack
                    slots.release()
                    held[0] -= size
                    budget.release(size)
        except asyncio.CancelledError:
            record.outcome = "cancelled"
            raise
        except BaseException as exc:
            record.outcome = f"error:{type(exc).__name__}"
            raise
        finally:
            reader.cancel()
            for task in list(tasks):
                if not task.done():
                    task.cancel()
                    self.stats.cancelled += 1
            if tasks or not reader.done():
                await asyncio.gather(reader, *tasks, return_exceptions=True)
            if held[0]:
                budget.release(held[0])
                held[0] = 0
            if context.cancelled() and record.outcome == "ok":
                record.outcome = "cancelled"
            record.emit()

    async def SendUnary(self, request: pb.DataPacket, context: _Context) -> pb.Ack:
        """One packet, one Ack."""
        record = _CallRecord("SendUnary", context)
        size = request.ByteSize()
        if not self.budget.try_acquire(size):
            self.stats.budget_waits += 1
            await self.budget.acquire(size)
        try:
            ack = await self.handle(request)
            record.packet(_model_of(request), ack)
            return ack
        except asyncio.CancelledError:
            record.outcome = "cancelled"
            raise
        finally:
            self.budget.release(size)
            record.emit()

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: _Context
    ) -> pb.ModelMetadataResponse:
        """The model's inputs and outputs from the backend; gRPC errors, not Acks."""
        if not request.model:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "missing model")
        try:
            return await self.backend.model_metadata(request.model, request.model_version)
        except BackendError as exc:
            await context.abort(exc.code, str(exc))

    async def ModelReady(self, request: pb.ReadyRequest, context: _Context) -> pb.ReadyResponse:
        """Whether ``request.model`` is ready on the backend."""
        if not request.model:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "missing model")
        ready, why = await self.backend.model_ready(request.model, request.model_version)
        return pb.ReadyResponse(ready=ready, message=why)

    async def ServerReady(self, request: pb.ReadyRequest, context: _Context) -> pb.ReadyResponse:
        """Whether the backend (Triton) is ready."""
        ready, why = await self.backend.server_ready()
        return pb.ReadyResponse(ready=ready, message=why)


@dataclass(frozen=True)
class ProxyConfig:
    """Everything the command line sets. See :func:`main` for the flags.

    Attributes:
        listen: ``host:port`` to bind; port 0 picks a free one.
        backend: ``"triton"``, ``"demo"`` or ``"python:module:callable"``.
        triton_url: Triton's gRPC target (several replicas: ``ipv4:h1:p1,h2:p2``).
        auth_url: the principal endpoint; None runs without authentication.
        max_in_flight: packets worked on at once per Chat call.
        max_inflight_bytes: packet bytes read and not yet answered across all calls
            (see :class:`InflightBudget`); 0 turns the budget off.
        default_timeout: backend deadline when a packet gives none.
        max_message_bytes: largest gRPC message, both to clients and to Triton.
        tls_cert, tls_key: PEM files to serve TLS; both or neither.
        auth_cache_ttl: seconds a positive auth answer is reused (and open calls re-checked).
        auth_timeout: total deadline in seconds of one principal lookup.
        coalesce: if > 1, send packets that arrive together as one Triton request of
            up to this many batch rows (see ``TritonBackend``); 0 is off.
        metrics_listen: ``HOST:PORT`` to serve Prometheus ``/metrics`` on; None: not served.
        triton_probe_interval: seconds between probes of the backend's readiness; 0: none.
        health_follows_triton: health reports NOT_SERVING while the probe fails.
    """

    listen: str = "[::]:50051"
    backend: str = "triton"
    triton_url: str | None = None
    auth_url: str | None = None
    max_in_flight: int = 32
    default_timeout: float = 30.0
    max_message_bytes: int = 64 * 1024 * 1024
    max_inflight_bytes: int = 256 * 1024 * 1024
    tls_cert: str | None = None
    tls_key: str | None = None
    auth_cache_ttl: float = 30.0
    coalesce: int = 0
    auth_timeout: float = 5.0
    metrics_listen: str | None = None
    triton_probe_interval: float = 5.0
    health_follows_triton: bool = True


@dataclass
class ProxyServer:
    """A running proxy, from :func:`start_proxy`.

    Attributes:
        server: the ``grpc.aio`` server.
        port: the port it listens on.
        proxy: the servicer (``proxy.stats`` has its counters).
        health: the health servicer.
        auth: the auth interceptor, None when running unauthenticated.
        observability: the metrics endpoint and the health probe.
    """

    server: grpc.aio.Server
    port: int
    proxy: MultimodalProxy
    health: Any  # grpc_health's asyncio HealthServicer (untyped)
    auth: DominoAuthInterceptor | None = None
    observability: ProxyObservability | None = None
    _closed: bool = field(default=False, repr=False)

    async def stop(self, grace: float | None = 2.0) -> None:
        """Mark NOT_SERVING, let calls finish for ``grace`` seconds, close the backend."""
        if self._closed:
            return
        self._closed = True
        if self.observability is not None:
            await self.observability.stop()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.proxy.backend.close()
        if self.auth is not None:
            await self.auth.aclose()

    async def wait_for_termination(self) -> None:
        """Block until the server stops."""
        await self.server.wait_for_termination()


def _server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    # transports.grpc's one option list (its server side accepts the keepalive pings
    # long-lived client streams send, every 10 s and up, instead of answering them
    # with GOAWAY "too_many_pings"), not a hand-kept third copy.
    return GrpcOptions(
        max_message_bytes=max_message_bytes,
        keepalive_time_ms=60_000,
        keepalive_timeout_ms=20_000,
        min_ping_interval_ms=5_000,
    ).server_options()


async def start_proxy(
    config: ProxyConfig,
    *,
    backend: Backend | None = None,
    metrics: ProxyMetrics | bool | None = None,
) -> ProxyServer:
    """Build, bind and start a proxy in the running event loop.

    Args:
        config: the settings.
        backend: use this backend instead of building one from ``config``.
        metrics: see :class:`MultimodalProxy`.

    Returns:
        The running server; call ``await server.stop()`` to end it.

    Raises:
        ValueError: inconsistent settings (no Triton URL, half a TLS pair).
        RuntimeError: the address could not be bound.
    """
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    observability = ProxyObservability(metrics=metrics, metrics_listen=config.metrics_listen)
    if backend is None:
        backend = load_backend(
            config.backend,
            triton_url=config.triton_url,
            max_message_bytes=config.max_message_bytes,
            coalesce=config.coalesce,
            interceptors=observability.triton_interceptors(),
        )
    backend = observability.backend(backend)
    auth: DominoAuthInterceptor | None = None
    if config.auth_url:
        auth = observability.auth(
            config.auth_url, cache_ttl=config.auth_cache_ttl, timeout=config.auth_timeout
        )
    else:
        _log.warning(
            "!!! AUTHENTICATION IS OFF: no --auth-url and no DOMINO_HOST; "
            "the proxy accepts every caller !!!"
        )
    server = grpc.aio.server(
        interceptors=observability.server_interceptors(auth, prefixes=(f"/{SERVICE_NAME}/",)),
        options=_server_options(config.max_message_bytes),
    )
    proxy = MultimodalProxy(
        backend,
        max_in_flight=config.max_in_flight,
        default_timeout=config.default_timeout,
        max_message_bytes=config.max_message_bytes,
        max_inflight_bytes=config.max_inflight_bytes,
        metrics=observability.metrics or False,
    )
    pbg.add_MultimodalServiceServicer_to_server(proxy, server)
    health_servicer = AsyncHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    if config.tls_cert is not None and config.tls_key is not None:
        credentials = grpc.ssl_server_credentials(
            [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())]
        )
        port = server.add_secure_port(config.listen, credentials)
    else:
        port = server.add_insecure_port(config.listen)
    if port == 0:
        raise RuntimeError(f"could not bind {config.listen}")
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set("", serving)
    await health_servicer.set(SERVICE_NAME, serving)
    await observability.start(
        backend,
        health_servicer,
        services=("", SERVICE_NAME),
        follow=config.health_follows_triton,
        probe_interval=config.triton_probe_interval,
    )
    return ProxyServer(
        server=server,
        port=port,
        proxy=proxy,
        health=health_servicer,
        auth=auth,
        observability=observability,
    )


def _parse_args(argv: Sequence[str] | None) -> ProxyConfig:
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m transports.triton.proxy",
        description="gRPC thin proxy in front of NVIDIA Triton Inference Server.",
    )
    parser.add_argument("--listen", default="[::]:50051", help="HOST:PORT (default [::]:50051)")
    parser.add_argument(
        "--triton-url",
        default=env.get("TRITON_URL"),
        help="Triton gRPC target, e.g. triton:8001 or ipv4:10.0.0.1:8001,10.0.0.2:8001 "
        "(default $TRITON_URL)",
    )
    domino_host = env.get("DOMINO_HOST")
    parser.add_argument(
        "--auth-url",
        default=principal_url(domino_host) if domino_host else None,
        help="principal endpoint (default $DOMINO_HOST/v4/auth/principal); "
        "without it the proxy runs unauthenticated",
    )
    parser.add_argument(
        "--backend",
        default=None,
        help="triton (default when a Triton URL is set), demo, or python:module:callable",
    )
    parser.add_argument("--max-in-flight", type=int, default=32, help="per Chat call (32)")
    parser.add_argument(
        "--max-inflight-mb",
        type=float,
        default=256,
        help="MiB of packets read and not yet answered, across all calls; past it the "
        "proxy stops reading until Acks go out (256; 0: no limit)",
    )
    parser.add_argument(
        "--default-timeout", type=float, default=30.0, help="seconds, when a packet sets none"
    )
    parser.add_argument("--max-message-mb", type=int, default=64, help="largest message (64)")
    parser.add_argument("--tls-cert", default=None, help="PEM certificate chain to serve TLS")
    parser.add_argument("--tls-key", default=None, help="PEM private key to serve TLS")
    parser.add_argument(
        "--auth-cache-secs",
        type=float,
        default=30.0,
        help="seconds a positive auth answer is reused; open calls are re-checked as often (30)",
    )
    parser.add_argument(
        "--auth-timeout-secs",
        type=float,
        default=5.0,
        help="total deadline of one principal lookup: connect, headers and body (5)",
    )
    parser.add_argument(
        "--coalesce",
        type=int,
        default=0,
        help="send packets arriving together as one Triton request of up to N batch rows "
        "(models with max_batch_size > 0; default 0: off)",
    )
    parser.add_argument("--log-level", default=env.get("LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=env.get("LOG_FORMAT", "text"),
        help="text (default) or json: one JSON object per line with every record's fields",
    )
    parser.add_argument(
        "--metrics-listen",
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (default: off)",
    )
    parser.add_argument(
        "--triton-probe-secs",
        type=float,
        default=5.0,
        help="seconds between probes of Triton's ServerReady (default 5; 0: no probe)",
    )
    parser.add_argument(
        "--no-health-follows-triton",
        dest="health_follows_triton",
        action="store_false",
        help="keep gRPC health SERVING while Triton is unreachable",
    )
    args = parser.parse_args(argv)
    if args.log_format == "json":
        use_json_logs(args.log_level.upper())
    else:
        logging.basicConfig(
            level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    backend = args.backend or "triton"
    if backend == "triton" and not args.triton_url:
        parser.error("set --triton-url (or TRITON_URL), or use --backend demo")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    return ProxyConfig(
        listen=args.listen,
        backend=backend,
        triton_url=args.triton_url,
        auth_url=args.auth_url,
        max_in_flight=args.max_in_flight,
        max_inflight_bytes=int(args.max_inflight_mb * 1024 * 1024),
        default_timeout=args.default_timeout,
        max_message_bytes=args.max_message_mb * 1024 * 1024,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        auth_cache_ttl=args.auth_cache_secs,
        coalesce=args.coalesce,
        auth_timeout=args.auth_timeout_secs,
        metrics_listen=args.metrics_listen,
        triton_probe_interval=args.triton_probe_secs,
        health_follows_triton=args.health_follows_triton,
    )


async def _serve(config: ProxyConfig) -> None:
    running = await start_proxy(config)
    host = config.listen.rsplit(":", 1)[0]
    where = config.triton_url if config.backend == "triton" else config.backend
    # One machine-readable line on stdout: scripts and tests wait for it.
    metrics = ""
    if running.observability is not None and running.observability.metrics_port is not None:
        metrics_host = (config.metrics_listen or "").rsplit(":", 1)[0]
        metrics = f" metrics={metrics_host}:{running.observability.metrics_port}"
    print(f"LISTENING {host}:{running.port} backend={where}{metrics}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    _log.info("shutting down")
    await running.stop(grace=5.0)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the proxy until SIGINT or SIGTERM.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        The process exit status.
    """
    config = _parse_args(argv)
    configure_tracing()  # from OTEL_* (OTEL_TRACES_EXPORTER...), when the SDK is installed
    try:
        asyncio.run(_serve(config))
    except (ValueError, RuntimeError, ImportError, AttributeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
