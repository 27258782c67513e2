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

``GET /triton/tokens?prompt=...&codec=json|msgpack`` streams a token model's responses
as they arrive (``stream_tokens``: the demo backend's generator twin of the PyTriton
decoupled model): a header (the model and the prompt), one item per token (``seq``,
``index``, ``final``, ``outputs["TOKEN"]`` as UTF-8 bytes) and a footer (counts,
time to first response). Read it with ``triton_response_types()``, or open
``/tokens?prompt=...`` in a browser: ``examples/browser/tokens.html`` reads it with the JS
package's SSE-over-fetch reader (``make js`` builds it) and renders each token as it arrives.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from transports.sse import sse_response
from transports.triton import AsyncTritonBytesStreamer
from transports.triton.typed import (
    triton_frames,
    triton_response_types,
    triton_responses,
    triton_stream_types,
)

ROOT = Path(__file__).resolve().parent.parent
TOKENS_PAGE = ROOT / "examples" / "browser" / "tokens.html"
"""``GET /tokens?prompt=...``: a page rendering the token stream as it arrives."""
JS_DIST = ROOT / "js" / "dist"
MODEL = "add_one_fp32"
SHAPE = (1, 8)
MAX_FRAMES = 10_000
TOKEN_MODEL = "stream_tokens"
PROMPT_BYTES = 1024
"""Prompts are padded with spaces to this many bytes: one input shape for every request
(the model splits on whitespace, so the padding adds no token)."""


def prompt_frame(prompt: str) -> bytes:
    """The prompt as the model's UINT8 [PROMPT_BYTES] input.

    Raises:
        ValueError: the prompt is longer than PROMPT_BYTES in UTF-8.
    """
    data = prompt.encode()
    if len(data) > PROMPT_BYTES:
        raise ValueError(f"the prompt is {len(data)} bytes, above {PROMPT_BYTES}")
    return data.ljust(PROMPT_BYTES, b" ")


def _frames(n: int) -> Iterator[bytes]:
    for i in range(n):
        yield np.full(SHAPE, i, np.float32).tobytes()


def create_app(proxy_addr: str) -> Starlette:
    """The app, with one streamer (one channel) to the proxy for its lifetime."""
    # The channel opens on first use, inside the server's event loop.
    streamer = AsyncTritonBytesStreamer(proxy_addr, shape=SHAPE, max_in_flight=32)
    tokens = AsyncTritonBytesStreamer(proxy_addr, shape=(PROMPT_BYTES,), max_in_flight=4)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await streamer.close()
            await tokens.close()

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

    async def token_stream(request: Request) -> Response:
        prompt = request.query_params.get("prompt", "")
        try:
            frame = prompt_frame(prompt)
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from exc
        codec = request.query_params.get("codec", "json")
        if codec not in ("json", "msgpack"):
            raise HTTPException(400, "codec must be json or msgpack")
        types = triton_response_types(codec="json" if codec == "json" else "msgpack")
        producer = triton_responses(
            tokens, TOKEN_MODEL, "1", [frame], request={"prompt": prompt}, types=types
        )
        return sse_response(producer)

    async def tokens_page(request: Request) -> Response:
        return FileResponse(TOKENS_PAGE, media_type="text/html")

    return Starlette(
        routes=[
            Route("/triton/add_one", add_one),
            Route("/triton/tokens", token_stream),
            Route("/tokens", tokens_page),
            Mount("/js/truss-stream", StaticFiles(directory=JS_DIST, check_dir=False)),
        ],
        lifespan=lifespan,
    )


app = create_app(os.environ.get("TRITON_PROXY", "127.0.0.1:50051"))
