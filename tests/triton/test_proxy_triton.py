"""The proxy in front of a real Triton (PyTriton's tritonserver, in .venv-triton).

The session's proxy runs through its real command line with auth on (``proxy_cli``);
tests that need to look inside the proxy or stop Triton run one in-process.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest
from triton_helpers import (
    ProxyProcess,
    TritonProcess,
    ack_json,
    auth_metadata,
    decode_output,
    free_port,
    packet,
    running_proxy,
)

from transports.triton.protocol import multimodal_pb2 as pb
from transports.triton.protocol import multimodal_pb2_grpc as pbg
from transports.triton.server.backend import BackendError, InferRequest
from transports.triton.server.backends import TritonBackend
from transports.triton.server.coalesce import CoalescingBackend

# Generous: the first test also pays for starting Triton (10-30 s, retried when flaky).
pytestmark = [pytest.mark.triton, pytest.mark.anyio, pytest.mark.timeout(400)]

X = np.linspace(-1, 1, 12, dtype=np.float32).reshape(1, 12)
AUTH = auth_metadata("key")


def test_seed_usage_one_short_chat_per_frame(proxy_cli: ProxyProcess) -> None:
    """The seed's client: sync grpc, one Chat call per frame, JSON outputs in b64."""
    with grpc.insecure_channel(proxy_cli.target) as channel:
        stub = pbg.MultimodalServiceStub(channel)
        for seq in range(5):
            frame = X + seq
            (ack,) = list(
                stub.Chat(iter([packet(f"cam-001:{seq}", frame)]), timeout=60, metadata=AUTH)
            )
            body = ack_json(ack)
            assert ack.status == pb.OK, body
            assert ack.correlation_id == f"cam-001:{seq}"
            assert body["backend"] == "triton"
            assert body["cid"] == f"cam-001:{seq}"
            assert (body["model"], body["model_version"]) == ("add_one_fp32", "1")
            assert body["outputs"]["OUTPUT"]["dtype"] == "FP32"
            assert body["outputs"]["OUTPUT"]["shape"] == [1, 12]
            np.testing.assert_allclose(decode_output(body["outputs"]["OUTPUT"]), frame + 1)
            assert body["total_ms"] >= body["triton_infer_ms"] > 0


def test_unary_uint8_image(proxy_cli: ProxyProcess) -> None:
    image = np.random.default_rng(0).integers(0, 256, (1, 8, 10, 3), dtype=np.uint8)
    with grpc.insecure_channel(proxy_cli.target) as channel:
        ack = pbg.MultimodalServiceStub(channel).SendUnary(
            packet("img:0", image, model="invert_u8", input_name="IMAGE", outputs=("IMAGE_OUT",)),
            metadata=AUTH,
            timeout=60,
        )
    body = ack_json(ack)
    assert ack.status == pb.OK, body
    np.testing.assert_array_equal(decode_output(body["outputs"]["IMAGE_OUT"]), 255 - image)


async def test_many_frames_on_one_chat_call(proxy_cli: ProxyProcess) -> None:
    frames = {f"cam:{i}": X * i for i in range(200)}
    async with grpc.aio.insecure_channel(proxy_cli.target) as channel:
        stub = pbg.MultimodalServiceStub(channel)
        packets = (packet(cid, frame) for cid, frame in frames.items())
        acks = [a async for a in stub.Chat(packets, metadata=AUTH, timeout=120)]
    assert sorted(a.correlation_id for a in acks) == sorted(frames)
    for ack in acks:
        body = ack_json(ack)
        assert ack.status == pb.OK, body
        np.testing.assert_allclose(
            decode_output(body["outputs"]["OUTPUT"]), frames[ack.correlation_id] + 1
        )


async def test_two_outputs_missing_output_and_binary(proxy_cli: ProxyProcess) -> None:
    async with grpc.aio.insecure_channel(proxy_cli.target) as channel:
        stub = pbg.MultimodalServiceStub(channel)
        wanted = ("TIMES_TWO", "PLUS_ONE", "NO_SUCH_OUTPUT")
        ack = await stub.SendUnary(
            packet("two:0", X, model="two_outputs_fp32", outputs=wanted), metadata=AUTH
        )
        binary = await stub.SendUnary(
            packet("two:1", X, model="two_outputs_fp32", outputs=("TIMES_TWO",), binary=True),
            metadata=AUTH,
        )
    body = ack_json(ack)
    assert ack.status == pb.OK, body
    assert list(body["outputs"]) == list(wanted)
    np.testing.assert_allclose(decode_output(body["outputs"]["TIMES_TWO"]), X * 2)
    np.testing.assert_allclose(decode_output(body["outputs"]["PLUS_ONE"]), X + 1)
    assert body["outputs"]["NO_SUCH_OUTPUT"] == {"error": "missing"}
    (out,) = binary.outputs
    assert "b64" not in ack_json(binary)["outputs"]["TIMES_TWO"]
    np.testing.assert_allclose(np.frombuffer(out.data, np.float32).reshape(1, 12), X * 2)


async def test_failure_modes_against_triton(proxy_cli: ProxyProcess) -> None:
    short = packet("f:size", X)
    short.tensor.data = short.tensor.data[:-1]
    no_control = packet("f:control", X)
    no_control.ClearField("control")
    packets = [
        packet("f:ok", X),
        no_control,
        short,
        packet("f:source", X, source=pb.SRC_TEXT),
        packet("f:model", X, model="no_such_model"),
        packet("f:input", X, input_name="WRONG_INPUT"),
        packet("f:timeout", np.full((1, 1), 5.0, np.float32), model="sleep_fp32",
               input_name="SECONDS", outputs=("SLEPT",), timeout=0.5),
    ]  # fmt: skip
    async with grpc.aio.insecure_channel(proxy_cli.target) as channel:
        stub = pbg.MultimodalServiceStub(channel)
        acks = {a.correlation_id: a async for a in stub.Chat(iter(packets), metadata=AUTH)}
    statuses = {cid: a.status for cid, a in acks.items()}
    assert statuses == {
        "f:ok": pb.OK,
        "f:control": pb.BAD_REQUEST,
        "f:size": pb.BAD_REQUEST,
        "f:source": pb.UNSUPPORTED,
        "f:model": pb.INTERNAL,
        "f:input": pb.INTERNAL,
        "f:timeout": pb.INTERNAL,
    }
    assert ack_json(acks["f:control"])["error"] == "missing control"
    assert "size mismatch: got 47 bytes, expected 48" in ack_json(acks["f:size"])["error"]
    for cid in ("f:model", "f:input", "f:timeout"):
        body = ack_json(acks[cid])
        assert body["backend"] == "triton"
        assert body["error"]
    assert "timed out after 0.5s" in ack_json(acks["f:timeout"])["error"]


async def test_model_metadata_and_readiness(proxy_cli: ProxyProcess) -> None:
    async with grpc.aio.insecure_channel(proxy_cli.target) as channel:
        stub = pbg.MultimodalServiceStub(channel)
        meta = await stub.ModelMetadata(pb.ModelMetadataRequest(model="invert_u8"), metadata=AUTH)
        server = await stub.ServerReady(pb.ReadyRequest(), metadata=AUTH)
        model = await stub.ModelReady(pb.ReadyRequest(model="add_one_fp32"), metadata=AUTH)
        missing = await stub.ModelReady(pb.ReadyRequest(model="nope"), metadata=AUTH)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ModelMetadata(pb.ModelMetadataRequest(model="nope"), metadata=AUTH)
        with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
            await stub.ServerReady(pb.ReadyRequest())
    assert meta.max_batch_size == 64
    assert meta.ready
    assert [(t.name, t.dtype, list(t.shape.dims)) for t in meta.inputs] == [
        ("IMAGE", pb.DT_UINT8, [-1, -1, -1, 3])
    ]
    assert [t.name for t in meta.outputs] == ["IMAGE_OUT"]
    assert server.ready
    assert model.ready
    assert not missing.ready
    assert info.value.code() != grpc.StatusCode.OK
    assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_client_disconnect_cancels_triton_calls(triton: TritonProcess) -> None:
    sleepy = np.full((1, 1), 3.0, np.float32)
    async with (
        running_proxy(triton_url=triton.url) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pbg.MultimodalServiceStub(channel)

        async def packets() -> Any:
            for i in range(3):
                yield packet(f"c:{i}", sleepy, model="sleep_fp32", input_name="SECONDS",
                             outputs=("SLEPT",), timeout=30)  # fmt: skip
            await asyncio.sleep(60)

        call = stub.Chat(packets())
        for _ in range(100):
            if server.proxy.stats.packets == 3:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the three ModelInfer calls are out
        call.cancel()
        for _ in range(100):
            if server.proxy.stats.cancelled == 3:
                break
            await asyncio.sleep(0.05)
        assert server.proxy.stats.cancelled == 3
        assert server.proxy.stats.ok == 0
        # the proxy and its channel to Triton are fine afterwards
        ack = await stub.SendUnary(packet("after:0", X))
        assert ack.status == pb.OK, ack.message


async def test_two_replicas_both_receive_traffic(
    triton: TritonProcess, spare_triton: TritonProcess
) -> None:
    target = f"ipv4:{triton.url},{spare_triton.url}"
    async with (
        running_proxy(triton_url=target, max_in_flight=8) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pbg.MultimodalServiceStub(channel)
        # Warm up: round_robin only picks connected replicas, so connect both first.
        assert (await stub.ServerReady(pb.ReadyRequest())).ready
        start = sum(t.inference_count("add_one_fp32") for t in (triton, spare_triton))
        [a async for a in stub.Chat(packet(f"warm:{i}", X) for i in range(10))]
        # Triton records statistics after it answers: let them catch up first.
        before = await _settled_requests((triton, spare_triton), start + 10)
        packets = (packet(f"rr:{i}", X) for i in range(100))
        acks = [a async for a in stub.Chat(packets)]
    assert [a.status for a in acks] == [pb.OK] * 100
    after = await _settled_requests((triton, spare_triton), sum(before) + 100)
    served = [a - b for a, b in zip(after, before, strict=True)]
    assert sum(served) == 100
    assert min(served) >= 20, served  # round_robin: both replicas get a fair share


async def test_triton_stopped_mid_stream_then_back(spare_triton: TritonProcess) -> None:
    """Error Acks (UNAVAILABLE, backend triton) while Triton is down, not a hang; then OK
    again. (Before UNAVAILABLE existed, these were INTERNAL like a model's own error.)"""
    async with (
        running_proxy(triton_url=spare_triton.url, max_in_flight=4) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pbg.MultimodalServiceStub(channel)
        done = asyncio.Event()

        async def packets() -> Any:
            i = 0
            while not done.is_set():
                yield packet(f"live:{i}", X, timeout=5)
                i += 1
                await asyncio.sleep(0.05)

        phase = "up"
        seen: dict[str, list[int]] = {"up": [], "stopping": [], "down": [], "back": []}
        errors: list[dict[str, Any]] = []
        transition: asyncio.Future[None] | None = None
        call = stub.Chat(packets(), timeout=240)
        async for ack in call:
            seen[phase].append(ack.status)
            if ack.status != pb.OK:
                errors.append(ack_json(ack))
            if phase == "up" and len(seen["up"]) >= 5:
                phase = "stopping"
                transition = asyncio.ensure_future(asyncio.to_thread(spare_triton.stop))
            elif phase == "stopping" and transition is not None and transition.done():
                transition.result()
                phase = "down"
            elif phase == "down" and seen["down"].count(pb.UNAVAILABLE) >= 3:
                phase = "back"
                transition = asyncio.ensure_future(asyncio.to_thread(spare_triton.start))
            elif (
                phase == "back"
                and transition is not None
                and transition.done()
                and seen["back"][-3:] == [pb.OK] * 3
            ):
                transition.result()
                done.set()
    assert set(seen["up"]) == {pb.OK}
    # (an OK sent before Triton went away may still arrive just after)
    assert seen["down"].count(pb.UNAVAILABLE) >= 3
    # Packets in flight as Triton went away (at most max_in_flight=4) may end INTERNAL
    # (timed out, or cut off mid-call); every packet sent while it was down is UNAVAILABLE.
    assert set(seen["down"]) <= {pb.OK, pb.UNAVAILABLE, pb.INTERNAL}, errors
    assert seen["down"].count(pb.INTERNAL) <= 4, errors
    assert seen["back"][-3:] == [pb.OK] * 3
    assert errors
    for body in errors:
        assert body["backend"] == "triton"
        assert "triton inference failed" in body["error"] or "timed out" in body["error"]
    assert server.proxy.stats.packets == server.proxy.stats.ok + server.proxy.stats.failed


async def test_unreachable_triton_is_unavailable_and_a_model_error_is_internal(
    proxy_cli: ProxyProcess,
) -> None:
    """A client can tell "retry later" from "the model failed": UNAVAILABLE for a Triton
    that cannot be reached, INTERNAL for a model that raised; seed clients see both as
    non-OK and their call goes on."""
    from transports.triton import TritonBytesStreamer

    down = ProxyProcess(["--triton-url", f"127.0.0.1:{free_port()}"])  # nothing listens
    try:
        for target, metadata in ((proxy_cli.target, AUTH), (down.target, ())):
            async with grpc.aio.insecure_channel(target) as channel:
                stub = pbg.MultimodalServiceStub(channel)
                packets = [packet("good", X), packet("fails", X, model="fail_fp32")]
                acks = {
                    a.correlation_id: a
                    async for a in stub.Chat(iter(packets), metadata=metadata, timeout=60)
                }
            if target == proxy_cli.target:
                assert acks["good"].status == pb.OK
                assert acks["fails"].status == pb.INTERNAL
                assert "fail_fp32 always fails" in ack_json(acks["fails"])["error"]
            else:
                for ack in acks.values():
                    assert ack.status == pb.UNAVAILABLE, ack_json(ack)
                    assert "UNAVAILABLE" in ack_json(ack)["error"]
        # The seed's pattern (one short Chat call per frame) keeps going after UNAVAILABLE.
        with grpc.insecure_channel(down.target) as channel:
            stub = pbg.MultimodalServiceStub(channel)
            statuses = [
                [a.status for a in stub.Chat(iter([packet(f"seed:{i}", X)]), timeout=30)]
                for i in range(3)
            ]
        assert statuses == [[pb.UNAVAILABLE]] * 3
        # Our client names it and yields every frame's result.
        with TritonBytesStreamer(
            down.target, "INPUT", (1, 12), pb.DT_FP32, ("OUTPUT",), request_timeout_sec=10
        ) as streamer:
            frames = [X.tobytes()] * 3
            results = list(streamer.stream_results("add_one_fp32", "1", frames))
        assert [r.status for r in results] == ["UNAVAILABLE"] * 3
        assert not any(r.ok for r in results)
    finally:
        down.stop()


def _request(cid: str, array: np.ndarray, **kwargs: Any) -> InferRequest:
    fields: dict[str, Any] = {
        "model": "add_one_fp32",
        "model_version": "1",
        "input_name": "INPUT",
        "outputs": ("OUTPUT",),
        "timeout": 10.0,
    }
    fields.update(kwargs)
    return InferRequest(
        cid=cid,
        datatype="FP32",
        shape=tuple(array.shape),
        data=array.tobytes(),
        **fields,
    )


async def _settled_requests(tritons: tuple[TritonProcess, ...], total: int) -> list[int]:
    """Each Triton's request count of add_one_fp32, once they add up to ``total``."""
    deadline = time.monotonic() + 10
    counts = [t.inference_count("add_one_fp32") for t in tritons]
    while sum(counts) < total and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        counts = [t.inference_count("add_one_fp32") for t in tritons]
    return counts


async def _settled_counts(triton: TritonProcess, model: str, rows: int) -> tuple[int, int]:
    """Triton's (requests, rows) for ``model`` once at least ``rows`` rows are counted."""
    deadline = time.monotonic() + 10
    counts = triton.counts(model)
    while counts[1] < rows and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        counts = triton.counts(model)
    return counts


async def test_coalesce_sends_packets_arriving_together_as_one_request(
    triton: TritonProcess,
) -> None:
    backend = CoalescingBackend(TritonBackend(triton.url), max_rows=16)
    try:
        start = triton.counts("add_one_fp32")
        await backend.infer(_request("warm", X))  # learns max_batch_size
        # Triton records statistics after it answers: wait until they show the warm-up.
        before = await _settled_counts(triton, "add_one_fp32", start[1] + X.shape[0])
        arrays = [X * i for i in range(7)] + [np.vstack([X, -X])]  # one packet of 2 rows
        results = await asyncio.gather(
            *(backend.infer(_request(f"co:{i}", a)) for i, a in enumerate(arrays))
        )
        after = await _settled_counts(triton, "add_one_fp32", before[1] + 9)
    finally:
        await backend.close()
    assert after[0] - before[0] == 1  # one Triton request ...
    assert after[1] - before[1] == 9  # ... of nine rows
    for array, outputs in zip(arrays, results, strict=True):
        out = outputs["OUTPUT"]
        assert out.shape == array.shape
        np.testing.assert_allclose(
            np.frombuffer(out.data, np.float32).reshape(out.shape), array + 1
        )


async def test_coalesce_keeps_models_and_outputs_apart(triton: TritonProcess) -> None:
    backend = CoalescingBackend(TritonBackend(triton.url), max_rows=8)
    try:
        two = {"model": "two_outputs_fp32", "outputs": ("TIMES_TWO", "NOPE")}
        await backend.infer(_request("warm1", X))
        await backend.infer(_request("warm2", X, **two))
        results = await asyncio.gather(
            *(
                backend.infer(_request(f"m:{i}", X * i, **(two if i % 2 else {})))
                for i in range(20)  # more rows than `coalesce`: several requests
            )
        )
    finally:
        await backend.close()
    for i, outputs in enumerate(results):
        if i % 2:
            assert set(outputs) == {"TIMES_TWO"}
            data = np.frombuffer(outputs["TIMES_TWO"].data, np.float32)
            np.testing.assert_allclose(data, (X * i * 2).ravel())
        else:
            np.testing.assert_allclose(
                np.frombuffer(outputs["OUTPUT"].data, np.float32), (X * i + 1).ravel()
            )


async def test_coalesce_failure_reaches_every_packet(triton: TritonProcess) -> None:
    backend = CoalescingBackend(TritonBackend(triton.url), max_rows=8)
    try:
        await backend.infer(_request("warm", X))
        results = await asyncio.gather(
            *(backend.infer(_request(f"e:{i}", X, input_name="WRONG")) for i in range(4)),
            return_exceptions=True,
        )
    finally:
        await backend.close()
    assert all(isinstance(r, BackendError) for r in results), results
    assert all("triton inference failed" in str(r) for r in results)


async def test_coalesce_through_the_proxy(triton: TritonProcess) -> None:
    frames = {f"cc:{i}": X * i for i in range(150)}
    async with (
        running_proxy(triton_url=triton.url, coalesce=16, max_in_flight=32) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pbg.MultimodalServiceStub(channel)
        packets = (packet(cid, frame) for cid, frame in frames.items())
        acks = [a async for a in stub.Chat(packets)]
    assert sorted(a.correlation_id for a in acks) == sorted(frames)
    for ack in acks:
        body = ack_json(ack)
        assert ack.status == pb.OK, body
        np.testing.assert_allclose(
            decode_output(body["outputs"]["OUTPUT"]), frames[ack.correlation_id] + 1
        )


async def test_triton_backend_model_config(triton: TritonProcess) -> None:
    backend = TritonBackend(triton.url)
    try:
        config = await backend.model_config("two_outputs_fp32", "1")
        with pytest.raises(BackendError) as unknown:
            await backend.model_config("no_such_model", "1")
    finally:
        await backend.close()
    assert config.max_batch_size == 64
    assert not config.decoupled
    assert config.outputs == frozenset({"PLUS_ONE", "TIMES_TWO"})
    assert unknown.value.code is not grpc.StatusCode.OK


async def test_coalesce_a_cancelled_packet_loses_nothing_for_the_others(
    triton: TritonProcess,
) -> None:
    backend = CoalescingBackend(TritonBackend(triton.url), max_rows=8)
    seconds = np.full((1, 1), 0.5, np.float32)
    sleepy = {"model": "sleep_fp32", "input_name": "SECONDS", "outputs": ("SLEPT",)}
    try:
        await backend.infer(_request("warm", np.zeros((1, 1), np.float32), **sleepy))
        tasks = [
            asyncio.ensure_future(
                backend.infer(_request(f"k:{i}", seconds * (i + 1) / 4, **sleepy))
            )
            for i in range(4)
        ]
        await asyncio.sleep(0.2)  # the stacked request is in Triton, sleeping
        tasks[1].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await backend.close()
    assert isinstance(done[1], asyncio.CancelledError)
    for i in (0, 2, 3):
        outputs = done[i]
        assert isinstance(outputs, dict), outputs
        slept = np.frombuffer(outputs["SLEPT"].data, np.float32)
        np.testing.assert_allclose(slept, (seconds * (i + 1) / 4).ravel())
