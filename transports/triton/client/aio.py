"""The async client of the Triton proxy: :class:`AsyncTritonBytesStreamer` (``grpc.aio``).

The twin of :class:`~transports.triton.TritonBytesStreamer`, the same constructor
and methods as coroutines. ``stream_bytes`` opens one ``Chat`` call: gRPC's task
pulls packets while fewer than ``max_in_flight`` frames await their results, and
the caller's task reads Acks (sent by the proxy as packets complete) and yields
results in frame order. The bookkeeping is the sans-IO ``_client_packets`` and
``_client_core`` modules'.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from transports.grpc import acreate_channel

from ..protocol import multimodal_pb2 as pb
from ..protocol import multimodal_pb2_grpc as pbg
from ._core import (
    ReadyStep,
    StreamerSettings,
    readiness_steps,
)
from ._packets import (
    FrameResult,
    ModelInfo,
    PacketSpec,
    ResponseResult,
    chunked,
)
from .errors import (
    HEALTH_CHECK_METHOD,
    HEALTH_CHECK_REQUEST,
    TritonClientError,
    closed_error,
    status_error,
)

__all__ = ["AsyncTritonBytesStreamer"]

Frames = Iterable[bytes] | AsyncIterable[bytes]


class AsyncTritonBytesStreamer(StreamerSettings):
    """Stream raw tensor bytes to the Triton proxy from asyncio; results in frame order.

    Takes the arguments of :class:`~transports.triton.TritonBytesStreamer` (see
    there), ``max_in_flight`` included. The channel opens on first use, inside the
    running event loop, and belongs to that loop (use one client per event loop);
    use ``async with`` (or ``await close()``) to close it.
    ``frame_bytes_iter`` may be a sync or an async iterable; a sync one runs on the
    event loop, so it should not block.
    """

    def _setup(self) -> None:
        self._channel: grpc.aio.Channel | None = None
        self._stub: pbg.MultimodalServiceAsyncStub | None = None

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
        self._closed = True
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close(None)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _stub_now(self) -> tuple[grpc.aio.Channel, pbg.MultimodalServiceAsyncStub]:
        if self._closed:
            raise closed_error()
        if self._channel is None or self._stub is None:
            self._channel = acreate_channel(self.addr, options=self.options, tls=self.tls)
            self._stub = pbg.MultimodalServiceStub(self._channel)
        return self._channel, self._stub

    async def _connected_stub(self) -> pbg.MultimodalServiceAsyncStub:
        channel, stub = self._stub_now()
        if self._connected:
            return stub
        probe = channel.unary_unary(HEALTH_CHECK_METHOD, None, None)  # raw bytes in and out
        try:
            await probe(
                HEALTH_CHECK_REQUEST,
                timeout=self.connect_timeout_sec,
                metadata=self.metadata,
                wait_for_ready=True,
            )
        except grpc.RpcError as exc:
            self._probe_failed(exc)
        self._connected = True
        return stub

    # Discovery and readiness ----------------------------------------------------------

    async def model_metadata(self, model: str, model_version: str = "") -> ModelInfo:
        """Ask the proxy for a model's inputs and outputs; see the sync twin."""
        stub = await self._connected_stub()
        request = pb.ModelMetadataRequest(model=model, model_version=model_version)
        try:
            response = await stub.ModelMetadata(
                request, timeout=self.request_timeout_sec, metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise self._rpc_error(exc, "ModelMetadata") from exc
        return ModelInfo.from_proto(response)

    async def prepare(self, model: str, model_version: str = "") -> PacketSpec:
        """Fill in and check the packet settings from the model's metadata; see the sync twin."""
        spec = self.spec_from(await self.model_metadata(model, model_version))
        self._specs[(model, model_version)] = spec
        return spec

    async def packet_spec(self, model: str, model_version: str) -> PacketSpec:
        """The packet settings used for ``model``: prepared, explicit, or discovered now."""
        spec = self._specs.get((model, model_version)) or self.explicit_spec()
        return spec if spec is not None else await self.prepare(model, model_version)

    async def wait_for_ready(
        self, model: str | None = None, timeout_s: float = 30.0, model_version: str = ""
    ) -> None:
        """Wait until the proxy's backend (and ``model``) is ready; see the sync twin."""
        _, stub = self._stub_now()
        steps = readiness_steps(
            model, model_version, timeout_s, self.request_timeout_sec, time.monotonic
        )
        step: ReadyStep = next(steps)
        while True:
            answer: pb.ReadyResponse | TritonClientError | None = None
            if step.method == "sleep":
                await asyncio.sleep(step.sleep_s)
            else:
                rpc = stub.ModelReady if step.method == "ModelReady" else stub.ServerReady
                try:
                    answer = await rpc(step.request, timeout=step.timeout_s, metadata=self.metadata)
                except grpc.RpcError as exc:
                    answer = status_error(step.method, exc)
            try:
                step = steps.send(answer)
            except StopIteration:
                return

    # Inference ------------------------------------------------------------------------

    async def send_unary(
        self, model: str, model_version: str, frame_bytes: bytes, *, seq: int = 0
    ) -> FrameResult:
        """Send one frame with ``SendUnary`` and return its result."""
        stub = await self._connected_stub()
        spec = await self.packet_spec(model, model_version)
        packet = self.unary_packet(spec, model, model_version, frame_bytes, seq)
        started = time.perf_counter()
        try:
            ack = await stub.SendUnary(
                packet, timeout=self.request_timeout_sec, metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise self._rpc_error(exc, "SendUnary") from exc
        return self.unary_result(ack, seq, time.perf_counter() - started)

    async def stream_bytes(
        self, model: str, model_version: str, frame_bytes_iter: Frames
    ) -> AsyncIterator[tuple[int, dict[str, Any], dict[str, Any] | None]]:
        """Send frames over one pipelined ``Chat`` call; yield ``(seq, ack_dict, outputs)``.

        Raises:
            TritonClientError: the call failed as a whole.
            Exception: whatever ``frame_bytes_iter`` raised, after the results of the
                frames before it.
        """
        async for result in self.stream_results(model, model_version, frame_bytes_iter):
            yield result.seq, result.ack, result.outputs

    async def stream_results(
        self, model: str, model_version: str, frame_bytes_iter: Frames
    ) -> AsyncIterator[FrameResult]:
        """Like :meth:`stream_bytes`, yielding :class:`FrameResult` (status, timings)."""
        async with contextlib.aclosing(
            self._chat(model, model_version, frame_bytes_iter, streaming=False)
        ) as results:
            async for result in results:
                assert isinstance(result, FrameResult)
                yield result

    async def stream_responses(
        self, model: str, model_version: str, frame_bytes_iter: Frames
    ) -> AsyncIterator[ResponseResult]:
        """Every model response to each frame; see ``TritonBytesStreamer.stream_responses``.

        ``frame_bytes_iter`` may be a sync or an async iterable. Leaving the loop early
        (``break``, an exception, cancelling the task) cancels the call, and the proxy
        cancels its upstream requests.
        """
        async with contextlib.aclosing(
            self._chat(model, model_version, frame_bytes_iter, streaming=True)
        ) as results:
            async for result in results:
                assert isinstance(result, ResponseResult)
                yield result

    async def _chat(
        self, model: str, model_version: str, frame_bytes_iter: Frames, *, streaming: bool
    ) -> AsyncGenerator[FrameResult | ResponseResult, None]:
        stub = await self._connected_stub()
        spec = await self.packet_spec(model, model_version)
        self.check_streaming(spec, streaming)
        pipe = self.pipeline(spec, model, model_version)
        window = asyncio.Semaphore(self.max_in_flight)
        failure: list[Exception] = []
        per_packet = self.frames_per_packet

        async def requests() -> AsyncIterator[pb.DataPacket]:
            # gRPC's own task consumes this: waiting on the window is the back-pressure.
            try:
                if per_packet > 1:
                    async for chunk in _chunks(frame_bytes_iter, per_packet):
                        for _ in chunk:
                            await window.acquire()
                        yield pipe.packet_frames(chunk)
                elif isinstance(frame_bytes_iter, AsyncIterable):
                    async for data in frame_bytes_iter:
                        await window.acquire()
                        yield pipe.packet(data)
                else:
                    for data in frame_bytes_iter:
                        await window.acquire()
                        yield pipe.packet(data)
            except Exception as exc:
                # End the request stream cleanly; the reader re-raises it once the
                # frames sent before it have their results.
                failure.append(exc)

        call = stub.Chat(requests(), timeout=self.stream_timeout_sec, metadata=self.metadata)
        loop = asyncio.get_running_loop()
        watch = self.watch(pipe, loop.time)

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
                    watch.waiting()
                    try:
                        ack = await call.read()
                    except asyncio.CancelledError:
                        if watch.tripped:  # our watchdog cancelled the call
                            raise watch.error() from None
                        raise
                    finally:
                        watch.got()
                    if not isinstance(ack, pb.Ack):  # grpc.aio.EOF
                        break
                    if streaming:
                        response, done = pipe.on_response(ack)
                        if done:
                            window.release()
                        yield response
                        continue
                    for result in pipe.on_ack(ack):
                        window.release()
                        yield result
            except TritonClientError:
                raise  # ours already (a stuck call, a protocol error): a grpc.RpcError too
            except grpc.RpcError as exc:
                if failure:  # the frame iterator's own failure comes first, as in the sync client
                    raise failure[0] from None
                raise self._rpc_error(exc, "Chat") from exc
            if failure:
                raise failure[0]
            pipe.finish()
        finally:
            if dog is not None:
                dog.cancel()
            call.cancel()


async def _chunks(frames: Frames, size: int) -> AsyncIterator[list[bytes]]:
    if not isinstance(frames, AsyncIterable):
        for whole in chunked(frames, size):
            yield whole
        return
    chunk: list[bytes] = []
    async for data in frames:
        chunk.append(data)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
