"""The clients' packets and results, sans-IO: frames out, Acks in, results in frame order.

Both :class:`~transports.triton.TritonBytesStreamer` (``grpc``, threads) and
:class:`~transports.triton.AsyncTritonBytesStreamer` (``grpc.aio``) are thin drivers
over this module, ``_core`` and ``_chat``; nothing here touches a socket, a thread or an
event loop.

- :class:`PacketSpec` is what a client sends with every frame (model input, dtype,
  shape, outputs) and builds the ``Control`` block; :func:`spec_from_metadata` fills it
  in from a model's metadata (:class:`ModelInfo`).
- :class:`AckPipeline` numbers frames, builds their packets, matches each Ack to its
  frame(s) by correlation id (the proxy answers as packets complete, not in order),
  parses it and releases :class:`FrameResult` values strictly in frame order.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import json
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, cast

import grpc
import numpy as np

from ..protocol import dtypes as _dtypes
from ..protocol import multimodal_pb2 as pb
from .errors import TritonClientError

__all__ = [
    "AckPipeline",
    "FrameResult",
    "ResponseResult",
    "ModelInfo",
    "PacketSpec",
    "TensorInfo",
    "as_dtype",
    "chunked",
    "latency_percentiles",
    "numpy_dtype",
    "parse_ack",
    "spec_from_metadata",
]


# The seed's client accepted these aliases of Triton's names in the JSON outputs.
_SEED_ALIASES: Mapping[str, str] = MappingProxyType(
    {"FLOAT32": "FP32", "FLOAT": "FP32", "FLOAT16": "FP16", "BYTE": "UINT8"}
)


def _numpy_dtype(dtype: int | str) -> np.dtype[Any] | None:
    name = _dtypes.triton_name(dtype) if isinstance(dtype, int) else dtype.upper()
    if name is None:
        return None
    descr = _dtypes.NUMPY_NAME.get(_SEED_ALIASES.get(name, name))
    return None if descr is None else np.dtype(descr)


_BYTES = np.dtype("u1")

# Read-only lookup tables, built once: Ack parsing is on the per-frame path.
_NUMPY_BY_ENUM: Mapping[int, np.dtype[Any]] = MappingProxyType(
    {dt: d for dt in _dtypes.TRITON_NAME if (d := _numpy_dtype(dt)) is not None}
)
_STATUS_NAMES: Mapping[int, str] = MappingProxyType(
    {value: name for name, value in pb.AckStatus.items()}
)


def numpy_dtype(dtype: int | str) -> np.dtype[Any] | None:
    """The NumPy dtype of a ``DataType`` value or a Triton datatype name, if it has one.

    BF16 and BYTES have none: their outputs are returned as raw ``uint8`` bytes.
    """
    if isinstance(dtype, int):
        return _NUMPY_BY_ENUM.get(dtype)
    return _numpy_dtype(dtype)


def as_dtype(value: int) -> pb.DataType:
    """A ``DataType`` enum value from a plain int (the generated stubs want the enum type)."""
    return cast("pb.DataType", value)


# Model discovery ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """One model input or output as Triton describes it.

    Attributes:
        name: the tensor's name.
        dtype: the ``DataType`` enum value (``DT_UNSPECIFIED`` if it has none).
        triton_dtype: Triton's name of the datatype (``"FP32"``).
        shape: the dims; ``-1`` marks a variable one (including the batch dim).
    """

    name: str
    dtype: int
    triton_dtype: str
    shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """A model's metadata, as the proxy's ``ModelMetadata`` RPC returns it."""

    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    ready: bool
    max_batch_size: int
    decoupled: bool = False
    """A streaming model: any number of responses per request (use ``stream_responses``)."""

    @classmethod
    def from_proto(cls, msg: pb.ModelMetadataResponse) -> ModelInfo:
        """Build it from the RPC's response."""

        def tensors(items: Iterable[pb.TensorMetadata]) -> tuple[TensorInfo, ...]:
            return tuple(
                TensorInfo(t.name, int(t.dtype), t.triton_dtype, tuple(t.shape.dims)) for t in items
            )

        return cls(
            name=msg.model,
            versions=tuple(msg.versions),
            platform=msg.platform,
            inputs=tensors(msg.inputs),
            outputs=tensors(msg.outputs),
            ready=msg.ready,
            max_batch_size=int(msg.max_batch_size),
            decoupled=bool(msg.decoupled),
        )


# Packets ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PacketSpec:
    """What every packet of a stream declares: the one input and the wanted outputs.

    Attributes:
        input_name: the model input the frame bytes feed.
        shape: the input's full shape (batch dim included when the model batches).
        dtype: the ``DataType`` enum value of the input.
        outputs: names of the outputs to return.
        timeout_secs: the per-frame deadline the proxy gives Triton
            (``Control.timeout_secs``).
        binary_outputs: ask for outputs as raw bytes (``Ack.outputs``) instead of
            base64 in the JSON.
        decoupled: the model streams (known from its metadata; False when unknown).
    """

    input_name: str
    shape: tuple[int, ...]
    dtype: int
    outputs: tuple[str, ...]
    timeout_secs: float
    binary_outputs: bool
    decoupled: bool = False

    @property
    def frame_nbytes(self) -> int | None:
        """Bytes one frame must have, or None when the dtype's size is not fixed."""
        np_dtype = numpy_dtype(self.dtype)
        if np_dtype is None or any(d < 0 for d in self.shape):
            return None
        return math.prod(self.shape) * np_dtype.itemsize

    def control(self, model: str, model_version: str) -> pb.Control:
        """The ``Control`` block, as the seed builds it (one ``SRC_TENSOR`` input)."""
        spec = pb.InputSpec(
            name=self.input_name, shape=pb.Shape(dims=self.shape), dtype=as_dtype(self.dtype)
        )
        setattr(spec, "from", pb.SRC_TENSOR)  # `from` is a Python keyword
        return pb.Control(
            model=model,
            model_version=model_version or "",
            timeout_secs=float(self.timeout_secs),
            inputs=[spec],
            outputs=[pb.OutputSpec(name=name) for name in self.outputs],
            binary_outputs=self.binary_outputs,
        )

    def resolve(self, info: ModelInfo) -> PacketSpec:
        """Check this spec against a model's metadata.

        Raises:
            ValueError: the input or an output does not exist, or the dtype or shape
                does not fit the model's.
        """
        inputs = {t.name: t for t in info.inputs}
        meta = inputs.get(self.input_name)
        if meta is None:
            raise ValueError(
                f"model {info.name!r} has no input {self.input_name!r}; inputs: {sorted(inputs)}"
            )
        if meta.dtype != pb.DT_UNSPECIFIED and meta.dtype != self.dtype:
            raise ValueError(
                f"input {self.input_name!r} of {info.name!r} is {meta.triton_dtype}, "
                f"not {pb.DataType.Name(as_dtype(self.dtype))}"
            )
        if not _shape_fits(self.shape, meta.shape):
            raise ValueError(
                f"shape {list(self.shape)} does not fit input {self.input_name!r} of "
                f"{info.name!r}: {list(meta.shape)} (-1 is variable)"
            )
        known = {t.name for t in info.outputs}
        missing = [name for name in self.outputs if name not in known]
        if missing:
            raise ValueError(
                f"model {info.name!r} has no outputs {missing}; outputs: {sorted(known)}"
            )
        return self


def _shape_fits(shape: Sequence[int], model_shape: Sequence[int]) -> bool:
    return len(shape) == len(model_shape) and all(
        m < 0 or s == m for s, m in zip(shape, model_shape, strict=True)
    )


def spec_from_metadata(
    info: ModelInfo,
    *,
    input_name: str | None,
    shape: Sequence[int] | None,
    dtype: int | None,
    outputs: Sequence[str] | None,
    timeout_secs: float,
    binary_outputs: bool,
) -> PacketSpec:
    """Fill what the caller left out (``None``) from a model's metadata, check the rest.

    The input defaults to the model's only input; its dtype to the model's; outputs to
    all of the model's. A shape can be filled only when every dim is fixed, except a
    leading batch dim, which becomes 1.

    Raises:
        ValueError: it cannot be filled in unambiguously, or does not fit the model.
    """
    if input_name is None:
        if len(info.inputs) != 1:
            names = [t.name for t in info.inputs]
            raise ValueError(f"model {info.name!r} has inputs {names}: pass input_name=")
        input_name = info.inputs[0].name
    meta = next((t for t in info.inputs if t.name == input_name), None)
    if meta is None:
        raise ValueError(f"model {info.name!r} has no input {input_name!r}")
    if dtype is None:
        if meta.dtype == pb.DT_UNSPECIFIED:
            raise ValueError(f"input {input_name!r} is {meta.triton_dtype}: pass dtype_enum=")
        dtype = meta.dtype
    if shape is None:
        dims = list(meta.shape)
        if info.max_batch_size > 0 and dims and dims[0] < 0:
            dims[0] = 1
        if any(d < 0 for d in dims):
            raise ValueError(
                f"input {input_name!r} of {info.name!r} has variable dims {list(meta.shape)}: "
                "pass shape="
            )
        shape = dims
    if outputs is None:
        outputs = [t.name for t in info.outputs]
    spec = PacketSpec(
        input_name=input_name,
        shape=tuple(int(d) for d in shape),
        dtype=int(dtype),
        outputs=tuple(outputs),
        timeout_secs=timeout_secs,
        binary_outputs=binary_outputs,
        decoupled=info.decoupled,
    )
    return spec.resolve(info)


# Acks ---------------------------------------------------------------------------------


class _AckResult:
    """``ok`` and ``error`` of a result that holds its Ack's ``status`` and JSON ``ack``."""

    status: str
    ack: dict[str, Any]

    @property
    def ok(self) -> bool:
        """Whether the proxy answered ``OK``."""
        return self.status == "OK"

    @property
    def error(self) -> str | None:
        """The proxy's error message for a failure."""
        err = self.ack.get("error")
        return None if err is None else str(err)


@dataclasses.dataclass(frozen=True)
class FrameResult(_AckResult):
    """The outcome of one frame.

    Attributes:
        seq: the frame's 0-based index in the stream.
        correlation_id: ``<stream_id>:<seq>``, echoed by the proxy.
        status: the Ack status name: ``"OK"``, ``"BAD_REQUEST"``, ``"INTERNAL"``, ...
        ack: the Ack's JSON message, plus ``"status"`` (the same name).
        outputs: output name -> ``np.ndarray`` (when parsing to NumPy), the JSON
            ``"outputs"`` map (when not), or None when the Ack carries none.
        timings: milliseconds: ``triton_infer_ms`` and ``total_ms`` as the proxy
            measured them (when it sent them) and ``client_ms``, from handing the packet
            to gRPC to receiving its Ack.
    """

    seq: int
    correlation_id: str
    status: str
    ack: dict[str, Any]
    outputs: dict[str, Any] | None
    timings: dict[str, float]

    def as_tuple(self) -> tuple[int, dict[str, Any], dict[str, Any] | None]:
        """``(seq, ack_dict, outputs)``, what the seed's ``stream_bytes`` yields."""
        return self.seq, self.ack, self.outputs


@dataclasses.dataclass(frozen=True)
class ResponseResult(_AckResult):
    """One model response to one frame, from ``stream_responses``.

    Attributes:
        seq: the frame's 0-based index in the stream.
        index: the response's index within its frame, from 0.
        final: the frame's last response (exactly one per frame). It may carry outputs,
            or none when the model ended the request with an empty final response.
        status: the Ack status name, ``"OK"`` on success.
        outputs: output name -> ``np.ndarray`` (or the JSON map when not parsing to
            NumPy), or None when the response carries none.
        ack: the Ack's JSON message, plus ``"status"``, ``"index"`` and ``"final"``.
        correlation_id: ``<stream_id>:<seq>``, echoed by the proxy.
        timings: as :class:`FrameResult`'s; ``client_ms`` is from sending the frame.
    """

    seq: int
    index: int
    final: bool
    status: str
    outputs: dict[str, Any] | None
    ack: dict[str, Any]
    correlation_id: str
    timings: dict[str, float]


def _status_name(status: int) -> str:
    return _STATUS_NAMES.get(status) or str(status)


def parse_ack(
    ack: pb.Ack, *, parse_numpy: bool
) -> tuple[str, dict[str, Any], dict[str, Any] | None, dict[str, float]]:
    """Parse one Ack: ``(status name, ack dict, outputs, proxy timings)``.

    Binary outputs (``Ack.outputs``) become zero-copy read-only arrays; without
    them the JSON's base64 outputs are decoded. A message that is not JSON is kept
    under ``"message"``.
    """
    status = _status_name(ack.status)
    try:
        parsed = json.loads(ack.message) if ack.message else {}
    except ValueError:
        parsed = {"message": ack.message}
    msg: dict[str, Any] = parsed if isinstance(parsed, dict) else {"message": parsed}
    msg["status"] = status
    timings: dict[str, float] = {}
    if ack.HasField("timing"):
        timings = {"triton_infer_ms": ack.timing.triton_infer_ms, "total_ms": ack.timing.total_ms}
    else:
        for key in ("triton_infer_ms", "total_ms"):
            if isinstance(msg.get(key), (int, float)):
                timings[key] = float(msg[key])
    outputs: dict[str, Any] | None = None
    if parse_numpy:
        if len(ack.outputs):
            outputs = {t.name: _binary_output(t) for t in ack.outputs}
        elif isinstance(msg.get("outputs"), dict) and msg["outputs"]:
            outputs = _b64_outputs(msg["outputs"])
    elif msg.get("outputs"):
        outputs = msg["outputs"]
    return status, msg, outputs, timings


def _binary_output(tensor: pb.NamedTensor) -> np.ndarray[Any, Any]:
    np_dtype = _NUMPY_BY_ENUM.get(tensor.dtype, _BYTES)
    array = np.frombuffer(tensor.data, dtype=np_dtype)
    dims = tuple(tensor.shape.dims)
    return array.reshape(dims) if dims and np_dtype.itemsize else array


def _b64_outputs(described: Mapping[str, Any]) -> dict[str, Any]:
    arrays: dict[str, Any] = {}
    for name, desc in described.items():
        if not isinstance(desc, dict) or "b64" not in desc:
            continue
        np_dtype = numpy_dtype(str(desc.get("dtype", "FP32"))) or np.dtype("u1")
        array = np.frombuffer(base64.b64decode(desc["b64"]), dtype=np_dtype)
        shape = tuple(int(d) for d in desc.get("shape", ()))
        arrays[name] = array.reshape(shape) if shape else array
    return arrays


class AckPipeline:
    """Frame numbering, Ack matching and in-order release for one Chat call.

    Drivers call :meth:`packet` (one frame) or :meth:`packet_frames` (several frames
    stacked along the batch dim) for each packet they send, :meth:`on_ack` for each
    Ack they receive (it returns the results now releasable, in frame order) and
    :meth:`finish` once the response stream has ended. :attr:`unreleased` (frames
    sent and not yet released) is what drivers bound to ``max_in_flight``: a slow
    frame holds back the window, so the reorder buffer never exceeds it.
    """

    def __init__(
        self,
        spec: PacketSpec,
        model: str,
        model_version: str,
        *,
        stream_id: str,
        parse_numpy: bool,
        clock: Any = time.perf_counter,
    ) -> None:
        self._control = spec.control(model, model_version)
        self._dtype = as_dtype(spec.dtype)
        self._dims = spec.shape
        self._shape = pb.Shape(dims=spec.shape)
        # Every packet of a single frame is this one with its correlation id and bytes
        # set: copying a built message is a third of the cost of building the Control,
        # Tensor and Shape of each packet anew (the client's per-frame path).
        self._template = pb.DataPacket(
            control=self._control,
            tensor=pb.Tensor(dtype=self._dtype, shape=self._shape),
            event=pb.SEV_DATA,
        )
        self._stream_id = stream_id
        self._parse_numpy = parse_numpy
        self._clock = clock
        self._sent = 0
        self._next_release = 0
        # correlation id -> (first frame's seq, frames in the packet, time sent)
        self._in_flight: dict[str, tuple[int, int, float]] = {}
        self._done: dict[int, FrameResult] = {}
        self._batched: dict[int, pb.Control] = {}
        # stream_responses: correlation id -> responses received so far
        self._responses: dict[str, int] = {}
        # stream_results: frames whose Ack was not final (a streaming model answering)
        self._partial: set[str] = set()

    @property
    def sent(self) -> int:
        """Frames sent so far."""
        return self._sent

    @property
    def unreleased(self) -> int:
        """Frames sent whose results have not been released yet."""
        return self._sent - self._next_release

    def packet(self, data: bytes) -> pb.DataPacket:
        """Number the next frame and build its packet (a full Control, as the seed)."""
        seq = self._sent
        cid = f"{self._stream_id}:{seq}"
        self._sent += 1
        packet = pb.DataPacket()
        packet.CopyFrom(self._template)
        packet.meta.correlation_id = cid
        packet.tensor.data = data
        self._in_flight[cid] = (seq, 1, self._clock())
        return packet

    def packet_frames(self, frames: Sequence[bytes]) -> pb.DataPacket:
        """Stack frames along the leading batch dim (of 1) into one packet.

        The packet's correlation id is ``<stream_id>:<first>..<last>``; its Ack's
        outputs are split back along the batch dim, one result per frame.

        Raises:
            ValueError: the spec's shape has no leading batch dim of 1.
        """
        if len(frames) == 1:
            return self.packet(frames[0])
        if not self._dims or self._dims[0] != 1:
            raise ValueError(
                f"stacking frames needs a leading batch dim of 1, shape is {list(self._dims)}"
            )
        first, count = self._sent, len(frames)
        cid = f"{self._stream_id}:{first}..{first + count - 1}"
        self._sent += count
        shape = pb.Shape(dims=(count, *self._dims[1:]))
        packet = pb.DataPacket(
            meta=pb.Meta(correlation_id=cid),
            control=self._batched_control(count),
            tensor=pb.Tensor(dtype=self._dtype, shape=shape, data=b"".join(frames)),
            event=pb.SEV_DATA,
        )
        self._in_flight[cid] = (first, count, self._clock())
        return packet

    def _batched_control(self, count: int) -> pb.Control:
        control = self._batched.get(count)
        if control is None:
            control = pb.Control()
            control.CopyFrom(self._control)
            control.inputs[0].shape.dims[0] = count
            self._batched[count] = control
        return control

    def on_ack(self, ack: pb.Ack) -> list[FrameResult]:
        """Take one Ack; return the results that are now releasable, in frame order.

        Raises:
            TritonClientError: (INTERNAL) the Ack names no packet in flight.
        """
        entry = self._in_flight.pop(ack.correlation_id, None)
        if entry is None and ack.correlation_id in self._partial:
            raise TritonClientError(
                "Chat",
                grpc.StatusCode.FAILED_PRECONDITION,
                f"frame {ack.correlation_id!r} got a second response: the model is decoupled "
                "(streaming); stream_bytes/stream_results take one result per frame, use "
                "stream_responses",
            )
        if entry is not None and not ack.final and ack.index == 0:
            self._partial.add(ack.correlation_id)
        if entry is None:
            raise TritonClientError(
                "Chat",
                grpc.StatusCode.INTERNAL,
                f"the proxy acknowledged an unknown or already acknowledged frame "
                f"{ack.correlation_id!r}",
            )
        first, count, sent_at = entry
        status, msg, outputs, timings = parse_ack(ack, parse_numpy=self._parse_numpy)
        timings["client_ms"] = (self._clock() - sent_at) * 1000.0
        cid = ack.correlation_id
        if count == 1:
            self._done[first] = FrameResult(first, cid, status, msg, outputs, timings)
        else:
            for i in range(count):
                part = None if outputs is None else _batch_slice(outputs, i, count)
                self._done[first + i] = FrameResult(
                    first + i, cid, status, dict(msg), part, dict(timings)
                )
        ready: list[FrameResult] = []
        while self._next_release in self._done:
            ready.append(self._done.pop(self._next_release))
            self._next_release += 1
        return ready

    def on_response(self, ack: pb.Ack) -> tuple[ResponseResult, bool]:
        """Take one Ack of ``stream_responses``: its result, and whether its frame is done.

        Raises:
            TritonClientError: (INTERNAL) the Ack names no frame in flight, or comes out
                of its frame's order.
        """
        cid = ack.correlation_id
        entry = self._in_flight.get(cid)
        if entry is None:
            raise TritonClientError(
                "Chat",
                grpc.StatusCode.INTERNAL,
                f"the proxy sent a response for an unknown or finished frame {cid!r}",
            )
        first, _, sent_at = entry
        index = self._responses.get(cid, 0)
        if ack.index != index:
            raise TritonClientError(
                "Chat",
                grpc.StatusCode.INTERNAL,
                f"frame {cid!r}: response {ack.index} arrived where {index} was due",
            )
        status, msg, outputs, timings = parse_ack(ack, parse_numpy=self._parse_numpy)
        timings["client_ms"] = (self._clock() - sent_at) * 1000.0
        msg["index"], msg["final"] = index, ack.final
        result = ResponseResult(first, index, ack.final, status, outputs, msg, cid, timings)
        if ack.final:
            del self._in_flight[cid]
            self._responses.pop(cid, None)
            self._next_release += 1
        else:
            self._responses[cid] = index + 1
        return result, ack.final

    def oldest_age(self) -> float:
        """Seconds since the oldest frame in flight was sent (0 when none is)."""
        if not self._in_flight:
            return 0.0
        # dicts keep insertion order: the first entry was sent first
        _, _, sent_at = next(iter(self._in_flight.values()))
        return float(self._clock() - sent_at)

    def finish(self) -> None:
        """Check that every frame sent got its Ack.

        Raises:
            TritonClientError: (INTERNAL) the response stream ended early.
        """
        if self.unreleased:
            missing = sorted(first for first, _, _ in self._in_flight.values())[:5]
            raise TritonClientError(
                "Chat",
                grpc.StatusCode.INTERNAL,
                f"the proxy ended the stream with {self.unreleased} frames "
                f"unacknowledged (first seqs: {missing})",
            )


def _batch_slice(outputs: dict[str, Any], i: int, count: int) -> dict[str, Any]:
    # Arrays whose leading dim is the batch are split (keeping a batch dim of 1, as a
    # single frame's result has); anything else is shared by the packet's frames.
    return {
        name: value[i : i + 1]
        if isinstance(value, np.ndarray) and value.ndim and value.shape[0] == count
        else value
        for name, value in outputs.items()
    }


def chunked(frames: Iterable[bytes], size: int) -> Iterator[list[bytes]]:
    """Consecutive lists of ``size`` frames (the last may be shorter)."""
    iterator = iter(frames)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def latency_percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 of latencies in ms (nearest-rank); zeros for no values."""
    if not values_ms:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0}
    ordered = sorted(values_ms)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {"p50": rank(0.50), "p90": rank(0.90), "p99": rank(0.99)}
