"""What Triton does with decoupled (streaming) models, pinned on this machine.

Plain ``tritonclient.grpc`` ``stream_infer`` straight to a real Triton, no proxy: these
are the facts the proxy's streaming path is built on (DESIGN.md "Facts measured"),
and they keep the fixtures in ``streaming_helpers.py`` honest. Servers:

- PyTriton (``streaming_models.py``): decoupled generator models;
- PyTriton's ``tritonserver`` with the python backend (``model_repository/``):
  ``cancel_watch``, which checks ``request.is_cancelled()``.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from streaming_helpers import StreamingServer, python_backend_triton, streaming_triton
from triton_helpers import triton_python

pytestmark = pytest.mark.triton

triton_grpc = pytest.importorskip("tritonclient.grpc")


@pytest.fixture(scope="module")
def streaming(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamingServer]:
    if not triton_python().exists():
        pytest.skip(f"no PyTriton interpreter at {triton_python()}; run `make triton-venv`")
    with streaming_triton(tmp_path_factory.mktemp("streaming-triton")) as server:
        yield server


@pytest.fixture(scope="module")
def python_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamingServer]:
    if not triton_python().exists():
        pytest.skip(f"no PyTriton interpreter at {triton_python()}; run `make triton-venv`")
    with python_backend_triton(tmp_path_factory.mktemp("python-backend-triton")) as server:
        yield server


@dataclass(frozen=True)
class Response:
    """One ``stream_infer`` callback: a response or an error, as the client saw it."""

    id: str
    final: bool
    outputs: dict[str, np.ndarray]
    error: str | None


class Stream:
    """One ``start_stream`` call on a fresh client; callbacks land in a queue."""

    def __init__(self, url: str) -> None:
        self.client = triton_grpc.InferenceServerClient(url)
        self._queue: queue.Queue[Response] = queue.Queue()
        self.client.start_stream(callback=self._on_response)

    def _on_response(self, result: Any, error: Any) -> None:
        if error is not None:
            # An error carries no response id in tritonclient's callback.
            self._queue.put(Response(id="", final=True, outputs={}, error=str(error)))
            return
        response = result.get_response()
        final = response.parameters["triton_final_response"].bool_param
        outputs = {o.name: result.as_numpy(o.name) for o in response.outputs}
        self._queue.put(Response(id=response.id, final=final, outputs=outputs, error=None))

    def send(self, model: str, count: int, request_id: str, *, empty_final: bool = True) -> None:
        tensor = triton_grpc.InferInput("COUNT", [1], "INT32")
        tensor.set_data_from_numpy(np.array([count], dtype=np.int32))
        self.client.async_stream_infer(
            model, [tensor], request_id=request_id, enable_empty_final_response=empty_final
        )

    def send_prompt(self, model: str, text: str, request_id: str) -> None:
        data = np.frombuffer(text.encode(), dtype=np.uint8)
        tensor = triton_grpc.InferInput("PROMPT", [len(data)], "UINT8")
        tensor.set_data_from_numpy(data)
        self.client.async_stream_infer(
            model, [tensor], request_id=request_id, enable_empty_final_response=True
        )

    def next(self, timeout: float = 30.0) -> Response:
        return self._queue.get(timeout=timeout)

    def until_final(self, finals: int = 1, timeout: float = 30.0) -> list[Response]:
        """Every response until ``finals`` final ones arrived."""
        out: list[Response] = []
        while finals:
            response = self.next(timeout)
            out.append(response)
            finals -= response.final
        return out

    def pending(self) -> int:
        return self._queue.qsize()

    def close(self, *, cancel: bool = False) -> None:
        self.client.stop_stream(cancel_requests=cancel)
        self.client.close()


@pytest.fixture
def stream_to() -> Iterator[Any]:
    opened: list[Stream] = []

    def open_stream(server: StreamingServer) -> Stream:
        stream = Stream(server.url)
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        with contextlib.suppress(Exception):
            stream.close()


def _index(response: Response) -> int:
    return int(response.outputs["INDEX"].reshape(-1)[0])


def _token(response: Response) -> bytes:
    return response.outputs["TOKEN"].astype(np.uint8).tobytes()


def test_generator_tokens_then_a_separate_empty_final(
    streaming: StreamingServer, stream_to: Any
) -> None:
    stream = stream_to(streaming)
    stream.send("stream_count", 4, "r1")
    responses = stream.until_final()
    assert [r.final for r in responses] == [False, False, False, False, True]
    assert [_index(r) for r in responses[:-1]] == [0, 1, 2, 3]
    assert [_token(r) for r in responses[:-1]] == [b"tok0 ", b"tok1 ", b"tok2 ", b"tok3 "]
    assert responses[-1].outputs == {}
    assert responses[-1].error is None
    assert {r.id for r in responses} == {"r1"}


def test_prompt_tokens(streaming: StreamingServer, stream_to: Any) -> None:
    stream = stream_to(streaming)
    stream.send_prompt("stream_tokens", "the quick  brown fox", "p")
    responses = stream.until_final()
    assert [_token(r) for r in responses if not r.final] == [b"the", b"quick", b"brown", b"fox"]
    assert responses[-1].final
    assert responses[-1].outputs == {}


def test_without_empty_final_nothing_marks_the_end(
    streaming: StreamingServer, stream_to: Any
) -> None:
    """Without enable_empty_final_response a client cannot tell a request has ended."""
    stream = stream_to(streaming)
    stream.send("stream_count", 3, "plain", empty_final=False)
    responses = [stream.next() for _ in range(3)]
    assert [r.final for r in responses] == [False, False, False]
    # A later request's response still comes, but no end marker for "plain" ever does.
    stream.send("stream_count", 1, "probe")
    probe = stream.until_final()
    assert [r.id for r in probe] == ["probe", "probe"]
    assert stream.pending() == 0


def test_zero_responses_give_only_the_empty_final(
    streaming: StreamingServer, stream_to: Any
) -> None:
    stream = stream_to(streaming)
    stream.send("stream_none", 5, "none")
    stream.send("stream_count", 0, "zero")
    responses = stream.until_final(finals=2)
    assert sorted((r.id, r.final, tuple(r.outputs)) for r in responses) == [
        ("none", True, ()),
        ("zero", True, ()),
    ]


def test_a_model_error_is_itself_the_final_response(
    streaming: StreamingServer, stream_to: Any
) -> None:
    stream = stream_to(streaming)
    stream.send("stream_fail", 2, "fails")
    responses = stream.until_final()
    assert [r.error is None for r in responses] == [True, True, False]
    assert [_index(r) for r in responses[:2]] == [0, 1]
    assert responses[-1].error is not None
    assert "stream_fail after 2 responses" in responses[-1].error
    # No empty final follows the error: the next thing on the stream is the next request.
    stream.send("stream_count", 1, "after")
    after = stream.until_final()
    assert [r.id for r in after] == ["after", "after"]
    assert after[0].outputs
    assert after[1].final


def test_requests_on_one_stream_interleave_in_order_told_apart_by_id(
    streaming: StreamingServer, stream_to: Any
) -> None:
    stream = stream_to(streaming)
    # stream_slow has two instances, so both requests run at once.
    stream.send("stream_slow", 20, "a")
    stream.send("stream_slow", 20, "b")
    responses = stream.until_final(finals=2)
    assert [r.error for r in responses if r.error] == []
    by_id: dict[str, list[Response]] = {"a": [], "b": []}
    for response in responses:
        by_id[response.id].append(response)
    for rid in ("a", "b"):
        assert [_index(r) for r in by_id[rid][:-1]] == list(range(20))
        assert by_id[rid][-1].final
        assert not any(r.final for r in by_id[rid][:-1])
    order = [r.id for r in responses if not r.final]
    switches = sum(1 for x, y in itertools.pairwise(order) if x != y)
    assert switches > 1, f"no interleaving: {order}"


def test_a_non_decoupled_model_answers_once_marked_final(
    streaming: StreamingServer, stream_to: Any
) -> None:
    stream = stream_to(streaming)
    stream.send("count_unary", 7, "u")
    responses = stream.until_final()
    assert len(responses) == 1
    assert responses[0].final
    assert _index(responses[0]) == 6


def test_unary_infer_on_a_decoupled_model_is_unimplemented(streaming: StreamingServer) -> None:
    client = triton_grpc.InferenceServerClient(streaming.url)
    tensor = triton_grpc.InferInput("COUNT", [1], "INT32")
    tensor.set_data_from_numpy(np.array([2], dtype=np.int32))
    try:
        with pytest.raises(triton_grpc.InferenceServerException) as info:
            client.infer("stream_count", [tensor])
    finally:
        client.close()
    assert "doesn't support models with decoupled transaction policy" in str(info.value)
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"


def _wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def _settled(count: Any) -> int:
    """``count()`` once it stopped changing (an earlier test's generator may still run)."""
    last = count()
    for _ in range(200):
        time.sleep(0.2)
        now = count()
        if now == last:
            return int(now)
        last = now
    raise TimeoutError("stream_slow never settled")


def test_cancel_does_not_reach_a_pytriton_generator(
    streaming: StreamingServer, stream_to: Any
) -> None:
    """stop_stream(cancel_requests=True): the PyTriton generator runs to its end."""
    total = 150  # 10 ms each: 1.5 s
    before = _settled(streaming.slow_responses)
    stream = stream_to(streaming)
    stream.send("stream_slow", total, "cancel-me")
    seen = [stream.next() for _ in range(5)]
    assert [_index(r) for r in seen] == [0, 1, 2, 3, 4]
    stream.close(cancel=True)
    produced_at_cancel = streaming.slow_responses() - before
    assert produced_at_cancel < total
    # It goes on producing responses nobody receives, to the very last one.
    assert _wait_for(lambda: streaming.slow_responses() - before >= total, 30.0), (
        streaming.slow_responses() - before
    )
    assert streaming.slow_responses() - before == total


def test_cancel_reaches_a_python_backend_model(
    python_backend: StreamingServer, stream_to: Any
) -> None:
    """stop_stream(cancel_requests=True): cancel_watch sees is_cancelled() and stops."""
    stream = stream_to(python_backend)
    stream.send("cancel_watch", 1000, "watch-cancel")  # 10 ms each: 10 s if not told
    seen = [stream.next() for _ in range(5)]
    assert [_index(r) for r in seen] == [0, 1, 2, 3, 4]
    started = time.monotonic()
    stream.close(cancel=True)
    record = python_backend.wait_record("watch-cancel", timeout=10.0)
    assert record["cancelled"] is True
    assert 5 <= record["sent"] < 100, record
    assert time.monotonic() - started < 5.0


def test_python_backend_model_without_cancel_runs_to_the_end(
    python_backend: StreamingServer, stream_to: Any
) -> None:
    stream = stream_to(python_backend)
    stream.send("cancel_watch", 6, "watch-full")
    responses = stream.until_final()
    assert [_index(r) for r in responses[:-1]] == list(range(6))
    assert responses[-1].final
    assert responses[-1].outputs == {}
    record = python_backend.wait_record("watch-full")
    assert record == {"request_id": "watch-full", "count": 6, "sent": 6, "cancelled": False}


def _raw_stream(url: str, parameter: str, count: int, wait_s: float) -> list[Any]:
    """ModelStreamInfer over plain grpc: one stream_count request with ``parameter`` set
    true; every response that arrives within ``wait_s`` seconds."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    request = service_pb2.ModelInferRequest(model_name="stream_count", id="raw")
    request.inputs.add(name="COUNT", datatype="INT32", shape=[1])  # data: raw contents
    request.raw_input_contents.append(np.array([count], dtype=np.int32).tobytes())
    request.parameters[parameter].bool_param = True
    got: list[Any] = []
    with grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        call = stub.ModelStreamInfer(iter([request]), timeout=wait_s)
        with contextlib.suppress(grpc.RpcError):  # DEADLINE_EXCEEDED ends the wait
            for response in call:
                got.append(response)
                params = response.infer_response.parameters
                if params["triton_final_response"].bool_param:
                    call.cancel()
                    break
    return got


def test_the_empty_final_parameter_is_named_triton_enable_empty_final_response(
    streaming: StreamingServer,
) -> None:
    """On the wire the request parameter is ``triton_enable_empty_final_response``
    (tritonclient sets it for ``enable_empty_final_response=True``); a request carrying
    ``enable_empty_final_response`` gets its responses but never an end marker."""
    right = _raw_stream(streaming.url, "triton_enable_empty_final_response", 2, 10.0)
    finals = [r.infer_response.parameters["triton_final_response"].bool_param for r in right]
    assert finals == [False, False, True]
    assert [len(r.infer_response.outputs) for r in right] == [2, 2, 0]

    wrong = _raw_stream(streaming.url, "enable_empty_final_response", 2, 3.0)
    finals = [r.infer_response.parameters["triton_final_response"].bool_param for r in wrong]
    assert finals == [False, False]
