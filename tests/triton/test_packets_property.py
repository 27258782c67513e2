"""Property tests of the proxy's packet parser and Acks over arbitrary DataPacket fields.

Whatever a packet holds (enum values in and out of the proto's enums, huge and negative
dims, any rank, long or odd strings, NaN timeouts), the parser either accepts it with a
request whose size adds up, or refuses it with a documented status and a message; the
Ack built for it is small, valid JSON, and carries no Python exception text. Through
``MultimodalProxy.handle`` over the embedded demo backend too: one Ack per packet, only
documented statuses.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transports.triton.protocol import dtypes as _dtypes
from transports.triton.protocol import multimodal_pb2 as pb
from transports.triton.server import MultimodalProxy
from transports.triton.server.backend import InferRequest
from transports.triton.server.backends import load_backend
from transports.triton.server.packets import (
    MAX_ERROR_CHARS,
    MAX_ID_BYTES,
    MAX_RANK,
    MAX_TIMEOUT_SECS,
    PacketError,
    ack_bytes,
    error_ack,
    packet_bytes,
    parse_packet,
)

DOCUMENTED = {pb.OK, pb.BAD_REQUEST, pb.INTERNAL, pb.UNSUPPORTED, pb.UNAVAILABLE}
REFUSALS = {pb.BAD_REQUEST, pb.UNSUPPORTED}
# A failed Ack echoes at most a few bounded strings (each JSON-escaped: up to 6x).
MAX_ERROR_ACK_BYTES = 2 * MAX_ID_BYTES * 13 + MAX_ERROR_CHARS * 6 + 4096
EXCEPTION_WORDS = ("Traceback", "ValueError", "TypeError", "KeyError", "OverflowError")

INT32 = st.integers(-(2**31), 2**31 - 1)
INT64 = st.integers(-(2**63), 2**63 - 1)
ENUM_DTYPE = st.one_of(st.sampled_from(list(pb.DataType.values())), INT32)
ENUM_SOURCE = st.one_of(st.just(pb.SRC_TENSOR), st.sampled_from(list(pb.Source.values())), INT32)
ENUM_EVENT = st.one_of(st.sampled_from(list(pb.StreamEvent.values())), INT32)
# Mostly small, sometimes just past the limits, sometimes far past them.
TEXT = st.one_of(
    st.text(max_size=12),
    st.text(min_size=MAX_ID_BYTES // 4 - 2, max_size=MAX_ID_BYTES + 8),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=3000),
    st.text(alphabet='\x00\x01\x1f"\\', min_size=1000, max_size=1100),
)
DIM = st.one_of(st.integers(0, 4), st.integers(-3, 2**20), INT64, st.just(2**62))
DIMS = st.one_of(
    st.lists(DIM, max_size=6),
    st.lists(DIM, min_size=MAX_RANK - 1, max_size=MAX_RANK + 2),
    st.lists(st.just(2**62), min_size=200, max_size=2000),
)
TIMEOUT = st.one_of(
    st.just(0.0),
    st.floats(0, 60),
    st.floats(allow_nan=True, allow_infinity=True),
    st.just(MAX_TIMEOUT_SECS),
    st.just(math.nextafter(MAX_TIMEOUT_SECS, math.inf)),
)


def _spec(name: str, dims: list[int], dtype: int, source: int) -> pb.InputSpec:
    spec = pb.InputSpec(name=name, shape=pb.Shape(dims=dims), dtype=dtype)  # type: ignore[arg-type]
    setattr(spec, "from", source)  # `from` is a Python keyword
    return spec


@st.composite
def arbitrary_packets(draw: st.DrawFn) -> pb.DataPacket:
    """Every field drawn on its own: mostly refused packets."""
    packet = pb.DataPacket(
        meta=pb.Meta(correlation_id=draw(TEXT), note=draw(TEXT)),
        event=draw(ENUM_EVENT),  # type: ignore[arg-type]
    )
    if draw(st.booleans()):
        inputs = draw(st.lists(st.builds(_spec, TEXT, DIMS, ENUM_DTYPE, ENUM_SOURCE), max_size=3))
        packet.control.CopyFrom(
            pb.Control(
                model=draw(TEXT),
                model_version=draw(TEXT),
                timeout_secs=draw(TIMEOUT),
                inputs=inputs,
                outputs=[pb.OutputSpec(name=n) for n in draw(st.lists(TEXT, max_size=4))],
                binary_outputs=draw(st.booleans()),
            )
        )
    if draw(st.booleans()):
        packet.tensor.CopyFrom(
            pb.Tensor(
                dtype=draw(ENUM_DTYPE),  # type: ignore[arg-type]
                shape=pb.Shape(dims=draw(DIMS)),
                data=draw(st.binary(max_size=64)),
            )
        )
    return packet


@st.composite
def plausible_packets(draw: st.DrawFn) -> pb.DataPacket:
    """Well-formed packets, then one field bent: both sides of every check."""
    datatype = draw(st.sampled_from(sorted(_dtypes.ITEMSIZE)))
    dtype = _dtypes.from_triton(datatype)
    dims = draw(st.lists(st.integers(0, 5), min_size=1, max_size=4))
    nbytes = math.prod(dims) * _dtypes.ITEMSIZE[datatype]
    data = draw(st.binary(min_size=nbytes, max_size=nbytes))
    model = draw(st.sampled_from(["echo", "add_one_fp32", "invert_u8", "no_such"]))
    packet = pb.DataPacket(
        meta=pb.Meta(correlation_id=draw(st.text(max_size=20))),
        control=pb.Control(
            model=model,
            model_version="1",
            timeout_secs=draw(st.sampled_from([0.0, 5.0])),
            inputs=[_spec("INPUT", dims if draw(st.booleans()) else [], dtype, pb.SRC_TENSOR)],
            outputs=[pb.OutputSpec(name=n) for n in draw(st.sampled_from([["OUTPUT"], ["x"]]))],
            binary_outputs=draw(st.booleans()),
        ),
        tensor=pb.Tensor(dtype=dtype, shape=pb.Shape(dims=dims), data=data),  # type: ignore[arg-type]
        event=pb.SEV_DATA,
    )
    bend = draw(st.sampled_from(["none", "dtype", "dim", "data", "cid", "rank", "timeout"]))
    if bend == "dtype":
        packet.tensor.dtype = draw(ENUM_DTYPE)  # type: ignore[assignment]
    elif bend == "dim":
        packet.tensor.shape.dims[0] = draw(INT64)
    elif bend == "data":
        packet.tensor.data += draw(st.binary(min_size=1, max_size=3))
    elif bend == "cid":
        packet.meta.correlation_id = "c" * draw(st.integers(MAX_ID_BYTES - 1, MAX_ID_BYTES + 1))
    elif bend == "rank":
        packet.tensor.shape.dims.extend([1] * MAX_RANK)
    elif bend == "timeout":
        packet.control.timeout_secs = draw(TIMEOUT)
    return packet


def check_parse(packet: pb.DataPacket) -> InferRequest | None:
    refused: PacketError | None
    try:
        request = parse_packet(packet, default_timeout=30.0)
    except PacketError as exc:
        refused = exc
    else:
        refused = None
    if refused is not None:
        assert refused.status in REFUSALS
        message = str(refused)
        assert message
        assert not any(word in message for word in EXCEPTION_WORDS), message
        ack = error_ack(packet, refused.status, message, backend="test")
        assert ack.ByteSize() <= MAX_ERROR_ACK_BYTES
        assert len(ack.correlation_id.encode()) <= MAX_ID_BYTES
        body = json.loads(ack.message)
        assert body["error"].startswith(message[:MAX_ERROR_CHARS])
        assert len(message) <= MAX_ERROR_CHARS, "refusals explain themselves briefly"
        return None
    assert len(request.shape) <= MAX_RANK
    assert all(d >= 0 for d in request.shape)
    itemsize = _dtypes.ITEMSIZE.get(request.datatype)
    if itemsize is not None:
        assert len(request.data) == math.prod(request.shape) * itemsize
    assert 0 < request.timeout <= MAX_TIMEOUT_SECS
    assert len(request.cid.encode()) <= MAX_ID_BYTES
    return request


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arbitrary_packets())
def test_arbitrary_packets_get_a_documented_status(packet: pb.DataPacket) -> None:
    check_parse(packet)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plausible_packets())
def test_plausible_packets_parse_or_are_refused_cleanly(packet: pb.DataPacket) -> None:
    check_parse(packet)


@pytest.fixture(scope="module")
def demo_proxy_servicer() -> MultimodalProxy:
    backend = load_backend("demo", triton_url=None, max_message_bytes=64 * 1024 * 1024)
    return MultimodalProxy(backend, max_message_bytes=1024 * 1024)


def _handle(proxy: MultimodalProxy, packet: pb.DataPacket) -> pb.Ack:
    return asyncio.run(proxy.handle(packet))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(st.one_of(arbitrary_packets(), plausible_packets()))
def test_every_packet_gets_one_ack_with_a_documented_status(
    demo_proxy_servicer: MultimodalProxy, packet: pb.DataPacket
) -> None:
    ack = _handle(demo_proxy_servicer, packet)
    assert ack.status in DOCUMENTED
    assert ack.ByteSize() <= 1024 * 1024
    body: dict[str, Any] = json.loads(ack.message)
    if ack.status != pb.OK:
        assert not any(word in body["error"] for word in ("Traceback", "proxy error")), body
        if ack.status in REFUSALS:
            assert not any(word in body["error"] for word in EXCEPTION_WORDS), body


def test_the_reported_cases_are_bad_requests() -> None:
    """The cases that escaped as ValueError: an out-of-enum DataType in the mismatch
    message, a size too large to format, Name() of an unknown source."""
    base = pb.DataPacket(
        meta=pb.Meta(correlation_id="c"),
        control=pb.Control(
            model="echo",
            model_version="1",
            inputs=[_spec("INPUT", [1, 2], pb.DT_FP32, pb.SRC_TENSOR)],
            outputs=[pb.OutputSpec(name="OUTPUT")],
        ),
        tensor=pb.Tensor(dtype=pb.DT_FP32, shape=pb.Shape(dims=[1, 2]), data=b"\0" * 8),
    )
    mismatch = pb.DataPacket()
    mismatch.CopyFrom(base)
    mismatch.tensor.dtype = 999  # type: ignore[assignment]
    huge = pb.DataPacket()
    huge.CopyFrom(base)
    del huge.control.inputs[0].shape.dims[:]
    huge.tensor.shape.dims[:] = [2**62] * MAX_RANK  # 3,968 bits: formats, exceeds the cap
    for packet, words in ((mismatch, "tensor says 999"), (huge, "expected more than")):
        with pytest.raises(PacketError) as info:
            parse_packet(packet, default_timeout=1.0)
        assert info.value.status == pb.BAD_REQUEST
        assert words in str(info.value)
    assert check_parse(base) is not None
    np.testing.assert_array_equal(np.frombuffer(base.tensor.data, np.float32), [0, 0])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(arbitrary_packets(), plausible_packets()), st.integers(0, 3 << 20))
def test_packet_bytes_bounds_the_serialized_size_from_above(
    packet: pb.DataPacket, extra: int
) -> None:
    """The budget's count of a packet (without serializing it) is never below what the
    packet holds on the wire, and above it by the documented framing and dims at most."""
    if extra:  # a tensor's bytes past varint length boundaries (1, 2, 3 and 4 bytes)
        packet.tensor.data = bytes(extra)
    counted = packet_bytes(packet)
    wire = packet.ByteSize()
    assert wire <= counted <= wire + 128 + 9 * len(packet.tensor.shape.dims)


_ACK_DIMS = st.lists(st.one_of(st.integers(0, 4), INT64), max_size=8)


@st.composite
def arbitrary_acks(draw: st.DrawFn) -> pb.Ack:
    """Every Ack field drawn on its own, past each varint length boundary."""
    outputs = [
        pb.NamedTensor(
            name=draw(TEXT),
            dtype=draw(ENUM_DTYPE),  # type: ignore[arg-type]
            shape=pb.Shape(dims=draw(_ACK_DIMS)),
            data=bytes(draw(st.sampled_from([0, 1, 127, 128, 16383, 16384, 1 << 21]))),
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    return pb.Ack(
        correlation_id=draw(TEXT),
        status=draw(st.one_of(st.sampled_from(list(pb.AckStatus.values())), INT32)),  # type: ignore[arg-type]
        message=draw(TEXT),
        outputs=outputs,
        timing=pb.Timing(triton_infer_ms=draw(st.floats()), total_ms=draw(st.floats())),
        index=draw(st.integers(0, 2**32 - 1)),
        final=draw(st.booleans()),
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arbitrary_acks())
def test_ack_bytes_bounds_the_serialized_size_from_above(ack: pb.Ack) -> None:
    """The message-limit check's first count is never below the Ack's size on the wire,
    so no Ack over the limit is sent for want of serializing it."""
    assert ack.ByteSize() <= ack_bytes(ack)
