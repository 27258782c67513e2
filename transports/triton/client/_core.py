"""The clients' sans-IO core: settings, and every call but ``Chat`` as a generator of steps.

Both :class:`~transports.triton.TritonBytesStreamer` and
:class:`~transports.triton.AsyncTritonBytesStreamer` subclass :class:`StreamerCore`,
which holds the constructor they share and writes each operation once, as a
generator of :class:`Rpc` and :class:`Sleep` steps (the pattern of httpx's auth
flows): the connect probe, ``model_metadata``, ``prepare``, ``packet_spec``,
``send_unary``, ``wait_for_ready`` and the set-up of a ``Chat`` call. A driver runs
such a generator with one small loop (``_run``): it makes each RPC on its channel
(sync or ``grpc.aio``), or sleeps, and sends back the response, or the
:class:`TritonClientError` the RPC failed with, or None after a pause. A ``Chat``
call itself is the :class:`~._chat.ChatCall` state machine; packets, Ack parsing
and results are in :mod:`._packets`, errors in :mod:`.errors`. Nothing here touches
a socket, a thread or an event loop.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any, Generic, TypeVar

import grpc

from transports.grpc import ClientTLS, GrpcOptions

from ..protocol import multimodal_pb2 as pb
from ._chat import AckWatch, ChatCall, ResponseCall, ResultT
from ._packets import (
    AckPipeline,
    FrameResult,
    ModelInfo,
    PacketSpec,
    as_dtype,
    parse_ack,
    spec_from_metadata,
)
from .errors import (
    HEALTH_CHECK_METHOD,
    HEALTH_CHECK_REQUEST,
    TRANSIENT,
    TritonClientError,
    closed_error,
    connect_probe_error,
    not_ready_error,
)

__all__ = [
    "Metadata",
    "Rpc",
    "Sleep",
    "Step",
    "Steps",
    "StreamerCore",
    "auth_metadata",
    "check_metadata",
    "readiness_steps",
]

T = TypeVar("T")
ChannelT = TypeVar("ChannelT")
StubT = TypeVar("StubT")

Metadata = tuple[tuple[str, str], ...]


def auth_metadata(environ: Mapping[str, str] | None = None) -> Metadata:
    """The seed's auth headers, from the environment.

    ``DOMINO_USER_API_KEY`` becomes ``x-domino-api-key``; ``Authorization`` becomes
    ``authorization: Bearer <value>`` (a value that already starts with ``Bearer ``
    is sent as is).
    """
    env = os.environ if environ is None else environ
    headers: list[tuple[str, str]] = []
    api_key = env.get("DOMINO_USER_API_KEY")
    if api_key:
        headers.append(("x-domino-api-key", api_key))
    bearer = env.get("Authorization")
    if bearer:
        token = bearer if bearer.lower().startswith("bearer ") else f"Bearer {bearer}"
        headers.append(("authorization", token))
    return tuple(headers)


def check_metadata(metadata: Metadata) -> None:
    """Refuse metadata no gRPC header can carry, naming the header, never the value.

    Without this, gRPC fails each call with its own error (sync: ``INTERNAL: Invalid
    metadata``; async: a bare ``ExecuteBatchError``), e.g. for a key read from a file
    with its trailing newline.

    Raises:
        ValueError: a text value holds characters outside printable ASCII (0x20-0x7e).
    """
    for name, value in metadata:
        if name.endswith("-bin"):
            continue  # binary metadata: any bytes
        if not isinstance(value, str) or not all(" " <= ch <= "~" for ch in value):
            raise ValueError(
                f"metadata {name!r}: the value holds characters a gRPC header cannot carry "
                "(newlines, control characters or non-ASCII); check where it was read from"
            )


# Steps ----------------------------------------------------------------------------------


GRPC_AIO_MASKED_DETAILS = "Internal error from Core"
"""What grpc.aio reports in place of the server's status when a write of the call failed."""


@dataclasses.dataclass(frozen=True)
class Rpc:
    """A unary RPC for the driver to make; it sends back the response or the error.

    Attributes:
        method: the service's method name (``"ModelMetadata"``, ``"SendUnary"``,
            ``"ServerReady"``, ``"ModelReady"``), or :data:`HEALTH_CHECK_METHOD` for
            the connect probe (raw bytes in and out).
        request: the request message (bytes for the probe).
        timeout_s: the RPC's deadline.
        wait_for_ready: gRPC's ``wait_for_ready`` (the probe waits for the channel).
    """

    method: str
    request: Any
    timeout_s: float
    wait_for_ready: bool = False


@dataclasses.dataclass(frozen=True)
class Sleep:
    """A pause for the driver (``time.sleep`` / ``asyncio.sleep``); it sends back None."""

    seconds: float


Step = Rpc | Sleep
Steps = Generator[Step, Any, T]
"""An operation: yields steps, is sent each step's answer, returns the result."""


class Stepper:
    """Drives a :data:`Steps` generator one step at a time, keeping its result.

    ``step = stepper.first()``; while ``step`` is not None the driver does it and
    calls ``step = stepper.send(answer)``; then :attr:`result` holds the value.
    """

    def __init__(self, steps: Steps[Any]) -> None:
        self._steps = steps
        self.result: Any = None

    def first(self) -> Step | None:
        """The first step, or None when the operation needs none."""
        return self.send(None)

    def send(self, answer: Any) -> Step | None:
        """Answer the last step; the next step, or None once the operation is done.

        Raises:
            TritonClientError: the operation failed (as the step generator says).
        """
        try:
            return self._steps.send(answer)
        except StopIteration as done:
            self.result = done.value
            return None


# The core both clients subclass ---------------------------------------------------------


class StreamerCore(Generic[ChannelT, StubT]):
    """The constructor arguments both clients share, and every operation's logic.

    The sync and async clients subclass it and add only the I/O: how to open their
    channel (:meth:`_open_channel`), the loop that runs steps (``_run``) and the one
    that runs a ``Chat`` call, so the two cannot drift apart.
    """

    def __init__(
        self,
        addr: str,
        input_name: str | None = None,
        shape: Sequence[int] | None = None,
        dtype_enum: int | None = None,
        outputs: Sequence[str] | None = None,
        stream_id: str = "cam-001",
        request_timeout_sec: float = 30.0,
        parse_outputs_numpy: bool = True,
        *,
        connect_timeout_sec: float = 10.0,
        stream_timeout_sec: float | None = None,
        ack_timeout_sec: float | None = None,
        frame_timeout_sec: float | None = None,
        max_in_flight: int = 32,
        frames_per_packet: int = 1,
        binary_outputs: bool | None = None,
        tls: ClientTLS | None = None,
        root_certs: bytes | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
        options: GrpcOptions | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if not 1 <= frames_per_packet <= max_in_flight:
            raise ValueError(
                f"frames_per_packet must be within 1..max_in_flight ({max_in_flight}), "
                f"got {frames_per_packet}"
            )
        if frames_per_packet > 1 and not parse_outputs_numpy:
            raise ValueError("frames_per_packet > 1 needs parse_outputs_numpy=True")
        if isinstance(outputs, str):
            outputs = (outputs,)
        self.addr = addr
        self.input_name = input_name
        self.shape = None if shape is None else tuple(int(d) for d in shape)
        self.dtype_enum = dtype_enum
        self.outputs = None if outputs is None else tuple(outputs)
        self.stream_id = stream_id
        self.request_timeout_sec = float(request_timeout_sec)
        self.parse_outputs_numpy = parse_outputs_numpy
        self.connect_timeout_sec = float(connect_timeout_sec)
        self.stream_timeout_sec = stream_timeout_sec
        # A proxy answers every frame within its Triton deadline; silence much longer
        # than that, with frames in flight and the caller waiting, is a stuck call.
        self.ack_timeout_sec = (
            self.request_timeout_sec + 30.0 if ack_timeout_sec is None else float(ack_timeout_sec)
        )
        self.frame_timeout_sec = frame_timeout_sec
        self.max_in_flight = int(max_in_flight)
        self.frames_per_packet = int(frames_per_packet)
        # Raw bytes are cheaper than base64 for both ends; a caller that wants the
        # seed's JSON outputs (parse_outputs_numpy=False) gets the b64 form.
        self.binary_outputs = parse_outputs_numpy if binary_outputs is None else binary_outputs
        if tls is None and root_certs is not None:
            tls = ClientTLS(root_certificates=root_certs)
        self.tls = tls
        self.options = options
        self.metadata: Metadata = (*auth_metadata(environ), *tuple(metadata or ()))
        check_metadata(self.metadata)
        self._specs: dict[tuple[str, str], PacketSpec] = {}
        self._closed = False
        self._connected = False
        self._opened: tuple[ChannelT, StubT] | None = None
        self._setup()

    def _setup(self) -> None:
        """Set up the driver's own state (its channel is opened on first use)."""

    def _open_channel(self) -> tuple[ChannelT, StubT]:
        """A new channel to :attr:`addr` and the service's stub on it (the driver's)."""
        raise NotImplementedError

    def _channel_now(self) -> tuple[ChannelT, StubT]:
        """The open channel and stub, opened on first use (the sync driver holds a lock).

        Raises:
            TritonClientError: (CANCELLED) the client is closed.
        """
        if self._closed:
            raise closed_error()
        if self._opened is None:
            self._opened = self._open_channel()
        return self._opened

    def _mark_closed(self) -> ChannelT | None:
        """Mark the client closed; the channel for the driver to close, if one was open."""
        self._closed = True
        opened, self._opened = self._opened, None
        return None if opened is None else opened[0]

    def _unavailable(self) -> None:
        """A call failed UNAVAILABLE: the next call probes the channel again."""
        self._connected = False

    def explicit_spec(self) -> PacketSpec | None:
        """The packet spec from the constructor alone, or None if discovery must fill it."""
        if self.input_name is None or self.shape is None or self.dtype_enum is None:
            return None
        if self.outputs is None:
            return None
        return PacketSpec(
            input_name=self.input_name,
            shape=self.shape,
            dtype=int(self.dtype_enum),
            outputs=self.outputs,
            timeout_secs=self.request_timeout_sec,
            binary_outputs=self.binary_outputs,
        )

    def spec_from(self, info: ModelInfo) -> PacketSpec:
        """The packet spec with what the constructor left out filled from ``info``."""
        return spec_from_metadata(
            info,
            input_name=self.input_name,
            shape=self.shape,
            dtype=self.dtype_enum,
            outputs=self.outputs,
            timeout_secs=self.request_timeout_sec,
            binary_outputs=self.binary_outputs,
        )

    def _bind(self, step: Rpc, channel: Any, stub: Any) -> Callable[[], Any]:
        """The step's RPC on the driver's channel, with its deadline and metadata bound.

        Calling it makes the RPC (sync) or gives the awaitable (``grpc.aio``).
        """
        if step.method == HEALTH_CHECK_METHOD:
            rpc = channel.unary_unary(HEALTH_CHECK_METHOD, None, None)  # raw bytes in and out
        else:
            rpc = getattr(stub, step.method)
        return functools.partial(
            rpc,
            step.request,
            timeout=step.timeout_s,
            metadata=self.metadata,
            wait_for_ready=step.wait_for_ready,
        )

    # Operations, as steps -------------------------------------------------------------

    def _connect_steps(self) -> Steps[None]:
        """The connect probe, once (and again after an ``UNAVAILABLE``).

        A health check with ``wait_for_ready`` and the connect timeout as deadline;
        any answer but a transient failure or an auth refusal means connected.
        """
        if self._connected:
            return
        answer = yield Rpc(
            HEALTH_CHECK_METHOD, HEALTH_CHECK_REQUEST, self.connect_timeout_sec, True
        )
        if isinstance(answer, TritonClientError):
            error = connect_probe_error(self.addr, self.connect_timeout_sec, answer)
            if error is answer:
                raise error
            if error is not None:
                raise error from answer
        self._connected = True

    def _unary_steps(self, method: str, request: Any) -> Steps[Any]:
        """One unary RPC with the request timeout: its response, or its error raised."""
        answer = yield Rpc(method, request, self.request_timeout_sec)
        if isinstance(answer, TritonClientError):
            if answer.code() is grpc.StatusCode.UNAVAILABLE:
                self._unavailable()
            raise answer
        return answer

    def _chat_failure_steps(self, error: BaseException) -> Steps[BaseException]:
        """The exception a failed ``Chat`` call raises, with a status grpc.aio masked recovered.

        When the proxy ends a call (a credential revoked mid-call) while the client is
        writing, grpc.aio's failed write can overwrite the status the proxy sent with
        ``INTERNAL: Internal error from Core`` (grpc/grpc#36066; the sync API reports
        the server's status). Only then, one ``ServerReady`` with the same credentials
        asks the proxy again: an auth refusal (``UNAUTHENTICATED``,
        ``PERMISSION_DENIED``) is raised as what it is, with the masked error as its
        cause; any other answer leaves ``error`` as it was.
        """
        if not (
            isinstance(error, TritonClientError)
            and error.code() is grpc.StatusCode.INTERNAL
            and error.details() == GRPC_AIO_MASKED_DETAILS
        ):
            return error
        answer = yield Rpc("ServerReady", pb.ReadyRequest(), min(self.request_timeout_sec, 5.0))
        if isinstance(answer, TritonClientError) and answer.code() in (
            grpc.StatusCode.UNAUTHENTICATED,
            grpc.StatusCode.PERMISSION_DENIED,
        ):
            refused = TritonClientError(
                "Chat",
                answer.code(),
                f"{answer.details()} (the call's own status reached this client as "
                f"INTERNAL {GRPC_AIO_MASKED_DETAILS!r}, grpc/grpc#36066; a ServerReady with "
                "the same credentials was refused)",
            )
            refused.__cause__ = error
            return refused
        return error

    def _metadata_steps(self, model: str, model_version: str) -> Steps[ModelInfo]:
        yield from self._connect_steps()
        request = pb.ModelMetadataRequest(model=model, model_version=model_version)
        response = yield from self._unary_steps("ModelMetadata", request)
        return ModelInfo.from_proto(response)

    def _prepare_steps(self, model: str, model_version: str) -> Steps[PacketSpec]:
        spec = self.spec_from((yield from self._metadata_steps(model, model_version)))
        self._specs[(model, model_version)] = spec
        return spec

    def _spec_steps(self, model: str, model_version: str) -> Steps[PacketSpec]:
        spec = self._specs.get((model, model_version)) or self.explicit_spec()
        if spec is None:
            spec = yield from self._prepare_steps(model, model_version)
        return spec

    def _send_unary_steps(
        self, model: str, model_version: str, data: bytes, seq: int
    ) -> Steps[FrameResult]:
        """``SendUnary`` of one frame, correlation id ``<stream_id>:<seq>``."""
        yield from self._connect_steps()
        spec = yield from self._spec_steps(model, model_version)
        packet = pb.DataPacket(
            meta=pb.Meta(correlation_id=f"{self.stream_id}:{seq}"),
            control=spec.control(model, model_version),
            tensor=pb.Tensor(
                dtype=as_dtype(spec.dtype), shape=pb.Shape(dims=spec.shape), data=data
            ),
            event=pb.SEV_DATA,
        )
        started = time.perf_counter()
        ack = yield from self._unary_steps("SendUnary", packet)
        status, msg, outputs, timings = parse_ack(ack, parse_numpy=self.parse_outputs_numpy)
        timings["client_ms"] = (time.perf_counter() - started) * 1000.0
        return FrameResult(seq, ack.correlation_id, status, msg, outputs, timings)

    def _ready_steps(self, model: str | None, timeout_s: float, model_version: str) -> Steps[None]:
        return readiness_steps(
            model, model_version, timeout_s, self.request_timeout_sec, time.monotonic
        )

    def _open_chat(
        self,
        kind: type[ChatCall[ResultT]],
        model: str,
        model_version: str,
        clock: Callable[[], float],
    ) -> Steps[ChatCall[ResultT]]:
        """Everything before a ``Chat`` call: checks, connect, the packet spec, its state.

        Raises:
            ValueError: ``stream_responses`` with ``frames_per_packet > 1`` (before
                any network call).
            TritonClientError: (FAILED_PRECONDITION) ``stream_bytes`` /
                ``stream_results`` to a model the metadata says is decoupled; or the
                connect probe or the metadata call failed.
        """
        streaming = kind is ResponseCall
        if streaming and self.frames_per_packet > 1:
            raise ValueError("stream_responses sends one frame per packet (frames_per_packet=1)")
        yield from self._connect_steps()
        spec = yield from self._spec_steps(model, model_version)
        if not streaming and spec.decoupled:
            raise TritonClientError(
                "Chat",
                grpc.StatusCode.FAILED_PRECONDITION,
                "the model is decoupled (streaming: any number of responses per frame); "
                "stream_bytes/stream_results take one result per frame, use stream_responses",
            )
        pipe = AckPipeline(
            spec,
            model,
            model_version,
            stream_id=self.stream_id,
            parse_numpy=self.parse_outputs_numpy,
        )
        watch = AckWatch(pipe, self.ack_timeout_sec, clock, self.frame_timeout_sec)
        return kind(
            pipe,
            watch,
            frames_per_packet=self.frames_per_packet,
            on_unavailable=self._unavailable,
        )


# Readiness ----------------------------------------------------------------------------


def readiness_steps(
    model: str | None,
    model_version: str,
    timeout_s: float,
    request_timeout_s: float,
    clock: Callable[[], float],
    *,
    interval_s: float = 0.1,
) -> Steps[None]:
    """The polling of ``wait_for_ready`` as a generator both clients drive.

    It yields the step to take and is sent the RPC's response, or the
    :class:`TritonClientError` it failed with (None after a pause). It returns once
    the backend (and the model) say ready.

    Raises:
        TritonClientError: ``DEADLINE_EXCEEDED`` when time runs out, or a
            non-transient failure (``UNAUTHENTICATED``, ...) as is.
    """
    deadline = clock() + timeout_s
    what = "the proxy's backend" if not model else f"model {model!r}"
    last = ""
    while True:
        probes = [("ServerReady", pb.ReadyRequest())]
        if model:
            probes.append(("ModelReady", pb.ReadyRequest(model=model, model_version=model_version)))
        ready = True
        for method, request in probes:
            remaining = max(deadline - clock(), 0.001)
            answer = yield Rpc(method, request, min(request_timeout_s, remaining))
            if isinstance(answer, TritonClientError):
                if answer.code() not in TRANSIENT:
                    raise answer
                ready, last = False, f"{answer.code().name}: {answer.details()}"
            elif answer is None or not answer.ready:
                ready = False
                last = "" if answer is None else answer.message or f"{method} says not ready"
            if not ready:
                break
        if ready:
            return
        remaining = deadline - clock()
        if remaining <= 0:
            raise not_ready_error(what, timeout_s, last)
        yield Sleep(min(interval_s, remaining))
