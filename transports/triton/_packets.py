"""Sans-IO core of the proxy: a ``DataPacket`` in, an ``InferRequest`` or a failed
``Ack`` out; backend outputs in, the ``Ack`` out. No sockets, no event loop.

Validation follows the seed's failure modes, in this order, and stops at the first:

====================================================  ===============
missing control                                        BAD_REQUEST
missing model / model_version / inputs / outputs       BAD_REQUEST
a source other than SRC_TENSOR                         UNSUPPORTED
more than one input (one tensor per packet)            UNSUPPORTED
missing tensor, dtype or shape; dtype/shape mismatch   BAD_REQUEST
size mismatch: got X bytes, expected Y                 BAD_REQUEST
====================================================  ===============
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from transports.triton import _dtypes
from transports.triton import multimodal_pb2 as pb

__all__ = [
    "BackendError",
    "InferRequest",
    "OutputTensor",
    "PacketError",
    "error_ack",
    "ok_ack",
    "parse_packet",
]


@dataclass(frozen=True)
class InferRequest:
    """One validated inference: a single input tensor and the output names wanted.

    Attributes:
        cid: the packet's correlation id.
        model: model name.
        model_version: model version.
        input_name: the input tensor's name.
        datatype: Triton's datatype name, e.g. "FP32".
        shape: the input's shape, every dim >= 0.
        data: the input's raw bytes (C order, little-endian), passed through untouched.
        outputs: the output names the client asked for, in its order.
        timeout: seconds the backend call may take.
        binary_outputs: the client wants raw output bytes in ``Ack.outputs``.
    """

    cid: str
    model: str
    model_version: str
    input_name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes
    outputs: tuple[str, ...]
    timeout: float
    binary_outputs: bool = False


@dataclass(frozen=True)
class OutputTensor:
    """One output tensor from a backend: Triton datatype name, shape and raw bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes


class PacketError(ValueError):
    """A packet the proxy refuses before calling any backend.

    Attributes:
        status: the ``AckStatus`` to answer with (BAD_REQUEST or UNSUPPORTED).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BackendError(RuntimeError):
    """A backend call failed (unreachable, timed out, model error).

    Attributes:
        status: the ``AckStatus`` to answer with (INTERNAL unless the backend knows better).
        code: the gRPC status for RPCs that answer with one (model metadata, readiness).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = pb.INTERNAL,
        code: grpc.StatusCode = grpc.StatusCode.INTERNAL,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _dims(shape: pb.Shape) -> tuple[int, ...]:
    return tuple(int(d) for d in shape.dims)


def _source_name(value: int) -> str:
    try:
        return pb.Source.Name(value)
    except ValueError:
        return str(value)


def parse_packet(packet: pb.DataPacket, *, default_timeout: float) -> InferRequest:
    """Validate a SEV_DATA packet and turn it into an :class:`InferRequest`.

    Args:
        packet: the packet as received.
        default_timeout: seconds to use when ``Control.timeout_secs`` is 0.

    Returns:
        The request to hand to a backend.

    Raises:
        PacketError: the packet breaks one of the rules in the module docstring.
    """
    bad = pb.BAD_REQUEST
    if not packet.HasField("control"):
        raise PacketError(bad, "missing control")
    control = packet.control
    for field in ("model", "model_version"):
        if not getattr(control, field):
            raise PacketError(bad, f"missing {field}")
    if not control.inputs:
        raise PacketError(bad, "missing inputs")
    if not control.outputs:
        raise PacketError(bad, "missing outputs")
    for spec in control.inputs:
        source = getattr(spec, "from")
        if source != pb.SRC_TENSOR:
            raise PacketError(
                pb.UNSUPPORTED,
                f"unsupported source {_source_name(source)} for input {spec.name!r}: "
                "only SRC_TENSOR",
            )
    if len(control.inputs) != 1:
        raise PacketError(
            pb.UNSUPPORTED,
            f"one tensor per packet, but control lists {len(control.inputs)} inputs",
        )
    spec = control.inputs[0]
    if not spec.name:
        raise PacketError(bad, "missing input name")
    if any(not o.name for o in control.outputs):
        raise PacketError(bad, "missing output name")
    if not packet.HasField("tensor"):
        raise PacketError(bad, "missing tensor")
    tensor = packet.tensor

    dtype = spec.dtype or tensor.dtype
    if spec.dtype and tensor.dtype and spec.dtype != tensor.dtype:
        raise PacketError(
            bad,
            f"dtype mismatch: control says {pb.DataType.Name(spec.dtype)}, "
            f"tensor says {pb.DataType.Name(tensor.dtype)}",
        )
    datatype = _dtypes.triton_name(dtype)
    if datatype is None:
        raise PacketError(bad, f"missing or unknown dtype for input {spec.name!r}")

    spec_shape, tensor_shape = _dims(spec.shape), _dims(tensor.shape)
    if spec_shape and tensor_shape and spec_shape != tensor_shape:
        raise PacketError(
            bad,
            f"shape mismatch: control says {list(spec_shape)}, tensor says {list(tensor_shape)}",
        )
    shape = spec_shape or tensor_shape
    if not shape:
        raise PacketError(bad, f"missing shape for input {spec.name!r}")
    if any(d < 0 for d in shape):
        raise PacketError(bad, f"shape {list(shape)} has a negative dim")

    itemsize = _dtypes.ITEMSIZE.get(datatype)
    if itemsize is not None:
        expected = math.prod(shape) * itemsize
        got = len(tensor.data)
        if got != expected:
            raise PacketError(
                bad,
                f"size mismatch: got {got} bytes, expected {expected} "
                f"(shape {list(shape)}, {datatype})",
            )

    timeout = control.timeout_secs
    if not math.isfinite(timeout) or timeout < 0:
        raise PacketError(bad, f"timeout_secs must be >= 0, got {timeout}")
    return InferRequest(
        cid=packet.meta.correlation_id,
        model=control.model,
        model_version=control.model_version,
        input_name=spec.name,
        datatype=datatype,
        shape=shape,
        data=tensor.data,
        outputs=tuple(o.name for o in control.outputs),
        timeout=timeout or default_timeout,
        binary_outputs=control.binary_outputs,
    )


def _timing(triton_infer_ms: float, total_ms: float) -> pb.Timing:
    return pb.Timing(triton_infer_ms=triton_infer_ms, total_ms=total_ms)


def error_ack(
    packet: pb.DataPacket,
    status: int,
    error: str,
    *,
    backend: str,
    triton_infer_ms: float = 0.0,
    total_ms: float = 0.0,
) -> pb.Ack:
    """The Ack for a packet that failed: ``{"error": ...}`` plus what is known of it.

    Args:
        packet: the packet (its correlation id, model and version are echoed).
        status: a non-OK ``AckStatus``.
        error: what went wrong, for humans.
        backend: the backend's name ("triton", "python", "demo").
        triton_infer_ms: time spent in the backend call, if it was made.
        total_ms: time from receiving the packet to this Ack.
    """
    cid = packet.meta.correlation_id
    body: dict[str, Any] = {"error": error, "backend": backend, "cid": cid}
    if packet.HasField("control"):
        body["model"] = packet.control.model
        body["model_version"] = packet.control.model_version
    body["triton_infer_ms"] = round(triton_infer_ms, 3)
    body["total_ms"] = round(total_ms, 3)
    return pb.Ack(
        correlation_id=cid,
        status=status,  # type: ignore[arg-type]
        message=json.dumps(body, separators=(",", ":")),
        timing=_timing(triton_infer_ms, total_ms),
    )


def ok_ack(
    request: InferRequest,
    outputs: Mapping[str, OutputTensor],
    *,
    backend: str,
    triton_infer_ms: float,
    total_ms: float,
) -> pb.Ack:
    """The Ack for a packet that succeeded.

    Every requested output appears in the JSON's ``"outputs"``, in the order asked:
    ``{"dtype", "shape", "b64"}`` (no ``"b64"`` when the client asked for binary
    outputs, which then travel in ``Ack.outputs``), or ``{"error": "missing"}`` when
    the backend returned no tensor of that name.
    """
    described: dict[str, Any] = {}
    binary: list[pb.NamedTensor] = []
    for name in request.outputs:
        out = outputs.get(name)
        if out is None:
            described[name] = {"error": "missing"}
            continue
        entry: dict[str, Any] = {"dtype": out.datatype, "shape": list(out.shape)}
        if request.binary_outputs:
            binary.append(
                pb.NamedTensor(
                    name=name,
                    dtype=_dtypes.from_triton(out.datatype),  # type: ignore[arg-type]
                    shape=pb.Shape(dims=out.shape),
                    data=out.data,
                )
            )
        else:
            entry["b64"] = base64.b64encode(out.data).decode("ascii")
        described[name] = entry
    body = {
        "backend": backend,
        "cid": request.cid,
        "model": request.model,
        "model_version": request.model_version,
        "outputs": described,
        "triton_infer_ms": round(triton_infer_ms, 3),
        "total_ms": round(total_ms, 3),
    }
    return pb.Ack(
        correlation_id=request.cid,
        status=pb.OK,
        message=json.dumps(body, separators=(",", ":")),
        outputs=binary,
        timing=_timing(triton_infer_ms, total_ms),
    )
