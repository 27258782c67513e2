"""The sync client of the Triton proxy: :class:`TritonBytesStreamer`.

The seed's client opened one short ``Chat`` call per frame; this one sends every
frame of ``stream_bytes`` over one ``Chat`` call, pipelined: gRPC's request thread
pulls packets from a generator that blocks once ``max_in_flight`` frames await
their results, while the caller's thread reads Acks, which the proxy sends as
packets complete, and yields results in frame order. Packet building, Ack parsing
and reordering live in the sans-IO ``_client_packets`` and ``_client_core`` modules
shared with :class:`~transports.triton.AsyncTritonBytesStreamer`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any

import grpc

from transports.grpc import create_channel

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

__all__ = ["TritonBytesStreamer"]


class TritonBytesStreamer(StreamerSettings):
    """Stream raw tensor bytes to the Triton proxy; results come back in frame order.

    The seed's constructor, plus keyword-only settings. Use it as a context manager
    (or call :meth:`close`) to close its channel.

    Args:
        addr: ``host:port`` of the proxy (any gRPC target).
        input_name: the model input each frame feeds. ``None``: discovered with
            :meth:`model_metadata` (the model's only input).
        shape: the input's full shape, the same for every frame. ``None``: from the
            metadata, when every dim but a leading batch dim (then 1) is fixed.
        dtype_enum: the input's ``DataType`` (``multimodal_pb2.DT_FP32``). ``None``:
            from the metadata.
        outputs: names of the outputs to return. ``None``: all of the model's.
        stream_id: prefix of correlation ids (``<stream_id>:<seq>``).
        request_timeout_sec: per-request timeout: sent with every frame as
            ``Control.timeout_secs`` (the proxy's deadline for the Triton call; a
            frame that runs over comes back with status ``INTERNAL``) and the gRPC
            deadline of each unary call (``send_unary``, metadata, readiness).
        parse_outputs_numpy: give outputs as ``np.ndarray`` (read-only views of the
            received bytes); ``False`` gives the JSON ``"outputs"`` map as the seed.
        connect_timeout_sec: how long the first call (and the first after the
            proxy became unreachable) waits for the channel to connect, as gRPC
            retries, before failing with ``UNAVAILABLE``; separate from the
            per-request timeout. The wait is a gRPC health check with
            ``wait_for_ready``, answered by the proxy itself.
        stream_timeout_sec: optional deadline of a whole ``stream_bytes`` call;
            ``None`` (default) lets a stream run as long as frames keep coming.
        ack_timeout_sec: a stream whose caller waits this long for an Ack while
            frames are in flight is cancelled with ``DEADLINE_EXCEEDED`` (a stuck
            proxy); default ``request_timeout_sec + 30``, ``math.inf`` turns it off.
            Time the caller spends between results does not count.
        max_in_flight: frames sent whose results have not been yielded yet, at most.
        frames_per_packet: opt-in client-side batching: stack this many consecutive
            frames along the leading batch dim (``shape[0]`` must be 1) into one packet,
            one Triton request, and split the outputs back per frame. Fewer, larger
            requests cost the proxy and Triton far less per frame; a failed packet
            fails all its frames, and a frame waits for the next ones to fill its
            packet. Default 1 (the seed's one frame per packet).
        binary_outputs: ask the proxy for raw output bytes instead of base64 JSON;
            defaults to ``parse_outputs_numpy``.
        tls: a ``transports.grpc.ClientTLS``; ``None`` is plaintext.
        root_certs: shorthand for ``tls=ClientTLS(root_certificates=root_certs)``.
        metadata: extra call metadata, sent after the auth headers.
        options: a ``transports.grpc.GrpcOptions`` (message size, keepalive).
        environ: where to read ``DOMINO_USER_API_KEY`` / ``Authorization`` from
            (default ``os.environ``), read once here.

    Raises (from its calls):
        TritonClientError: the call failed as a whole (``code``: ``UNAVAILABLE``,
            ``UNAUTHENTICATED``, ``DEADLINE_EXCEEDED``, ...). Failed frames are not
            raised: their results carry a non-OK ``status``.
    """

    def _setup(self) -> None:
        self._channel: grpc.Channel | None = None
        self._stub: pbg.MultimodalServiceStub | None = None
        self._lock = threading.Lock()

    # Lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> TritonBytesStreamer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; calls in progress and later calls fail with ``CANCELLED``."""
        with self._lock:
            self._closed = True
            channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            channel.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def _stub_now(self) -> tuple[grpc.Channel, pbg.MultimodalServiceStub]:
        with self._lock:
            if self._closed:
                raise closed_error()
            if self._channel is None or self._stub is None:
                self._channel = create_channel(self.addr, options=self.options, tls=self.tls)
                self._stub = pbg.MultimodalServiceStub(self._channel)
            return self._channel, self._stub

    def _connected_stub(self) -> pbg.MultimodalServiceStub:
        channel, stub = self._stub_now()
        if self._connected:
            return stub
        probe = channel.unary_unary(HEALTH_CHECK_METHOD, None, None)  # raw bytes in and out
        try:
            probe(
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

    def model_metadata(self, model: str, model_version: str = "") -> ModelInfo:
        """Ask the proxy for a model's inputs and outputs (Triton's metadata and config).

        Raises:
            TritonClientError: the call failed (``NOT_FOUND`` for an unknown model, as
                the proxy reports it).
        """
        stub = self._connected_stub()
        request = pb.ModelMetadataRequest(model=model, model_version=model_version)
        try:
            response = stub.ModelMetadata(
                request, timeout=self.request_timeout_sec, metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise self._rpc_error(exc, "ModelMetadata") from exc
        return ModelInfo.from_proto(response)

    def prepare(self, model: str, model_version: str = "") -> PacketSpec:
        """Fill in and check input name, shape, dtype and outputs from the model's metadata.

        Later streams to this model and version use the result without asking again.
        Without calling it, a client constructed with everything set sends straight
        away (as the seed's), and one with something left ``None`` calls it itself.

        Raises:
            ValueError: the settings do not fit the model.
            TritonClientError: the metadata call failed.
        """
        spec = self.spec_from(self.model_metadata(model, model_version))
        self._specs[(model, model_version)] = spec
        return spec

    def packet_spec(self, model: str, model_version: str) -> PacketSpec:
        """The packet settings used for ``model``: prepared, explicit, or discovered now."""
        spec = self._specs.get((model, model_version)) or self.explicit_spec()
        return spec if spec is not None else self.prepare(model, model_version)

    def wait_for_ready(
        self, model: str | None = None, timeout_s: float = 30.0, model_version: str = ""
    ) -> None:
        """Wait until the proxy's backend (and ``model``, if given) is ready.

        Polls ``ServerReady`` then ``ModelReady``; an unreachable proxy counts as not
        ready yet.

        Raises:
            TritonClientError: ``DEADLINE_EXCEEDED`` when ``timeout_s`` runs out;
                ``UNAUTHENTICATED`` (or another non-transient status) at once.
        """
        _, stub = self._stub_now()
        steps = readiness_steps(
            model, model_version, timeout_s, self.request_timeout_sec, time.monotonic
        )
        step: ReadyStep = next(steps)
        while True:
            answer: pb.ReadyResponse | TritonClientError | None = None
            if step.method == "sleep":
                time.sleep(step.sleep_s)
            else:
                rpc = stub.ModelReady if step.method == "ModelReady" else stub.ServerReady
                try:
                    answer = rpc(step.request, timeout=step.timeout_s, metadata=self.metadata)
                except grpc.RpcError as exc:
                    answer = status_error(step.method, exc)
            try:
                step = steps.send(answer)
            except StopIteration:
                return

    # Inference ------------------------------------------------------------------------

    def send_unary(
        self, model: str, model_version: str, frame_bytes: bytes, *, seq: int = 0
    ) -> FrameResult:
        """Send one frame with ``SendUnary`` and return its result.

        Raises:
            TritonClientError: the call failed (a failed frame is a non-OK result).
        """
        stub = self._connected_stub()
        spec = self.packet_spec(model, model_version)
        packet = self.unary_packet(spec, model, model_version, frame_bytes, seq)
        started = time.perf_counter()
        try:
            ack = stub.SendUnary(packet, timeout=self.request_timeout_sec, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise self._rpc_error(exc, "SendUnary") from exc
        return self.unary_result(ack, seq, time.perf_counter() - started)

    def stream_bytes(
        self, model: str, model_version: str, frame_bytes_iter: Iterable[bytes]
    ) -> Iterator[tuple[int, dict[str, Any], dict[str, Any] | None]]:
        """Send frames over one pipelined ``Chat`` call; yield ``(seq, ack_dict, outputs)``.

        As the seed's ``stream_bytes``: ``seq`` is the 0-based frame index, results
        come in frame order, ``ack_dict`` is the Ack's JSON (plus ``"status"``), and
        ``outputs`` maps output names to arrays (or is None when the Ack has none).

        Raises:
            TritonClientError: the call failed as a whole.
            Exception: whatever ``frame_bytes_iter`` raised, after the results of the
                frames before it.
        """
        for result in self.stream_results(model, model_version, frame_bytes_iter):
            yield result.seq, result.ack, result.outputs

    def stream_results(
        self, model: str, model_version: str, frame_bytes_iter: Iterable[bytes]
    ) -> Iterator[FrameResult]:
        """Like :meth:`stream_bytes`, yielding :class:`FrameResult` (status, timings)."""
        for result in self._chat(model, model_version, frame_bytes_iter, streaming=False):
            assert isinstance(result, FrameResult)
            yield result

    def stream_responses(
        self, model: str, model_version: str, frame_bytes_iter: Iterable[bytes]
    ) -> Iterator[ResponseResult]:
        """Send frames over one ``Chat`` call; yield every model response to each.

        For streaming (decoupled) models, one :class:`ResponseResult` per response:
        ``seq`` (frame), ``index`` (response within the frame), ``final`` (exactly one
        per frame, its last), ``status``, ``outputs`` and ``ack``. Each frame's
        responses come in index order; frames in flight together interleave. Other
        models give one final result per frame. Up to ``max_in_flight`` frames are in
        flight (sent, final response not yet received).

        Raises:
            ValueError: ``frames_per_packet > 1``.
            TritonClientError: the call failed as a whole, or ran over
                ``ack_timeout_sec`` (idle between responses), ``frame_timeout_sec``
                (per frame) or ``stream_timeout_sec`` (the whole call).
            Exception: whatever ``frame_bytes_iter`` raised, after the results of the
                frames before it.
        """
        for result in self._chat(model, model_version, frame_bytes_iter, streaming=True):
            assert isinstance(result, ResponseResult)
            yield result

    def _chat(
        self, model: str, model_version: str, frame_bytes_iter: Iterable[bytes], *, streaming: bool
    ) -> Iterator[FrameResult | ResponseResult]:
        stub = self._connected_stub()
        spec = self.packet_spec(model, model_version)
        self.check_streaming(spec, streaming)
        pipe = self.pipeline(spec, model, model_version)
        lock = threading.Lock()
        window = threading.Semaphore(self.max_in_flight)
        stop = threading.Event()
        failure: list[Exception] = []
        per_packet = self.frames_per_packet

        def requests() -> Iterator[pb.DataPacket]:
            # Runs on gRPC's request thread: blocking here is the back-pressure.
            try:
                if per_packet == 1:
                    for data in frame_bytes_iter:
                        window.acquire()
                        if stop.is_set():
                            return
                        with lock:
                            packet = pipe.packet(data)
                        yield packet
                    return
                for chunk in chunked(frame_bytes_iter, per_packet):
                    for _ in chunk:
                        window.acquire()
                    if stop.is_set():
                        return
                    with lock:
                        packet = pipe.packet_frames(chunk)
                    yield packet
            except Exception as exc:
                # End the request stream cleanly; the caller's thread re-raises it
                # once the frames sent before it have their results.
                failure.append(exc)

        call = stub.Chat(requests(), timeout=self.stream_timeout_sec, metadata=self.metadata)
        watch = self.watch(pipe, time.monotonic)
        if watch.enabled:

            def watchdog() -> None:
                while not stop.wait(watch.interval_s):
                    if watch.check():
                        call.cancel()  # type: ignore[no-untyped-call]
                        return

            threading.Thread(target=watchdog, name="triton-ack-watchdog", daemon=True).start()
        acks = iter(call)
        try:
            try:
                while True:
                    watch.waiting()
                    try:
                        ack = next(acks)
                    except StopIteration:
                        break
                    finally:
                        watch.got()
                    if streaming:
                        with lock:
                            response, done = pipe.on_response(ack)
                        if done:
                            window.release()
                        yield response
                        continue
                    with lock:
                        ready = pipe.on_ack(ack)
                    for result in ready:
                        window.release()
                        yield result
            except TritonClientError:
                raise  # ours already (a protocol error): a grpc.RpcError too
            except grpc.RpcError as exc:
                if failure:  # the frame iterator's own failure comes first
                    raise failure[0] from None
                if watch.tripped:
                    raise watch.error() from exc
                raise self._rpc_error(exc, "Chat") from exc
            if failure:
                raise failure[0]
            pipe.finish()
        finally:
            stop.set()
            window.release(self.max_in_flight)
            call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped
