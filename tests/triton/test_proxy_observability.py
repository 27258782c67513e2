"""The proxy's metrics, traces, logs and health, through its real CLI where it matters.

Scrapes of ``--metrics-listen`` are parsed with prometheus_client's own parser; spans
come from the real OpenTelemetry SDK in the proxy process (``OTEL_TRACES_EXPORTER=console``)
and in this one (the client's). Tests marked ``triton`` run against a real PyTriton Triton.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from triton_helpers import (
    REPO,
    PrincipalEndpoint,
    TritonProcess,
    auth_metadata,
    packet,
    running_proxy,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc

from transports.observability import ProxyMetrics
from transports.observability._grpc import _AioStreamStream, _AioUnaryUnary
from transports.triton.protocol import multimodal_pb2 as pb
from transports.triton.protocol import multimodal_pb2_grpc as pbg
from transports.triton.server import SERVICE_NAME
from transports.triton.server.backend import InferRequest
from transports.triton.server.backends import PythonBackend, TritonBackend
from transports.triton.server.observe import ObservedBackend

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(400)]

X = np.linspace(-1, 1, 12, dtype=np.float32).reshape(1, 12)
AUTH = auth_metadata("key")
LISTENING = re.compile(r"LISTENING (\S+):(\d+) backend=\S+(?: metrics=(\S+):(\d+))?")
CHAT = f"/{SERVICE_NAME}/Chat"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class ProxyCLI:
    """``python -m transports.triton.proxy`` with ``--metrics-listen``; reads both ports."""

    def __init__(self, args: list[str], env: Mapping[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "transports.triton.proxy",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = LISTENING.match(line)
        if match is None or match.group(4) is None:
            self.proc.kill()
            raise RuntimeError(f"proxy did not start: {line!r} {self.proc.communicate()[1]}")
        self.target = f"127.0.0.1:{match.group(2)}"
        self.metrics_url = f"http://127.0.0.1:{match.group(4)}/metrics"

    def scrape(self) -> Samples:
        response = httpx.get(self.metrics_url, timeout=10)
        response.raise_for_status()
        return parse(response.text)

    def stop(self) -> tuple[str, str]:
        """SIGTERM; (stdout, stderr) after the first line."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.communicate(timeout=10)


@pytest.fixture(scope="module")
def principal_endpoint() -> Iterator[PrincipalEndpoint]:
    endpoint = PrincipalEndpoint().start()
    yield endpoint
    endpoint.stop()


def _chat(target: str, packets: list[pb.DataPacket], metadata: Any = AUTH) -> list[pb.Ack]:
    with grpc.insecure_channel(target) as channel:
        stub = pbg.MultimodalServiceStub(channel)
        return list(stub.Chat(iter(packets), timeout=60, metadata=metadata))


def test_cli_metrics_listen_counts_packets_auth_and_calls_in_json_logs(
    principal_endpoint: PrincipalEndpoint,
) -> None:
    proxy = ProxyCLI(
        ["--backend", "demo", "--auth-url", principal_endpoint.url, "--log-format", "json"]
    )
    try:
        bad = pb.DataPacket(meta=pb.Meta(correlation_id="bad"), event=pb.SEV_DATA)
        acks = _chat(
            proxy.target,
            [
                *(packet(f"ok:{i}", X) for i in range(3)),
                bad,
                packet("unknown", X, model="no_such_model_0xdeadbeef"),
            ],
        )
        assert sorted(a.status for a in acks) == sorted([pb.OK] * 3 + [pb.BAD_REQUEST, pb.INTERNAL])
        with pytest.raises(grpc.RpcError) as denied:
            _chat(proxy.target, [packet("x", X)], metadata=auth_metadata("none"))
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        s = proxy.scrape()
    finally:
        _, err = proxy.stop()
    packets = "truss_stream_proxy_packets_total"
    assert value(s, packets, model="add_one_fp32", status="OK") == 3
    assert value(s, packets, model="other", status="BAD_REQUEST") == 1
    # A model name nobody served is never a label of its own.
    assert value(s, packets, model="other", status="INTERNAL") == 1
    assert not any("no_such_model" in str(labels) for _, labels in s)
    assert value(s, "truss_stream_proxy_packet_duration_seconds_count", model="add_one_fp32") == 3
    assert value(s, "truss_stream_proxy_in_flight_packets") == 0
    assert value(s, "truss_stream_proxy_in_flight_bytes") == 0
    assert value(s, "truss_stream_proxy_auth_decisions_total", outcome="allowed") >= 1
    assert value(s, "truss_stream_proxy_auth_decisions_total", outcome="denied") == 1
    assert value(s, "truss_stream_proxy_calls_total", method=CHAT, code="OK") == 1
    assert value(s, "truss_stream_proxy_calls_total", method=CHAT, code="UNAUTHENTICATED") == 1
    assert value(s, "truss_stream_proxy_calls_active", method=CHAT) == 0
    assert value(s, "truss_stream_proxy_upstream_up") == 1
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert records, err
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)
    assert any(r.get("event") == "upstream" and r.get("ready") is True for r in records)
    # Credentials never reach the logs.
    assert "test-api-key-123" not in err


async def test_model_labels_are_capped_to_models_that_answered() -> None:
    registry = CollectorRegistry()
    metrics = ProxyMetrics.for_registry(registry, model_limit=2)

    def anything(model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"OUTPUT": next(iter(inputs.values()))}

    async with running_proxy(backend_object=PythonBackend(anything)) as server:
        # running_proxy builds its proxy with the default registry; point it at ours.
        server.proxy.metrics = metrics
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pbg.MultimodalServiceStub(channel)
            packets = [packet(f"m{i}", X, model=f"model-{i}") for i in range(5)]
            acks = [a async for a in stub.Chat(iter(packets))]
    assert all(a.status == pb.OK for a in acks)
    s = parse(generate_latest(registry).decode())
    models = {dict(labels).get("model") for name, labels in s if name.startswith("truss_stream_")}
    assert models - {None} == {"model-0", "model-1", "other"}
    assert value(s, "truss_stream_proxy_packets_total", model="other", status="OK") == 3


async def test_backend_calls_are_counted_and_carry_the_trace_to_the_upstream() -> None:
    """A real gRPC server in Triton's place records the metadata the proxy's channel sends."""
    seen: list[dict[str, str]] = []

    class Recorder(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        async def ModelInfer(self, request: Any, context: Any) -> Any:
            seen.append(dict(context.invocation_metadata()))
            return service_pb2.ModelInferResponse(model_name=request.model_name)

    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Recorder(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    registry = CollectorRegistry()
    metrics = ProxyMetrics.for_registry(registry)
    # What the proxy builds when tracing is set up (the test process has no global SDK).
    triton = TritonBackend(f"127.0.0.1:{port}", interceptors=[_AioUnaryUnary()])
    backend = ObservedBackend(triton, metrics)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    request = InferRequest("c1", "m", "1", "INPUT", "FP32", (1, 12), X.tobytes(), ("OUT",), 5.0)
    try:
        with provider.get_tracer("t").start_as_current_span("caller") as span:
            assert await backend.infer(request) == {}
    finally:
        await backend.close()
        await server.stop(None)
    (metadata,) = seen
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert metadata["traceparent"].split("-")[1] == trace_id
    s = parse(generate_latest(registry).decode())
    labels = {"backend": "triton", "method": "ModelInfer", "model": "m"}
    assert value(s, "truss_stream_proxy_backend_calls_total", **labels, code="OK") == 1
    assert value(s, "truss_stream_proxy_backend_duration_seconds_count", **labels) == 1


async def stream_call_traceparent() -> tuple[str, str]:
    """In a process with a global SDK: (traceparent Triton got, the CLIENT span's id)."""
    from opentelemetry import trace

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    seen: list[dict[str, str]] = []

    class Recorder(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        async def ModelStreamInfer(self, request_iterator: Any, context: Any) -> Any:
            seen.append(dict(context.invocation_metadata()))
            async for request in request_iterator:
                response = service_pb2.ModelStreamInferResponse()
                response.infer_response.model_name = request.model_name
                response.infer_response.parameters["triton_final_response"].bool_param = True
                yield response
                return

    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Recorder(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    triton = TritonBackend(f"127.0.0.1:{port}", interceptors=[_AioUnaryUnary(), _AioStreamStream()])
    backend = ObservedBackend(triton, None)
    request = InferRequest("c1", "m", "1", "INPUT", "FP32", (1, 12), X.tobytes(), ("OUT",), 5.0)
    try:
        with trace.get_tracer("t").start_as_current_span("caller"):
            responses = [r async for r in backend.stream_infer(request)]
    finally:
        await backend.close()
        await server.stop(None)
    assert len(responses) == 1
    (call_span,) = [x for x in exporter.get_finished_spans() if "ModelStreamInfer" in x.name]
    return seen[0]["traceparent"], format(call_span.context.span_id, "016x")


def test_streaming_backend_calls_carry_their_span_to_the_upstream() -> None:
    """ModelStreamInfer (decoupled models): Triton's parent span is the proxy's call span.

    Run in a process of its own: a global tracer provider can be set only once.
    """
    code = (
        "import asyncio, json, test_proxy_observability as t;"
        "print(json.dumps(asyncio.run(t.stream_call_traceparent())))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parent,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    traceparent, span_id = json.loads(out.stdout.strip().splitlines()[-1])
    assert traceparent.split("-")[2] == span_id


# Against a real Triton -------------------------------------------------------------------


def _console_spans(text: str) -> list[dict[str, Any]]:
    decoder = json.JSONDecoder()
    spans: list[dict[str, Any]] = []
    i = 0
    while (start := text.find("{", i)) >= 0:
        try:
            obj, i = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            i = start + 1
            continue
        if isinstance(obj, dict) and "context" in obj and "name" in obj:
            spans.append(obj)
    return spans


def _hex(value: int, width: int) -> str:
    return "0x" + format(value, f"0{width}x")


@pytest.mark.triton
def test_client_proxy_triton_trace_and_triton_metrics(triton: TritonProcess) -> None:
    proxy = ProxyCLI(
        ["--triton-url", triton.url],
        env={
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_SERVICE_NAME": "proxy-under-test",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        },
    )
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        with provider.get_tracer("client").start_as_current_span("camera-client") as client:
            # The client side: our gRPC clients inject the context; here by hand, as the
            # seed's plain-grpc client would with opentelemetry's propagator.
            from opentelemetry import propagate

            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            acks = _chat(
                proxy.target, [packet(f"t:{i}", X) for i in range(2)], list(carrier.items())
            )
        assert [a.status for a in acks] == [pb.OK, pb.OK]
        s = proxy.scrape()
    finally:
        out, err = proxy.stop()
    ctx = client.get_span_context()
    spans = _console_spans(out)
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
    (server,) = by_name[f"{SERVICE_NAME}/Chat"]
    assert server["kind"] == "SpanKind.SERVER"
    assert server["context"]["trace_id"] == _hex(ctx.trace_id, 32)
    assert server["parent_id"] == _hex(ctx.span_id, 16)
    assert server["resource"]["attributes"]["service.name"] == "proxy-under-test"
    infers = by_name["triton ModelInfer"]
    assert len(infers) == 2, (out[-3000:], err[-3000:])
    for span in infers:
        assert span["kind"] == "SpanKind.CLIENT"
        assert span["context"]["trace_id"] == server["context"]["trace_id"]
        assert span["parent_id"] == server["context"]["span_id"]
        assert span["attributes"]["truss_stream.model"] == "add_one_fp32"
        assert span["status"]["status_code"] == "UNSET"
    labels = {"backend": "triton", "method": "ModelInfer", "model": "add_one_fp32"}
    assert value(s, "truss_stream_proxy_backend_calls_total", **labels, code="OK") == 2
    assert value(s, "truss_stream_proxy_backend_duration_seconds_count", **labels) == 2
    probes = {"backend": "triton", "method": "ServerReady", "model": "other", "code": "OK"}
    assert value(s, "truss_stream_proxy_backend_calls_total", **probes) >= 1
    assert value(s, "truss_stream_proxy_packets_total", model="add_one_fp32", status="OK") == 2
    assert value(s, "truss_stream_proxy_upstream_up") == 1


async def _health(stub: Any, service: str) -> int:
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(response.status)


async def _wait_health(stub: Any, service: str, status: int, timeout: float = 120) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (got := await _health(stub, service)) != status:
        assert loop.time() < deadline, f"{service!r} still {got}, expected {status}"
        await asyncio.sleep(0.1)


@pytest.mark.triton
async def test_health_follows_triton_down_and_back(spare_triton: TritonProcess) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    async with (
        running_proxy(triton_url=spare_triton.url, triton_probe_interval=0.2) as following,
        running_proxy(
            triton_url=spare_triton.url, triton_probe_interval=0.2, health_follows_triton=False
        ) as ignoring,
        grpc.aio.insecure_channel(f"127.0.0.1:{following.port}") as ch1,
        grpc.aio.insecure_channel(f"127.0.0.1:{ignoring.port}") as ch2,
    ):
        follow = health_pb2_grpc.HealthStub(ch1)
        ignore = health_pb2_grpc.HealthStub(ch2)
        for service in ("", SERVICE_NAME, "liveness"):
            assert await _health(follow, service) == serving
        await asyncio.to_thread(spare_triton.stop)
        try:
            await _wait_health(follow, "", not_serving, timeout=30)
            assert await _health(follow, SERVICE_NAME) == not_serving
            assert await _health(follow, "liveness") == serving
            assert await _health(ignore, "") == serving
            assert following.observability is not None
            probe = following.observability.probe
            assert probe is not None
            assert probe.ready is False
        finally:
            await asyncio.to_thread(spare_triton.start)
        await _wait_health(follow, "", serving)
        assert await _health(follow, SERVICE_NAME) == serving
