"""SSE resume with Last-Event-ID: a dropped connection is resumed, nothing lost or repeated."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pydantic
import pytest
from live_server import live_server
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from transports import sse
from truss_stream import StreamTruncatedError, stream_types, stream_writer


class Header(pydantic.BaseModel):
    name: str


class Item(pydantic.BaseModel):
    index: int


class Footer(pydantic.BaseModel):
    count: int


TYPES = stream_types(Item, header_type=Header, footer_type=Footer, codec="json")
N_ITEMS = 12


class _Cut(BaseException):
    """Escapes the response guard: uvicorn drops the connection mid-body."""


def app(cuts: list[int]) -> tuple[Starlette, list[str | None]]:
    """A replaying producer; request k drops the connection after ``cuts[k]`` frames."""
    seen_ids: list[str | None] = []

    async def produce(cut_after: int | None) -> AsyncIterator[bytes | memoryview]:
        writer = stream_writer(TYPES)
        frames = [writer.yield_header(Header(name="h"))]
        frames += [writer.yield_item(Item(index=i)) for i in range(N_ITEMS)]
        frames += [writer.yield_footer(Footer(count=N_ITEMS)), writer.yield_end()]
        for n, frame in enumerate(frames):
            if n == cut_after:
                await anyio.sleep(0.05)  # let the frames before the cut go out
                raise _Cut
            yield frame
            await anyio.sleep(0)

    async def endpoint(request: Request) -> Response:
        seen_ids.append(request.headers.get("last-event-id"))
        position = sse.resume_position(request.headers)
        k = len(seen_ids) - 1
        cut = cuts[k] if k < len(cuts) else None
        return sse.sse_response(sse.replay_from(produce(cut), position), first_id=position)

    return Starlette(routes=[Route("/s", endpoint)]), seen_ids


def read_all(url: str, mode: str, attempts: int) -> tuple[Any, list[int], Any]:
    if mode == "sync":
        with (
            httpx.Client() as client,
            sse.connect(client, "GET", url, TYPES, resume_attempts=attempts) as reader,
        ):
            header = reader.read_header()
            items = [item.index for item in reader.read_items()]
            return header, items, reader.read_footer()

    async def main() -> tuple[Any, list[int], Any]:
        async with (
            httpx.AsyncClient() as client,
            sse.aconnect(client, "GET", url, TYPES, resume_attempts=attempts) as reader,
        ):
            header = await reader.read_header()
            items = [item.index async for item in reader.read_items()]
            return header, items, await reader.read_footer()

    return anyio.run(main)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_dropped_connections_resume_where_they_stopped(mode: str) -> None:
    application, seen_ids = app(cuts=[4, 9])
    with live_server(application) as server:
        header, items, footer = read_all(f"{server.url}/s", mode, attempts=3)
    assert header.name == "h"
    assert items == list(range(N_ITEMS))
    assert footer.count == N_ITEMS
    assert seen_ids == [None, "3", "8"]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_without_resume_a_drop_is_a_truncation(mode: str) -> None:
    application, seen_ids = app(cuts=[4])
    with live_server(application) as server, pytest.raises(StreamTruncatedError):
        read_all(f"{server.url}/s", mode, attempts=0)
    assert seen_ids == [None]


def test_attempts_run_out() -> None:
    application, seen_ids = app(cuts=[4, 6, 8])
    with live_server(application) as server, pytest.raises(StreamTruncatedError):
        read_all(f"{server.url}/s", "async", attempts=2)
    assert len(seen_ids) == 3


def test_resume_position_parses_last_event_id() -> None:
    assert sse.resume_position({}) == 0
    assert sse.resume_position({"last-event-id": "41"}) == 42
    with pytest.raises(HTTPException):
        sse.resume_position({"last-event-id": "x1"})
