"""The proxy's hot path writes its wire bytes by hand; each must equal the library's own.

- ``ok_ack``'s JSON is written directly: byte for byte what ``json.dumps(body,
  separators=(",", ":"))`` gives for the same body (the seed's clients parse it).
- ``TritonBackend`` sends ``ModelInfer`` as bytes from a cached prefix: they must parse
  into exactly the ``ModelInferRequest`` protobuf would build from the same request.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from transports.triton.protocol import dtypes as _dtypes
from transports.triton.server.backend import InferRequest, OutputTensor
from transports.triton.server.backends import TritonBackend
from transports.triton.server.packets import ok_ack

names = st.text(min_size=1, max_size=12)  # any unicode: quotes, controls, surrogates
datatypes = st.sampled_from(sorted(_dtypes.ITEMSIZE))
shapes = st.lists(st.integers(min_value=0, max_value=2**40), min_size=1, max_size=5).map(tuple)
timings = st.floats(min_value=0.0, max_value=1e7, allow_nan=False)


def _reference_body(
    request: InferRequest,
    outputs: dict[str, OutputTensor],
    backend: str,
    infer_ms: float,
    total_ms: float,
) -> str:
    """The JSON as the proxy wrote it with json.dumps before the hot path was cut."""
    described: dict[str, Any] = {}
    for name in request.outputs:
        out = outputs.get(name)
        if out is None:
            described[name] = {"error": "missing"}
            continue
        entry: dict[str, Any] = {"dtype": out.datatype, "shape": list(out.shape)}
        if not request.binary_outputs:
            entry["b64"] = base64.b64encode(out.data).decode("ascii")
        described[name] = entry
    body = {
        "backend": backend,
        "cid": request.cid,
        "model": request.model,
        "model_version": request.model_version,
        "outputs": described,
        "triton_infer_ms": round(infer_ms, 3),
        "total_ms": round(total_ms, 3),
    }
    return json.dumps(body, separators=(",", ":"))


@st.composite
def answered(draw: st.DrawFn) -> tuple[InferRequest, dict[str, OutputTensor]]:
    wanted = draw(st.lists(names, min_size=1, max_size=4))  # duplicates allowed
    present = draw(st.lists(st.sampled_from(wanted), max_size=4, unique=True))
    outputs = {
        n: OutputTensor(n, draw(datatypes), draw(shapes), draw(st.binary(max_size=24)))
        for n in present
    }
    request = InferRequest(
        cid=draw(st.text(max_size=20)),
        model=draw(names),
        model_version=draw(st.text(max_size=4)),
        input_name=draw(names),
        datatype="FP32",
        shape=(1, 4),
        data=b"\0" * 16,
        outputs=tuple(wanted),
        timeout=1.0,
        binary_outputs=draw(st.booleans()),
    )
    return request, outputs


@settings(max_examples=400, deadline=None)
@given(answered(), st.sampled_from(["triton", "python", 'd"e\\mo']), timings, timings)
def test_ok_ack_json_is_exactly_json_dumps(
    case: tuple[InferRequest, dict[str, OutputTensor]], backend: str, infer: float, total: float
) -> None:
    request, outputs = case
    ack = ok_ack(request, outputs, backend=backend, triton_infer_ms=infer, total_ms=total)
    assert ack.message == _reference_body(request, outputs, backend, infer, total)
    assert ack.correlation_id == request.cid
    if request.binary_outputs:
        sent = [t.name for t in ack.outputs]
        assert sent == [n for n in request.outputs if n in outputs]
        for tensor in ack.outputs:
            assert tensor.data == outputs[tensor.name].data
            assert tuple(tensor.shape.dims) == outputs[tensor.name].shape
    else:
        assert not ack.outputs


# Strings protobuf can carry (no lone surrogates), up past one varint byte of length.
_utf8 = st.characters(blacklist_categories=("Cs",))
_ids = st.text(alphabet=_utf8, max_size=300)
_names = st.text(alphabet=_utf8, min_size=1, max_size=12)


@st.composite
def infer_requests(draw: st.DrawFn) -> tuple[InferRequest, tuple[str, ...]]:
    request = InferRequest(
        cid=draw(_ids),
        model=draw(_names),
        model_version=draw(st.text(alphabet=_utf8, max_size=4)),
        input_name=draw(_names),
        datatype=draw(datatypes),
        shape=draw(shapes),
        data=draw(st.binary(max_size=300)),
        outputs=(),
        timeout=1.0,
    )
    return request, tuple(draw(st.lists(_names, max_size=3)))


@settings(max_examples=300, deadline=None)
@given(infer_requests())
def test_infer_request_bytes_parse_as_the_protobuf_message(
    case: tuple[InferRequest, tuple[str, ...]],
) -> None:
    request, wanted = case

    async def check() -> None:
        backend = TritonBackend("127.0.0.1:1")  # never connected: nothing is sent
        try:
            for _ in range(2):  # the first call fills the prefix cache, the second uses it
                sent = service_pb2.ModelInferRequest.FromString(
                    backend.infer_request_bytes(request, wanted)
                )
                assert sent == backend._infer_message(request, wanted)
        finally:
            await backend.close()

    asyncio.run(check())
