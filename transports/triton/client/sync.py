"""The sync client of the Triton proxy: :class:`TritonBytesStreamer`, a thin driver.

The seed's client opened one short ``Chat`` call per frame; this one sends every
frame of ``stream_bytes`` over one ``Chat`` call, pipelined: gRPC's request thread
pulls packets from a generator that blocks once ``max_in_flight`` frames await
their results, while the caller's thread reads Acks, which the proxy sends as
packets complete, and yields results in frame order. What to send, yield and
raise is decided by the sans-IO core (:mod:`._core`, :mod:`._chat`, :mod:`._packets`)
shared with :class:`~transports.triton.AsyncTritonBytesStreamer`; this module holds
only the I/O: the channel, the RPCs, the request thread's window and the watchdog.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Generator, Iterable, Iterator
from types import TracebackType
from typing import Any, TypeVar

import grpc

from transports.grpc import create_channel

from ..protocol import multimodal_pb2 as pb
from ..protocol import multimodal_pb2_grpc as pbg
from ._chat import ChatCall, FrameCall, ResponseCall, ResultT
from ._core import Sleep, Step, Stepper, Steps, StreamerCore
from ._packets import FrameResult, ModelInfo, PacketSpec, ResponseResult
from .errors import closed_error, status_error

__all__ = ["TritonBytesStreamer"]

T = TypeVar("T")


class TritonBytesStreamer(StreamerCore[grpc.Channel, pbg.MultimodalServiceStub]):
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
        self._lock = threading.Lock()  # open and close may race from several threads

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
            channel = self._mark_closed()
        if channel is not None:
            channel.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    # The driver: channel, steps ---------------------------------------------------------

    def _open_channel(self) -> tuple[grpc.Channel, pbg.MultimodalServiceStub]:
        channel = create_channel(self.addr, options=self.options, tls=self.tls)
        return channel, pbg.MultimodalServiceStub(channel)

    def _stub_now(self) -> tuple[grpc.Channel, pbg.MultimodalServiceStub]:
        with self._lock:
            return self._channel_now()

    def _do(self, step: Step) -> Any:
        """Make one step's RPC (or pause); its answer for the step generator."""
        if isinstance(step, Sleep):
            time.sleep(step.seconds)
            return None
        invoke = self._bind(step, *self._stub_now())
        try:
            with self._close_race():
                return invoke()
        except grpc.RpcError as exc:
            return status_error(step.method, exc)

    @contextlib.contextmanager
    def _close_race(self) -> Iterator[None]:
        """close() on another thread just after we took the channel: grpc raises
        ``ValueError("Cannot invoke RPC on closed channel!")``; that is our CANCELLED."""
        try:
            yield
        except ValueError as exc:
            if not self._closed:
                raise
            raise closed_error() from exc

    def _run(self, steps: Steps[T]) -> T:
        stepper = Stepper(steps)
        step = stepper.first()
        while step is not None:
            step = stepper.send(self._do(step))
        result: T = stepper.result
        return result

    # Discovery and readiness ----------------------------------------------------------

    def model_metadata(self, model: str, model_version: str = "") -> ModelInfo:
        """Ask the proxy for a model's inputs and outputs (Triton's metadata and config).

        Raises:
            TritonClientError: the call failed (``NOT_FOUND`` for an unknown model, as
                the proxy reports it).
        """
        return self._run(self._metadata_steps(model, model_version))

    def prepare(self, model: str, model_version: str = "") -> PacketSpec:
        """Fill in and check input name, shape, dtype and outputs from the model's metadata.

        Later streams to this model and version use the result without asking again.
        Without calling it, a client constructed with everything set sends straight
        away (as the seed's), and one with something left ``None`` calls it itself.

        Raises:
            ValueError: the settings do not fit the model.
            TritonClientError: the metadata call failed.
        """
        return self._run(self._prepare_steps(model, model_version))

    def packet_spec(self, model: str, model_version: str) -> PacketSpec:
        """The packet settings used for ``model``: prepared, explicit, or discovered now."""
        return self._run(self._spec_steps(model, model_version))

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
        self._run(self._ready_steps(model, timeout_s, model_version))

    # Inference ------------------------------------------------------------------------

    def send_unary(
        self, model: str, model_version: str, frame_bytes: bytes, *, seq: int = 0
    ) -> FrameResult:
        """Send one frame with ``SendUnary`` and return its result.

        Raises:
            TritonClientError: the call failed (a failed frame is a non-OK result).
        """
        return self._run(self._send_unary_steps(model, model_version, frame_bytes, seq))

    def stream_bytes(
        self, model: str, model_version: str, frame_bytes_iter: Iterable[bytes]
    ) -> Iterator[tuple[int, dict[str, Any], dict[str, Any] | None]]:
        """Send frames over one pipelined ``Chat`` call; yield ``(seq, ack_dict, outputs)``.

        As the seed's ``stream_bytes``: ``seq`` is the 0-based frame index, results
        come in frame order, ``ack_dict`` is the Ack's JSON (plus ``"status"``), and
        ``outputs`` maps output names to arrays (or is None when the Ack has none).

        Raises:
            TritonClientError: the call failed as a whole; (FAILED_PRECONDITION) the
                model is decoupled (streaming): use :meth:`stream_responses`.
            Exception: whatever ``frame_bytes_iter`` raised, after the results of the
                frames before it.
        """
        with contextlib.closing(self.stream_results(model, model_version, frame_bytes_iter)) as rs:
            for result in rs:
                yield result.seq, result.ack, result.outputs

    def stream_results(
        self, model: str, model_version: str, frame_bytes_iter: Iterable[bytes]
    ) -> Generator[FrameResult, None, None]:
        """Like :meth:`stream_bytes`, yielding :class:`FrameResult` (status, timings)."""
        return self._chat(FrameCall, model, model_version, frame_bytes_iter)

    def stream_responses(
        self, model: str, model_version: str, frame_bytes_iter: Iterable[bytes]
    ) -> Generator[ResponseResult, None, None]:
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
        return self._chat(ResponseCall, model, model_version, frame_bytes_iter)

    def _chat(
        self,
        kind: type[ChatCall[ResultT]],
        model: str,
        model_version: str,
        frame_bytes_iter: Iterable[bytes],
    ) -> Generator[ResultT, None, None]:
        state = self._run(self._open_chat(kind, model, model_version, time.monotonic))
        lock = threading.Lock()  # the state is fed from the request thread and this one
        window = threading.Semaphore(self.max_in_flight)
        stop = threading.Event()

        def requests() -> Iterator[pb.DataPacket]:
            # Runs on gRPC's request thread: blocking here is the back-pressure.
            try:
                for frames in state.batches(frame_bytes_iter):
                    for _ in frames:
                        window.acquire()
                    if stop.is_set():
                        return
                    with lock:
                        packet = state.packet(frames)
                    yield packet
            except Exception as exc:
                state.frames_failed(exc)

        _, stub = self._stub_now()
        with self._close_race():
            call = stub.Chat(requests(), timeout=self.stream_timeout_sec, metadata=self.metadata)
        watch = state.watch
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
                    with watch.reading():
                        ack = next(acks, None)
                    if ack is None:
                        break
                    with lock:
                        ready = state.on_ack(ack, window.release)
                    yield from ready
            except grpc.RpcError as exc:  # a TritonClientError of ours is one too
                raise self._run(self._chat_failure_steps(state.failed(exc)))  # noqa: B904
            state.finished()
        finally:
            stop.set()
            window.release(self.max_in_flight)
            call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped
