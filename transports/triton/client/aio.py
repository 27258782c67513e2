"""The async client of the Triton proxy: :class:`AsyncTritonBytesStreamer` (``grpc.aio``).

The twin of :class:`~transports.triton.TritonBytesStreamer`: the same constructor
and methods as coroutines, over the same sans-IO core (:mod:`._core`, :mod:`._chat`,
:mod:`._packets`). ``stream_bytes`` opens one ``Chat`` call: gRPC's task pulls
packets while fewer than ``max_in_flight`` frames await their results, and the
caller's task reads Acks (sent by the proxy as packets complete) and yields results
in frame order. This module holds only the I/O: the channel, the awaits, the window
and the watchdog task.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from transports.grpc import acreate_channel

from ..protocol import multimodal_pb2 as pb
from ..protocol import multimodal_pb2_grpc as pbg
from ._chat import ChatCall, FrameCall, ResponseCall, ResultT
from ._core import Sleep, Step, Stepper, Steps, StreamerCore
from ._packets import FrameResult, ModelInfo, PacketSpec, ResponseResult
from .errors import closed_error, status_error

__all__ = ["AsyncTritonBytesStreamer"]

Frames = Iterable[bytes] | AsyncIterable[bytes]
T = TypeVar("T")


def _cancelled_locally(ours: bool) -> bool:
    """Whether a ``CancelledError`` out of a grpc.aio await is our own cancel of the call.

    grpc.aio raises ``CancelledError`` from a call that was cancelled locally
    (``close()``, the watchdog); that becomes a ``TritonClientError``. The
    cancellation of the caller's task must propagate as is: on Python >= 3.11 the
    task says so (``Task.cancelling()``); before, ``ours`` (the client closed, the
    watchdog tripped) decides alone.
    """
    cancelling = getattr(asyncio.current_task(), "cancelling", None)
    if cancelling is not None and cancelling() > 0:
        return False
    return ours


class AsyncTritonBytesStreamer(StreamerCore[grpc.aio.Channel, "pbg.MultimodalServiceAsyncStub"]):
    """Stream raw tensor bytes to the Triton proxy from asyncio; results in frame order.

    Takes the arguments of :class:`~transports.triton.TritonBytesStreamer` (see
    there), ``max_in_flight`` included. The channel opens on first use, inside the
    running event loop, and belongs to that loop (use one client per event loop);
    use ``async with`` (or ``await close()``) to close it.
    ``frame_bytes_iter`` may be a sync or an async iterable; a sync one runs on the
    event loop, so it should not block.

    A call in progress when the client is closed raises ``TritonClientError``
    (``CANCELLED``), as in the sync client, never a bare ``asyncio.CancelledError``
    (which is left for the cancellation of the caller's own task).
    """

    # Lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncTritonBytesStreamer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; calls in progress and later calls fail with ``CANCELLED``."""
        channel = self._mark_closed()
        if channel is not None:
            await channel.close(None)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    # The driver: channel, steps ---------------------------------------------------------

    def _open_channel(self) -> tuple[grpc.aio.Channel, pbg.MultimodalServiceAsyncStub]:
        channel = acreate_channel(self.addr, options=self.options, tls=self.tls)
        return channel, pbg.MultimodalServiceStub(channel)

    async def _do(self, step: Step) -> Any:
        """Await one step's RPC (or pause), as the sync driver's ``_do``."""
        if isinstance(step, Sleep):
            await asyncio.sleep(step.seconds)
            return None
        invoke = self._bind(step, *self._channel_now())
        try:
            return await invoke()
        except grpc.RpcError as exc:
            return status_error(step.method, exc)
        except asyncio.CancelledError:
            if not _cancelled_locally(self._closed):
                raise
            return closed_error()  # close() cancelled the call

    async def _run(self, steps: Steps[T]) -> T:
        stepper = Stepper(steps)
        step = stepper.first()
        while step is not None:
            step = stepper.send(await self._do(step))
        result: T = stepper.result
        return result

    # Discovery and readiness ----------------------------------------------------------

    async def model_metadata(self, model: str, model_version: str = "") -> ModelInfo:
        """Ask the proxy for a model's inputs and outputs; see the sync twin."""
        return await self._run(self._metadata_steps(model, model_version))

    async def prepare(self, model: str, model_version: str = "") -> PacketSpec:
        """Fill in and check the packet settings from the model's metadata; see the sync twin."""
        return await self._run(self._prepare_steps(model, model_version))

    async def packet_spec(self, model: str, model_version: str) -> PacketSpec:
        """The packet settings used for ``model``: prepared, explicit, or discovered now."""
        return await self._run(self._spec_steps(model, model_version))

    async def wait_for_ready(
        self, model: str | None = None, timeout_s: float = 30.0, model_version: str = ""
    ) -> None:
        """Wait until the proxy's backend (and ``model``) is ready; see the sync twin."""
        await self._run(self._ready_steps(model, timeout_s, model_version))

    # Inference ------------------------------------------------------------------------

    async def send_unary(
        self, model: str, model_version: str, frame_bytes: bytes, *, seq: int = 0
    ) -> FrameResult:
        """Send one frame with ``SendUnary`` and return its result."""
        return await self._run(self._send_unary_steps(model, model_version, frame_bytes, seq))

    async def stream_bytes(
        self, model: str, model_version: str, frame_bytes_iter: Frames
    ) -> AsyncIterator[tuple[int, dict[str, Any], dict[str, Any] | None]]:
        """Send frames over one pipelined ``Chat`` call; yield ``(seq, ack_dict, outputs)``.

        Raises:
            TritonClientError: the call failed as a whole.
            Exception: whatever ``frame_bytes_iter`` raised, after the results of the
                frames before it.
        """
        results = self.stream_results(model, model_version, frame_bytes_iter)
        async with contextlib.aclosing(results) as rs:
            async for result in rs:
                yield result.seq, result.ack, result.outputs

    def stream_results(
        self, model: str, model_version: str, frame_bytes_iter: Frames
    ) -> AsyncGenerator[FrameResult, None]:
        """Like :meth:`stream_bytes`, yielding :class:`FrameResult` (status, timings)."""
        return self._chat(FrameCall, model, model_version, frame_bytes_iter)

    def stream_responses(
        self, model: str, model_version: str, frame_bytes_iter: Frames
    ) -> AsyncGenerator[ResponseResult, None]:
        """Every model response to each frame; see ``TritonBytesStreamer.stream_responses``.

        ``frame_bytes_iter`` may be a sync or an async iterable. Leaving the loop early
        (``break``, an exception, cancelling the task) cancels the call, and the proxy
        cancels its upstream requests.
        """
        return self._chat(ResponseCall, model, model_version, frame_bytes_iter)

    async def _chat(
        self,
        kind: type[ChatCall[ResultT]],
        model: str,
        model_version: str,
        frame_bytes_iter: Frames,
    ) -> AsyncGenerator[ResultT, None]:
        loop = asyncio.get_running_loop()
        state = await self._run(self._open_chat(kind, model, model_version, loop.time))
        window = asyncio.Semaphore(self.max_in_flight)

        async def requests() -> AsyncIterator[pb.DataPacket]:
            # gRPC's own task consumes this: waiting on the window is the back-pressure.
            try:
                async for frames in _batches(state, frame_bytes_iter):
                    for _ in frames:
                        await window.acquire()
                    yield state.packet(frames)
            except Exception as exc:
                state.frames_failed(exc)

        _, stub = self._channel_now()
        call = stub.Chat(requests(), timeout=self.stream_timeout_sec, metadata=self.metadata)
        watch = state.watch

        async def watchdog() -> None:
            while True:
                await asyncio.sleep(watch.interval_s)
                if watch.check():
                    call.cancel()
                    return

        dog = loop.create_task(watchdog()) if watch.enabled else None
        try:
            try:
                while True:
                    with watch.reading():
                        ack = await _read(call, state, lambda: self._closed)
                    if ack is None:
                        break
                    for result in state.on_ack(ack, window.release):
                        yield result
            except grpc.RpcError as exc:  # a TritonClientError of ours is one too
                raise await self._run(self._chat_failure_steps(state.failed(exc)))  # noqa: B904
            state.finished()
        finally:
            if dog is not None:
                dog.cancel()
            call.cancel()


async def _read(call: Any, state: ChatCall[Any], closed: Callable[[], bool]) -> pb.Ack | None:
    """The next Ack, or None at the end of the response stream."""
    try:
        ack = await call.read()
    except asyncio.CancelledError:
        if not _cancelled_locally(closed() or state.watch.tripped):
            raise
        raise state.failed(None) from None
    return ack if isinstance(ack, pb.Ack) else None


async def _batches(state: ChatCall[Any], frames: Frames) -> AsyncIterator[list[bytes]]:
    """:meth:`ChatCall.batches` over a sync or an async iterable."""
    if not isinstance(frames, AsyncIterable):
        for batch in state.batches(frames):
            yield batch
        return
    size = state.frames_per_packet
    pending: list[bytes] = []
    async for data in frames:
        pending.append(data)
        if len(pending) == size:
            yield pending
            pending = []
    if pending:
        yield pending
