"""Re-serve Triton results over SSE, typed: proxy -> AsyncTritonBytesStreamer -> sse_response.

Start a proxy (the demo backend needs no Triton), then this app::

    python -m transports.triton.proxy --listen 127.0.0.1:50051 --backend demo
    TRITON_PROXY=127.0.0.1:50051 uvicorn examples.triton_sse:app --port 8001

``GET /triton/add_one?frames=8&codec=json|msgpack`` streams a header (the model's
metadata), one item per frame (status, outputs as arrays, timings) and a footer
(counts, latency percentiles). Read it with the typed SSE reader::

    async with sse.aconnect(client, "GET", "/triton/add_one", triton_stream_types()) as r:
        header = await r.read_header()
        async for item in r.read_items(): ...

or with a browser's ``EventSource`` and ``codec=json``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from transports.sse import sse_response
from transports.triton import AsyncTritonBytesStreamer
from transports.triton.typed import triton_frames, triton_stream_types

MODEL = "add_one_fp32"
SHAPE = (1, 8)
MAX_FRAMES = 10_000


def _frames(n: int) -> Iterator[bytes]:
    for i in range(n):
        yield np.full(SHAPE, i, np.float32).tobytes()


def create_app(proxy_addr: str) -> Starlette:
    """The app, with one streamer (one channel) to the proxy for its lifetime."""
    # The channel opens on first use, inside the server's event loop.
    streamer = AsyncTritonBytesStreamer(proxy_addr, shape=SHAPE, max_in_flight=32)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await streamer.close()

    async def add_one(request: Request) -> Response:
        try:
            frames = int(request.query_params.get("frames", "8"))
        except ValueError as exc:
            raise HTTPException(400, "frames must be an integer") from exc
        if not 0 <= frames <= MAX_FRAMES:
            raise HTTPException(400, f"frames must be within 0..{MAX_FRAMES}")
        codec = request.query_params.get("codec", "msgpack")
        if codec not in ("json", "msgpack"):
            raise HTTPException(400, "codec must be json or msgpack")
        types = triton_stream_types(codec="json" if codec == "json" else "msgpack")
        producer = triton_frames(streamer, MODEL, "1", _frames(frames), types=types)
        return sse_response(producer)

    return Starlette(routes=[Route("/triton/add_one", add_one)], lifespan=lifespan)


app = create_app(os.environ.get("TRITON_PROXY", "127.0.0.1:50051"))
