"""Sans-IO core of the proxy: a ``DataPacket`` in, an ``InferRequest`` or a failed
``Ack`` out; backend outputs in, the ``Ack`` out. No sockets, no event loop.

Validation follows the seed's failure modes, in this order, and stops at the first:

====================================================  ===============
correlation id longer than MAX_ID_BYTES                BAD_REQUEST
missing control                                        BAD_REQUEST
missing model / model_version / inputs / outputs       BAD_REQUEST
a name longer than MAX_ID_BYTES, over MAX_OUTPUTS      BAD_REQUEST
a source other than SRC_TENSOR                         UNSUPPORTED
more than one input (one tensor per packet)            UNSUPPORTED
missing tensor, dtype or shape; dtype/shape mismatch   BAD_REQUEST
rank above MAX_RANK, a negative dim                    BAD_REQUEST
size mismatch: got X bytes, expected Y                 BAD_REQUEST
timeout_secs not within 0..MAX_TIMEOUT_SECS            BAD_REQUEST
====================================================  ===============

Hostile packets cost time and Ack bytes in proportion to their own size at most, on
the proxy's event loop: the rank is checked before a shape is read, the size check
stops multiplying once the product passes what any tensor could hold, enum values
outside the proto's enums are named by number, and nothing a packet carries is
echoed beyond MAX_ID_BYTES (strings) or MAX_ERROR_CHARS (error texts), so every
failed Ack stays a few KiB whatever the packet holds.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from json.encoder import encode_basestring_ascii as _json_str
from typing import Any

from transports.triton.protocol import dtypes as _dtypes
from transports.triton.protocol import multimodal_pb2 as pb
from transports.triton.server.backend import InferRequest, OutputTensor

__all__ = [
    "MAX_ERROR_CHARS",
    "MAX_ID_BYTES",
    "MAX_OUTPUTS",
    "MAX_RANK",
    "MAX_TIMEOUT_SECS",
    "PacketError",
    "check_correlation_id",
    "error_ack",
    "ok_ack",
    "ack_bytes",
    "packet_bytes",
    "parse_packet",
    "status_name",
]

MAX_RANK = 64
"""Most dims a shape may have: NumPy 2's limit (NPY_MAXDIMS); Triton sets none of its own
in the protocol, and its backends take fewer (TensorRT: 8)."""

MAX_ID_BYTES = 1024
"""Longest correlation id, model name, model version, input or output name (UTF-8)."""

MAX_OUTPUTS = 1024
"""Most output names one packet may ask for."""

MAX_ERROR_CHARS = 2048
"""Longest error text an Ack carries; longer ones (a model's exception) are cut."""

MAX_TIMEOUT_SECS = 86400.0
"""Longest ``Control.timeout_secs`` (a day): gRPC turns far larger deadlines into an
immediate DEADLINE_EXCEEDED."""

_MISSING = '{"error":"missing"}'

# No tensor can hold more bytes than this (Triton's byte sizes are int64): the size
# check stops multiplying dims once past it.
_SIZE_CAP = 2**63 - 1


class PacketError(ValueError):
    """A packet the proxy refuses before calling any backend.

    Attributes:
        status: the ``AckStatus`` to answer with (BAD_REQUEST or UNSUPPORTED).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _enum_name(enum: Any, value: int) -> str:
    # proto3 enums are open: a packet may carry any int32, which Name() refuses.
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


def status_name(status: int) -> str:
    """The ``AckStatus`` name of ``status``, or its number when the enum has none."""
    return _enum_name(pb.AckStatus, status)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _clip(text: str, limit: int = MAX_ID_BYTES) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, on a character boundary."""
    if len(text) * 4 <= limit:
        return text
    return text[:limit].encode("utf-8", "surrogatepass")[:limit].decode("utf-8", "ignore")


def _quoted(name: str) -> str:
    """A name for an error message: quoted, at most 64 chars of it."""
    return repr(name) if len(name) <= 64 else f"{name[:64]!r}..."


def _check_id(what: str, text: str) -> None:
    if len(text) * 4 > MAX_ID_BYTES and _utf8_len(text) > MAX_ID_BYTES:
        raise PacketError(
            pb.BAD_REQUEST,
            f"{what} is {_utf8_len(text)} bytes, more than the {MAX_ID_BYTES} allowed",
        )


def _dims(what: str, shape: pb.Shape) -> tuple[int, ...]:
    # The rank first: a shape's dims are never read, let alone multiplied, past it.
    rank = len(shape.dims)
    if rank > MAX_RANK:
        raise PacketError(pb.BAD_REQUEST, f"{what} has {rank} dims, more than {MAX_RANK}")
    return tuple(shape.dims)


def _byte_size(shape: tuple[int, ...], itemsize: int) -> int | None:
    """Bytes a tensor of ``shape`` takes, or None past ``_SIZE_CAP`` (at most MAX_RANK
    multiplications, each of numbers below 2**126)."""
    if 0 in shape:
        return 0
    size = itemsize
    for d in shape:
        size *= d
        if size > _SIZE_CAP:
            return None
    return size


_PACKET_FRAMING = 128
"""Most bytes of a DataPacket's own framing outside its meta, control, tensor data and dims:
each field's tag and length (at most 11 bytes each), the dtype and the event (11 each)."""


_SERIALIZE_BELOW = 1 << 16
"""Tensor bytes below which ``packet_bytes`` asks protobuf (0.2 us for a 4-byte tensor, against
0.9 us for the sum of the parts)."""


def packet_bytes(packet: pb.DataPacket) -> int:
    """The bytes ``packet`` holds, as the in-flight budget counts them: at least its
    serialized size (``ByteSize()``), at most ``_PACKET_FRAMING`` plus 9 per dim more.

    Not ``ByteSize()`` itself: upb's ``ByteSize()`` serializes the whole message to measure
    it, about 1.5 ms per MiB of tensor here (13 ms for an 8 MiB packet, on the event loop),
    where reading the tensor's bytes once costs about 20 us per MiB. The small parts (meta,
    control) are measured by ``ByteSize()``, in proportion to what they hold.
    """
    tensor = packet.tensor
    data = len(tensor.data)
    if data < _SERIALIZE_BELOW:
        return packet.ByteSize()  # exact, and cheaper than the sum below for small packets
    return (
        data
        + packet.meta.ByteSize()
        + packet.control.ByteSize()
        + 10 * len(tensor.shape.dims)
        + _PACKET_FRAMING
    )


def ack_bytes(ack: pb.Ack) -> int:
    """At least ``ack.ByteSize()``, counted without serializing the Ack (see
    :func:`packet_bytes`): what the servicer checks against the message limit first."""
    size = 96 + len(ack.correlation_id.encode()) + len(ack.message.encode())
    for out in ack.outputs:
        size += 64 + len(out.data) + len(out.name.encode()) + 11 * len(out.shape.dims)
    return size


def check_correlation_id(packet: pb.DataPacket) -> str:
    """The packet's correlation id, if it is at most ``MAX_ID_BYTES`` long.

    Raises:
        PacketError: BAD_REQUEST, the id is longer.
    """
    cid = packet.meta.correlation_id
    _check_id("correlation_id", cid)
    return cid


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
    # Every packet takes this path: each field is read once (a protobuf attribute read
    # builds an object), and a string's UTF-8 length is only computed when its length
    # in characters could put it over MAX_ID_BYTES.
    bad = pb.BAD_REQUEST
    cid = packet.meta.correlation_id
    if len(cid) * 4 > MAX_ID_BYTES:
        _check_id("correlation_id", cid)
    if not packet.HasField("control"):
        raise PacketError(bad, "missing control")
    control = packet.control
    model = control.model
    if not model:
        raise PacketError(bad, "missing model")
    if len(model) * 4 > MAX_ID_BYTES:
        _check_id("model", model)
    version = control.model_version
    if not version:
        raise PacketError(bad, "missing model_version")
    if len(version) * 4 > MAX_ID_BYTES:
        _check_id("model_version", version)
    inputs = control.inputs
    if not inputs:
        raise PacketError(bad, "missing inputs")
    outputs = control.outputs
    if not outputs:
        raise PacketError(bad, "missing outputs")
    if len(outputs) > MAX_OUTPUTS:
        raise PacketError(bad, f"{len(outputs)} outputs asked for, more than {MAX_OUTPUTS}")
    for spec in inputs:
        name = spec.name
        if len(name) * 4 > MAX_ID_BYTES:
            _check_id("input name", name)
        source = getattr(spec, "from")
        if source != pb.SRC_TENSOR:
            raise PacketError(
                pb.UNSUPPORTED,
                f"unsupported source {_enum_name(pb.Source, source)} for input "
                f"{_quoted(name)}: only SRC_TENSOR",
            )
    if len(inputs) != 1:
        raise PacketError(
            pb.UNSUPPORTED,
            f"one tensor per packet, but control lists {len(inputs)} inputs",
        )
    spec = inputs[0]
    input_name = spec.name
    if not input_name:
        raise PacketError(bad, "missing input name")
    names = []
    for output in outputs:
        name = output.name
        if not name:
            raise PacketError(bad, "missing output name")
        if len(name) * 4 > MAX_ID_BYTES:
            _check_id("output name", name)
        names.append(name)
    if not packet.HasField("tensor"):
        raise PacketError(bad, "missing tensor")
    tensor = packet.tensor

    spec_dtype = spec.dtype
    tensor_dtype = tensor.dtype
    if spec_dtype and tensor_dtype and spec_dtype != tensor_dtype:
        raise PacketError(
            bad,
            f"dtype mismatch: control says {_enum_name(pb.DataType, spec_dtype)}, "
            f"tensor says {_enum_name(pb.DataType, tensor_dtype)}",
        )
    dtype = spec_dtype or tensor_dtype
    datatype = _dtypes.triton_name(dtype)
    if datatype is None:
        raise PacketError(
            bad,
            f"missing or unknown dtype {_enum_name(pb.DataType, dtype)} "
            f"for input {_quoted(input_name)}",
        )

    spec_shape = _dims("control's shape", spec.shape)
    tensor_shape = _dims("tensor's shape", tensor.shape)
    if spec_shape and tensor_shape and spec_shape != tensor_shape:
        raise PacketError(
            bad,
            f"shape mismatch: control says {list(spec_shape)}, tensor says {list(tensor_shape)}",
        )
    shape = spec_shape or tensor_shape
    if not shape:
        raise PacketError(bad, f"missing shape for input {_quoted(input_name)}")
    if min(shape) < 0:
        raise PacketError(bad, f"shape {list(shape)} has a negative dim")

    data = tensor.data
    itemsize = _dtypes.ITEMSIZE.get(datatype)
    if itemsize is not None:
        expected = _byte_size(shape, itemsize)
        got = len(data)
        if got != expected:
            wanted = f"{expected}" if expected is not None else f"more than {_SIZE_CAP}"
            raise PacketError(
                bad,
                f"size mismatch: got {got} bytes, expected {wanted} "
                f"(shape {list(shape)}, {datatype})",
            )

    timeout = control.timeout_secs
    if not 0 <= timeout <= MAX_TIMEOUT_SECS:  # NaN fails both comparisons
        raise PacketError(
            bad, f"timeout_secs must be within 0..{MAX_TIMEOUT_SECS:g}, got {timeout}"
        )
    return InferRequest(
        cid=cid,
        model=model,
        model_version=version,
        input_name=input_name,
        datatype=datatype,
        shape=shape,
        data=data,
        outputs=tuple(names),
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
        packet: the packet (its correlation id, model and version are echoed, each cut
            to at most ``MAX_ID_BYTES``).
        status: a non-OK ``AckStatus``.
        error: what went wrong, for humans (cut to ``MAX_ERROR_CHARS``).
        backend: the backend's name ("triton", "python", "demo").
        triton_infer_ms: time spent in the backend call, if it was made.
        total_ms: time from receiving the packet to this Ack.
    """
    # Echo only bounded prefixes: this Ack must fit any send limit whatever the
    # packet holds (a 12 MiB correlation id, JSON-escaped, would not).
    cid = _clip(packet.meta.correlation_id)
    if len(error) > MAX_ERROR_CHARS:
        error = error[:MAX_ERROR_CHARS] + f"... ({len(error) - MAX_ERROR_CHARS} more chars)"
    body: dict[str, Any] = {"error": error, "backend": backend, "cid": cid}
    if packet.HasField("control"):
        body["model"] = _clip(packet.control.model)
        body["model_version"] = _clip(packet.control.model_version)
    body["triton_infer_ms"] = round(triton_infer_ms, 3)
    body["total_ms"] = round(total_ms, 3)
    return pb.Ack(
        correlation_id=cid,
        status=status,  # type: ignore[arg-type]
        message=json.dumps(body, separators=(",", ":")),
        timing=_timing(triton_infer_ms, total_ms),
    )


def _json_ms(ms: float) -> str:
    # What json.dumps writes for round(ms, 3): float.__repr__ (timings are finite).
    return repr(round(ms, 3))


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

    The JSON is written directly, byte for byte what ``json.dumps(body,
    separators=(",", ":"))`` writes for the same body (keys in this order; strings
    through the json module's own C escaper), at a third of its cost: every Ack
    of every packet is built here.
    """
    described: dict[str, str] = {}  # a name asked for twice is described once, as json would
    binary: list[tuple[str, OutputTensor]] = []
    binary_outputs = request.binary_outputs
    for name in request.outputs:
        out = outputs.get(name)
        if out is None:
            described[name] = _MISSING
            continue
        shape = out.shape
        entry = f'{{"dtype":{_json_str(out.datatype)},"shape":[{",".join(map(str, shape))}]'
        if binary_outputs:
            binary.append((name, out))
            described[name] = entry + "}"
        else:
            described[name] = f'{entry},"b64":"{base64.b64encode(out.data).decode("ascii")}"}}'
    message = "".join(
        (
            '{"backend":',
            _json_str(backend),
            ',"cid":',
            _json_str(request.cid),
            ',"model":',
            _json_str(request.model),
            ',"model_version":',
            _json_str(request.model_version),
            ',"outputs":{',
            ",".join([f"{_json_str(k)}:{v}" for k, v in described.items()]),
            '},"triton_infer_ms":',
            _json_ms(triton_infer_ms),
            ',"total_ms":',
            _json_ms(total_ms),
            "}",
        )
    )
    ack = pb.Ack(
        correlation_id=request.cid,
        status=pb.OK,
        message=message,
        timing=_timing(triton_infer_ms, total_ms),
    )
    # Added in place: a NamedTensor built first and passed as ``outputs=`` is copied
    # again into the Ack, and building it that way touched 5x the output's bytes at its
    # peak (2x in place, measured with upb): per packet in flight, across calls.
    for name, out in binary:
        ack.outputs.add(
            name=name,
            dtype=_dtypes.from_triton(out.datatype),
            shape=pb.Shape(dims=out.shape),
            data=out.data,
        )
    return ack
