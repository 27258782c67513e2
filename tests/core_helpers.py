"""Test helpers for the core: models, stream builders, and one reader facade over both drivers.

``ReaderFactory("sync" | "async")`` opens a reader over a list of chunks, fed as an
``Iterable`` or an ``AsyncIterable``; the facade's methods are plain calls either way,
so one test body checks both readers (the async one runs on a private event loop).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import numpy as np
import pydantic

import truss_stream as ts


class Header(pydantic.BaseModel):
    request_id: str
    scale: float = 1.0


class Point(pydantic.BaseModel):
    x: int
    y: int


class Item(pydantic.BaseModel):
    index: int
    text: str = ""
    points: list[Point] = []
    tensor: ts.NDArray | None = None


class Footer(pydantic.BaseModel):
    count: int
    note: str | None = None


def full_types(codec: Any = "msgpack") -> Any:
    return ts.stream_types(Item, header_type=Header, footer_type=Footer, codec=codec)


def sample_frames(codec: Any = "msgpack", n_items: int = 3) -> list[bytes]:
    """Header, ``n_items`` items (the first holds a small tensor), footer, END."""
    writer = ts.stream_writer(full_types(codec))
    frames = [bytes(writer.yield_header(Header(request_id="r-1", scale=0.5)))]
    for i in range(n_items):
        tensor = np.arange(12, dtype=np.float32).reshape(3, 4) * i if i == 0 else None
        item = Item(index=i, text=f"item {i}", points=[Point(x=i, y=-i)], tensor=tensor)
        frames.append(bytes(writer.yield_item(item)))
    frames.append(bytes(writer.yield_footer(Footer(count=n_items))))
    frames.append(bytes(writer.yield_end()))
    return frames


def rechunk(data: bytes, sizes: Iterable[int]) -> list[bytes]:
    """Cut ``data`` into chunks of the given sizes (cycled), the last one takes the rest."""
    chunks: list[bytes] = []
    sizes = list(sizes) or [len(data) or 1]
    at = 0
    i = 0
    while at < len(data):
        size = max(1, sizes[i % len(sizes)])
        chunks.append(data[at : at + size])
        at += size
        i += 1
    return chunks


async def _aiter(chunks: Iterable[Any]) -> AsyncIterator[Any]:
    for chunk in chunks:
        yield chunk


class UniformReader:
    """The same three methods over :class:`StreamReader` or :class:`AsyncStreamReader`."""

    def __init__(self, reader: Any, loop: asyncio.AbstractEventLoop | None) -> None:
        self.reader = reader
        self._loop = loop

    def _run(self, coro: Any) -> Any:
        assert self._loop is not None
        return self._loop.run_until_complete(coro)

    def read_header(self) -> Any:
        if self._loop is None:
            return self.reader.read_header()
        return self._run(self.reader.read_header())

    def read_items(self) -> Iterator[Any]:
        if self._loop is None:
            yield from self.reader.read_items()
            return
        items = self.reader.read_items()
        try:
            while True:
                try:
                    yield self._run(items.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            self._run(items.aclose())

    def read_footer(self) -> Any:
        if self._loop is None:
            return self.reader.read_footer()
        return self._run(self.reader.read_footer())

    @property
    def ended(self) -> bool:
        return bool(self.reader.ended)


class ReaderFactory:
    def __init__(self, kind: str) -> None:
        assert kind in ("sync", "async")
        self.kind = kind
        self._loops: list[asyncio.AbstractEventLoop] = []

    def __call__(self, types: Any, chunks: Iterable[Any], **kwargs: Any) -> UniformReader:
        if self.kind == "sync":
            reader = ts.stream_reader(types, iter(chunks), **kwargs)
            assert isinstance(reader, ts.StreamReader)
            return UniformReader(reader, None)
        loop = asyncio.new_event_loop()
        self._loops.append(loop)
        reader = ts.stream_reader(types, _aiter(chunks), **kwargs)
        assert isinstance(reader, ts.AsyncStreamReader)
        return UniformReader(reader, loop)

    def close(self) -> None:
        for loop in self._loops:
            loop.close()
        self._loops.clear()


def read_all(reader: UniformReader, types: Any) -> tuple[Any, list[Any], Any]:
    """(header or None, items, footer or None), reading whatever the stream type declares."""
    header = reader.read_header() if types.header_type is not None else None
    items = list(reader.read_items())
    footer = reader.read_footer() if types.footer_type is not None else None
    return header, items, footer


def assert_array_equal(got: Any, want: np.ndarray) -> None:
    """Equal shape, dtype (up to byte order) and values (NaN equals NaN)."""
    assert isinstance(got, np.ndarray)
    assert got.shape == want.shape
    assert (got.dtype.name, got.dtype.itemsize) == (want.dtype.name, want.dtype.itemsize)
    if want.dtype.kind in "fcV":
        np.testing.assert_array_equal(got, want)
    else:
        assert np.array_equal(got, want)
