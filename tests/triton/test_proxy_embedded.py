"""The proxy without Triton: embedded backends, validation, auth, TLS, health, reflection.

Same proxy, same validation and Acks as in front of Triton (tests/triton/test_proxy_triton.py);
these need no PyTriton and run in `make test-fast`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from triton_helpers import (
    API_KEY,
    PrincipalEndpoint,
    ProxyProcess,
    ack_json,
    auth_metadata,
    decode_output,
    packet,
    running_proxy,
)

from transports.triton.protocol import multimodal_pb2 as pb
from transports.triton.protocol import multimodal_pb2_grpc as pbg
from transports.triton.server.backends import PythonBackend

pytestmark = pytest.mark.anyio

X = np.arange(6, dtype=np.float32).reshape(1, 6)


def _stub(target: str, **kwargs: Any) -> tuple[grpc.aio.Channel, Any]:
    channel = grpc.aio.insecure_channel(target, **kwargs)
    return channel, pbg.MultimodalServiceStub(channel)


async def test_demo_backend_through_the_cli() -> None:
    proxy = ProxyProcess(["--backend", "demo"])
    try:
        channel, stub = _stub(proxy.target)
        async with channel:
            packets = [packet(f"cam:{i}", X + i) for i in range(20)]
            acks = [a async for a in stub.Chat(iter(packets))]
        assert sorted(a.correlation_id for a in acks) == sorted(
            p.meta.correlation_id for p in packets
        )
        for ack in acks:
            body = ack_json(ack)
            assert ack.status == pb.OK, body
            assert body["backend"] == "demo"
            i = int(ack.correlation_id.split(":")[1])
            np.testing.assert_array_equal(decode_output(body["outputs"]["OUTPUT"]), X + i + 1)
    finally:
        err = proxy.stop()
    assert "AUTHENTICATION IS OFF" in err


async def test_python_callable_backend_through_the_cli() -> None:
    from pathlib import Path

    here = str(Path(__file__).resolve().parent)
    proxy = ProxyProcess(["--backend", "python:embedded_model:double"], env={"PYTHONPATH": here})
    try:
        channel, stub = _stub(proxy.target)
        async with channel:
            ack = await stub.SendUnary(packet("u:0", X, model="anything"))
        body = ack_json(ack)
        assert ack.status == pb.OK, body
        assert body["backend"] == "python"
        np.testing.assert_array_equal(decode_output(body["outputs"]["OUTPUT"]), X * 2)
    finally:
        proxy.stop()


def _broken(kind: str) -> pb.DataPacket:
    good = packet(f"bad:{kind}", X)
    if kind == "control":
        good.ClearField("control")
    elif kind == "model":
        good.control.model = ""
    elif kind == "model_version":
        good.control.model_version = ""
    elif kind == "inputs":
        del good.control.inputs[:]
    elif kind == "outputs":
        del good.control.outputs[:]
    return good


@pytest.mark.parametrize(
    ("kind", "status", "error"),
    [
        ("control", pb.BAD_REQUEST, "missing control"),
        ("model", pb.BAD_REQUEST, "missing model"),
        ("model_version", pb.BAD_REQUEST, "missing model_version"),
        ("inputs", pb.BAD_REQUEST, "missing inputs"),
        ("outputs", pb.BAD_REQUEST, "missing outputs"),
    ],
)
async def test_missing_fields_are_bad_requests(kind: str, status: int, error: str) -> None:
    async with running_proxy(backend="demo") as server:
        channel, stub = _stub(f"127.0.0.1:{server.port}")
        async with channel:
            ack = await stub.SendUnary(_broken(kind))
    assert ack.status == status
    assert ack.correlation_id == f"bad:{kind}"
    assert ack_json(ack)["error"] == error


async def test_size_mismatch_says_got_and_expected() -> None:
    bad = packet("size:0", X)
    bad.tensor.data = bad.tensor.data[:-4]
    async with running_proxy(backend="demo") as server:
        channel, stub = _stub(f"127.0.0.1:{server.port}")
        async with channel:
            ack = await stub.SendUnary(bad)
    assert ack.status == pb.BAD_REQUEST
    assert "size mismatch: got 20 bytes, expected 24" in ack_json(ack)["error"]


async def test_source_other_than_tensor_is_unsupported() -> None:
    async with running_proxy(backend="demo") as server:
        channel, stub = _stub(f"127.0.0.1:{server.port}")
        async with channel:
            ack = await stub.SendUnary(packet("src:0", X, source=pb.SRC_IMAGE))
    assert ack.status == pb.UNSUPPORTED
    assert "SRC_IMAGE" in ack_json(ack)["error"]


async def test_errors_and_successes_share_one_stream_one_ack_each() -> None:
    packets = [
        packet("s:0", X),
        _broken("control"),
        packet("s:2", X, source=pb.SRC_AUDIO),
        packet("s:3", X, model="no_such_model"),
        packet("s:4", X, outputs=("OUTPUT", "NOT_AN_OUTPUT")),
    ]
    async with running_proxy(backend="demo") as server:
        channel, stub = _stub(f"127.0.0.1:{server.port}")
        async with channel:
            acks = {a.correlation_id: a async for a in stub.Chat(iter(packets))}
    assert {cid: a.status for cid, a in acks.items()} == {
        "s:0": pb.OK,
        "bad:control": pb.BAD_REQUEST,
        "s:2": pb.UNSUPPORTED,
        "s:3": pb.INTERNAL,
        "s:4": pb.OK,
    }
    assert ack_json(acks["s:3"])["backend"] == "demo"
    assert ack_json(acks["s:4"])["outputs"]["NOT_AN_OUTPUT"] == {"error": "missing"}


async def test_binary_outputs_skip_base64() -> None:
    async with running_proxy(backend="demo") as server:
        channel, stub = _stub(f"127.0.0.1:{server.port}")
        async with channel:
            ack = await stub.SendUnary(packet("b:0", X, binary=True))
    body = ack_json(ack)
    assert "b64" not in body["outputs"]["OUTPUT"]
    assert body["outputs"]["OUTPUT"]["shape"] == [1, 6]
    (out,) = ack.outputs
    assert (out.name, out.dtype, list(out.shape.dims)) == ("OUTPUT", pb.DT_FP32, [1, 6])
    np.testing.assert_array_equal(np.frombuffer(out.data, np.float32).reshape(1, 6), X + 1)
    assert ack.timing.total_ms >= ack.timing.triton_infer_ms > 0


class _Recorder:
    """An async model that records concurrency and cancellation."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.running = 0
        self.peak = 0
        self.cancelled = 0
        self.started = 0

    async def __call__(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
        self.running += 1
        self.started += 1
        self.peak = max(self.peak, self.running)
        try:
            await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.running -= 1
        return {"OUTPUT": next(iter(inputs.values()))}


async def test_chat_pipelines_up_to_max_in_flight() -> None:
    recorder = _Recorder(0.05)
    backend = PythonBackend(recorder)
    async with running_proxy(backend_object=backend, max_in_flight=4) as server:
        channel, stub = _stub(f"127.0.0.1:{server.port}")
        async with channel:
            loop = asyncio.get_running_loop()
            started = loop.time()
            acks = [a async for a in stub.Chat(iter([packet(f"p:{i}", X) for i in range(40)]))]
            elapsed = loop.time() - started
    assert len(acks) == 40
    assert {a.status for a in acks} == {pb.OK}
    assert recorder.peak == 4
    assert elapsed < 40 * 0.05 * 0.8  # pipelined: one at a time would take 2 s


async def test_client_disconnect_cancels_in_flight_calls() -> None:
    recorder = _Recorder(30.0)
    backend = PythonBackend(recorder)
    async with running_proxy(backend_object=backend, max_in_flight=8) as server:
        channel, stub = _stub(f"127.0.0.1:{server.port}")
        async with channel:

            async def packets() -> AsyncIterator[pb.DataPacket]:
                for i in range(5):
                    yield packet(f"c:{i}", X, timeout=60)
                await asyncio.sleep(60)  # keep the call open

            call = stub.Chat(packets())
            for _ in range(200):
                if recorder.started == 5:
                    break
                await asyncio.sleep(0.02)
            assert recorder.started == 5
            call.cancel()
        for _ in range(200):
            if recorder.cancelled == 5:
                break
            await asyncio.sleep(0.02)
        assert recorder.cancelled == 5
        assert server.proxy.stats.cancelled == 5


async def test_start_and_end_events_are_acknowledged_noops() -> None:
    start = pb.DataPacket(meta=pb.Meta(correlation_id="ev:0"), event=pb.SEV_START)
    async with running_proxy(backend="demo") as server:
        channel, stub = _stub(f"127.0.0.1:{server.port}")
        async with channel:
            ack = await stub.SendUnary(start)
    assert ack.status == pb.OK
    assert json.loads(ack.message)["event"] == "SEV_START"


async def test_model_metadata_and_readiness_from_the_demo_backend() -> None:
    async with running_proxy(backend="demo") as server:
        channel, stub = _stub(f"127.0.0.1:{server.port}")
        async with channel:
            meta = await stub.ModelMetadata(pb.ModelMetadataRequest(model="invert_u8"))
            assert [(t.name, t.dtype) for t in meta.inputs] == [("IMAGE", pb.DT_UINT8)]
            assert (await stub.ServerReady(pb.ReadyRequest())).ready
            assert (await stub.ModelReady(pb.ReadyRequest(model="invert_u8"))).ready
            assert not (await stub.ModelReady(pb.ReadyRequest(model="nope"))).ready
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ModelMetadata(pb.ModelMetadataRequest(model="nope"))
            assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_and_reflection() -> None:
    async with (
        running_proxy(backend="demo") as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "multimodal.MultimodalService"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = [r async for r in reflection.ServerReflectionInfo(iter([request]))]
        names = {s.name for s in replies[0].list_services_response.service}
        assert {"multimodal.MultimodalService", "grpc.health.v1.Health"} <= names


# --- auth ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def principal_endpoint() -> Any:
    endpoint = PrincipalEndpoint().start()
    yield endpoint
    endpoint.stop()


@pytest.mark.parametrize("kind", ["key", "bearer"])
async def test_auth_accepts_known_credentials(
    principal_endpoint: PrincipalEndpoint, kind: str
) -> None:
    async with running_proxy(backend="demo", auth_url=principal_endpoint.url) as server:
        channel, stub = _stub(f"127.0.0.1:{server.port}")
        async with channel:
            ack = await stub.SendUnary(packet("a:0", X), metadata=auth_metadata(kind))
            acks = [
                a
                async for a in stub.Chat(
                    iter([packet("a:1", X), packet("a:2", X)]), metadata=auth_metadata(kind)
                )
            ]
    assert ack.status == pb.OK
    assert [a.status for a in acks] == [pb.OK, pb.OK]


@pytest.mark.parametrize(
    "metadata",
    [(), (("x-domino-api-key", "wrong"),), (("authorization", "Bearer wrong"),)],
    ids=["none", "bad-key", "bad-token"],
)
async def test_auth_rejects_missing_or_bad_credentials(
    principal_endpoint: PrincipalEndpoint, metadata: tuple[tuple[str, str], ...]
) -> None:
    async with running_proxy(backend="demo", auth_url=principal_endpoint.url) as server:
        channel, stub = _stub(f"127.0.0.1:{server.port}")
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as unary:
                await stub.SendUnary(packet("r:0", X), metadata=metadata)
            with pytest.raises(grpc.aio.AioRpcError) as chat:
                [a async for a in stub.Chat(iter([packet("r:1", X)]), metadata=metadata)]
    assert unary.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert chat.value.code() == grpc.StatusCode.UNAUTHENTICATED
    for value in (API_KEY, "wrong"):
        assert value not in (unary.value.details() or "")


async def test_auth_upstream_trouble_is_unavailable(principal_endpoint: PrincipalEndpoint) -> None:
    for url in (principal_endpoint.down_url, "http://127.0.0.1:9/v4/auth/principal"):
        async with running_proxy(backend="demo", auth_url=url) as server:
            channel, stub = _stub(f"127.0.0.1:{server.port}")
            async with channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.SendUnary(packet("u:0", X), metadata=auth_metadata("key"))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, url


async def test_auth_caches_positive_answers_only(principal_endpoint: PrincipalEndpoint) -> None:
    async with running_proxy(backend="demo", auth_url=principal_endpoint.url) as server:
        channel, stub = _stub(f"127.0.0.1:{server.port}")
        async with channel:
            before = principal_endpoint.requests
            first_seen = len(principal_endpoint.seen_headers)
            for i in range(5):
                await stub.SendUnary(packet(f"k:{i}", X), metadata=auth_metadata("key"))
            assert principal_endpoint.requests == before + 1
            for i in range(3):
                with pytest.raises(grpc.aio.AioRpcError):
                    await stub.SendUnary(packet(f"n:{i}", X), metadata=(("x-domino-api-key", "x"),))
            assert principal_endpoint.requests == before + 4
    # the same headers reached the principal endpoint
    assert principal_endpoint.seen_headers[first_seen]["x-domino-api-key"] == API_KEY


async def test_health_needs_no_credentials(principal_endpoint: PrincipalEndpoint) -> None:
    async with (
        running_proxy(backend="demo", auth_url=principal_endpoint.url) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --- TLS ----------------------------------------------------------------------------


async def test_tls(tmp_path: Any) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in cert.cert_chain_pems[1:]:
        with cert_path.open("ab") as f:
            f.write(extra.bytes())
    async with running_proxy(
        backend="demo", tls_cert=str(cert_path), tls_key=str(key_path)
    ) as server:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
        async with grpc.aio.secure_channel(f"localhost:{server.port}", credentials) as channel:
            ack = await pbg.MultimodalServiceStub(channel).SendUnary(packet("tls:0", X))
        assert ack.status == pb.OK
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError):
                await pbg.MultimodalServiceStub(plain).SendUnary(packet("tls:1", X), timeout=5)


def test_tls_through_the_cli(tmp_path: Any) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    cert_path.write_bytes(b"".join(pem.bytes() for pem in cert.cert_chain_pems))
    proxy = ProxyProcess(
        ["--backend", "demo", "--tls-cert", str(cert_path), "--tls-key", str(key_path)]
    )
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
        with grpc.secure_channel(f"localhost:{proxy.port}", credentials) as channel:
            ack = pbg.MultimodalServiceStub(channel).SendUnary(packet("tls:cli", X), timeout=30)
    finally:
        proxy.stop()
    assert ack.status == pb.OK
