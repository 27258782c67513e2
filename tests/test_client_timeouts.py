"""Time limits that hold on the SSE and chunked-HTTP clients, sync and async.

``idle_timeout`` is a wait for the next whole frame: SSE pings and partial frames do not
reset it. ``total_timeout`` bounds the whole stream. Each case runs in a thread joined
with a generous bound: before the fix the sync SSE reader was still blocked after 12 s.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from live_server import live_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from transports import http, sse
from transports._httpclient import FrameCounter
from truss_stream import StreamTimeoutError, stream_types, stream_writer


class Item(pydantic.BaseModel):
    index: int
    text: str = ""


TYPES = stream_types(Item)
MODULES: dict[str, Any] = {"sse": sse, "http": http}
BOUND = 10.0  # seconds: far above the limits under test, far below "hangs"


def make_app() -> Starlette:
    async def hangs() -> AsyncIterator[bytes]:
        writer = stream_writer(TYPES)
        yield writer.yield_item(Item(index=0))
        await anyio.sleep(3600)  # a hung model
        yield writer.yield_end()

    async def steady() -> AsyncIterator[bytes]:
        writer = stream_writer(TYPES)
        for i in range(10_000):  # never ends within the test
            yield writer.yield_item(Item(index=i))
            await anyio.sleep(0.3)

    async def trickle() -> AsyncIterator[bytes]:
        """One whole frame, then a frame one byte at a time: never a whole second frame."""
        writer = stream_writer(TYPES)
        yield writer.yield_item(Item(index=0))
        frame = writer.yield_item(Item(index=1, text="x" * 1000))
        for i in range(len(frame)):
            yield frame[i : i + 1]
            await anyio.sleep(0.1)

    endpoints: dict[str, Callable[[], Response]] = {
        "sse/hangs": lambda: sse.sse_response(hangs(), ping_interval=0.2),
        "sse/steady": lambda: sse.sse_response(steady(), ping_interval=0.05),
        "http/hangs": lambda: http.stream_response(hangs()),
        "http/steady": lambda: http.stream_response(steady()),
        "http/trickle": lambda: StreamingResponse(trickle(), media_type=http.MEDIA_TYPE),
    }

    def route(path: str, make: Callable[[], Response]) -> Route:
        async def endpoint(request: Request) -> Response:
            return make()

        return Route(f"/{path}", endpoint)

    return Starlette(routes=[route(path, make) for path, make in endpoints.items()])


def read(url: str, transport: str, mode: str, options: dict[str, Any]) -> None:
    module = MODULES[transport]
    if mode == "sync":
        with (
            httpx.Client() as client,
            module.connect(client, "GET", url, TYPES, reader_options=options) as reader,
        ):
            for _ in reader.read_items():
                pass
        return

    async def main() -> None:
        async with (
            httpx.AsyncClient() as client,
            module.aconnect(client, "GET", url, TYPES, reader_options=options) as reader,
        ):
            async for _ in reader.read_items():
                pass

    anyio.run(main)


def outcome(run: Callable[[], None]) -> BaseException | None:
    """Run ``run`` in a thread; its exception (None if it returned), failing if it hangs."""
    result: list[BaseException | None] = []

    def target() -> None:
        try:
            run()
        except BaseException as exc:
            result.append(exc)
        else:
            result.append(None)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(BOUND)
    assert result, f"still blocked after {BOUND}s"
    return result[0]


@pytest.fixture(scope="module")
def server_url() -> Any:
    with live_server(make_app()) as server:
        yield server.url


CASES = [
    # (route, reader options, the limit that must fire): SSE pings every 0.2 s are not frames.
    ("sse/hangs", {"idle_timeout": 1, "total_timeout": 3}, "idle_timeout"),
    ("http/hangs", {"idle_timeout": 1, "total_timeout": 3}, "idle_timeout"),
    ("sse/steady", {"idle_timeout": 1, "total_timeout": 1.5}, "total_timeout"),
    ("http/steady", {"idle_timeout": 1, "total_timeout": 1.5}, "total_timeout"),
    # A frame arriving one byte per 0.1 s: partial frames are not frames.
    ("http/trickle", {"idle_timeout": 1}, "idle_timeout"),
]


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(("route", "options", "limit"), CASES, ids=[c[0] for c in CASES])
def test_the_limit_holds(
    server_url: str, route: str, options: dict[str, Any], limit: str, mode: str
) -> None:
    transport = route.split("/")[0]
    exc = outcome(lambda: read(f"{server_url}/{route}", transport, mode, options))
    assert isinstance(exc, StreamTimeoutError)
    assert limit in str(exc)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=300), max_size=8),
    st.lists(st.integers(min_value=0, max_value=5000), max_size=10),
)
def test_frame_counter_counts_whole_frames_however_split(sizes: list[int], cuts: list[int]) -> None:
    """What the chunked client's idle clock relies on: a frame counts once it is whole."""
    writer = stream_writer(TYPES)
    frames = [writer.yield_item(Item(index=i, text="x" * n)) for i, n in enumerate(sizes)]
    frames.append(writer.yield_end())  # an empty payload: whole with its tag
    body = b"".join(frames)
    ends = set(itertools.accumulate(len(f) for f in frames))
    points = sorted({c % (len(body) + 1) for c in cuts} | {len(body)})
    counter, done, start = FrameCounter(), 0, 0
    for point in points:
        done += counter.feed(body[start:point])
        assert done == sum(1 for end in ends if end <= point)
        start = point
    assert done == len(frames)
