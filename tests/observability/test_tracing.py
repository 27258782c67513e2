"""Traces with the real OpenTelemetry SDK, across processes; and nothing without it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from obs_helpers import TYPES
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from span_helpers import console_spans, free_port, hex_id

from transports import sse

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE)])
    env.update(extra)
    return env


def test_sse_server_span_is_a_child_of_the_client_span_across_processes() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "traced_server.py"), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(
            OTEL_TRACES_EXPORTER="console",
            OTEL_SERVICE_NAME="sse-under-test",
            OTEL_BSP_SCHEDULE_DELAY="50",
        ),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "CONFIGURED True"
        url = f"http://127.0.0.1:{port}/traced"
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/nothing", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.05)
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("test-client")
        with (
            tracer.start_as_current_span("client") as client_span,
            httpx.Client() as client,
            sse.connect(client, "GET", url, TYPES) as reader,
        ):
            assert reader.read_header().name == "traced"
            assert [i.index for i in reader.read_items()] == [0, 1, 2]
        client_ctx = client_span.get_span_context()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    spans = {s["name"]: s for s in console_spans(out)}
    assert "sse /traced" in spans, (out[-2000:], err[-2000:])
    server = spans["sse /traced"]
    assert server["kind"] == "SpanKind.SERVER"
    assert server["context"]["trace_id"] == hex_id(client_ctx.trace_id, 32)
    assert server["parent_id"] == hex_id(client_ctx.span_id, 16)
    assert server["attributes"]["truss_stream.outcome"] == "complete"
    assert server["attributes"]["truss_stream.items"] == 3
    assert server["attributes"]["truss_stream.frames"] == 5
    assert server["status"]["status_code"] == "UNSET"
    assert server["resource"]["attributes"]["service.name"] == "sse-under-test"
    # The producer's own span ran with the stream's span current.
    assert spans["produce"]["parent_id"] == server["context"]["span_id"]


_NO_OTEL = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == {blocked!r} or name.startswith({blocked!r} + "."):
            raise ImportError(f"blocked: {{name}}")
        return None
sys.meta_path.insert(0, Block())
"""

_STREAM = """
import httpx, logging
from live_server import live_server
from obs_helpers import TYPES, produce
from starlette.applications import Starlette
from starlette.routing import Route
from transports import sse
from transports.observability import configure_tracing, tracing_available, trace_metadata

async def endpoint(request):
    return sse.sse_response(produce(3))

print("available", tracing_available())
print("configured", configure_tracing())
print("metadata", trace_metadata())
with live_server(Starlette(routes=[Route("/s", endpoint)])) as server, httpx.Client() as client:
    with sse.connect(client, "GET", server.url + "/s", TYPES) as reader:
        reader.read_header()
        print("items", len(list(reader.read_items())))
"""


@pytest.mark.parametrize(
    ("blocked", "available"), [("opentelemetry", False), ("opentelemetry.sdk", True)]
)
def test_without_opentelemetry_nothing_happens(blocked: str, available: bool) -> None:
    code = textwrap.dedent(_NO_OTEL.format(blocked=blocked)) + textwrap.dedent(_STREAM)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(
            PYTHONPATH=os.pathsep.join([str(REPO), str(HERE), str(REPO / "tests")]),
            OTEL_TRACES_EXPORTER="console",
        ),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"available {available}",
        "configured False",
        "metadata []",
        "items 3",
    ]
    assert "Traceback" not in result.stderr
    if available:  # the API without an SDK: one clear warning, no spans
        assert "opentelemetry-sdk is not installed" in result.stderr


def test_grpc_clients_send_the_trace_context_when_an_sdk_is_set_up() -> None:
    """gRPC transport client -> stream server, and Triton client -> proxy: one trace each."""
    result = subprocess.run(
        [sys.executable, str(HERE / "grpc_traced.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(OTEL_TRACES_EXPORTER="console", OTEL_BSP_SCHEDULE_DELAY="50"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1].split()
    assert last[0] == "CLIENT"
    clients = [p.split(":") for p in last[1:]]
    (grpc_trace, grpc_span), (triton_trace, triton_span), (sync_trace, sync_span) = clients
    spans = console_spans(result.stdout)
    streams = [s for s in spans if s["name"] == "grpc /truss_stream.FrameStream/Generate"]
    parents = {(s["context"]["trace_id"], s["parent_id"]) for s in streams}
    assert parents == {("0x" + grpc_trace, "0x" + grpc_span), ("0x" + sync_trace, "0x" + sync_span)}
    assert all(s["attributes"]["truss_stream.outcome"] == "complete" for s in streams)
    spans = {s["name"]: s for s in spans}
    call = spans["multimodal.MultimodalService/SendUnary"]
    assert call["context"]["trace_id"] == "0x" + triton_trace
    assert call["parent_id"] == "0x" + triton_span


_NO_PROMETHEUS = """
import runpy, sys
from live_server import live_server
import httpx
from obs_helpers import TYPES, produce
from starlette.applications import Starlette
from starlette.routing import Route
from transports import sse
import transports.observability as obs

async def endpoint(request):
    return sse.sse_response(produce(3))

with live_server(Starlette(routes=[Route("/s", endpoint)])) as server, httpx.Client() as client:
    with sse.connect(client, "GET", server.url + "/s", TYPES) as reader:
        reader.read_header()
        print("items", len(list(reader.read_items())))
try:
    obs.StreamMetrics
except ImportError as exc:
    print("import error:", exc)
sys.argv = ["proxy", "--backend", "demo", "--listen", "127.0.0.1:0"]
sys.argv += ["--metrics-listen", "127.0.0.1:0"]
try:
    runpy.run_module("transports.triton.proxy", run_name="__main__")
except SystemExit as exit:
    print("proxy exit", exit.code)
"""


def test_without_prometheus_client_streams_work_and_the_proxy_says_what_is_missing() -> None:
    code = textwrap.dedent(_NO_OTEL.format(blocked="prometheus_client")) + textwrap.dedent(
        _NO_PROMETHEUS
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(PYTHONPATH=os.pathsep.join([str(REPO), str(HERE), str(REPO / "tests")])),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "items 3"
    assert lines[1].startswith("import error: transports.observability.StreamMetrics needs")
    assert "install truss-stream[metrics]" in lines[1]
    assert lines[-1] == "proxy exit 2"
    assert "--metrics-listen needs prometheus_client" in result.stderr
