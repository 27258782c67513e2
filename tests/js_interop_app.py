"""The server the JS client is tested against (Node and Chromium): the example routes plus
a POST endpoint with auth, a resumable SSE stream that drops its connection on cue, and a
binary stream cut inside a frame. Also the stream files Python writes for the JS reader.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import ml_dtypes
import msgpack
import numpy as np
import pydantic
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

import truss_stream as ts
from examples.sse_server import app as example_app
from transports import sse
from transports.http import MEDIA_TYPE, stream_response

ROOT = Path(__file__).resolve().parent.parent


class EchoHeader(pydantic.BaseModel):
    user: str


class Word(pydantic.BaseModel):
    index: int
    word: str


class Header(pydantic.BaseModel):
    name: str


EVERY_DTYPE = {
    "bool": np.array([True, False, True]),
    "int8": np.array([-128, 0, 127], np.int8),
    "uint8": np.array([0, 1, 255], np.uint8),
    "int16": np.array([-32768, 32767], np.int16),
    "uint16": np.array([0, 65535], np.uint16),
    "int32": np.array([-(2**31), 2**31 - 1], np.int32),
    "uint32": np.array([0, 2**32 - 1], np.uint32),
    "int64": np.array([-(2**63), 2**53 + 1, 2**63 - 1], np.int64),
    "uint64": np.array([0, 2**64 - 1], np.uint64),
    "float16": np.array([1.0, -2.5, 65504.0, np.inf], np.float16),
    "float32": np.array([[0.5, -1.0], [np.inf, np.nan]], np.float32),
    "float64": np.array([math.pi, -0.0, 1e300], np.float64),
    "complex64": np.array([1 + 2j, 3 - 4j], np.complex64),
    "complex128": np.array([0.25 - 0.5j], np.complex128),
    "unicode": np.array(["ab", "\U0001f600", "", "a\0b"], dtype="<U3"),
    "bytes": np.array([b"ab", b"xyz", b"\xff"], dtype="S3"),
    "scalar": np.array(7.0),
    "empty": np.zeros((0, 3), np.float32),
    "fortran": np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
    "bigendian": np.arange(3, dtype=">i4"),
    **{
        name: np.arange(-3, 5).astype(getattr(ml_dtypes, name))
        for name in ("bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e4m3b11fnuz",
                     "float8_e5m2", "float8_e5m2fnuz", "int4")
    },
    "uint4": np.arange(0, 16).astype(ml_dtypes.uint4),
}  # fmt: skip


class Everything(pydantic.BaseModel):
    name: str
    arrays: dict[str, ts.NDArray]


class Footer(pydantic.BaseModel):
    count: int


class Item(pydantic.BaseModel):
    index: int
    tensor: ts.NDArray


N_ITEMS = 10


class _Cut(BaseException):
    """Escapes the response guard: uvicorn drops the connection mid-body."""


def _types(request: Request, item: Any, **parts: Any) -> Any:
    codec = request.query_params.get("codec", "msgpack")
    if codec not in ("json", "msgpack"):
        raise HTTPException(400, "codec must be json or msgpack")
    return ts.stream_types(item, codec=codec, **parts)  # type: ignore[call-overload]


def resumable_frames(codec: str) -> list[bytes]:
    """The resumable stream: header, N_ITEMS tensor items, footer, END."""
    types = ts.stream_types(Item, header_type=Header, footer_type=Footer, codec=codec)  # type: ignore[call-overload]
    writer = ts.stream_writer(types)
    frames = [writer.yield_header(Header(name="resumable"))]
    for i in range(N_ITEMS):
        tensor = np.arange(i * 4, i * 4 + 4, dtype=np.float32).reshape(2, 2)
        frames.append(writer.yield_item(Item(index=i, tensor=tensor)))
    frames += [writer.yield_footer(Footer(count=N_ITEMS)), writer.yield_end()]
    return frames


def going_away_frame(codec: ts.Codec) -> bytes:
    """The ERROR frame of a server shutting down (docs/wire-format.md 6), written by hand."""
    body = {
        "type": "ServerGoingAwayError",
        "message": "the server is shutting down",
        "reason": "going_away",
    }
    payload = json.dumps(body).encode() if codec is ts.Codec.JSON else msgpack.packb(body)
    return ts.pack_tag(ts.FrameKind.ERROR, codec, len(payload)) + payload


def make_app() -> Starlette:
    """A fresh app (its drop schedule counts requests per stream)."""
    requests: dict[str, int] = {}

    async def echo(request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            raise HTTPException(401, "a bearer token is required")
        body = json.loads(await request.body())
        types = _types(request, Word, header_type=EchoHeader)
        writer = ts.stream_writer(types)

        async def produce() -> AsyncIterator[bytes]:
            yield writer.yield_header(EchoHeader(user=auth.removeprefix("Bearer ")))
            for i, word in enumerate(body["words"]):
                yield writer.yield_item(Word(index=i, word=word))
            yield writer.yield_end()

        return sse.sse_response(produce())

    async def resumable(request: Request) -> Response:
        """The resumable stream; request k drops its connection after ``cuts[k]`` frames.

        ``identity=ID`` sends the resume-integrity headers (docs/transports.md) and refuses
        a resume that does not send ``Truss-Stream-Id: ID`` back; ``other_identity=1``
        answers resumes with another identity, ``position_header=N`` with that position;
        ``ignore_last_id=1`` restarts the producer at 0; ``going_away_at=K`` ends the first
        response after K frames with a going-away ERROR (a server shutting down).
        """
        params = request.query_params
        key = str(request.url.query)
        attempt = requests.get(key, 0)
        requests[key] = attempt + 1
        cuts = [int(c) for c in params.get("cuts", "").split(",") if c]
        cut = cuts[attempt] if attempt < len(cuts) else None
        position = 0 if params.get("ignore_last_id") else sse.resume_position(request.headers)
        frames = resumable_frames(params.get("codec", "msgpack"))
        headers: dict[str, str] = {}
        identity = params.get("identity")
        if identity is not None:
            if attempt and request.headers.get("truss-stream-id") != identity:
                raise HTTPException(400, "a resume must name its stream (Truss-Stream-Id)")
            other = attempt and params.get("other_identity")
            headers["Truss-Stream-Id"] = f"{identity}-other" if other else identity
            forced = params.get("position_header") if attempt else None
            headers["Truss-Stream-Position"] = forced if forced is not None else str(position)
        going_away = int(params["going_away_at"]) if params.get("going_away_at") else None
        codec = ts.Codec.JSON if params.get("codec") == "json" else ts.Codec.MSGPACK

        async def produce() -> AsyncIterator[bytes]:
            for n in range(position, len(frames)):
                if n == cut:
                    await anyio.sleep(0.05)  # let the frames before the cut go out
                    raise _Cut
                if attempt == 0 and n == going_away:
                    yield going_away_frame(codec)
                    return
                yield frames[n]
                await anyio.sleep(0)

        return sse.sse_response(produce(), first_id=position, headers=headers)

    async def cut_http(request: Request) -> Response:
        frames = resumable_frames(request.query_params.get("codec", "msgpack"))

        async def produce() -> AsyncIterator[bytes]:
            yield b"".join(frames[:3])
            yield frames[3][: len(frames[3]) // 2]
            await anyio.sleep(0.05)
            raise _Cut

        return StreamingResponse(produce(), media_type=MEDIA_TYPE)

    async def every_dtype(request: Request) -> Response:
        types = _types(request, Everything, header_type=Header, footer_type=Footer)
        writer = ts.stream_writer(types)
        frames = [
            writer.yield_header(Header(name="every dtype")),
            writer.yield_item(Everything(name="all", arrays=EVERY_DTYPE)),
            writer.yield_footer(Footer(count=1)),
            writer.yield_end(),
        ]
        if request.query_params.get("sse"):
            return sse.sse_response(frames)
        return stream_response(frames)

    async def page(request: Request) -> Response:
        return FileResponse(ROOT / "js" / "interop" / "browser.html", media_type="text/html")

    return Starlette(
        routes=[
            Route("/echo", echo, methods=["POST"]),
            Route("/resumable", resumable),
            Route("/cut-http", cut_http),
            Route("/every-dtype", every_dtype),
            Route("/js-test", page),
            Mount("/js", StaticFiles(directory=ROOT / "js")),
            Mount("/", example_app),
        ]
    )
