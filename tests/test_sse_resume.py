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
from transports.sse import StreamResumeError
from truss_stream import (
    Codec,
    ServerGoingAwayError,
    StreamTruncatedError,
    error_frame,
    stream_types,
    stream_writer,
)


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


def app(
    cuts: list[int], *, server: str = "replays", going_away: bool = False
) -> tuple[Starlette, list[str | None]]:
    """A producer; request k drops the connection after ``cuts[k]`` frames.

    ``server``: ``"replays"`` (resumes from Last-Event-ID, same stream id),
    ``"restarts"`` (ignores Last-Event-ID: the producer starts over from zero),
    ``"new-stream"`` (numbers from the requested position, but another stream id),
    ``"old"`` (replays, without the integrity headers: an older server).
    ``going_away``: the cut is a going-away ERROR frame instead of a dropped connection.
    """
    seen_ids: list[str | None] = []

    async def produce(cut_after: int | None) -> AsyncIterator[bytes | memoryview]:
        writer = stream_writer(TYPES)
        frames = [writer.yield_header(Header(name="h"))]
        frames += [writer.yield_item(Item(index=i)) for i in range(N_ITEMS)]
        frames += [writer.yield_footer(Footer(count=N_ITEMS)), writer.yield_end()]
        for n, frame in enumerate(frames):
            if n == cut_after:
                await anyio.sleep(0.05)  # let the frames before the cut go out
                if going_away:
                    yield error_frame(ServerGoingAwayError(), Codec.JSON)
                    return
                raise _Cut
            yield frame
            await anyio.sleep(0)

    async def endpoint(request: Request) -> Response:
        seen_ids.append(request.headers.get("last-event-id"))
        k = len(seen_ids) - 1
        cut = cuts[k] if k < len(cuts) else None
        if server == "restarts":
            return sse.sse_response(produce(cut), stream_id="job-1")
        position = sse.resume_position(request.headers)
        frames = sse.replay_from(produce(cut), position)
        if server == "old":
            response = sse.sse_response(frames, first_id=position)
            del response.headers["truss-stream-position"]
            return response
        stream_id = f"job-{k}" if server == "new-stream" else "job-1"
        return sse.sse_response(frames, first_id=position, stream_id=stream_id)

    return Starlette(routes=[Route("/s", endpoint)]), seen_ids


def read_all(
    url: str, mode: str, attempts: int, got: list[int] | None = None
) -> tuple[Any, list[int], Any]:
    """Read the whole stream; ``got`` collects the items as they arrive."""
    items = [] if got is None else got
    if mode == "sync":
        with (
            httpx.Client() as client,
            sse.connect(client, "GET", url, TYPES, resume_attempts=attempts) as reader,
        ):
            header = reader.read_header()
            for item in reader.read_items():
                items.append(item.index)
            return header, items, reader.read_footer()

    async def main() -> tuple[Any, list[int], Any]:
        async with (
            httpx.AsyncClient() as client,
            sse.aconnect(client, "GET", url, TYPES, resume_attempts=attempts) as reader,
        ):
            header = await reader.read_header()
            async for item in reader.read_items():
                items.append(item.index)
            return header, items, await reader.read_footer()

    return anyio.run(main)


@pytest.mark.parametrize("server", ["replays", "old"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_dropped_connections_resume_where_they_stopped(mode: str, server: str) -> None:
    application, seen_ids = app(cuts=[4, 9], server=server)
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


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_producer_that_restarts_from_zero_is_caught_not_duplicated(mode: str) -> None:
    """The issue's case: every reconnect restarted the producer; 19 duplicates got through."""
    application, seen_ids = app(cuts=[6, 6, 6, 6, 6, 6], server="restarts")
    got: list[int] = []
    with live_server(application) as server, pytest.raises(StreamResumeError) as info:
        read_all(f"{server.url}/s", mode, attempts=5, got=got)
    assert got == list(range(5))  # the frames before the first cut, once each
    assert len(seen_ids) == 2  # the first resumed response was refused
    assert info.value.expected_position == 6
    assert info.value.position == 0
    assert "HEADER frame" not in str(info.value)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_another_stream_at_the_right_position_is_caught(mode: str) -> None:
    application, _ = app(cuts=[6], server="new-stream")
    with live_server(application) as server, pytest.raises(StreamResumeError) as info:
        read_all(f"{server.url}/s", mode, attempts=3)
    assert (info.value.expected_stream_id, info.value.stream_id) == ("job-0", "job-1")


def test_an_old_server_that_restarts_is_caught_by_its_ids() -> None:
    """Without Truss-Stream-Position the client checks the first resumed id instead."""

    async def produce() -> AsyncIterator[bytes]:
        writer = stream_writer(TYPES)
        yield writer.yield_header(Header(name="h"))
        for i in range(3):
            yield writer.yield_item(Item(index=i))
        await anyio.sleep(0.05)
        raise _Cut

    async def endpoint(request: Request) -> Response:
        response = sse.sse_response(produce())
        del response.headers["truss-stream-position"]
        return response

    application = Starlette(routes=[Route("/s", endpoint)])
    with live_server(application) as server, pytest.raises(StreamResumeError, match="first id"):
        read_all(f"{server.url}/s", "sync", attempts=2)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_server_going_away_is_resumed(mode: str) -> None:
    application, seen_ids = app(cuts=[5], going_away=True)
    with live_server(application) as server:
        header, items, footer = read_all(f"{server.url}/s", mode, attempts=2)
    assert (header.name, footer.count) == ("h", N_ITEMS)
    assert items == list(range(N_ITEMS))
    assert seen_ids == [None, "4"]


def test_server_going_away_without_attempts_raises_it() -> None:
    application, _ = app(cuts=[5], going_away=True)
    with live_server(application) as server, pytest.raises(ServerGoingAwayError):
        read_all(f"{server.url}/s", "async", attempts=0)


def test_a_caller_resume_counts_from_the_first_responses_position() -> None:
    """A first request that carries its own Last-Event-ID starts mid-stream, and resumes too."""
    application, seen_ids = app(cuts=[8])
    with (
        live_server(application) as server,
        httpx.Client() as client,
        sse.connect(
            client,
            "GET",
            f"{server.url}/s",
            TYPES,
            resume_attempts=2,
            headers={"Last-Event-ID": "3"},  # frames 0-3 (header, items 0-2) seen earlier
        ) as reader,
    ):
        items = [item.index for item in reader.read_items()]
        footer = reader.read_footer()
    assert items == list(range(3, N_ITEMS))
    assert footer.count == N_ITEMS
    assert seen_ids == ["3", "7"]
