"""The coalescer as a wrapper (``CoalescingBackend``) around any backend, without Triton.

Over a backend of the test's own (which records what reaches it) and over the embedded
``PythonBackend``, in process and through the proxy's command line. The same wrapper
around a real Triton: ``test_proxy_triton.py`` (``test_coalesce_*``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator, Mapping
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from triton_helpers import ProxyProcess, ack_json, decode_output, packet, running_proxy

from transports.triton.protocol import multimodal_pb2 as pb
from transports.triton.protocol import multimodal_pb2_grpc as pbg
from transports.triton.server import (
    Backend,
    BackendError,
    BackendWrapper,
    CoalescingBackend,
    InferRequest,
    ModelConfig,
    ModelResponse,
    OutputTensor,
    PythonBackend,
    load_backend,
)
from transports.triton.server.coalesce import split_rows, stack_rows
from transports.triton.server.observe import ObservedBackend

pytestmark = pytest.mark.anyio

ROW = np.arange(4, dtype=np.float32).reshape(1, 4)


def _request(cid: str, array: np.ndarray, **kwargs: Any) -> InferRequest:
    fields: dict[str, Any] = {
        "model": "double",
        "model_version": "1",
        "input_name": "X",
        "datatype": "FP32",
        "outputs": ("Y",),
        "timeout": 10.0,
    }
    fields.update(kwargs)
    return InferRequest(cid=cid, shape=tuple(array.shape), data=array.tobytes(), **fields)


def _array(out: OutputTensor) -> np.ndarray:
    return np.frombuffer(out.data, np.float32).reshape(out.shape)


class Doubler(Backend):
    """A backend of one's own: Y = 2 * X, recording every request that reaches it.

    ``gate``, when set, holds every call until it is set; ``fail`` makes calls raise it.
    """

    name = "doubler"

    def __init__(self, *, max_batch_size: int = 64, decoupled: bool = False) -> None:
        self.requests: list[InferRequest] = []
        self.config_calls = 0
        self.cancelled = 0
        self.max_batch_size = max_batch_size
        self.is_decoupled = decoupled
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.bad_shape = False

    async def infer(self, request: InferRequest) -> Mapping[str, OutputTensor]:
        self.requests.append(request)
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail is not None:
            raise self.fail
        y = np.frombuffer(request.data, np.float32).reshape(request.shape) * 2
        shape = (y.size,) if self.bad_shape else y.shape
        # An output nobody asks for, without a batch dimension: never split.
        rows = np.array(request.shape[0], dtype=np.int64)
        return {
            "Y": OutputTensor("Y", "FP32", shape, y.tobytes()),
            "ROWS": OutputTensor("ROWS", "INT64", (), rows.tobytes()),
        }

    async def decoupled(self, request: InferRequest) -> bool:
        return self.is_decoupled

    async def model_config(self, model: str, version: str) -> ModelConfig:
        self.config_calls += 1
        await asyncio.sleep(0.01)  # a lookup takes a while: packets arrive meanwhile
        return ModelConfig(
            max_batch_size=self.max_batch_size, decoupled=self.is_decoupled, outputs=None
        )

    async def model_metadata(self, model: str, version: str) -> pb.ModelMetadataResponse:
        raise BackendError("no metadata", code=grpc.StatusCode.NOT_FOUND)

    async def server_ready(self) -> tuple[bool, str]:
        return True, ""

    async def model_ready(self, model: str, version: str) -> tuple[bool, str]:
        return True, ""


async def _warm(backend: CoalescingBackend) -> None:
    await backend.infer(_request("warm", ROW))


async def test_packets_arriving_together_go_as_one_request() -> None:
    inner = Doubler()
    backend = CoalescingBackend(inner, max_rows=16)
    await _warm(backend)
    inner.requests.clear()
    arrays = [ROW + i for i in range(7)] + [np.vstack([ROW, -ROW])]  # one packet of 2 rows
    results = await asyncio.gather(
        *(backend.infer(_request(f"c:{i}", a)) for i, a in enumerate(arrays))
    )
    assert [(r.cid, r.shape) for r in inner.requests] == [("c:0+7", (9, 4))]
    for array, outputs in zip(arrays, results, strict=True):
        assert outputs["Y"].shape == array.shape
        np.testing.assert_array_equal(_array(outputs["Y"]), array * 2)


async def test_a_burst_on_a_cold_model_asks_its_config_once_and_is_coalesced() -> None:
    inner = Doubler()
    backend = CoalescingBackend(inner, max_rows=16)
    results = await asyncio.gather(*(backend.infer(_request(f"c:{i}", ROW * i)) for i in range(8)))
    assert inner.config_calls == 1
    assert [r.shape for r in inner.requests] == [(8, 4)]
    for i, outputs in enumerate(results):
        np.testing.assert_array_equal(_array(outputs["Y"]), ROW * i * 2)


@pytest.mark.parametrize(
    ("max_rows", "max_batch_size", "sizes"),
    [(8, 5, [5, 5, 2]), (4, 64, [4, 4, 4]), (64, 12, [12])],
)
async def test_rows_stay_within_max_rows_and_the_models_max_batch_size(
    max_rows: int, max_batch_size: int, sizes: list[int]
) -> None:
    inner = Doubler(max_batch_size=max_batch_size)
    backend = CoalescingBackend(inner, max_rows=max_rows)
    await _warm(backend)
    inner.requests.clear()
    results = await asyncio.gather(*(backend.infer(_request(f"r:{i}", ROW * i)) for i in range(12)))
    assert [r.shape[0] for r in inner.requests] == sizes
    for i, outputs in enumerate(results):
        np.testing.assert_array_equal(_array(outputs["Y"]), ROW * i * 2)


async def test_packets_differing_in_model_input_or_outputs_stay_apart() -> None:
    inner = Doubler()
    backend = CoalescingBackend(inner, max_rows=16)
    await _warm(backend)
    await backend.infer(_request("warm2", ROW, model="other"))
    inner.requests.clear()
    variants: list[dict[str, Any]] = [
        {},
        {"model": "other"},
        {"input_name": "Z"},
        {"outputs": ("Y", "W")},
    ]
    await asyncio.gather(
        *(backend.infer(_request(f"v:{i}", ROW, **variants[i % 4])) for i in range(8))
    )
    groups = sorted((r.model, r.input_name, r.outputs, r.shape[0]) for r in inner.requests)
    assert groups == [
        ("double", "X", ("Y",), 2),
        ("double", "X", ("Y", "W"), 2),
        ("double", "Z", ("Y",), 2),
        ("other", "X", ("Y",), 2),
    ]


@pytest.mark.parametrize(
    ("inner", "request_kwargs"),
    [
        (Doubler(max_batch_size=0), {}),  # the model does not batch
        (Doubler(max_batch_size=1), {}),
        (Doubler(decoupled=True), {}),  # streaming models are never coalesced
        (Doubler(), {"datatype": "BYTES"}),  # rows of no fixed size
    ],
    ids=["max_batch_size-0", "max_batch_size-1", "decoupled", "bytes"],
)
async def test_left_alone(inner: Doubler, request_kwargs: dict[str, Any]) -> None:
    backend = CoalescingBackend(inner, max_rows=16)
    await backend.infer(_request("warm", ROW, **request_kwargs))
    inner.requests.clear()
    await asyncio.gather(
        *(backend.infer(_request(f"a:{i}", ROW, **request_kwargs)) for i in range(4))
    )
    assert sorted(r.cid for r in inner.requests) == [f"a:{i}" for i in range(4)]


async def test_a_packet_of_max_rows_rows_goes_alone() -> None:
    inner = Doubler()
    backend = CoalescingBackend(inner, max_rows=4)
    await _warm(backend)
    inner.requests.clear()
    big = np.vstack([ROW] * 4)
    await asyncio.gather(backend.infer(_request("big", big)), backend.infer(_request("s", ROW)))
    assert sorted((r.cid, r.shape[0]) for r in inner.requests) == [("big", 4), ("s", 1)]


@pytest.mark.parametrize(
    ("failure", "status", "message"),
    [
        (BackendError("runtime down", status=pb.UNAVAILABLE), pb.UNAVAILABLE, "runtime down"),
        (ValueError("a bug"), pb.INTERNAL, "ValueError: a bug"),
    ],
)
async def test_an_error_reaches_every_packet_of_the_request(
    failure: Exception, status: int, message: str
) -> None:
    inner = Doubler()
    backend = CoalescingBackend(inner, max_rows=16)
    await _warm(backend)
    inner.requests.clear()
    inner.fail = failure
    results = await asyncio.gather(
        *(backend.infer(_request(f"e:{i}", ROW)) for i in range(5)), return_exceptions=True
    )
    assert len(inner.requests) == 1
    assert all(isinstance(r, BackendError) for r in results), results
    assert len({id(r) for r in results}) == 5  # each packet its own error
    for error in results:
        assert isinstance(error, BackendError)
        assert (error.status, str(error)) == (status, message)


async def test_an_answer_that_cannot_be_split_fails_every_packet() -> None:
    inner = Doubler()
    backend = CoalescingBackend(inner, max_rows=16)
    await _warm(backend)
    inner.bad_shape = True  # outputs lose the batch dimension
    results = await asyncio.gather(
        *(backend.infer(_request(f"s:{i}", ROW)) for i in range(3)), return_exceptions=True
    )
    for error in results:
        assert isinstance(error, BackendError), results
        assert error.status == pb.INTERNAL
        assert "cannot split 3 coalesced rows" in str(error)


def _check_doubled(done: list[Any], indices: tuple[int, ...]) -> None:
    """Packet ``i`` (input ``ROW * i``) of ``done`` got its own rows, doubled."""
    for i in indices:
        result = done[i]
        assert isinstance(result, Mapping), result
        np.testing.assert_array_equal(_array(result["Y"]), ROW * i * 2)


async def test_a_packet_cancelled_before_sending_drops_out() -> None:
    inner = Doubler()
    backend = CoalescingBackend(inner, max_rows=16)
    await _warm(backend)
    inner.requests.clear()
    tasks = [asyncio.ensure_future(backend.infer(_request(f"k:{i}", ROW * i))) for i in range(4)]
    await asyncio.sleep(0)  # every packet has joined; the request is not sent yet
    tasks[0].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[0], asyncio.CancelledError)
    assert [(r.cid, r.shape[0]) for r in inner.requests] == [("k:1+2", 3)]
    _check_doubled(done, (1, 2, 3))


async def _held_burst(n: int) -> tuple[Doubler, list[asyncio.Task[Mapping[str, OutputTensor]]]]:
    """``n`` packets (inputs ``ROW * i``) whose stacked request is held in the inner backend."""
    inner = Doubler()
    backend = CoalescingBackend(inner, max_rows=16)
    await _warm(backend)
    inner.requests.clear()
    inner.gate = asyncio.Event()
    tasks = [asyncio.ensure_future(backend.infer(_request(f"k:{i}", ROW * i))) for i in range(n)]
    while not inner.requests:  # the stacked request is running in the inner backend
        await asyncio.sleep(0.001)
    return inner, tasks


async def test_a_packet_cancelled_while_its_request_runs_loses_nothing_for_the_others() -> None:
    inner, tasks = await _held_burst(4)
    tasks[2].cancel()
    await asyncio.sleep(0.01)
    assert inner.gate is not None
    inner.gate.set()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert inner.cancelled == 0
    assert isinstance(done[2], asyncio.CancelledError)
    _check_doubled(done, (0, 1, 3))


async def test_cancelling_every_packet_cancels_the_shared_request() -> None:
    inner, tasks = await _held_burst(3)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for _ in range(100):
        if inner.cancelled:
            break
        await asyncio.sleep(0.001)
    assert inner.cancelled == 1


async def test_everything_but_infer_goes_straight_to_the_inner_backend() -> None:
    def tokens(model: str, inputs: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        (x,) = inputs.values()
        for i in range(int(x.reshape(-1)[0])):
            yield {"I": np.array([i], dtype=np.int32)}

    inner = PythonBackend(tokens)
    backend = CoalescingBackend(inner, max_rows=16)
    assert backend.name == "python"
    request = _request("t", np.array([3], dtype=np.int32), datatype="INT32", outputs=("I",))
    assert await backend.decoupled(request)
    assert (await backend.model_config("any", "1")).decoupled

    async def responses(cid: str) -> list[ModelResponse]:
        stream: AsyncGenerator[ModelResponse, None] = backend.stream_infer(
            _request(cid, np.array([3], dtype=np.int32), datatype="INT32", outputs=("I",))
        )
        return [r async for r in stream]

    # Two streams at once: each gets its own responses, nothing stacked.
    first, second = await asyncio.gather(responses("a"), responses("b"))
    for got in (first, second):
        assert [r.final for r in got] == [False, False, False, True]
        assert [np.frombuffer(r.outputs["I"].data, np.int32)[0] for r in got[:3]] == [0, 1, 2]
    assert await backend.server_ready() == (True, "")
    assert await backend.model_ready("any", "1") == (True, "")


async def test_over_the_embedded_python_backend() -> None:
    calls: list[tuple[int, ...]] = []

    def double(model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        (x,) = inputs.values()
        calls.append(x.shape)
        return {"Y": x * 2}

    meta = pb.ModelMetadataResponse(
        model="double", versions=["1"], max_batch_size=32, outputs=[pb.TensorMetadata(name="Y")]
    )
    backend = CoalescingBackend(PythonBackend(double, metadata={"double": meta}), max_rows=16)
    await _warm(backend)
    calls.clear()
    # "NOPE" is not among the model's outputs: dropped from the stacked request, so
    # these packets still share it; their Acks mark it missing.
    asked = [("Y",), ("Y", "NOPE")]
    results = await asyncio.gather(
        *(backend.infer(_request(f"p:{i}", ROW * i, outputs=asked[i % 2])) for i in range(6))
    )
    assert calls == [(6, 4)]
    for i, outputs in enumerate(results):
        assert set(outputs) == {"Y"}
        np.testing.assert_array_equal(_array(outputs["Y"]), ROW * i * 2)


async def test_the_default_model_config_reads_model_metadata() -> None:
    meta = pb.ModelMetadataResponse(
        model="m", max_batch_size=8, decoupled=True, outputs=[pb.TensorMetadata(name="A")]
    )
    backend = PythonBackend(lambda model, inputs: {}, metadata={"m": meta})
    assert await backend.model_config("m", "1") == ModelConfig(8, True, frozenset({"A"}))
    assert await backend.model_config("unknown", "1") == ModelConfig()


async def test_wrappers_forward_model_config() -> None:
    inner = Doubler(max_batch_size=7)
    assert (await ObservedBackend(inner, None).model_config("double", "1")).max_batch_size == 7
    assert (await BackendWrapper(inner).model_config("double", "1")).max_batch_size == 7


class Unsure(Doubler):
    """Its model_config fails ``failures`` times (BackendError), or hangs ``hang`` seconds."""

    def __init__(self, *, failures: int = 0, hang: float = 0.0) -> None:
        super().__init__()
        self.failures = failures
        self.hang = hang

    async def model_config(self, model: str, version: str) -> ModelConfig:
        self.config_calls += 1
        await asyncio.sleep(self.hang)
        if self.failures:
            self.failures -= 1
            raise BackendError("runtime unreachable", status=pb.UNAVAILABLE)
        return ModelConfig(max_batch_size=64)


async def test_a_failed_config_lookup_sends_packets_as_they_are_then_asks_again() -> None:
    inner = Unsure(failures=1)
    backend = CoalescingBackend(inner, max_rows=16, retry_after=0.2)
    burst = [_request(f"u:{i}", ROW * i) for i in range(4)]
    first = await asyncio.gather(*(backend.infer(r) for r in burst))
    second = await asyncio.gather(*(backend.infer(r) for r in burst))  # within retry_after
    assert inner.config_calls == 1  # one lookup for the burst, none per packet after it
    assert [r.shape[0] for r in inner.requests] == [1] * 8  # nothing lost, nothing stacked
    for results in (first, second):
        for i, outputs in enumerate(results):
            np.testing.assert_array_equal(_array(outputs["Y"]), ROW * i * 2)
    await asyncio.sleep(0.3)
    inner.requests.clear()
    await asyncio.gather(*(backend.infer(r) for r in burst))
    assert inner.config_calls == 2
    assert [r.shape[0] for r in inner.requests] == [4]


async def test_a_packet_waits_for_a_hanging_config_lookup_no_longer_than_its_timeout() -> None:
    inner = Unsure(hang=30.0)
    backend = CoalescingBackend(inner, max_rows=16)
    outputs = await asyncio.wait_for(backend.infer(_request("h", ROW, timeout=0.2)), 10)
    np.testing.assert_array_equal(_array(outputs["Y"]), ROW * 2)
    assert [r.cid for r in inner.requests] == ["h"]


def test_max_rows_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="max_rows must be at least 2"):
        CoalescingBackend(Doubler(), max_rows=1)


def test_load_backend_wraps_what_it_builds_when_asked() -> None:
    plain = load_backend("demo", triton_url=None, max_message_bytes=1 << 20)
    assert isinstance(plain, PythonBackend)
    wrapped = load_backend("demo", triton_url=None, max_message_bytes=1 << 20, coalesce=8)
    assert isinstance(wrapped, CoalescingBackend)
    assert isinstance(wrapped.inner, PythonBackend)
    assert wrapped.max_rows == 8
    assert wrapped.name == "demo"
    own = load_backend(
        "python:test_coalesce:Doubler", triton_url=None, max_message_bytes=1 << 20, coalesce=4
    )
    assert isinstance(own, CoalescingBackend)
    assert type(own.inner).__name__ == "Doubler"
    with pytest.raises(ValueError, match="coalesce must be 0"):
        load_backend("demo", triton_url=None, max_message_bytes=1 << 20, coalesce=-1)


def _innermost_chain(backend: Backend) -> list[str]:
    chain = [type(backend).__name__]
    while isinstance(backend, (BackendWrapper, ObservedBackend)):
        backend = backend.inner
        chain.append(type(backend).__name__)
    return chain


async def test_start_proxy_wraps_a_given_backend_with_config_coalesce() -> None:
    inner = Doubler()
    frames = {f"g:{i}": ROW * i for i in range(40)}
    async with (
        running_proxy(backend_object=inner, coalesce=16, max_in_flight=32) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        assert "CoalescingBackend" in _innermost_chain(server.proxy.backend)
        stub = pbg.MultimodalServiceStub(channel)
        packets = (
            packet(cid, frame, model="double", input_name="X", outputs=("Y",))
            for cid, frame in frames.items()
        )
        acks = [a async for a in stub.Chat(packets)]
    assert sorted(a.correlation_id for a in acks) == sorted(frames)
    for ack in acks:
        body = ack_json(ack)
        assert ack.status == pb.OK, body
        assert body["backend"] == "doubler"
        np.testing.assert_array_equal(
            decode_output(body["outputs"]["Y"]), frames[ack.correlation_id] * 2
        )
    # Every row reached the backend once, whether alone or stacked with others.
    assert sum(r.shape[0] for r in inner.requests) == len(frames)


def test_coalesce_on_the_command_line_over_the_demo_backend() -> None:
    proxy = ProxyProcess(["--backend", "demo", "--coalesce", "16"])
    try:
        channel = grpc.insecure_channel(proxy.target)
        with channel:
            stub = pbg.MultimodalServiceStub(channel)
            arrays = {f"d:{i}": ROW + i for i in range(40)}
            images = {f"i:{i}": np.full((1, 2, 2, 3), i, dtype=np.uint8) for i in range(10)}
            packets = [packet(cid, a) for cid, a in arrays.items()] + [
                packet(cid, a, model="invert_u8", input_name="IMAGE", outputs=("IMAGE_OUT",))
                for cid, a in images.items()
            ]
            acks = list(stub.Chat(iter(packets), timeout=30))
    finally:
        proxy.stop()
    assert sorted(a.correlation_id for a in acks) == sorted([*arrays, *images])
    for ack in acks:
        body = ack_json(ack)
        assert ack.status == pb.OK, body
        if ack.correlation_id in arrays:
            sums = arrays[ack.correlation_id] + 1
            np.testing.assert_array_equal(decode_output(body["outputs"]["OUTPUT"]), sums)
        else:
            inverted = 255 - images[ack.correlation_id]
            np.testing.assert_array_equal(decode_output(body["outputs"]["IMAGE_OUT"]), inverted)


async def test_a_streaming_model_that_batches_is_still_never_coalesced() -> None:
    """A decoupled model whose metadata also says max_batch_size 64, through the proxy."""

    def count(model: str, inputs: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        (x,) = inputs.values()
        assert x.shape == (1,), x.shape  # one packet's input, never several stacked
        for i in range(int(x[0])):
            yield {"I": np.array([i], dtype=np.int32)}

    meta = pb.ModelMetadataResponse(model="count", max_batch_size=64, decoupled=True)
    backend = PythonBackend(count, metadata={"count": meta})
    counts = [3, 0, 2, 5, 1]
    async with (
        running_proxy(backend_object=backend, coalesce=16) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pbg.MultimodalServiceStub(channel)
        packets = [
            _int32_packet(f"n:{i}", n, model="count", outputs=("I",)) for i, n in enumerate(counts)
        ]
        acks = [a async for a in stub.Chat(iter(packets))]
    for i, n in enumerate(counts):
        mine = [a for a in acks if a.correlation_id == f"n:{i}"]
        assert [a.status for a in mine] == [pb.OK] * (n + 1)
        assert [a.final for a in mine] == [False] * n + [True]


def _int32_packet(cid: str, value: int, *, model: str, outputs: tuple[str, ...]) -> pb.DataPacket:
    array = np.array([value], dtype=np.int32)
    spec = pb.InputSpec(name="N", shape=pb.Shape(dims=[1]), dtype=pb.DT_INT32)
    setattr(spec, "from", pb.SRC_TENSOR)
    control = pb.Control(
        model=model,
        model_version="1",
        timeout_secs=10.0,
        inputs=[spec],
        outputs=[pb.OutputSpec(name=o) for o in outputs],
    )
    tensor = pb.Tensor(dtype=pb.DT_INT32, shape=pb.Shape(dims=[1]), data=array.tobytes())
    return pb.DataPacket(
        meta=pb.Meta(correlation_id=cid), control=control, tensor=tensor, event=pb.SEV_DATA
    )


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.integers(0, 5), min_size=1, max_size=8),
    trailing=st.lists(st.integers(0, 3), max_size=3),
    dtype=st.sampled_from(["float32", "uint8", "int64", "float16"]),
)
def test_split_rows_undoes_stack_rows(rows: list[int], trailing: list[int], dtype: str) -> None:
    """Property: splitting the stacked request's own tensor gives each packet its bytes."""
    shapes = [(n, *trailing) for n in rows]
    arrays = [np.arange(int(np.prod(s)), dtype=dtype).reshape(s) + i for i, s in enumerate(shapes)]
    requests = [_request(f"h:{i}", a, datatype=dtype.upper()) for i, a in enumerate(arrays)]
    stacked = stack_rows(requests, ("Y",))
    assert stacked.shape == (sum(rows), *trailing)
    assert stacked.data == b"".join(a.tobytes() for a in arrays)
    assert stacked.cid == f"h:0+{len(rows) - 1}"
    if sum(rows) == 0:
        return  # nothing to split back: a coalescer never stacks empty packets
    echoed = {"Y": OutputTensor("Y", stacked.datatype, stacked.shape, stacked.data)}
    for array, split in zip(arrays, split_rows(echoed, rows), strict=True):
        assert split["Y"].shape == array.shape
        assert split["Y"].data == array.tobytes()


@given(
    total=st.integers(1, 6),
    first=st.integers(0, 8),
    row_bytes=st.integers(0, 4),
    spare=st.integers(0, 5),
)
def test_split_rows_refuses_what_does_not_split(
    total: int, first: int, row_bytes: int, spare: int
) -> None:
    """Property: an output splits iff it has ``total`` rows first and its bytes divide."""
    out = OutputTensor("Y", "UINT8", (first, row_bytes), bytes(total * row_bytes + spare))
    rows = [1] * total
    if first == total and spare % total == 0:
        split = split_rows({"Y": out}, rows)
        assert [s["Y"].shape for s in split] == [(1, row_bytes)] * total
        assert b"".join(s["Y"].data for s in split) == out.data
        return
    with pytest.raises(BackendError, match="cannot split"):
        split_rows({"Y": out}, rows)


async def _one_turn_each(backend: CoalescingBackend, requests: list[InferRequest]) -> list[Any]:
    """Start each request in its own event-loop turn (as the proxy starts a Chat call's)."""
    tasks = []
    for request in requests:
        tasks.append(asyncio.ensure_future(backend.infer(request)))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    return tasks


async def test_packets_one_turn_apart_coalesce_only_with_max_in_flight() -> None:
    for max_in_flight, expected in ((0, [1, 1, 1, 1]), (1, [1, 3])):
        inner = Doubler()
        backend = CoalescingBackend(inner, max_rows=16, max_in_flight=max_in_flight)
        await _warm(backend)
        inner.requests.clear()
        inner.gate = asyncio.Event()
        tasks = await _one_turn_each(backend, [_request(f"t:{i}", ROW * i) for i in range(4)])
        await asyncio.sleep(0.01)
        # The first is in the inner backend; with max_in_flight=1 the rest wait for it.
        assert len(inner.requests) == (4 if max_in_flight == 0 else 1)
        inner.gate.set()
        done = await asyncio.gather(*tasks)
        assert [r.shape[0] for r in inner.requests] == expected
        _check_doubled(list(done), (0, 1, 2, 3))


async def test_held_packets_that_fill_max_rows_go_at_once() -> None:
    inner = Doubler()
    backend = CoalescingBackend(inner, max_rows=4, max_in_flight=1)
    await _warm(backend)
    inner.requests.clear()
    inner.gate = asyncio.Event()
    tasks = await _one_turn_each(backend, [_request(f"f:{i}", ROW * i) for i in range(6)])
    await asyncio.sleep(0.01)
    # f:0 runs (held at the gate); f:1..f:4 filled a request, which went; f:5 waits.
    assert [(r.cid, r.shape[0]) for r in inner.requests] == [("f:0", 1), ("f:1+3", 4)]
    inner.gate.set()
    done = await asyncio.gather(*tasks)
    assert [(r.cid, r.shape[0]) for r in inner.requests][2:] == [("f:5", 1)]
    _check_doubled(list(done), tuple(range(6)))


async def test_a_held_packet_waits_within_its_deadline() -> None:
    inner = Doubler()
    backend = CoalescingBackend(inner, max_rows=16, max_in_flight=1)
    await _warm(backend)
    inner.requests.clear()
    inner.gate = asyncio.Event()
    tasks = await _one_turn_each(
        backend,
        [
            _request("d:0", ROW),
            _request("d:short", ROW, timeout=0.05),
            _request("d:long", ROW, timeout=30.0),
        ],
    )
    await asyncio.sleep(0.2)  # past d:short's deadline, while d:0 holds the group
    inner.gate.set()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[1], BackendError)
    assert "timed out after 0.05s waiting to be coalesced" in str(done[1])
    assert isinstance(done[2], Mapping)
    sent = {r.cid: r for r in inner.requests}
    assert set(sent) == {"d:0", "d:long"}
    assert 0 < sent["d:long"].timeout < 30.0 - 0.2  # the wait counted against it


async def test_a_held_packet_cancelled_drops_out() -> None:
    inner = Doubler()
    backend = CoalescingBackend(inner, max_rows=16, max_in_flight=1)
    await _warm(backend)
    inner.requests.clear()
    inner.gate = asyncio.Event()
    tasks = await _one_turn_each(backend, [_request(f"c:{i}", ROW * i) for i in range(4)])
    tasks[2].cancel()
    inner.gate.set()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[2], asyncio.CancelledError)
    assert [(r.cid, r.shape[0]) for r in inner.requests] == [("c:0", 1), ("c:1+1", 2)]
    _check_doubled(done, (0, 1, 3))


async def test_one_chat_call_coalesces_through_the_proxy_with_coalesce_in_flight() -> None:
    inner = Doubler()
    frames = {f"p:{i}": ROW * i for i in range(20)}

    def packets(frames: dict[str, np.ndarray]) -> Iterator[pb.DataPacket]:
        for cid, frame in frames.items():
            yield packet(cid, frame, model="double", input_name="X", outputs=("Y",))

    async with (
        running_proxy(
            backend_object=inner, coalesce=16, coalesce_in_flight=1, max_in_flight=8
        ) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pbg.MultimodalServiceStub(channel)
        await _all(stub.Chat(packets({"warm": ROW})))  # the coalescer learns the model
        inner.requests.clear()
        gate = inner.gate = asyncio.Event()
        acks_task = asyncio.ensure_future(_all(stub.Chat(packets(frames))))
        # The first packet holds the group in the backend; the proxy reads up to its
        # --max-in-flight (8), and the others wait in the coalescer.
        while server.proxy.stats.packets < 1 + 8 or not inner.requests:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        gate.set()
        acks = await acks_task
    assert sorted(a.correlation_id for a in acks) == sorted(frames)
    for ack in acks:
        body = ack_json(ack)
        assert ack.status == pb.OK, body
        np.testing.assert_array_equal(
            decode_output(body["outputs"]["Y"]), frames[ack.correlation_id] * 2
        )
    rows = [r.shape[0] for r in inner.requests]
    # The first request (with whatever came in its turn) held the group; every other
    # packet read by then (8 in flight in all) went as the second request.
    assert rows[0] + rows[1] == 8
    assert sum(rows) == len(frames)
    assert len(rows) < len(frames)


async def _all(call: Any) -> list[pb.Ack]:
    return [a async for a in call]


def test_coalesce_in_flight_on_the_command_line() -> None:
    proxy = ProxyProcess(["--backend", "demo", "--coalesce", "16", "--coalesce-in-flight", "2"])
    try:
        with grpc.insecure_channel(proxy.target) as channel:
            stub = pbg.MultimodalServiceStub(channel)
            arrays = {f"d:{i}": ROW + i for i in range(100)}
            acks = list(stub.Chat(iter([packet(c, a) for c, a in arrays.items()]), timeout=30))
    finally:
        proxy.stop()
    assert sorted(a.correlation_id for a in acks) == sorted(arrays)
    for ack in acks:
        body = ack_json(ack)
        assert ack.status == pb.OK, body
        sums = arrays[ack.correlation_id] + 1
        np.testing.assert_array_equal(decode_output(body["outputs"]["OUTPUT"]), sums)
