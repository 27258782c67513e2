"""The ``MultimodalService`` servicer: :class:`MultimodalProxy`, over any :class:`.Backend`.

Clients stream ``DataPacket`` messages over ``MultimodalService.Chat`` (or send one
with ``SendUnary``); the proxy validates each packet (see :mod:`.packets`), forwards it
to its backend (Triton, or an embedded Python backend) and answers every packet with
exactly one ``Ack`` carrying its correlation id (a streaming model's packet: one Ack per
response, its last marked final). On one Chat call, up to ``max_in_flight`` packets are
worked on at once and Acks are sent as they complete, so they may overtake each other:
match them by ``correlation_id``. A client that goes away cancels its in-flight backend
calls. Across all calls, packets read and not yet answered hold at most
``max_inflight_bytes`` of packet bytes (:class:`InflightBudget`); past it the proxy stops
reading from calls until Acks go out.

Logging: one access record per Chat/SendUnary call at INFO on the
``transports.triton.access`` logger (peer, models, packets, statuses, duration, never
credentials); each failed packet at DEBUG.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from transports.triton.protocol import multimodal_pb2 as pb
from transports.triton.protocol import multimodal_pb2_grpc as pbg
from transports.triton.server.backend import Backend, BackendError, InferRequest
from transports.triton.server.observe import (
    packet_done,
    packet_received,
    resolve_proxy_metrics,
)
from transports.triton.server.packets import (
    PacketError,
    ack_bytes,
    check_correlation_id,
    error_ack,
    ok_ack,
    packet_bytes,
    parse_packet,
    status_name,
)

if TYPE_CHECKING:
    from transports.observability import ProxyMetrics

__all__ = ["SERVICE_NAME", "InflightBudget", "MultimodalProxy", "ProxyStats"]

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
        # ack_bytes first: ByteSize() serializes the Ack (1.5 ms per MiB of outputs).
        if ack_bytes(ack) <= self.max_message_bytes:
            return ack
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
        replaced = error_ack(
            packet,
            pb.INTERNAL,
            error,
            backend=self.backend.name,
            triton_infer_ms=ack.timing.triton_infer_ms,
            total_ms=_ms(received),
        )
        replaced.index, replaced.final = ack.index, ack.final
        return replaced

    def _bug_ack(self, packet: pb.DataPacket, exc: Exception, received: float) -> pb.Ack:
        # A bug in the proxy: still a final Ack, without the exception's text.
        _log.exception("packet %r: no Ack could be built", packet.meta.correlation_id[:256])
        error = f"proxy error ({type(exc).__name__}); see the proxy's log"
        ack = error_ack(packet, pb.INTERNAL, error, backend="proxy", total_ms=_ms(received))
        ack.final = True
        return ack

    async def handle(self, packet: pb.DataPacket, received: float | None = None) -> pb.Ack:
        """Answer one packet with one Ack (``SendUnary``). Never raises, except when cancelled.

        A packet for a streaming (decoupled) model is refused with UNSUPPORTED: one
        Ack cannot carry its responses; send it over ``Chat``.

        Args:
            packet: the packet.
            received: ``time.perf_counter()`` when it arrived (for ``total_ms``).
        """
        received = time.perf_counter() if received is None else received
        metrics = self.metrics
        size = 0 if metrics is None else packet_received(metrics, packet_bytes(packet))
        ack = None
        try:
            first = await self._first(packet, received, unary=True)
            assert isinstance(first, pb.Ack)  # unary: a streaming model is refused
            ack = first
            return ack
        finally:
            if metrics is not None:
                packet_done(metrics, packet, size, ack, received)

    async def respond(
        self, packet: pb.DataPacket, received: float | None = None
    ) -> AsyncGenerator[pb.Ack, None]:
        """Answer one packet on ``Chat``: one Ack per model response, the last one final.

        Never raises, except when cancelled; closing the iterator early cancels the
        backend's work on the packet. (``Chat`` itself takes the same steps without
        this generator: :meth:`_first`, then :meth:`_stream` for a streaming model.)
        """
        received = time.perf_counter() if received is None else received
        metrics = self.metrics
        size = 0 if metrics is None else packet_received(metrics, packet_bytes(packet))
        final = None
        try:
            first = await self._first(packet, received, unary=False)
            if isinstance(first, pb.Ack):
                final = first
                if metrics is not None:
                    packet_done(metrics, packet, size, final, received)
                yield first
                return
            async with contextlib.aclosing(self._stream(packet, first, received)) as acks:
                async for ack in acks:
                    if ack.final:
                        final = ack
                        if metrics is not None:
                            packet_done(metrics, packet, size, final, received)
                    yield ack
        finally:
            if metrics is not None and final is None:
                packet_done(metrics, packet, size, None, received)

    async def _first(
        self, packet: pb.DataPacket, received: float, *, unary: bool
    ) -> pb.Ack | InferRequest:
        """The packet's one (final) Ack; or, for a streaming model on Chat, its request.

        The one coroutine most packets take: validation, the backend call and the Ack,
        with no generator or task of its own. Never raises, except when cancelled.
        """
        self.stats.packets += 1
        try:
            first = await self._one(packet, received, unary)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            first = self._bug_ack(packet, exc, received)
        if isinstance(first, pb.Ack):
            return self._count(self._fit(first, packet, received))
        return first

    async def _one(
        self, packet: pb.DataPacket, received: float, unary: bool
    ) -> pb.Ack | InferRequest:
        name = self.backend.name
        try:
            if packet.event in (pb.SEV_START, pb.SEV_END):
                # The proxy keeps no per-stream state: start/end markers are no-ops.
                cid = check_correlation_id(packet)
                body = {"backend": name, "cid": cid, "event": pb.StreamEvent.Name(packet.event)}
                return pb.Ack(
                    correlation_id=cid, status=pb.OK, message=json.dumps(body), final=True
                )
            request = parse_packet(packet, default_timeout=self.default_timeout)
        except PacketError as exc:
            ack = error_ack(packet, exc.status, str(exc), backend=name, total_ms=_ms(received))
            ack.final = True
            return ack
        backend = self.backend
        started = time.perf_counter()
        try:
            if await backend.decoupled(request):
                if not unary:
                    return request
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
                return ack
            outputs = await backend.infer(request)
        except Exception as exc:
            return self._backend_failure(packet, request, exc, started, received, 0)
        now = time.perf_counter()
        ack = ok_ack(
            request,
            outputs,
            backend=name,
            triton_infer_ms=(now - started) * 1000.0,
            total_ms=(now - received) * 1000.0,
        )
        ack.final = True
        return ack

    def _backend_failure(
        self,
        packet: pb.DataPacket,
        request: InferRequest,
        exc: Exception,
        started: float,
        received: float,
        index: int,
    ) -> pb.Ack:
        """The error Ack of a failed backend call (not final: the caller decides)."""
        if isinstance(exc, BackendError):
            status, error = exc.status, str(exc)
        else:  # a bug or an unexpected backend failure: still one Ack
            _log.exception("packet %r: unexpected backend failure", request.cid)
            status, error = pb.INTERNAL, f"{type(exc).__name__}: {exc}"
        ack = error_ack(
            packet,
            status,
            error,
            backend=self.backend.name,
            triton_infer_ms=_ms(started),
            total_ms=_ms(received),
        )
        if not index:
            ack.final = True
        return ack

    async def _stream(
        self, packet: pb.DataPacket, request: InferRequest, received: float
    ) -> AsyncGenerator[pb.Ack, None]:
        """A streaming model's Acks for one packet, ``index`` from 0, the last one final.

        Never raises, except when cancelled; closing it early closes the backend's
        stream (which cancels the request upstream).
        """
        name = self.backend.name
        index = 0
        try:
            no_outputs = dataclasses.replace(request, outputs=())
            started = time.perf_counter()
            try:
                async with contextlib.aclosing(self.backend.stream_infer(request)) as responses:
                    async for response in responses:
                        final = response.final
                        now = time.perf_counter()
                        ack = ok_ack(
                            no_outputs if final and not response.outputs else request,
                            response.outputs,
                            backend=name,
                            triton_infer_ms=(now - started) * 1000.0,
                            total_ms=(now - received) * 1000.0,
                        )
                        ack = self._fit(ack, packet, received)
                        ack.index = index
                        index += 1
                        if final:
                            ack.final = True
                            yield self._count(ack)
                            return
                        yield ack
                        started = time.perf_counter()
                # The backend ended without flagging a final response: end the packet here.
                ack = ok_ack(
                    no_outputs, {}, backend=name, triton_infer_ms=0.0, total_ms=_ms(received)
                )
            except Exception as exc:
                ack = self._backend_failure(packet, request, exc, started, received, index)
                if index:  # mid-stream: the error, then the packet's final Ack
                    ack.index = index
                    index += 1
                    yield ack
                    ack = error_ack(
                        packet,
                        ack.status,
                        f"the packet's responses ended by the error above (after {index - 1})",
                        backend=name,
                        total_ms=_ms(received),
                    )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the proxy: still a final Ack
            ack = self._bug_ack(packet, exc, received)
        ack.index, ack.final = index, True
        yield self._count(ack)

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

        metrics = self.metrics

        async def answer(packet: pb.DataPacket, received: float, size: int) -> None:
            # One task per packet; a packet to a non-streaming model (the common case)
            # takes one coroutine (_first) and no generator.
            model = _model_of(packet)
            counted = 0 if metrics is None else packet_received(metrics, size)
            final = None
            try:
                first = await self._first(packet, received, unary=False)
                if isinstance(first, pb.Ack):
                    final = first
                    if metrics is not None:
                        packet_done(metrics, packet, counted, final, received)
                    await acks.put((model, first, size))
                    return
                async with contextlib.aclosing(self._stream(packet, first, received)) as stream:
                    async for ack in stream:
                        if ack.final:
                            final = ack
                            if metrics is not None:
                                packet_done(metrics, packet, counted, final, received)
                            await acks.put((model, ack, size))
                        else:
                            await acks.put((model, ack, -1))
            finally:
                if metrics is not None and final is None:
                    packet_done(metrics, packet, counted, None, received)

        async def read() -> None:
            try:
                async for packet in request_iterator:
                    received = time.perf_counter()
                    size = packet_bytes(packet)
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
        stopped: set[asyncio.Task[None]] = set()

        def stop_work(_: Any = None) -> None:
            # Cancel the call's reader and its packets' backend work (once each). Also
            # run by gRPC when the call ends (the client cancelled or went away): grpc.aio
            # need not close this generator then (it was parked at a `yield`, its
            # `finally` would wait for the garbage collector), and a packet blocked on a
            # full Ack queue would otherwise hold its backend stream open for good.
            reader.cancel()
            for task in list(tasks):
                if not task.done() and task not in stopped:
                    stopped.add(task)
                    task.cancel()
                    self.stats.cancelled += 1

        context.add_done_callback(stop_work)  # type: ignore[arg-type]  # grpc-stubs: a class
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
            stop_work()
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
        size = packet_bytes(request)
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
