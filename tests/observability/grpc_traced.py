"""gRPC transport and Triton client under one SDK set up from OTEL_* (run as a subprocess).

A gRPC stream server and an in-process proxy (demo backend) on loopback; a client span
around each call. Spans go to stdout (OTEL_TRACES_EXPORTER=console); the last line is
``CLIENT`` and ``trace:span`` of the async gRPC, Triton and sync gRPC client spans.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from obs_helpers import TYPES, produce
from opentelemetry import trace

from transports import grpc as tgrpc
from transports.observability import configure_tracing
from transports.triton import AsyncTritonBytesStreamer
from transports.triton.protocol import multimodal_pb2 as pb
from transports.triton.server import ProxyConfig, start_proxy


async def main() -> None:
    assert configure_tracing()
    tracer = trace.get_tracer("client")

    def producer(body: bytes, context: Any) -> AsyncIterator[bytes]:
        return produce(2)

    service = tgrpc.FrameStreamService({"Generate": producer})
    async with tgrpc.serve(service) as running:
        with tracer.start_as_current_span("grpc-client") as grpc_span:
            async with tgrpc.aconnect(running.target, "Generate", TYPES) as reader:
                await reader.read_header()
                assert len([i async for i in reader.read_items()]) == 2

        def sync_client() -> None:
            with tgrpc.connect(running.target, "Generate", TYPES) as reader:
                reader.read_header()
                assert len(list(reader.read_items())) == 2

        with tracer.start_as_current_span("grpc-sync-client") as sync_span:
            await asyncio.to_thread(sync_client)  # to_thread carries the context along
    proxy = await start_proxy(ProxyConfig(listen="127.0.0.1:0", backend="demo"))
    try:
        frame = np.arange(6, dtype=np.float32).reshape(1, 6)
        async with AsyncTritonBytesStreamer(
            f"127.0.0.1:{proxy.port}", "INPUT", (1, 6), pb.DT_FP32, ("OUTPUT",)
        ) as client:
            with tracer.start_as_current_span("triton-client") as triton_span:
                result = await client.send_unary("add_one_fp32", "1", frame.tobytes())
                assert result.ok, result.ack
    finally:
        await proxy.stop(grace=None)
    ids = [s.get_span_context() for s in (grpc_span, triton_span, sync_span)]
    trace.get_tracer_provider().force_flush()  # type: ignore[attr-defined]
    print(
        "CLIENT",
        *(format(c.trace_id, "032x") + ":" + format(c.span_id, "016x") for c in ids),
        flush=True,
    )


asyncio.run(main())
