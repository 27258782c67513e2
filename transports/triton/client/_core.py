"""What both clients share beyond packets: settings, auth headers, readiness polling.

:class:`StreamerSettings` holds the constructor both clients have (the sync and async
drivers add only their channel handling); :func:`readiness_steps` is the polling of
``wait_for_ready`` as a generator both drive; :func:`auth_metadata` reads the seed's
auth headers from the environment. Packets and results are in ``_client_packets``,
errors in ``_client_errors``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Generator, Mapping, Sequence
from typing import Any

import grpc

from transports.grpc import ClientTLS, GrpcOptions

from ..protocol import multimodal_pb2 as pb
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
    TRANSIENT,
    TritonClientError,
    connect_probe_error,
    not_ready_error,
    status_error,
)

__all__ = [
    "AckWatch",
    "Metadata",
    "ReadyStep",
    "StreamerSettings",
    "auth_metadata",
    "check_metadata",
    "readiness_steps",
]

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


# Constructor settings shared by both clients ------------------------------------------


class StreamerSettings:
    """The constructor arguments both clients share, normalised, and what follows from them.

    The sync and async clients subclass it and add only their channel handling, so
    the two constructors cannot drift apart.
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
        self._setup()

    def _setup(self) -> None:
        """Set up the driver's own state (its channel is opened on first use)."""

    def _rpc_error(self, exc: BaseException, method: str) -> TritonClientError:
        """Translate a failed call; after UNAVAILABLE the next call probes the channel again."""
        error = status_error(method, exc)
        if error.code() is grpc.StatusCode.UNAVAILABLE:
            self._connected = False
        return error

    def _probe_failed(self, exc: BaseException) -> None:
        """Handle a failed connect probe: raise, unless the proxy just lacks the RPC."""
        probe = status_error(HEALTH_CHECK_METHOD, exc)
        error = connect_probe_error(self.addr, self.connect_timeout_sec, probe)
        if error is not None:
            raise error from exc

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

    def watch(self, pipe: AckPipeline, clock: Any) -> AckWatch:
        """The stuck-call watch of one Chat call (idle and per-frame limits)."""
        return AckWatch(pipe, self.ack_timeout_sec, clock, self.frame_timeout_sec)

    def check_streaming(self, spec: PacketSpec, streaming: bool) -> None:
        """Refuse what a streaming call cannot do, and one-result calls to a streaming model.

        Raises:
            ValueError: ``stream_responses`` with ``frames_per_packet > 1``.
            TritonClientError: (FAILED_PRECONDITION) ``stream_bytes`` / ``stream_results``
                to a model the metadata says is decoupled.
        """
        if streaming and self.frames_per_packet > 1:
            raise ValueError("stream_responses sends one frame per packet (frames_per_packet=1)")
        if not streaming and spec.decoupled:
            raise TritonClientError(
                "Chat",
                grpc.StatusCode.FAILED_PRECONDITION,
                "the model is decoupled (streaming: any number of responses per frame); "
                "stream_bytes/stream_results take one result per frame, use stream_responses",
            )

    def pipeline(self, spec: PacketSpec, model: str, model_version: str) -> AckPipeline:
        """A fresh :class:`AckPipeline` for one Chat call."""
        return AckPipeline(
            spec,
            model,
            model_version,
            stream_id=self.stream_id,
            parse_numpy=self.parse_outputs_numpy,
        )

    def unary_packet(
        self, spec: PacketSpec, model: str, model_version: str, data: bytes, seq: int
    ) -> pb.DataPacket:
        """One packet for ``SendUnary``, correlation id ``<stream_id>:<seq>``."""
        return pb.DataPacket(
            meta=pb.Meta(correlation_id=f"{self.stream_id}:{seq}"),
            control=spec.control(model, model_version),
            tensor=pb.Tensor(
                dtype=as_dtype(spec.dtype), shape=pb.Shape(dims=spec.shape), data=data
            ),
            event=pb.SEV_DATA,
        )

    def unary_result(self, ack: pb.Ack, seq: int, elapsed_s: float) -> FrameResult:
        """The :class:`FrameResult` of a ``SendUnary`` Ack."""
        status, msg, outputs, timings = parse_ack(ack, parse_numpy=self.parse_outputs_numpy)
        timings["client_ms"] = elapsed_s * 1000.0
        return FrameResult(seq, ack.correlation_id, status, msg, outputs, timings)


# Stuck calls --------------------------------------------------------------------------


class AckWatch:
    """Tells a stuck Chat call: the caller waiting for an Ack too long with frames in flight.

    Drivers call :meth:`waiting` before each read of an Ack and :meth:`got` after it;
    a watchdog (thread or task) calls :meth:`check` every :attr:`interval_s` and
    cancels the call when it returns True. Time spent in the caller's own code
    between results (a slow consumer) never counts.
    """

    def __init__(
        self,
        pipe: AckPipeline,
        limit_s: float,
        clock: Any,
        frame_limit_s: float | None = None,
    ) -> None:
        self._pipe = pipe
        self.limit_s = limit_s
        self.frame_limit_s = float("inf") if frame_limit_s is None else float(frame_limit_s)
        self._clock = clock
        self._since: float | None = None
        self.tripped = False
        self._frame_tripped = False

    @staticmethod
    def _finite(limit: float) -> bool:
        return limit != float("inf") and limit > 0

    @property
    def enabled(self) -> bool:
        """Whether there is a finite limit to watch."""
        return self._finite(self.limit_s) or self._finite(self.frame_limit_s)

    @property
    def interval_s(self) -> float:
        """How often the watchdog should look."""
        limits = [x for x in (self.limit_s, self.frame_limit_s) if self._finite(x)]
        return min(1.0, max(min(limits, default=4.0) / 4, 0.05))

    def waiting(self) -> None:
        """The driver starts waiting for the next Ack."""
        self._since = self._clock()

    def got(self) -> None:
        """The driver stopped waiting (an Ack, the end, or an error)."""
        self._since = None

    def check(self) -> bool:
        """Whether the call is stuck; latches :attr:`tripped`."""
        since = self._since
        if since is not None and self._pipe.unreleased:
            if self._clock() - since > self.limit_s:
                self.tripped = True
            elif self._pipe.oldest_age() > self.frame_limit_s:
                self.tripped = self._frame_tripped = True
        return self.tripped

    def error(self) -> TritonClientError:
        """The error to raise for a stuck call."""
        if self._frame_tripped:
            return TritonClientError(
                "Chat",
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"a frame got no final response within {self.frame_limit_s:g}s of being sent "
                f"({self._pipe.unreleased} frames in flight; frame_timeout_sec)",
            )
        return TritonClientError(
            "Chat",
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"no Ack from the proxy for {self.limit_s:g}s with {self._pipe.unreleased} "
            "frames in flight (ack_timeout_sec)",
        )


# Readiness ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReadyStep:
    """One step of :func:`readiness_steps`: an RPC to make, or a pause.

    Attributes:
        method: ``"ServerReady"``, ``"ModelReady"`` or ``"sleep"``.
        request: the RPC's request (unused for ``"sleep"``).
        timeout_s: the RPC's deadline.
        sleep_s: how long to pause, for ``"sleep"``.
    """

    method: str
    request: pb.ReadyRequest
    timeout_s: float = 0.0
    sleep_s: float = 0.0


def readiness_steps(
    model: str | None,
    model_version: str,
    timeout_s: float,
    request_timeout_s: float,
    clock: Any,
    *,
    interval_s: float = 0.1,
) -> Generator[ReadyStep, pb.ReadyResponse | TritonClientError | None, None]:
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
            answer = yield ReadyStep(method, request, timeout_s=min(request_timeout_s, remaining))
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
        yield ReadyStep("sleep", pb.ReadyRequest(), sleep_s=min(interval_s, remaining))
