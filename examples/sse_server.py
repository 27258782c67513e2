"""The example server: one producer served over SSE and chunked HTTP, plus a browser page.

Run it with uvicorn::

    uvicorn examples.sse_server:app --port 8000

Routes:

- ``GET /``: the browser page (examples/browser/index.html), which reads
  ``/sse/detections?codec=msgpack`` and ``/http/heatmaps`` with the JS package
  (js/, served under ``/js/truss-stream/`` once built: ``make js``);
- ``GET /sse/detections?frames=8&delay_ms=50&codec=json|msgpack``: server-sent events
  (``&fail_at=3`` makes the detector fail at frame 3, to show an ERROR event);
- ``GET /http/detections?...``: the same stream as binary chunked HTTP;
- ``GET /http/heatmaps?frames=8&delay_ms=0``: 2-D float32 tensors (examples/heatmaps.py).
- ``GET /metrics/``: Prometheus metrics (with the ``metrics`` extra), see
  docs/observability.md.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from examples.heatmaps import heatmaps
from examples.shared_types import DETECTIONS, DETECTIONS_JSON, detect
from transports.http import stream_response
from transports.sse import sse_response

PAGE = Path(__file__).parent / "browser" / "index.html"
JS_DIST = Path(__file__).resolve().parent.parent / "js" / "dist"
MAX_FRAMES = 10_000


def _producer(request: Request) -> AsyncIterator[bytes | memoryview]:
    params = request.query_params
    try:
        frames = int(params.get("frames", "8"))
        delay = float(params.get("delay_ms", "0")) / 1000
        fail_at = int(params["fail_at"]) if params.get("fail_at") else None
    except ValueError as exc:
        raise HTTPException(400, "frames, delay_ms and fail_at must be numbers") from exc
    if not 0 <= frames <= MAX_FRAMES or not 0 <= delay <= 10:
        raise HTTPException(400, f"frames must be in [0, {MAX_FRAMES}], delay_ms in [0, 10000]")
    codec = params.get("codec", "msgpack")
    if codec not in ("json", "msgpack"):
        raise HTTPException(400, "codec must be json or msgpack")
    types = DETECTIONS_JSON if codec == "json" else DETECTIONS
    request_id = params.get("request_id") or uuid.uuid4().hex[:12]
    return detect(types, request_id=request_id, frames=frames, delay=delay, fail_at=fail_at)


async def sse_detections(request: Request) -> Response:
    """Detections as server-sent events (JSON codec readable by EventSource)."""
    return sse_response(_producer(request))


async def http_detections(request: Request) -> Response:
    """Detections as a binary chunked body (application/vnd.truss-stream)."""
    return stream_response(_producer(request))


async def http_heatmaps(request: Request) -> Response:
    """Heatmaps (2-D float32 tensors) as a binary chunked body."""
    try:
        frames = int(request.query_params.get("frames", "8"))
        delay = float(request.query_params.get("delay_ms", "0")) / 1000
    except ValueError as exc:
        raise HTTPException(400, "frames and delay_ms must be numbers") from exc
    if not 0 <= frames <= MAX_FRAMES or not 0 <= delay <= 10:
        raise HTTPException(400, f"frames must be in [0, {MAX_FRAMES}], delay_ms in [0, 10000]")
    return stream_response(heatmaps(frames, delay))


async def page(request: Request) -> Response:
    """The browser page."""
    return FileResponse(PAGE, media_type="text/html")


def _metrics_routes() -> list[BaseRoute]:
    try:
        from prometheus_client import make_asgi_app
    except ImportError:  # without the `metrics` extra: no metrics, nothing else changes
        return []
    return [Mount("/metrics", app=make_asgi_app())]


app = Starlette(
    routes=[
        Route("/", page),
        Route("/sse/detections", sse_detections),
        Route("/http/detections", http_detections),
        Route("/http/heatmaps", http_heatmaps),
        # The JS package's build (make js); check_dir=False: the server starts without it.
        Mount("/js/truss-stream", StaticFiles(directory=JS_DIST, check_dir=False)),
        *_metrics_routes(),
    ]
)
