"""An SSE server set up for tracing by the SDK's OTEL_* variables (run as a subprocess).

Usage: python traced_server.py PORT. Prints ``READY`` once listening; spans go
wherever OTEL_TRACES_EXPORTER says (the tests use ``console``: stdout).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from obs_helpers import TYPES, Header, Item
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from transports import sse
from transports.observability import configure_tracing
from truss_stream import stream_writer


async def produce() -> AsyncIterator[bytes]:
    from opentelemetry import trace

    writer = stream_writer(TYPES)
    yield writer.yield_header(Header(name="traced"))
    # A span of the producer's own: it must nest under the stream's span.
    with trace.get_tracer("producer").start_as_current_span("produce"):
        for i in range(3):
            yield writer.yield_item(Item(index=i))
    yield writer.yield_end()


async def traced(request: Request) -> Any:
    return sse.sse_response(produce())


def main() -> None:
    configured = configure_tracing()
    app = Starlette(routes=[Route("/traced", traced)])
    config = uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    server = uvicorn.Server(config)
    print(f"CONFIGURED {configured}", flush=True)
    server.run()


if __name__ == "__main__":
    main()
