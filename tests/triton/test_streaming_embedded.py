"""Streaming (decoupled) models through the proxy with embedded backends (no Triton).

Real proxy, real gRPC on loopback; generator and async-generator models. The same
behaviour against a real PyTriton Triton is in ``test_streaming_triton.py``. Every
client test runs over both clients through the ``kind`` fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest
from triton_helpers import ProxyProcess, running_proxy

from transports.triton import (
    AsyncTritonBytesStreamer,
    ResponseResult,
    TritonBytesStreamer,
    TritonClientError,
)
from transports.triton.protocol import multimodal_pb2 as pb
from transports.triton.protocol import multimodal_pb2_grpc as pbg
from transports.triton.server.backends import PythonBackend

pytestmark = pytest.mark.timeout(60)


def count_packet(cid: str, n: int, *, model: str = "stream_count") -> pb.DataPacket:
    spec = pb.InputSpec(name="COUNT", shape=pb.Shape(dims=[1]), dtype=pb.DT_INT32)
    setattr(spec, "from", pb.SRC_TENSOR)  # `from` is a Python keyword
    return pb.DataPacket(
        meta=pb.Meta(correlation_id=cid),
        control=pb.Control(
            model=model,
            model_version="1",
            timeout_secs=20.0,
            inputs=[spec],
            outputs=[pb.OutputSpec(name="INDEX"), pb.OutputSpec(name="TOKEN")],
            binary_outputs=True,
        ),
        tensor=pb.Tensor(dtype=pb.DT_INT32, shape=pb.Shape(dims=[1]), data=np.int32(n).tobytes()),
        event=pb.SEV_DATA,
    )


def count_frame(n: int) -> bytes:
    return np.array([n], np.int32).tobytes()


def token(i: int) -> dict[str, np.ndarray]:
    return {
        "INDEX": np.array([i], np.int32),
        "TOKEN": np.frombuffer(f"tok{i} ".encode(), np.uint8).copy(),
    }


def _count(inputs: Mapping[str, np.ndarray]) -> int:
    (array,) = inputs.values()
    return int(array.reshape(-1)[0])


def streamer(kind: str, addr: str, **kwargs: Any) -> Any:
    cls = TritonBytesStreamer if kind == "sync" else AsyncTritonBytesStreamer
    return cls(
        addr,
        input_name="COUNT",
        shape=(1,),
        dtype_enum=pb.DT_INT32,
        outputs=("INDEX", "TOKEN"),
        request_timeout_sec=20.0,
        **kwargs,
    )


def collect(
    kind: str,
    addr: str,
    model: str,
    frames: list[bytes],
    *,
    limit: int | None = None,
    **kwargs: Any,
) -> list[ResponseResult]:
    """``stream_responses`` through the sync or the async client (``limit``: break early)."""
    if kind == "sync":
        out: list[ResponseResult] = []
        with streamer(kind, addr, **kwargs) as client:
            for result in client.stream_responses(model, "1", iter(frames)):
                out.append(result)
                if limit is not None and len(out) >= limit:
                    break
        return out

    async def run() -> list[ResponseResult]:
        got: list[ResponseResult] = []

        async def aframes() -> AsyncIterator[bytes]:
            for frame in frames:
                yield frame

        async with streamer(kind, addr, **kwargs) as client:
            async for result in client.stream_responses(model, "1", aframes()):
                got.append(result)
                if limit is not None and len(got) >= limit:
                    break
        return got

    return asyncio.run(run())


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def demo_proxy() -> Iterator[ProxyProcess]:
    proxy = ProxyProcess(["--backend", "demo", "--max-in-flight", "8"])
    yield proxy
    proxy.stop()


def check_frames(results: list[ResponseResult], counts: list[int]) -> None:
    """Exactly one final per frame, its last; indices from 0 in order; tokens right."""
    by_seq: dict[int, list[ResponseResult]] = {}
    for r in results:
        by_seq.setdefault(r.seq, []).append(r)
    assert sorted(by_seq) == list(range(len(counts)))
    for seq, n in enumerate(counts):
        got = by_seq[seq]
        assert [r.index for r in got] == list(range(len(got)))
        assert [r.final for r in got] == [False] * (len(got) - 1) + [True]
        assert {r.status for r in got} == {"OK"}
        with_outputs = [r for r in got if r.outputs]
        assert len(with_outputs) == n
        for i, r in enumerate(with_outputs):
            assert r.outputs is not None
            assert r.outputs["INDEX"].tolist() == [i]
            assert r.outputs["TOKEN"].tobytes() == f"tok{i} ".encode()
        assert got[-1].ack["final"] is True


# The proxy's Acks -------------------------------------------------------------------


@pytest.mark.anyio
async def test_chat_acks_every_response_in_order_with_one_final(anyio_backend: str) -> None:
    async with (
        running_proxy(backend="demo") as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pbg.MultimodalServiceStub(channel)
        packets = [count_packet("a", 3), count_packet("b", 0), count_packet("c", 5)]
        acks = [a async for a in stub.Chat(iter(packets))]
    by_cid: dict[str, list[pb.Ack]] = {}
    for ack in acks:
        by_cid.setdefault(ack.correlation_id, []).append(ack)
    for cid, n in (("a", 3), ("b", 0), ("c", 5)):
        got = by_cid[cid]
        # n responses, then Triton-style empty final response
        assert [a.index for a in got] == list(range(n + 1))
        assert [a.final for a in got] == [False] * n + [True]
        assert {a.status for a in got} == {pb.OK}
        assert [int(np.frombuffer(a.outputs[0].data, np.int32)[0]) for a in got[:n]] == list(
            range(n)
        )
        assert len(got[-1].outputs) == 0
        assert json.loads(got[-1].message)["outputs"] == {}
    assert server.proxy.stats.ok == 3  # packets, not responses


@pytest.mark.anyio
async def test_error_mid_stream_is_an_error_ack_then_final_and_others_go_on(
    anyio_backend: str,
) -> None:
    async def model(name: str, inputs: Mapping[str, np.ndarray]) -> AsyncIterator[dict[str, Any]]:
        n = _count(inputs)
        for i in range(n):
            yield token(i)
        if name == "fails":
            raise RuntimeError(f"failed after {n}")

    async with (
        running_proxy(backend_object=PythonBackend(model)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pbg.MultimodalServiceStub(channel)
        packets = [count_packet("bad", 2, model="fails"), count_packet("good", 3, model="ok")]
        acks = [a async for a in stub.Chat(iter(packets))]
    bad = [a for a in acks if a.correlation_id == "bad"]
    good = [a for a in acks if a.correlation_id == "good"]
    assert [(a.index, a.final, a.status) for a in bad] == [
        (0, False, pb.OK),
        (1, False, pb.OK),
        (2, False, pb.INTERNAL),
        (3, True, pb.INTERNAL),
    ]
    assert "failed after 2" in json.loads(bad[2].message)["error"]
    assert [(a.index, a.final, a.status) for a in good] == [
        (0, False, pb.OK),
        (1, False, pb.OK),
        (2, False, pb.OK),
        (3, True, pb.OK),
    ]


@pytest.mark.anyio
async def test_send_unary_refuses_a_streaming_model(anyio_backend: str) -> None:
    async with (
        running_proxy(backend="demo") as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pbg.MultimodalServiceStub(channel)
        ack = await stub.SendUnary(count_packet("u", 3))
    assert ack.status == pb.UNSUPPORTED
    assert ack.final
    assert "Chat" in json.loads(ack.message)["error"]


class _Tracker:
    """An async-generator model that counts what it produced and sees its close."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.produced = 0
        self.closed = threading.Event()

    async def __call__(
        self, name: str, inputs: Mapping[str, np.ndarray]
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            for i in range(_count(inputs)):
                if self.delay:
                    await asyncio.sleep(self.delay)
                self.produced += 1
                yield token(i)
        finally:
            self.closed.set()


@pytest.mark.anyio
async def test_client_cancel_closes_the_model_at_once(anyio_backend: str) -> None:
    tracker = _Tracker(delay=0.01)
    async with running_proxy(backend_object=PythonBackend(tracker)) as server:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pbg.MultimodalServiceStub(channel)

            async def packets() -> AsyncIterator[pb.DataPacket]:
                yield count_packet("long", 100_000, model="m")
                await asyncio.sleep(60)

            call = stub.Chat(packets())
            for _ in range(5):
                await call.read()
            call.cancel()
        for _ in range(200):
            if tracker.closed.is_set():
                break
            await asyncio.sleep(0.01)
        assert tracker.closed.is_set()
        produced = tracker.produced
        await asyncio.sleep(0.3)
        assert tracker.produced == produced  # nothing more after the close
        assert produced < 1000
        assert server.proxy.stats.cancelled == 1


@pytest.mark.anyio
@pytest.mark.timeout(150)
async def test_slow_reader_holds_the_model_back(anyio_backend: str) -> None:
    tracker = _Tracker()
    async with running_proxy(backend_object=PythonBackend(tracker)) as server:
        assert server.proxy.max_held_acks == 64
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pbg.MultimodalServiceStub(channel)
            call = stub.Chat(iter([count_packet("flood", 1_000_000, model="m")]))
            first = await call.read()
            assert isinstance(first, pb.Ack)
            # Read nothing: the proxy must stop pulling once its 64 held Acks and gRPC's
            # flow-control windows (which BDP probing grows to a few MiB) are full.
            held, stalled = -1, False
            for _ in range(40):
                await asyncio.sleep(0.5)
                if tracker.produced == held:
                    stalled = True
                    break
                held = tracker.produced
            assert stalled, f"the model went on producing ({tracker.produced} responses)"
            assert held < 200_000  # of the 1M responses asked for

            async def the_rest() -> int:
                got = 1
                while got < held:  # and nothing was dropped: every response arrives in order
                    ack = await call.read()
                    assert isinstance(ack, pb.Ack), (got, ack)
                    assert ack.index == got
                    got += 1
                return got

            # One deadline for all of them (tens of thousands of Acks: a wait_for per read
            # costs a task each, which on a loaded 2-core machine ran past the test's limit).
            assert await asyncio.wait_for(the_rest(), 90) == held
            call.cancel()
            # The cancel reaches the model (its generator is closed) before the proxy
            # stops: no handler is still mid-stream when the server shuts down. (Stopping
            # it with the handler blocked on its held Acks left a task that the test's
            # event loop could not finish on a loaded machine.)
            assert await asyncio.to_thread(tracker.closed.wait, 30)


# The clients ------------------------------------------------------------------------


def test_stream_responses_over_the_demo_backend(kind: str, demo_proxy: ProxyProcess) -> None:
    counts = [3, 0, 1, 5, 2]
    results = collect(kind, demo_proxy.target, "stream_count", [count_frame(n) for n in counts])
    check_frames(results, counts)


def test_stream_responses_max_in_flight_one_keeps_frame_order(
    kind: str, demo_proxy: ProxyProcess
) -> None:
    counts = [2, 3, 1]
    results = collect(
        kind, demo_proxy.target, "stream_count", [count_frame(n) for n in counts], max_in_flight=1
    )
    assert [(r.seq, r.index) for r in results] == [
        (0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3), (2, 0), (2, 1)
    ]  # fmt: skip
    check_frames(results, counts)


def test_non_streaming_model_gives_one_final_result_per_frame(
    kind: str, demo_proxy: ProxyProcess
) -> None:
    frames = [np.full((1, 4), i, np.float32).tobytes() for i in range(6)]
    results = _add_one(kind, demo_proxy.target, frames)
    assert sorted(r.seq for r in results) == list(range(6))
    for r in results:
        assert (r.index, r.final, r.status) == (0, True, "OK")
        assert r.outputs is not None
        np.testing.assert_array_equal(r.outputs["OUTPUT"], np.full((1, 4), r.seq + 1, np.float32))


def _add_one(kind: str, addr: str, frames: list[bytes]) -> list[ResponseResult]:
    if kind == "sync":
        with TritonBytesStreamer(addr, shape=(1, 4)) as client:  # the rest discovered
            return list(client.stream_responses("add_one_fp32", "1", frames))

    async def run() -> list[ResponseResult]:
        async with AsyncTritonBytesStreamer(addr, shape=(1, 4)) as client:
            return [r async for r in client.stream_responses("add_one_fp32", "1", frames)]

    return asyncio.run(run())


def test_stream_bytes_on_a_streaming_model_is_failed_precondition(
    kind: str, demo_proxy: ProxyProcess
) -> None:
    # Known from the metadata (discovery): refused before anything is sent.
    def sync_run() -> None:
        with TritonBytesStreamer(demo_proxy.target) as client:
            list(client.stream_bytes("stream_count", "1", [count_frame(2)]))

    async def async_run() -> None:
        async with AsyncTritonBytesStreamer(demo_proxy.target) as client:
            async for _ in client.stream_bytes("stream_count", "1", [count_frame(2)]):
                pass

    with pytest.raises(TritonClientError) as info:
        sync_run() if kind == "sync" else asyncio.run(async_run())
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "stream_responses" in (info.value.details() or "")
    assert isinstance(info.value, grpc.RpcError)


def test_stream_bytes_without_metadata_fails_at_the_second_response(
    kind: str, demo_proxy: ProxyProcess
) -> None:
    # Explicit spec, no discovery: the client learns it from the Acks, never hangs.
    def sync_run() -> list[Any]:
        with streamer("sync", demo_proxy.target) as client:
            return list(client.stream_bytes("stream_count", "1", [count_frame(3)]))

    async def async_run() -> list[Any]:
        async with streamer("async", demo_proxy.target) as client:
            return [r async for r in client.stream_bytes("stream_count", "1", [count_frame(3)])]

    with pytest.raises(TritonClientError) as info:
        sync_run() if kind == "sync" else asyncio.run(async_run())
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION


@contextlib.contextmanager
def proxy_in_thread(model: Any) -> Iterator[str]:
    """An in-process proxy over ``PythonBackend(model)`` on its own event loop thread."""
    ready: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        async def main() -> None:
            async with running_proxy(backend_object=PythonBackend(model)) as server:
                ready.append(f"127.0.0.1:{server.port}")
                while not stop.is_set():
                    await asyncio.sleep(0.02)

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if ready:
                break
            threading.Event().wait(0.01)
        yield ready[0]
    finally:
        stop.set()
        thread.join(10)


def test_breaking_out_of_the_loop_cancels_upstream(kind: str) -> None:
    tracker = _Tracker(delay=0.01)
    with proxy_in_thread(tracker) as addr:
        results = collect(kind, addr, "m", [count_frame(100_000)], limit=5)
        assert len(results) == 5
        assert tracker.closed.wait(5.0)
        produced = tracker.produced
        threading.Event().wait(0.3)
        assert tracker.produced == produced


def test_idle_and_frame_timeouts(kind: str) -> None:
    tracker = _Tracker(delay=0.5)
    with proxy_in_thread(tracker) as addr:
        # idle: 0.5 s between responses, limit 0.2 s
        with pytest.raises(TritonClientError) as idle:
            collect(kind, addr, "m", [count_frame(10)], ack_timeout_sec=0.2)
        assert idle.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "ack_timeout_sec" in (idle.value.details() or "")
        # per frame: responses come every 0.5 s (not idle for 2 s) but the frame runs long
        with pytest.raises(TritonClientError) as frame:
            collect(
                kind,
                addr,
                "m",
                [count_frame(10)],
                ack_timeout_sec=2.0,
                frame_timeout_sec=1.2,
            )
        assert frame.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "frame_timeout_sec" in (frame.value.details() or "")
        # total: the whole call's deadline
        with pytest.raises(TritonClientError) as total:
            collect(kind, addr, "m", [count_frame(10)], stream_timeout_sec=1.0)
        assert total.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED


def test_sync_generator_function_backend_through_the_cli(kind: str) -> None:
    here = str(Path(__file__).resolve().parent)
    proxy = ProxyProcess(
        ["--backend", "python:embedded_model:count_tokens"], env={"PYTHONPATH": here}
    )
    try:
        results = collect(kind, proxy.target, "any", [count_frame(4), count_frame(2)])
    finally:
        proxy.stop()
    check_frames(results, [4, 2])


def test_proxy_options_come_from_transports_grpc() -> None:
    from transports.grpc import GrpcOptions
    from transports.triton.server.app import server_options as _server_options

    names = dict(_server_options(1 << 20))
    # The name grpcio knows (the seed's list had ..._min_recv_ping_interval_..., ignored).
    assert names["grpc.http2.min_ping_interval_without_data_ms"] == 5_000
    assert "grpc.http2.min_recv_ping_interval_without_data_ms" not in names
    assert names["grpc.max_receive_message_length"] == 1 << 20
    assert set(names) <= {n for n, _ in GrpcOptions().server_options()}


@pytest.mark.anyio
async def test_token_stream_re_served_as_typed_sse(
    anyio_backend: str, demo_proxy: ProxyProcess
) -> None:
    import httpx
    from live_server import live_server

    from examples.triton_sse import create_app
    from transports import sse
    from transports.triton.typed import triton_response_types

    types = triton_response_types(codec="json")
    prompt = "streaming tokens arrive one by one"
    with live_server(create_app(demo_proxy.target)) as server:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
            sse.aconnect(
                client, "GET", "/triton/tokens", types, params={"prompt": prompt, "codec": "json"}
            ) as reader,
        ):
            header = await reader.read_header()
            items = [item async for item in reader.read_items()]
            footer = await reader.read_footer()
    assert header.model.model == "stream_tokens"
    assert header.request == {"prompt": prompt}
    words = prompt.split()
    assert [(i.seq, i.index, i.final) for i in items] == [
        (0, k, k == len(words)) for k in range(len(words) + 1)
    ]
    assert [bytes(i.outputs["TOKEN"]).decode() for i in items[:-1]] == words
    assert items[-1].outputs == {}
    assert (footer.frames, footer.responses, footer.failed) == (1, len(words) + 1, 0)
    assert footer.first_response_ms is not None


def test_importing_the_proxy_does_not_import_the_clients() -> None:
    import subprocess
    import sys

    code = (
        "import sys, transports.triton.proxy; "
        "print(sorted(m for m in sys.modules if m.startswith('transports.triton')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = out.strip().strip("[]").replace("'", "").split(", ")
    assert not [m for m in loaded if m.startswith("transports.triton.client")], out
    assert "transports.triton.typed" not in loaded, out
    assert "'transports.triton.proxy'" in out
