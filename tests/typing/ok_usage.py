"""Correct use of the typed API: must pass ``mypy --strict`` with no errors."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import numpy as np
import pydantic

import truss_stream as ts


class Header(pydantic.BaseModel):
    request_id: str


class Item(pydantic.BaseModel):
    index: int
    tensor: ts.NDArray


class Footer(pydantic.BaseModel):
    count: int


FULL = ts.stream_types(Item, header_type=Header, footer_type=Footer)
HEADER_ONLY = ts.stream_types(Item, header_type=Header, codec="json")
FOOTER_ONLY = ts.stream_types(Item, footer_type=Footer)
ITEMS_ONLY = ts.stream_types(Item, codec="msgpack")


def produce() -> list[ts.FrameBytes]:
    writer = ts.stream_writer(FULL)
    frames: list[ts.FrameBytes] = [writer.yield_header(Header(request_id="r"))]
    for i in range(3):
        frames.append(writer.yield_item(Item(index=i, tensor=np.zeros(2))))
    frames.append(writer.yield_footer(Footer(count=3)))
    frames.append(writer.yield_end())
    return frames


def produce_items_only() -> list[ts.FrameBytes]:
    writer = ts.stream_writer(ITEMS_ONLY)
    try:
        return [writer.yield_item(Item(index=0, tensor=np.zeros(1))), writer.yield_end()]
    except ts.UnsupportedValueError as exc:
        return [writer.yield_error(exc)]


def consume(chunks: Iterator[bytes]) -> int:
    reader = ts.stream_reader(FULL, chunks, max_frame_bytes=1 << 20)
    header: Header = reader.read_header()
    total = 0
    for item in reader.read_items():
        index: int = item.index
        array: np.ndarray = item.tensor
        total += index + int(array.size)
    footer: Footer = reader.read_footer()
    return total + footer.count + len(header.request_id)


def consume_header_only(chunks: list[bytes]) -> str:
    reader = ts.stream_reader(HEADER_ONLY, chunks)
    header = reader.read_header()
    items: list[Item] = list(reader.read_items())
    return header.request_id + str(len(items))


def consume_footer_only(chunks: list[bytes]) -> int:
    reader = ts.stream_reader(FOOTER_ONLY, chunks, require_end=False)
    n = sum(1 for _ in reader.read_items())
    return n + reader.read_footer().count


async def consume_async(chunks: AsyncIterator[bytes]) -> int:
    reader = ts.stream_reader(FULL, chunks, copy_arrays=True)
    header = await reader.read_header()
    items = [item async for item in reader.read_items()]
    footer = await reader.read_footer()
    return len(header.request_id) + len(items) + footer.count


async def consume_items_only_async(chunks: AsyncIterator[bytes]) -> list[int]:
    reader: ts.AsyncStreamReader[Item, None, None] = ts.stream_reader(ITEMS_ONLY, chunks)
    return [item.index async for item in reader.read_items()]


def catch_everything(chunks: list[bytes]) -> str:
    try:
        consume(iter(chunks))
    except ts.RemoteStreamError as exc:
        return exc.remote_type + exc.remote_message
    except ts.StreamError as exc:
        return str(exc)
    except pydantic.ValidationError as exc:
        return str(exc.error_count())
    return ""


def consume_mixed_chunks(chunks: list[bytearray], views: Iterator[bytes | memoryview]) -> int:
    first = ts.stream_reader(ITEMS_ONLY, chunks)
    second = ts.stream_reader(ITEMS_ONLY, views)
    return len(list(first.read_items())) + len(list(second.read_items()))


async def consume_async_bytearrays(chunks: AsyncIterator[bytearray]) -> int:
    return len([item async for item in ts.stream_reader(ITEMS_ONLY, chunks).read_items()])
