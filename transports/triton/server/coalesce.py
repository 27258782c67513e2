"""The coalescer: a wrapper that sends packets arriving together as one batched request.

:class:`CoalescingBackend` wraps any :class:`~transports.triton.server.backend.Backend`.
Packets for the same model, version, input name, dtype, trailing shape and output names
that reach it in the same event-loop turn (a burst from one Chat call, or from several)
go to the inner backend as one :class:`~transports.triton.server.backend.InferRequest`
whose rows are the packets' rows stacked along the first (batch) dimension, up to
``min(max_rows, max_batch_size)`` rows; each output is split back by rows, so every
packet gets its own tensors. There is no timer: a lone packet waits for nothing.

Left alone (sent as they are): streaming (decoupled) models, models whose
:meth:`~transports.triton.server.backend.Backend.model_config` gives no
``max_batch_size`` above 1, ``BYTES`` inputs (their rows have no fixed size), rank-0
inputs and packets of ``max_rows`` rows or more.

A failure of the batched request reaches every packet in it, each with its own
:class:`~transports.triton.server.backend.BackendError` (same status and message).
A packet whose caller is cancelled drops out; the batched request is cancelled only
when every packet in it is.

Packets that come one at a time (one Chat call: the proxy starts each packet in its
own event-loop turn) never meet within a turn; ``max_in_flight`` lets them meet while
the group's requests are busy in the inner backend instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from transports.triton.protocol import multimodal_pb2 as pb
from transports.triton.server.backend import (
    Backend,
    BackendError,
    BackendWrapper,
    InferRequest,
    ModelConfig,
    OutputTensor,
)

__all__ = ["CoalescingBackend", "coalescing", "split_rows", "stack_rows"]

_log = logging.getLogger(__name__)

_CONFIG_MAX = 1024
"""Most models whose config is remembered; past it the memory starts over."""

_Outputs = Mapping[str, OutputTensor]
_BatchKey = tuple[str, str, str, str, tuple[int, ...], tuple[str, ...]]


@dataclass
class _Batch:
    """Packets waiting to go to the inner backend as one request."""

    outputs: tuple[str, ...]
    items: list[tuple[InferRequest, asyncio.Future[_Outputs]]] = field(default_factory=list)
    rows: int = 0
    sent: bool = False
    scheduled: bool = False  # its flush is due (call_soon), else it is held
    held_since: float | None = None  # loop time it was held from (``max_in_flight``)


def stack_rows(requests: Sequence[InferRequest], outputs: tuple[str, ...]) -> InferRequest:
    """One request holding ``requests``' rows in order (they share model, input and shape[1:]).

    Its ``cid`` is the first packet's plus ``+N`` (N more packets), its deadline the
    earliest of theirs.
    """
    first = requests[0]
    return dataclasses.replace(
        first,
        cid=f"{first.cid}+{len(requests) - 1}",
        shape=(sum(r.shape[0] for r in requests), *first.shape[1:]),
        data=b"".join(r.data for r in requests),
        outputs=outputs,
        timeout=min(r.timeout for r in requests),
    )


def split_rows(outputs: _Outputs, rows: Sequence[int]) -> list[dict[str, OutputTensor]]:
    """Split each output of a stacked request back into one tensor per packet.

    Args:
        outputs: the stacked request's outputs; each must have ``sum(rows)`` rows.
        rows: each packet's number of rows, in stacking order.

    Raises:
        BackendError: an output has no batch dimension of ``sum(rows)`` rows, or bytes
            that do not divide into them.
    """
    total = sum(rows)
    split: list[dict[str, OutputTensor]] = [{} for _ in rows]
    for name, out in outputs.items():
        if not out.shape or out.shape[0] != total or len(out.data) % total:
            raise BackendError(
                f"output {name!r} has shape {list(out.shape)} and {len(out.data)} bytes: "
                f"cannot split {total} coalesced rows"
            )
        row_bytes = len(out.data) // total
        view = memoryview(out.data)
        offset = 0
        for i, n in enumerate(rows):
            end = offset + n * row_bytes
            split[i][name] = OutputTensor(
                out.name, out.datatype, (n, *out.shape[1:]), bytes(view[offset:end])
            )
            offset = end
    return split


class CoalescingBackend(BackendWrapper):
    """``inner`` with packets that arrive together sent as one request of up to ``max_rows`` rows.

    See the module docstring for what is coalesced and what is left alone. Every other
    call (streaming, metadata, readiness) goes straight to ``inner``.

    Args:
        inner: any backend. It learns each model's batch size from
            ``inner.model_config``: asked once per model and version (packets arriving
            meanwhile share the lookup, each waiting at most its own ``timeout``).
        max_rows: most rows in one coalesced request (also capped by the model's
            ``max_batch_size``); must be at least 2.
        config_ttl: seconds a model's config is remembered.
        retry_after: seconds after a failed lookup (``BackendError``, or a bug) during
            which the model's packets go as they are before the coalescer asks again,
            rather than once per packet while the runtime is down.
        max_in_flight: 0 (the default): packets coalesce only within one event-loop
            turn. N > 0: at most N coalesced requests of one group (same model, input
            and outputs) run in the inner backend at once; packets arriving while N
            run are held and go together, as one request, when one of those finishes
            (or at once when they fill ``max_rows``). Packets then coalesce under
            load, not only in bursts; a held packet waits at most one inner call, and
            that wait counts against its ``timeout``.

    Raises:
        ValueError: ``max_rows`` below 2, ``config_ttl`` or ``retry_after`` not positive,
            or ``max_in_flight`` negative.
    """

    def __init__(
        self,
        inner: Backend,
        *,
        max_rows: int,
        config_ttl: float = 60.0,
        retry_after: float = 1.0,
        max_in_flight: int = 0,
    ) -> None:
        if max_in_flight < 0:
            raise ValueError(f"max_in_flight must be 0 (no limit) or more, got {max_in_flight}")
        if max_rows < 2:
            raise ValueError(f"max_rows must be at least 2 to coalesce anything, got {max_rows}")
        if not config_ttl > 0 or not retry_after > 0:
            raise ValueError(
                f"config_ttl and retry_after must be positive, got {config_ttl}, {retry_after}"
            )
        super().__init__(inner)
        self.max_rows = max_rows
        self.config_ttl = config_ttl
        self.retry_after = retry_after
        self.max_in_flight = max_in_flight
        # (model, version) -> (expiry on the monotonic clock, the model's config)
        self._configs: dict[tuple[str, str], tuple[float, ModelConfig]] = {}
        # (model, version) -> the one config lookup in flight, shared by its waiters
        self._lookups: dict[tuple[str, str], asyncio.Task[ModelConfig]] = {}
        self._pending: dict[_BatchKey, _Batch] = {}
        # group -> its coalesced requests running in the inner backend (max_in_flight > 0)
        self._running: dict[_BatchKey, int] = {}

    async def _config(self, model: str, version: str, timeout: float) -> ModelConfig | None:
        key = (model, version)
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = asyncio.ensure_future(self.inner.model_config(model, version))
            self._lookups[key] = lookup
            lookup.add_done_callback(lambda done: self._remember(key, done))
        try:
            # Shielded: a cancelled packet must not cancel the lookup its peers wait on;
            # and a packet waits for it no longer than its own deadline.
            return await asyncio.wait_for(asyncio.shield(lookup), timeout)
        except (BackendError, asyncio.TimeoutError):
            return None  # unknown for now: send as is, ask again with the next packet
        except Exception:  # a bug in the inner backend's model_config: still serve
            _log.exception("model_config(%r, %r) failed; not coalescing it", model, version)
            return None

    def _remember(self, key: tuple[str, str], lookup: asyncio.Task[ModelConfig]) -> None:
        if self._lookups.get(key) is lookup:
            del self._lookups[key]
        if lookup.cancelled():
            return
        if lookup.exception() is not None:
            remembered = (time.monotonic() + self.retry_after, ModelConfig())
        else:
            remembered = (time.monotonic() + self.config_ttl, lookup.result())
        if len(self._configs) >= _CONFIG_MAX:
            self._configs.clear()
        self._configs[key] = remembered

    async def infer(self, request: InferRequest) -> _Outputs:
        """Run ``request`` alone or within a coalesced request; see :class:`CoalescingBackend`."""
        cached = self._configs.get((request.model, request.model_version))
        config: ModelConfig | None
        if cached is not None and cached[0] > time.monotonic():
            config = cached[1]  # the common case, without a lookup
        else:
            config = await self._config(request.model, request.model_version, request.timeout)
        if (
            config is None
            or config.decoupled
            or config.max_batch_size < 2
            or request.datatype == "BYTES"
            or not request.shape
        ):
            return await self.inner.infer(request)
        limit = min(self.max_rows, config.max_batch_size)
        if not 0 < request.shape[0] < limit:
            return await self.inner.infer(request)
        # Ask only for outputs the model has, so packets that differ only by a name the
        # model lacks still share a request (the Ack marks that name missing anyway).
        outputs = request.outputs
        if config.outputs is not None:
            outputs = tuple(n for n in request.outputs if n in config.outputs)
        return await self._join(request, outputs, limit)

    async def _join(self, request: InferRequest, outputs: tuple[str, ...], limit: int) -> _Outputs:
        key: _BatchKey = (
            request.model,
            request.model_version,
            request.input_name,
            request.datatype,
            request.shape[1:],
            outputs,
        )
        loop = asyncio.get_running_loop()
        batch = self._pending.get(key)
        if batch is not None and batch.rows + request.shape[0] > limit:
            self._flush(key, batch)
            batch = None
        if batch is None:
            batch = _Batch(outputs)
            self._pending[key] = batch
            if self.max_in_flight and self._running.get(key, 0) >= self.max_in_flight:
                batch.held_since = loop.time()  # sent when one of the group's finishes
            else:
                # Send whatever else arrives in this event-loop turn along with it: no
                # timer, so a lone packet waits for nothing.
                batch.scheduled = True
                loop.call_soon(self._flush, key, batch)
        future: asyncio.Future[_Outputs] = loop.create_future()
        batch.items.append((request, future))
        batch.rows += request.shape[0]
        return await future

    def _flush(self, key: _BatchKey, batch: _Batch) -> None:
        if self._pending.get(key) is batch:
            del self._pending[key]
        if batch.sent:
            return
        batch.sent = True
        items = [(r, f) for r, f in batch.items if not f.done()]
        if batch.held_since is not None:
            items = self._time_left(items, asyncio.get_running_loop().time() - batch.held_since)
        if not items:
            return
        task = asyncio.ensure_future(self._run(items, batch.outputs))
        if self.max_in_flight:
            self._running[key] = self._running.get(key, 0) + 1
            task.add_done_callback(lambda _: self._finished(key))
        live = [len(items)]

        def on_done(future: asyncio.Future[_Outputs]) -> None:
            # Cancel the shared request once nobody waits for it any more.
            if future.cancelled():
                live[0] -= 1
                if live[0] == 0:
                    task.cancel()

        for _, future in items:
            future.add_done_callback(on_done)

    def _finished(self, key: _BatchKey) -> None:
        """One of the group's requests finished: send the group's held packets, if any."""
        left = self._running.get(key, 1) - 1
        if left > 0:
            self._running[key] = left
        else:
            self._running.pop(key, None)
        held = self._pending.get(key)
        if held is not None and not held.scheduled:
            held.scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, key, held)

    @staticmethod
    def _time_left(
        items: list[tuple[InferRequest, asyncio.Future[_Outputs]]], waited: float
    ) -> list[tuple[InferRequest, asyncio.Future[_Outputs]]]:
        """Held packets with what is left of their deadlines; those past it fail here."""
        kept = []
        for request, future in items:
            left = request.timeout - waited
            if left <= 0:
                future.set_exception(
                    BackendError(
                        f"timed out after {request.timeout:g}s waiting to be coalesced "
                        f"({request.model!r} was busy)"
                    )
                )
                continue
            kept.append((dataclasses.replace(request, timeout=left), future))
        return kept

    async def _run(
        self, items: list[tuple[InferRequest, asyncio.Future[_Outputs]]], outputs: tuple[str, ...]
    ) -> None:
        futures = [f for _, f in items]
        try:
            if len(items) == 1:
                results: list[_Outputs] = [await self.inner.infer(items[0][0])]
            else:
                requests = [r for r, _ in items]
                stacked = await self.inner.infer(stack_rows(requests, outputs))
                # Only what was asked for is split (and must split): a runtime may add
                # outputs of its own, which no packet's Ack would show.
                wanted = {n: t for n, t in stacked.items() if n in outputs}
                results = list(split_rows(wanted, [r.shape[0] for r in requests]))
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        except Exception as exc:  # every waiter gets an error, never silence
            if isinstance(exc, BackendError):
                code, status, message = exc.code, exc.status, str(exc)
            else:
                code, status = grpc.StatusCode.INTERNAL, pb.INTERNAL
                message = f"{type(exc).__name__}: {exc}"
            for future in futures:
                if not future.done():
                    error = BackendError(message, status=status, code=code)
                    error.__cause__ = exc
                    future.set_exception(error)
            return
        for future, result in zip(futures, results, strict=True):
            if not future.done():
                future.set_result(result)


def coalescing(backend: Backend, max_rows: int, *, max_in_flight: int = 0) -> Backend:
    """``backend`` wrapped in a :class:`CoalescingBackend`, or as is.

    As is when ``max_rows`` is 0 or 1 (coalescing off) or ``backend`` already coalesces.

    Raises:
        ValueError: ``max_rows`` or ``max_in_flight`` is negative.
    """
    if max_rows < 0:
        raise ValueError(f"coalesce must be 0 (off) or at least 2, got {max_rows}")
    if max_in_flight < 0:
        raise ValueError(f"coalesce-in-flight must be 0 or more, got {max_in_flight}")
    if max_rows < 2 or isinstance(backend, CoalescingBackend):
        return backend
    return CoalescingBackend(backend, max_rows=max_rows, max_in_flight=max_in_flight)
