"""One suite, every transport: harnesses x {sync, async} x {seam, connect} x codecs.

Each test serves a producer from a real server on loopback (harness.py) and reads
it back through the transport's client and the typed reader, two ways: through the
transport seam (``open_reader`` over ``harness.sync_transport()``, modes ``sync`` /
``async``) and through the transport's own ``connect`` / ``aconnect`` as users call
them (modes ``sync-connect`` / ``async-connect``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import numpy as np
import pydantic
import pytest

from transports.base import aopen_reader, open_reader
from truss_stream import (
    NDArray,
    RemoteStreamError,
    StreamError,
    StreamTruncatedError,
    stream_types,
    stream_writer,
)

from .harness import HARNESSES, StreamCall, TransportHarness


class Header(pydantic.BaseModel):
    request_id: str
    labels: list[str]


class Item(pydantic.BaseModel):
    index: int
    stream: int = 0
    tensor: NDArray


class Footer(pydantic.BaseModel):
    count: int
    note: str


TYPES = {
    codec: stream_types(Item, header_type=Header, footer_type=Footer, codec=codec)
    for codec in ("msgpack", "json")
}
ITEMS_ONLY = {codec: stream_types(Item, codec=codec) for codec in ("msgpack", "json")}


def tensor(i: int) -> np.ndarray[Any, Any]:
    return np.arange(i * 12, i * 12 + 12, dtype=np.float32).reshape(3, 4) * 0.5


def make_item(i: int, stream: int = 0) -> Item:
    return Item(index=i, stream=stream, tensor=tensor(i))


@pytest.fixture(params=HARNESSES, ids=[h.name for h in HARNESSES])
def harness(request: pytest.FixtureRequest) -> TransportHarness:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=["sync", "async", "sync-connect", "async-connect"])
def mode(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=["msgpack", "json"])
def codec(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


def open_stream(harness: TransportHarness, mode: str, types: Any) -> Any:
    """The reader's context manager for ``mode``: over the seam, or the transport's
    own ``connect`` / ``aconnect`` (sync modes give a sync one, async an async one)."""
    if mode.endswith("connect"):
        call = StreamCall(harness.address, types)
        return harness.connect(call) if mode == "sync-connect" else harness.aconnect(call)
    if mode == "sync":
        return open_reader(harness.sync_transport(), types)
    return aopen_reader(harness.async_transport(), types)


Action = Callable[[], None]


def read_stream(
    harness: TransportHarness,
    mode: str,
    types: Any,
    *,
    after_items: int | None = None,
    action: Action | None = None,
) -> tuple[Any, list[Any], Any]:
    """Read a whole stream (header, items, footer: whichever exist) over ``mode``.

    ``action`` runs once ``after_items`` items were read (to kill the server, say).
    """
    has_header = types.header_type is not None
    has_footer = types.footer_type is not None
    if mode.startswith("sync"):
        with open_stream(harness, mode, types) as reader:
            header = reader.read_header() if has_header else None
            items = []
            for item in reader.read_items():
                items.append(item)
                if action is not None and len(items) == after_items:
                    action()
            footer = reader.read_footer() if has_footer else None
            return header, items, footer

    async def main() -> tuple[Any, list[Any], Any]:
        async with open_stream(harness, mode, types) as reader:
            header = await reader.read_header() if has_header else None
            items = []
            async for item in reader.read_items():
                items.append(item)
                if action is not None and len(items) == after_items:
                    action()
            footer = await reader.read_footer() if has_footer else None
            return header, items, footer

    return asyncio.run(main())


def test_header_items_footer_with_tensors(harness: TransportHarness, mode: str, codec: str) -> None:
    types = TYPES[codec]

    async def produce() -> AsyncIterator[bytes | memoryview]:
        writer = stream_writer(types)
        yield writer.yield_header(Header(request_id="r-1", labels=["a", "b\n", "\u2028"]))
        for i in range(5):
            yield writer.yield_item(make_item(i))
        yield writer.yield_footer(Footer(count=5, note="done\r\n\u2029\x85"))
        yield writer.yield_end()

    with harness.serve(produce):
        header, items, footer = read_stream(harness, mode, types)
    assert header == Header(request_id="r-1", labels=["a", "b\n", "\u2028"])
    assert [item.index for item in items] == list(range(5))
    for i, item in enumerate(items):
        np.testing.assert_array_equal(item.tensor, tensor(i))
        assert item.tensor.dtype == np.float32
    assert footer == Footer(count=5, note="done\r\n\u2029\x85")


def test_zero_items(harness: TransportHarness, mode: str, codec: str) -> None:
    types = TYPES[codec]

    async def produce() -> AsyncIterator[bytes | memoryview]:
        writer = stream_writer(types)
        yield writer.yield_header(Header(request_id="empty", labels=[]))
        yield writer.yield_footer(Footer(count=0, note=""))
        yield writer.yield_end()

    with harness.serve(produce):
        header, items, footer = read_stream(harness, mode, types)
    assert header.request_id == "empty"
    assert items == []
    assert footer.count == 0


def test_missing_end_is_appended(harness: TransportHarness, mode: str, codec: str) -> None:
    types = ITEMS_ONLY[codec]

    async def produce() -> AsyncIterator[bytes | memoryview]:
        writer = stream_writer(types)
        for i in range(3):
            yield writer.yield_item(make_item(i))

    with harness.serve(produce):
        _, items, _ = read_stream(harness, mode, types)
    assert [item.index for item in items] == [0, 1, 2]


def test_producer_error_mid_stream(harness: TransportHarness, mode: str, codec: str) -> None:
    types = TYPES[codec]

    async def produce() -> AsyncIterator[bytes | memoryview]:
        writer = stream_writer(types)
        yield writer.yield_header(Header(request_id="r", labels=[]))
        yield writer.yield_item(make_item(0))
        raise RuntimeError("model exploded at item 1")

    with harness.serve(produce), pytest.raises(RemoteStreamError) as info:
        read_stream(harness, mode, types)
    assert info.value.remote_type == "RuntimeError"
    assert info.value.remote_message == "model exploded at item 1"


def test_producer_error_before_first_frame(
    harness: TransportHarness, mode: str, codec: str
) -> None:
    types = TYPES[codec]

    async def produce() -> AsyncIterator[bytes | memoryview]:
        raise RuntimeError("no model loaded")
        yield b""  # pragma: no cover

    with harness.serve(produce), pytest.raises(StreamError):
        read_stream(harness, mode, types)


def test_killed_server_is_a_truncation(harness: TransportHarness, mode: str, codec: str) -> None:
    types = TYPES[codec]

    async def produce() -> AsyncIterator[bytes | memoryview]:
        writer = stream_writer(types)
        yield writer.yield_header(Header(request_id="r", labels=[]))
        for i in range(2):
            yield writer.yield_item(make_item(i))
        await anyio.sleep(30)  # killed before this ends
        yield writer.yield_item(make_item(99))  # pragma: no cover

    with harness.serve(produce) as served, pytest.raises(StreamTruncatedError):
        read_stream(harness, mode, types, after_items=2, action=served.kill)


def test_client_going_away_closes_the_producer(
    harness: TransportHarness, mode: str, codec: str
) -> None:
    types = TYPES[codec]
    closed = threading.Event()

    async def produce() -> AsyncIterator[bytes | memoryview]:
        writer = stream_writer(types)
        try:
            yield writer.yield_header(Header(request_id="r", labels=[]))
            i = 0
            while True:
                yield writer.yield_item(make_item(i))
                i += 1
                await anyio.sleep(0.005)
        finally:
            closed.set()

    with harness.serve(produce):
        if mode.startswith("sync"):
            with open_stream(harness, mode, types) as reader:
                reader.read_header()
                for item in reader.read_items():
                    if item.index == 3:
                        break
        else:

            async def main() -> None:
                async with open_stream(harness, mode, types) as reader:
                    await reader.read_header()
                    async for item in reader.read_items():
                        if item.index == 3:
                            break

            asyncio.run(main())
        assert closed.wait(5), "the producer was not closed after the client left"


def test_100_concurrent_streams(harness: TransportHarness, codec: str) -> None:
    types = TYPES[codec]
    n_streams, n_items = 100, 20

    async def produce() -> AsyncIterator[bytes | memoryview]:
        # Each request gets its own stream number from a shared counter.
        stream = next(counter)
        writer = stream_writer(types)
        yield writer.yield_header(Header(request_id=str(stream), labels=[]))
        for i in range(n_items):
            yield writer.yield_item(make_item(i, stream))
            if i % 5 == 0:
                await anyio.sleep(0)
        yield writer.yield_footer(Footer(count=n_items, note=str(stream)))

    counter = iter(range(n_streams))

    async def one() -> tuple[Any, list[Any], Any]:
        async with aopen_reader(harness.async_transport(), types) as reader:
            header = await reader.read_header()
            items = [item async for item in reader.read_items()]
            return header, items, await reader.read_footer()

    async def main() -> list[tuple[Any, list[Any], Any]]:
        return await asyncio.gather(*(one() for _ in range(n_streams)))

    with harness.serve(produce):
        results = asyncio.run(main())
    seen = set()
    for header, items, footer in results:
        stream = int(header.request_id)
        seen.add(stream)
        assert footer.note == header.request_id
        assert [(it.stream, it.index) for it in items] == [(stream, i) for i in range(n_items)]
        for item in items:
            np.testing.assert_array_equal(item.tensor, tensor(item.index))
    assert seen == set(range(n_streams))
