"""The Triton proxy clients: sync and async streamers, discovery, readiness, typed view.

Every client test runs over both clients through the ``client`` fixture (a
``client_helpers.ClientFactory``: the same call shapes, the async client on its own
event loop), as the readers' suite does with ``read``. Three kinds of server, all
real gRPC on loopback:
- the proxy with its embedded ``--backend demo`` models (no Triton needed);
- a scrambling servicer in this process that answers out of order and counts calls
  and packets in flight, to pin down pipelining and reordering exactly;
- the proxy in front of a real Triton (``@pytest.mark.triton``), with auth on.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest
from client_helpers import ClientFactory, UniformStreamer
from triton_helpers import API_KEY, TOKEN, PrincipalEndpoint, ProxyProcess, free_port

from transports.base import TransportError
from transports.triton import (
    AsyncTritonBytesStreamer,
    TritonBytesStreamer,
    TritonClientError,
)
from transports.triton.client._chat import AckWatch, FrameCall
from transports.triton.client._core import Rpc, Sleep, auth_metadata, readiness_steps
from transports.triton.client._packets import AckPipeline, PacketSpec, latency_percentiles
from transports.triton.protocol import multimodal_pb2 as pb
from transports.triton.protocol import multimodal_pb2_grpc as pbg
from transports.triton.typed import triton_frames, triton_stream_types
from truss_stream import StreamError, stream_reader

pytestmark = pytest.mark.timeout(60)


def fp32_frames(n: int, width: int = 4) -> list[bytes]:
    return [np.full((1, width), i, np.float32).tobytes() for i in range(n)]


def seed_streamer(addr: str, **kwargs: object) -> TritonBytesStreamer:
    """The seed's documented constructor, for the demo/Triton add_one_fp32 model."""
    return TritonBytesStreamer(
        addr=addr,
        input_name="INPUT",
        shape=(1, 4),
        dtype_enum=pb.DT_FP32,
        outputs=("OUTPUT",),
        stream_id="cam-001",
        request_timeout_sec=10.0,
        parse_outputs_numpy=True,
        **kwargs,  # type: ignore[arg-type]
    )


# Servers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_proxy() -> Iterator[ProxyProcess]:
    """The proxy through its CLI with the embedded demo models, unauthenticated."""
    proxy = ProxyProcess(["--backend", "demo", "--max-in-flight", "64"])
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def demo_auth_proxy() -> Iterator[tuple[ProxyProcess, PrincipalEndpoint]]:
    """The demo proxy with auth against a real principal endpoint."""
    endpoint = PrincipalEndpoint().start()
    proxy = ProxyProcess(["--backend", "demo", "--auth-url", endpoint.url])
    yield proxy, endpoint
    proxy.stop()
    endpoint.stop()


class ScramblingServicer(pbg.MultimodalServiceServicer):
    """Answers Chat packets in reverse order, ``batch`` at a time, and keeps counts."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.chat_calls = 0
        self.packets = 0
        self.max_outstanding = 0
        self.seen_metadata: list[dict[str, str]] = []
        self._lock = threading.Lock()

    def _ack(self, packet: pb.DataPacket) -> pb.Ack:
        data = np.frombuffer(packet.tensor.data, np.float32) + 1
        out = pb.NamedTensor(
            name="OUTPUT", dtype=pb.DT_FP32, shape=packet.tensor.shape, data=data.tobytes()
        )
        return pb.Ack(
            correlation_id=packet.meta.correlation_id,
            status=pb.OK,
            message='{"backend": "scramble"}',
            outputs=[out],
        )

    def Chat(self, request_iterator, context):  # type: ignore[no-untyped-def,override]
        with self._lock:
            self.chat_calls += 1
            self.seen_metadata.append(dict(context.invocation_metadata()))
        held: list[pb.DataPacket] = []
        for packet in request_iterator:
            with self._lock:
                self.packets += 1
            held.append(packet)
            self.max_outstanding = max(self.max_outstanding, len(held))
            if len(held) >= self.batch:
                for p in reversed(held):
                    yield self._ack(p)
                held.clear()
        for p in reversed(held):
            yield self._ack(p)


@pytest.fixture
def scrambler() -> Iterator[tuple[str, ScramblingServicer]]:
    servicer = ScramblingServicer(batch=4)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pbg.add_MultimodalServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


class SilentServicer(pbg.MultimodalServiceServicer):
    """Takes packets and never answers: a stuck proxy."""

    def Chat(self, request_iterator, context):  # type: ignore[no-untyped-def,override]
        for _ in request_iterator:
            pass
        while context.is_active():
            time.sleep(0.05)
        yield from ()


@pytest.fixture
def silent() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pbg.add_MultimodalServiceServicer_to_server(SilentServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    server.stop(None)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sync", "async"])
def client(request: pytest.FixtureRequest) -> Iterator[ClientFactory]:
    """``client(addr, **kwargs)``: either client, with sync call shapes (see client_helpers)."""
    factory = ClientFactory(request.param)
    yield factory
    factory.close()


def seed_client(client: ClientFactory, addr: str, **kwargs: Any) -> UniformStreamer:
    """The seed's documented constructor (as ``seed_streamer``), over either client."""
    settings: dict[str, Any] = {
        "input_name": "INPUT",
        "shape": (1, 4),
        "dtype_enum": pb.DT_FP32,
        "outputs": ("OUTPUT",),
        "stream_id": "cam-001",
        "request_timeout_sec": 10.0,
        "parse_outputs_numpy": True,
        **kwargs,
    }
    return client(addr, **settings)


def endless() -> Iterator[bytes]:
    while True:
        yield np.zeros((1, 4), np.float32).tobytes()


# The sans-IO core -----------------------------------------------------------------------


SPEC = PacketSpec("INPUT", (1, 2), pb.DT_FP32, ("OUTPUT",), 5.0, True)


def test_pipeline_releases_in_frame_order() -> None:
    pipe = AckPipeline(SPEC, "m", "1", stream_id="s", parse_numpy=True)
    packets = [pipe.packet(np.zeros(2, np.float32).tobytes()) for _ in range(3)]
    assert [p.meta.correlation_id for p in packets] == ["s:0", "s:1", "s:2"]
    assert packets[0].control.inputs[0].name == "INPUT"
    assert getattr(packets[0].control.inputs[0], "from") == pb.SRC_TENSOR
    assert pipe.on_ack(pb.Ack(correlation_id="s:2", status=pb.OK, message="{}")) == []
    assert pipe.on_ack(pb.Ack(correlation_id="s:1", status=pb.INTERNAL, message="{}")) == []
    assert pipe.unreleased == 3
    ready = pipe.on_ack(pb.Ack(correlation_id="s:0", status=pb.OK, message="{}"))
    assert [(r.seq, r.status) for r in ready] == [(0, "OK"), (1, "INTERNAL"), (2, "OK")]
    assert pipe.unreleased == 0
    pipe.finish()


def test_pipeline_rejects_unknown_and_missing_acks() -> None:
    pipe = AckPipeline(SPEC, "m", "1", stream_id="s", parse_numpy=True)
    pipe.packet(b"\0" * 8)
    with pytest.raises(TritonClientError) as info:
        pipe.on_ack(pb.Ack(correlation_id="other:0"))
    assert info.value.code() is grpc.StatusCode.INTERNAL
    with pytest.raises(TritonClientError, match="unacknowledged"):
        pipe.finish()


def test_ack_outputs_from_binary_or_b64_json() -> None:
    pipe = AckPipeline(SPEC, "m", "1", stream_id="s", parse_numpy=True)
    pipe.packet(b"")
    pipe.packet(b"")
    arr = np.array([[1.5, 2.5]], np.float32)
    binary = pb.NamedTensor(name="OUTPUT", dtype=pb.DT_FP32, shape=pb.Shape(dims=[1, 2]))
    binary.data = arr.tobytes()
    b64 = '{"outputs": {"OUTPUT": {"dtype": "FP32", "shape": [1, 2], "b64": "AADAPwAAIEA="}}}'
    r0 = pipe.on_ack(pb.Ack(correlation_id="s:0", outputs=[binary], message="{}"))[0]
    r1 = pipe.on_ack(pb.Ack(correlation_id="s:1", message=b64))[0]
    np.testing.assert_array_equal(r0.outputs["OUTPUT"], arr)  # type: ignore[index]
    np.testing.assert_array_equal(r1.outputs["OUTPUT"], arr)  # type: ignore[index]
    assert r1.ack["status"] == "OK"
    assert "client_ms" in r0.timings


def test_pipeline_stacks_frames_and_splits_outputs() -> None:
    pipe = AckPipeline(SPEC, "m", "1", stream_id="s", parse_numpy=True)
    frames = [np.full((1, 2), i, np.float32).tobytes() for i in range(3)]
    packet = pipe.packet_frames(frames)
    assert packet.meta.correlation_id == "s:0..2"
    assert list(packet.tensor.shape.dims) == [3, 2]
    assert list(packet.control.inputs[0].shape.dims) == [3, 2]
    assert packet.tensor.data == b"".join(frames)
    out = pb.NamedTensor(name="OUTPUT", dtype=pb.DT_FP32, shape=pb.Shape(dims=[3, 2]))
    out.data = (np.arange(3, dtype=np.float32).repeat(2).reshape(3, 2) + 1).tobytes()
    results = pipe.on_ack(pb.Ack(correlation_id="s:0..2", message="{}", outputs=[out]))
    assert [r.seq for r in results] == [0, 1, 2]
    for r in results:
        np.testing.assert_array_equal(r.outputs["OUTPUT"], np.full((1, 2), r.seq + 1))  # type: ignore[index]
    pipe.finish()


def test_frames_per_packet_is_checked() -> None:
    with pytest.raises(ValueError, match="frames_per_packet"):
        TritonBytesStreamer("127.0.0.1:1", frames_per_packet=8, max_in_flight=4)
    with pytest.raises(ValueError, match="parse_outputs_numpy"):
        TritonBytesStreamer("127.0.0.1:1", frames_per_packet=2, parse_outputs_numpy=False)


def test_auth_metadata_from_env() -> None:
    assert auth_metadata({}) == ()
    assert auth_metadata({"DOMINO_USER_API_KEY": "k", "Authorization": "tok"}) == (
        ("x-domino-api-key", "k"),
        ("authorization", "Bearer tok"),
    )
    assert auth_metadata({"Authorization": "Bearer tok"}) == (("authorization", "Bearer tok"),)


def test_latency_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert latency_percentiles(values) == {"p50": 50.0, "p90": 90.0, "p99": 99.0}
    assert latency_percentiles([]) == {"p50": 0.0, "p90": 0.0, "p99": 0.0}


def test_client_error_is_a_transport_and_stream_error() -> None:
    assert issubclass(TritonClientError, TransportError)
    assert issubclass(TritonClientError, StreamError)


def test_readiness_steps_poll_then_time_out_with_the_last_reason() -> None:
    now = [0.0]
    steps = readiness_steps("m", "1", 1.0, 5.0, lambda: now[0], interval_s=0.4)
    step = next(steps)
    assert isinstance(step, Rpc)
    assert step.method == "ServerReady"
    step = steps.send(pb.ReadyResponse(ready=True))
    assert isinstance(step, Rpc)
    assert step.method == "ModelReady"
    assert step.timeout_s == 1.0  # the request timeout, cut to what is left of the wait
    step = steps.send(pb.ReadyResponse(ready=False, message="loading"))
    assert step == Sleep(0.4)
    now[0] = 1.5
    step = steps.send(None)
    assert isinstance(step, Rpc)
    assert step.method == "ServerReady"
    unavailable = TritonClientError("ServerReady", grpc.StatusCode.UNAVAILABLE, "down")
    with pytest.raises(TritonClientError) as info:
        steps.send(unavailable)  # transient: not ready yet, and time is up
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "UNAVAILABLE: down" in info.value.details()


def test_readiness_steps_raise_a_refusal_at_once() -> None:
    steps = readiness_steps(None, "", 30.0, 5.0, time.monotonic)
    next(steps)
    refused = TritonClientError("ServerReady", grpc.StatusCode.UNAUTHENTICATED, "no")
    with pytest.raises(TritonClientError) as info:
        steps.send(refused)
    assert info.value is refused


def _chat_call(**watch: Any) -> FrameCall:
    pipe = AckPipeline(SPEC, "m", "1", stream_id="s", parse_numpy=True)
    return FrameCall(
        pipe,
        AckWatch(pipe, watch.get("limit", math.inf), time.monotonic),
        frames_per_packet=1,
        on_unavailable=lambda: None,
    )


def test_chat_call_failure_order_is_one_for_both_clients() -> None:
    """What a failed call raises, first that applies: the frame iterable's own error,
    a protocol error of ours, the stuck-call deadline, CANCELLED for a local cancel
    (close()), else the gRPC error as a TritonClientError."""
    deadline = TritonClientError("Chat", grpc.StatusCode.DEADLINE_EXCEEDED, "deadline")
    call = _chat_call()
    assert call.failed(None).code() is grpc.StatusCode.CANCELLED  # type: ignore[attr-defined]
    assert call.failed(deadline) is deadline
    call.watch.tripped = True
    assert "ack_timeout_sec" in str(call.failed(None))
    call.frames_failed(OSError("camera unplugged"))
    call.frames_failed(OSError("a second failure is not the cause"))
    for exc in (None, deadline):
        failure = call.failed(exc)
        assert isinstance(failure, OSError)
        assert str(failure) == "camera unplugged"
    with pytest.raises(OSError, match="camera"):
        call.finished()


def test_chat_call_frees_a_slot_just_before_each_result() -> None:
    call = _chat_call()
    for _ in range(3):
        call.packet([np.zeros(2, np.float32).tobytes()])
    freed: list[int] = []
    assert list(call.on_ack(pb.Ack(correlation_id="s:1"), lambda: freed.append(1))) == []
    ready = call.on_ack(pb.Ack(correlation_id="s:0"), lambda: freed.append(1))
    assert freed == []  # matched at once, released as each result is taken
    seqs = []
    for result in ready:
        seqs.append((result.seq, len(freed)))
    assert seqs == [(0, 1), (1, 2)]


# Pipelining and ordering, against the scrambling servicer, over both clients ---------------


def test_many_frames_one_call_in_order(
    client: ClientFactory, scrambler: tuple[str, ScramblingServicer]
) -> None:
    addr, servicer = scrambler
    with seed_client(client, addr, max_in_flight=4) as streamer:
        got = list(streamer.stream_bytes("m", "1", fp32_frames(200)))
    assert [seq for seq, _, _ in got] == list(range(200))
    assert all(out["OUTPUT"][0, 0] == seq + 1 for seq, _, out in got)
    assert servicer.chat_calls == 1
    assert servicer.packets == 200
    assert servicer.max_outstanding == 4  # pipelined, and never more than the window


def _failing_frames(n: int = 10) -> Iterator[bytes]:
    yield from fp32_frames(n)
    raise OSError("camera unplugged")


@pytest.mark.parametrize("sync_frames", [False, True], ids=["frames", "sync-frames"])
def test_frame_iterator_error_after_earlier_results(
    client: ClientFactory, scrambler: tuple[str, ScramblingServicer], sync_frames: bool
) -> None:
    addr, _ = scrambler
    seen: list[int] = []
    with seed_client(client, addr, max_in_flight=4, sync_frames=sync_frames) as streamer:
        results = streamer.stream_bytes("m", "1", _failing_frames())
        with pytest.raises(OSError, match="camera"):
            seen.extend(seq for seq, _, _ in results)
    assert seen == list(range(10))


def test_early_break_does_not_hang(
    client: ClientFactory, scrambler: tuple[str, ScramblingServicer]
) -> None:
    addr, _ = scrambler
    with seed_client(client, addr, max_in_flight=4) as streamer:
        results = streamer.stream_bytes("m", "1", endless())
        for seq, _, _ in results:
            if seq == 20:
                break
        results.close()  # type: ignore[attr-defined]
        # The client stays usable after an abandoned stream.
        again = list(streamer.stream_bytes("m", "1", fp32_frames(3)))
    assert [seq for seq, _, _ in again] == [0, 1, 2]


def test_stuck_proxy_is_deadline_exceeded(client: ClientFactory, silent: str) -> None:
    started = time.monotonic()
    with (
        seed_client(client, silent, ack_timeout_sec=0.5) as streamer,
        pytest.raises(TritonClientError) as info,
    ):
        list(streamer.stream_bytes("m", "1", fp32_frames(5)))
    assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert "ack_timeout_sec" in str(info.value.details())
    assert time.monotonic() - started < 10


def test_slow_consumer_is_not_a_stuck_proxy(
    client: ClientFactory, scrambler: tuple[str, ScramblingServicer]
) -> None:
    addr, _ = scrambler
    with seed_client(client, addr, max_in_flight=4, ack_timeout_sec=0.2) as streamer:
        seqs = []
        for seq, _, _ in streamer.stream_bytes("m", "1", fp32_frames(12)):
            seqs.append(seq)
            if seq < 3:
                time.sleep(0.5)  # longer than ack_timeout_sec, in the caller's own code
    assert seqs == list(range(12))


def test_env_auth_headers_reach_the_server(
    client: ClientFactory,
    scrambler: tuple[str, ScramblingServicer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    addr, servicer = scrambler
    monkeypatch.setenv("DOMINO_USER_API_KEY", "key-1")
    monkeypatch.setenv("Authorization", "tok-2")
    with seed_client(client, addr, metadata=[("x-extra", "3")]) as streamer:
        list(streamer.stream_bytes("m", "1", fp32_frames(1)))
    seen = servicer.seen_metadata[0]
    assert seen["x-domino-api-key"] == "key-1"
    assert seen["authorization"] == "Bearer tok-2"
    assert seen["x-extra"] == "3"


# Drift between the clients, pinned: each of these behaved differently in the two ----------


@pytest.mark.parametrize("limit", ["ack_timeout_sec", "frame_timeout_sec", "stream_timeout_sec"])
def test_frame_iterator_failure_wins_over_any_call_failure(
    client: ClientFactory, silent: str, limit: str
) -> None:
    """The frames ran out with an error, then the call failed (the client's idle or
    per-frame limit, or the call deadline): the caller gets its own iterator's error
    from both clients. (The async client raised DEADLINE_EXCEEDED for the first two.)"""
    with (
        seed_client(client, silent, **{limit: 0.5}) as streamer,
        pytest.raises(OSError, match="camera"),
    ):
        list(streamer.stream_bytes("m", "1", _failing_frames(1)))


def test_close_during_a_stream_is_cancelled(
    client: ClientFactory, demo_proxy: ProxyProcess
) -> None:
    """close() while a stream is being read: TritonClientError CANCELLED from both
    clients. (The async client let a bare asyncio.CancelledError out, which asyncio
    takes for the cancellation of the caller's task.)"""
    seen: list[int] = []

    def close_at_20(streamer: UniformStreamer) -> None:
        for seq, _, _ in streamer.stream_bytes("add_one_fp32", "1", endless()):
            seen.append(seq)
            if seq == 20:
                streamer.close()

    with seed_client(client, demo_proxy.target) as streamer:
        with pytest.raises(TritonClientError) as info:
            close_at_20(streamer)
        assert info.value.code() is grpc.StatusCode.CANCELLED
        assert seen[:21] == list(range(21))
        assert len(seen) <= 21 + 32  # at most what was in flight when it closed
        with pytest.raises(TritonClientError) as again:
            list(streamer.stream_bytes("add_one_fp32", "1", fp32_frames(1)))
        assert again.value.code() is grpc.StatusCode.CANCELLED


@pytest.mark.parametrize("what", ["stream", "wait_for_ready"])
def test_close_from_elsewhere_during_a_call_is_cancelled(
    client: ClientFactory, demo_proxy: ProxyProcess, what: str
) -> None:
    """close() from another thread (sync) or task (async) ends a call in progress
    with CANCELLED, at once, in both clients."""
    with seed_client(client, demo_proxy.target) as streamer:
        streamer.wait_for_ready(timeout_s=10)
        started = time.monotonic()
        streamer.close_later(0.3)

        def call() -> None:
            if what == "stream":
                for _ in streamer.stream_bytes("add_one_fp32", "1", endless()):
                    pass
            else:
                streamer.wait_for_ready("no_such_model", timeout_s=10)

        with pytest.raises(TritonClientError) as info:
            call()
        assert info.value.code() is grpc.StatusCode.CANCELLED
        assert time.monotonic() - started < 5


def test_usage_errors_come_before_any_network_call(client: ClientFactory) -> None:
    """stream_responses with frames_per_packet > 1 is a ValueError at once, even with
    the proxy down (it used to wait connect_timeout_sec and raise UNAVAILABLE)."""
    addr = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with (
        seed_client(client, addr, frames_per_packet=2, connect_timeout_sec=3) as streamer,
        pytest.raises(ValueError, match="frames_per_packet"),
    ):
        list(streamer.stream_responses("m", "1", fp32_frames(2)))
    assert time.monotonic() - started < 1.5


# Against the proxy with its embedded demo backend -----------------------------------------


def test_seed_documented_usage(demo_proxy: ProxyProcess) -> None:
    """The seed's own code, word for word (sync: the seed had only this client)."""
    streamer = seed_streamer(demo_proxy.target)
    try:
        frames = (np.full((1, 4), i, np.float32).tobytes(order="C") for i in range(50))
        results = list(
            streamer.stream_bytes(model="add_one_fp32", model_version="1", frame_bytes_iter=frames)
        )
    finally:
        streamer.close()
    assert [seq for seq, _, _ in results] == list(range(50))
    for seq, ack, outputs in results:
        assert ack["status"] == "OK"
        assert ack["cid"] == f"cam-001:{seq}"
        assert ack["model"] == "add_one_fp32"
        assert outputs is not None
        np.testing.assert_array_equal(outputs["OUTPUT"], np.full((1, 4), seq + 1, np.float32))


def test_stream_over_demo_proxy(client: ClientFactory, demo_proxy: ProxyProcess) -> None:
    with seed_client(client, demo_proxy.target, max_in_flight=16) as streamer:
        seqs = []
        for seq, ack, outputs in streamer.stream_bytes("add_one_fp32", "1", fp32_frames(300)):
            assert ack["status"] == "OK"
            assert ack["cid"] == f"cam-001:{seq}"
            assert outputs is not None
            assert outputs["OUTPUT"][0, 0] == seq + 1
            seqs.append(seq)
    assert seqs == list(range(300))


def test_seed_json_outputs_when_not_parsing(
    client: ClientFactory, demo_proxy: ProxyProcess
) -> None:
    with seed_client(client, demo_proxy.target, parse_outputs_numpy=False) as streamer:
        ((_, ack, outputs),) = streamer.stream_bytes("add_one_fp32", "1", fp32_frames(1))
    assert outputs is not None
    assert set(outputs["OUTPUT"]) >= {"dtype", "shape", "b64"}
    assert ack["outputs"] == outputs


def test_uint8_and_per_frame_failures(client: ClientFactory, demo_proxy: ProxyProcess) -> None:
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(1, 2, 3, 3)
    frames = [image.tobytes(), b"short", image.tobytes()]
    with client(demo_proxy.target, "IMAGE", image.shape, pb.DT_UINT8, ("IMAGE_OUT",)) as streamer:
        results = list(streamer.stream_results("invert_u8", "1", frames))
    assert [r.status for r in results] == ["OK", "BAD_REQUEST", "OK"]
    assert "got 5 bytes, expected 18" in (results[1].error or "")
    np.testing.assert_array_equal(results[2].outputs["IMAGE_OUT"], 255 - image)


def test_frames_per_packet_over_demo_proxy(client: ClientFactory, demo_proxy: ProxyProcess) -> None:
    with seed_client(client, demo_proxy.target, frames_per_packet=4, max_in_flight=16) as streamer:
        results = list(streamer.stream_results("add_one_fp32", "1", fp32_frames(50)))
    assert [r.seq for r in results] == list(range(50))
    assert [r.correlation_id for r in results][-2:] == ["cam-001:48..49"] * 2
    for r in results:
        assert r.ok
        np.testing.assert_array_equal(r.outputs["OUTPUT"], np.full((1, 4), r.seq + 1))


def test_send_unary(client: ClientFactory, demo_proxy: ProxyProcess) -> None:
    with seed_client(client, demo_proxy.target) as streamer:
        result = streamer.send_unary("add_one_fp32", "1", fp32_frames(8)[7], seq=7)
        bad = streamer.send_unary("add_one_fp32", "1", b"short", seq=8)
    assert (result.seq, result.status, result.correlation_id) == (7, "OK", "cam-001:7")
    assert result.outputs["OUTPUT"][0, 0] == 8.0
    assert result.timings["client_ms"] > 0
    assert (bad.seq, bad.status) == (8, "BAD_REQUEST")


def test_metadata_discovery_fills_in_and_checks(
    client: ClientFactory, demo_proxy: ProxyProcess
) -> None:
    with client(demo_proxy.target, shape=(1, 4)) as streamer:
        info = streamer.model_metadata("add_one_fp32", "1")
        assert [(t.name, t.triton_dtype) for t in info.inputs] == [("INPUT", "FP32")]
        spec = streamer.prepare("add_one_fp32", "1")
        assert (spec.input_name, spec.dtype, spec.outputs) == ("INPUT", pb.DT_FP32, ("OUTPUT",))
        assert streamer.packet_spec("add_one_fp32", "1") is spec  # cached
        ((_, ack, _),) = streamer.stream_bytes("add_one_fp32", "1", fp32_frames(1))
        assert ack["status"] == "OK"
    with client(demo_proxy.target, shape=(1, 4)) as discovering:  # prepare() by itself
        ((_, ack, _),) = discovering.stream_bytes("add_one_fp32", "1", fp32_frames(1))
        assert ack["status"] == "OK"
    with client(demo_proxy.target, "INPUT", (1, 4), pb.DT_UINT8) as wrong:
        with pytest.raises(ValueError, match="FP32"):
            wrong.prepare("add_one_fp32", "1")
        with pytest.raises(TritonClientError) as info_err:
            wrong.model_metadata("no_such_model")
        assert info_err.value.code() is grpc.StatusCode.NOT_FOUND


def test_wait_for_ready(client: ClientFactory, demo_proxy: ProxyProcess) -> None:
    with seed_client(client, demo_proxy.target) as streamer:
        streamer.wait_for_ready()
        streamer.wait_for_ready("add_one_fp32", timeout_s=5)
        started = time.monotonic()
        with pytest.raises(TritonClientError) as info:
            streamer.wait_for_ready("no_such_model", timeout_s=0.5)
        assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "no_such_model" in info.value.details()
        assert time.monotonic() - started < 3


def test_auth_accepted_and_rejected(
    client: ClientFactory, demo_auth_proxy: tuple[ProxyProcess, PrincipalEndpoint]
) -> None:
    proxy, _ = demo_auth_proxy
    for env in ({"DOMINO_USER_API_KEY": API_KEY}, {"Authorization": TOKEN}):
        with seed_client(client, proxy.target, environ=env) as streamer:
            ((_, ack, _),) = streamer.stream_bytes("add_one_fp32", "1", fp32_frames(1))
            assert ack["status"] == "OK"
    with seed_client(client, proxy.target, environ={"DOMINO_USER_API_KEY": "wrong"}) as streamer:
        with pytest.raises(TritonClientError) as info:
            list(streamer.stream_bytes("add_one_fp32", "1", fp32_frames(1)))
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(TritonClientError) as info:
            streamer.wait_for_ready(timeout_s=5)
        assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
        for call in (
            lambda: streamer.model_metadata("add_one_fp32"),
            lambda: streamer.send_unary("add_one_fp32", "1", fp32_frames(1)[0]),
        ):
            with pytest.raises(TritonClientError) as info:
                call()
            assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


# Proxy down, closed clients ---------------------------------------------------------------


def test_proxy_down_is_unavailable_quickly(client: ClientFactory) -> None:
    addr = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    with seed_client(client, addr, connect_timeout_sec=1.0) as streamer:
        with pytest.raises(TritonClientError) as info:
            list(streamer.stream_bytes("add_one_fp32", "1", fp32_frames(3)))
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        with pytest.raises(TritonClientError) as ready:
            streamer.wait_for_ready(timeout_s=0.5)
        assert ready.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 5


def test_proxy_killed_mid_stream_raises_unavailable(client: ClientFactory) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "transports.triton.proxy", "--listen=127.0.0.1:0", "--backend=demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        addr = proc.stdout.readline().split()[1]

        def kill_at_20(streamer: UniformStreamer) -> None:
            for seq, _, _ in streamer.stream_bytes("add_one_fp32", "1", endless()):
                if seq == 20:
                    proc.kill()

        with seed_client(client, addr, max_in_flight=8) as streamer:
            with pytest.raises(TritonClientError) as info:
                kill_at_20(streamer)
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        proc.kill()
        proc.wait(10)


def test_tls_with_root_certs(client: ClientFactory, tmp_path: Any) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    cert_path.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    proxy = ProxyProcess(["--backend=demo", f"--tls-cert={cert_path}", f"--tls-key={key_path}"])
    try:
        addr = f"localhost:{proxy.port}"
        with seed_client(client, addr, root_certs=ca.cert_pem.bytes()) as streamer:
            results = list(streamer.stream_bytes("add_one_fp32", "1", fp32_frames(5)))
        assert [ack["status"] for _, ack, _ in results] == ["OK"] * 5
        with seed_client(client, addr, connect_timeout_sec=1.0) as plain:  # no TLS: no connection
            with pytest.raises(TritonClientError) as info:
                plain.send_unary("add_one_fp32", "1", fp32_frames(1)[0])
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        proxy.stop()


def test_context_manager_closes_the_channel(
    client: ClientFactory, demo_proxy: ProxyProcess
) -> None:
    with seed_client(client, demo_proxy.target) as streamer:
        streamer.wait_for_ready(timeout_s=5)
        assert not streamer.closed
    assert streamer.closed
    for call in (
        lambda: streamer.send_unary("add_one_fp32", "1", fp32_frames(1)[0]),
        lambda: streamer.model_metadata("add_one_fp32"),
        lambda: streamer.wait_for_ready(timeout_s=1),
        lambda: list(streamer.stream_bytes("add_one_fp32", "1", fp32_frames(1))),
    ):
        with pytest.raises(TritonClientError) as info:
            call()
        assert info.value.code() is grpc.StatusCode.CANCELLED
    streamer.close()  # closing twice is fine


# The typed view ---------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("codec", ["msgpack", "json"])
async def test_typed_view_round_trips_through_the_reader(
    demo_proxy: ProxyProcess, codec: str
) -> None:
    types = triton_stream_types(codec=codec)  # type: ignore[arg-type]
    frames = fp32_frames(20)
    frames[5] = b"bad"
    async with AsyncTritonBytesStreamer(demo_proxy.target, shape=(1, 4)) as streamer:
        wire = [
            bytes(f)
            async for f in triton_frames(streamer, "add_one_fp32", "1", frames, types=types)
        ]
    reader = stream_reader(types, iter(wire))
    header = reader.read_header()
    assert (header.model, header.inputs[0].name, header.inputs[0].dtype) == (
        "add_one_fp32",
        "INPUT",
        "FP32",
    )
    items = list(reader.read_items())
    assert [i.seq for i in items] == list(range(20))
    assert items[5].status == "BAD_REQUEST"
    assert items[5].error
    np.testing.assert_array_equal(items[3].outputs["OUTPUT"], np.full((1, 4), 4, np.float32))
    footer = reader.read_footer()
    assert (footer.count, footer.ok, footer.failed) == (20, 19, 1)
    assert 0 < footer.latency_p50_ms <= footer.latency_p90_ms <= footer.latency_p99_ms


@pytest.mark.anyio
async def test_typed_view_re_served_over_sse(demo_proxy: ProxyProcess) -> None:
    import httpx
    from live_server import live_server

    from examples.triton_sse import create_app
    from transports import sse

    types = triton_stream_types()
    with live_server(create_app(demo_proxy.target)) as server:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=30) as client,
            sse.aconnect(
                client, "GET", "/triton/add_one", types, params={"frames": 7, "codec": "json"}
            ) as reader,
        ):
            header = await reader.read_header()
            items = [item async for item in reader.read_items()]
            footer = await reader.read_footer()
    assert header.model == "add_one_fp32"
    assert [i.seq for i in items] == list(range(7))
    np.testing.assert_array_equal(items[6].outputs["OUTPUT"], np.full((1, 8), 7, np.float32))
    assert (footer.count, footer.ok) == (7, 7)


# Against a real Triton ---------------------------------------------------------------------


@pytest.mark.triton
def test_seed_usage_over_real_triton(client: ClientFactory, proxy_cli: ProxyProcess) -> None:
    env = {"DOMINO_USER_API_KEY": API_KEY}
    with seed_client(client, proxy_cli.target, environ=env, max_in_flight=16) as streamer:
        streamer.wait_for_ready("add_one_fp32", timeout_s=30)
        results = list(streamer.stream_bytes("add_one_fp32", "1", fp32_frames(100)))
    assert [seq for seq, _, _ in results] == list(range(100))
    for seq, ack, outputs in results:
        assert ack["status"] == "OK"
        assert ack["backend"] == "triton"
        np.testing.assert_array_equal(outputs["OUTPUT"], np.full((1, 4), seq + 1, np.float32))


@pytest.mark.triton
def test_uint8_over_real_triton_with_discovery(
    client: ClientFactory, proxy_cli: ProxyProcess
) -> None:
    image = np.random.default_rng(0).integers(0, 255, (1, 8, 8, 3), dtype=np.uint8)
    with client(
        proxy_cli.target, shape=image.shape, environ={"Authorization": TOKEN}, max_in_flight=8
    ) as streamer:
        streamer.wait_for_ready("invert_u8", timeout_s=30)
        spec = streamer.prepare("invert_u8")
        assert (spec.input_name, spec.dtype, spec.outputs) == ("IMAGE", pb.DT_UINT8, ("IMAGE_OUT",))
        results = list(streamer.stream_results("invert_u8", "1", [image.tobytes()] * 20))
        unary = streamer.send_unary("invert_u8", "1", image.tobytes())
    assert [r.seq for r in results] == list(range(20))
    assert all(r.ok for r in results)
    np.testing.assert_array_equal(results[-1].outputs["IMAGE_OUT"], 255 - image)
    assert results[0].timings["triton_infer_ms"] > 0
    np.testing.assert_array_equal(unary.outputs["IMAGE_OUT"], 255 - image)


@pytest.mark.triton
def test_ordering_with_out_of_order_completions_over_real_triton(
    client: ClientFactory, proxy_cli: ProxyProcess
) -> None:
    # sleep_fp32 sleeps for its input: early frames sleep longest, so Triton tends to
    # finish them last. Whether it does depends on its batching; the scrambling
    # servicer tests reordering deterministically, this one over the real thing.
    sleeps = [0.3, 0.2, 0.1, 0.0, 0.0, 0.0]
    frames = [np.array([[s]], np.float32).tobytes() for s in sleeps]
    with client(
        proxy_cli.target,
        "SECONDS",
        (1, 1),
        pb.DT_FP32,
        ("SLEPT",),
        environ={"DOMINO_USER_API_KEY": API_KEY},
        max_in_flight=6,
    ) as streamer:
        results = list(streamer.stream_results("sleep_fp32", "1", frames))
    assert [r.seq for r in results] == list(range(6))
    assert all(r.ok for r in results)
    slept = [float(r.outputs["SLEPT"][0, 0]) for r in results]
    assert slept == pytest.approx(sleeps)


@pytest.mark.triton
def test_frames_per_packet_over_real_triton(client: ClientFactory, proxy_cli: ProxyProcess) -> None:
    env = {"DOMINO_USER_API_KEY": API_KEY}
    with seed_client(client, proxy_cli.target, environ=env, frames_per_packet=8) as streamer:
        results = list(streamer.stream_results("add_one_fp32", "1", fp32_frames(60)))
    assert [r.seq for r in results] == list(range(60))
    for r in results:
        assert r.ok
        np.testing.assert_array_equal(r.outputs["OUTPUT"], np.full((1, 4), r.seq + 1))


@pytest.mark.triton
def test_close_during_a_stream_over_real_triton(
    client: ClientFactory, proxy_cli: ProxyProcess
) -> None:
    env = {"DOMINO_USER_API_KEY": API_KEY}

    def close_at_10(streamer: UniformStreamer) -> None:
        for seq, _, _ in streamer.stream_bytes("add_one_fp32", "1", endless()):
            if seq == 10:
                streamer.close()

    with seed_client(client, proxy_cli.target, environ=env) as streamer:
        with pytest.raises(TritonClientError) as info:
            close_at_10(streamer)
        assert info.value.code() is grpc.StatusCode.CANCELLED


@pytest.mark.triton
def test_typed_view_sync_thread_over_real_triton(proxy_cli: ProxyProcess) -> None:
    async def collect() -> list[bytes]:
        async with AsyncTritonBytesStreamer(
            proxy_cli.target, shape=(1, 4), environ={"DOMINO_USER_API_KEY": API_KEY}
        ) as streamer:
            return [
                bytes(f)
                async for f in triton_frames(streamer, "add_one_fp32", "1", fp32_frames(10))
            ]

    wire = asyncio.run(collect())
    reader = stream_reader(triton_stream_types(), iter(wire))
    assert reader.read_header().max_batch_size == 64
    assert [i.status for i in reader.read_items()] == ["OK"] * 10
    assert reader.read_footer().ok == 10


# Call-level errors are grpc.RpcError, as the seed's plain gRPC client raised -------------


def _rpc_failures(
    auth_target: str, silent_target: str
) -> list[tuple[str, grpc.StatusCode, dict[str, Any], Any]]:
    """(what, expected code, constructor kwargs, how to call) for each kind of failure."""
    return [
        ("rejected key", grpc.StatusCode.UNAUTHENTICATED,
         {"addr": auth_target, "environ": {"DOMINO_USER_API_KEY": "wrong"}}, "stream"),
        ("rejected key, metadata", grpc.StatusCode.UNAUTHENTICATED,
         {"addr": auth_target, "environ": {"DOMINO_USER_API_KEY": "wrong"}}, "metadata"),
        ("call deadline", grpc.StatusCode.DEADLINE_EXCEEDED,
         {"addr": silent_target, "stream_timeout_sec": 0.5}, "stream"),
        ("stuck proxy", grpc.StatusCode.DEADLINE_EXCEEDED,
         {"addr": silent_target, "ack_timeout_sec": 0.5}, "stream"),
        ("stuck frame", grpc.StatusCode.DEADLINE_EXCEEDED,
         {"addr": silent_target, "frame_timeout_sec": 0.5}, "stream"),
        ("proxy down", grpc.StatusCode.UNAVAILABLE,
         {"addr": f"127.0.0.1:{free_port()}", "connect_timeout_sec": 0.5}, "stream"),
        ("proxy down, unary", grpc.StatusCode.UNAVAILABLE,
         {"addr": f"127.0.0.1:{free_port()}", "connect_timeout_sec": 0.5}, "unary"),
        ("readiness deadline", grpc.StatusCode.DEADLINE_EXCEEDED,
         {"addr": f"127.0.0.1:{free_port()}"}, "wait"),
    ]  # fmt: skip


def _check_rpc_error(what: str, code: grpc.StatusCode, exc: grpc.RpcError) -> None:
    assert exc.code() is code, (what, exc, exc.__cause__)
    assert exc.details(), what
    assert isinstance(exc, TritonClientError)  # and still in the library's error tree
    assert isinstance(exc, StreamError)
    assert exc.status == code.name


def test_call_errors_are_grpc_rpc_errors(
    client: ClientFactory,
    demo_auth_proxy: tuple[ProxyProcess, PrincipalEndpoint],
    silent: str,
) -> None:
    proxy, _ = demo_auth_proxy
    for what, code, kwargs, how in _rpc_failures(proxy.target, silent):
        settings = {"request_timeout_sec": 10.0, "environ": {}, **kwargs}
        with seed_client(client, **settings) as streamer:
            try:
                if how == "stream":
                    list(streamer.stream_bytes("add_one_fp32", "1", fp32_frames(3)))
                elif how == "metadata":
                    streamer.model_metadata("add_one_fp32")
                elif how == "unary":
                    streamer.send_unary("add_one_fp32", "1", fp32_frames(1)[0])
                else:
                    streamer.wait_for_ready(timeout_s=0.5)
            except grpc.RpcError as exc:  # the seed's way of catching a failed call
                _check_rpc_error(what, code, exc)
            else:
                raise AssertionError(f"{what}: no error")
