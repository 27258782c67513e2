"""The JSON codec against the real ``truss_chains.streaming`` (the ``truss`` package)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterable
from typing import Any

import numpy as np
import pydantic
import pytest
from core_helpers import assert_array_equal, read_all

import truss_stream as ts

tc_streaming = pytest.importorskip("truss_chains.streaming")
NumpyArrayField = pytest.importorskip("truss_chains.pydantic_numpy").NumpyArrayField


# Our side: NDArray fields ---------------------------------------------------------------


class OurHeader(pydantic.BaseModel):
    model: str


class OurItem(pydantic.BaseModel):
    index: int
    words: list[str]
    tensor: ts.NDArray


class OurFooter(pydantic.BaseModel):
    total: int


# Their side: NumpyArrayField ------------------------------------------------------------


class TheirHeader(pydantic.BaseModel):
    model: str


class TheirItem(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
    index: int
    words: list[str]
    tensor: NumpyArrayField


class TheirFooter(pydantic.BaseModel):
    total: int


OUR_TYPES = ts.stream_types(OurItem, header_type=OurHeader, footer_type=OurFooter, codec="json")
THEIR_TYPES = tc_streaming.stream_types(TheirItem, header_type=TheirHeader, footer_type=TheirFooter)

ARRAYS = [
    np.arange(12, dtype=np.float32).reshape(3, 4),
    np.array([[True, False]]),
    np.arange(5, dtype=np.int64),
    np.array(2.5, dtype=np.float64),
    np.zeros((0, 3), dtype=np.uint8),
    np.array([1 + 2j, -3j], dtype=np.complex64),
    np.array(["ab", "xyz"], dtype="<U3"),
]


async def _aiter(chunks: Iterable[Any]) -> AsyncIterator[Any]:
    for chunk in chunks:
        yield chunk


def our_frames() -> list[Any]:
    writer = ts.stream_writer(OUR_TYPES)
    frames = [writer.yield_header(OurHeader(model="m"))]
    for i, array in enumerate(ARRAYS):
        frames.append(writer.yield_item(OurItem(index=i, words=["a", "b"] * i, tensor=array)))
    frames.append(writer.yield_footer(OurFooter(total=len(ARRAYS))))
    frames.append(writer.yield_end())
    return frames


def their_frames() -> list[Any]:
    writer = tc_streaming.stream_writer(THEIR_TYPES)
    frames = [writer.yield_header(TheirHeader(model="m"))]
    for i, array in enumerate(ARRAYS):
        item = TheirItem(index=i, words=["a", "b"] * i, tensor=NumpyArrayField(array))
        frames.append(writer.yield_item(item))
    frames.append(writer.yield_footer(TheirFooter(total=len(ARRAYS))))
    return frames


@pytest.mark.anyio
async def test_truss_chains_reader_reads_our_json_stream() -> None:
    reader = tc_streaming.stream_reader(THEIR_TYPES, _aiter(bytes(f) for f in our_frames()))
    assert (await reader.read_header()).model == "m"
    items = [item async for item in reader.read_items()]
    assert [item.index for item in items] == list(range(len(ARRAYS)))
    for item, array in zip(items, ARRAYS, strict=True):
        assert_array_equal(item.tensor.array, array)
        assert item.words == ["a", "b"] * item.index
    assert (await reader.read_footer()).total == len(ARRAYS)


@pytest.mark.anyio
async def test_truss_chains_reader_reads_our_stream_without_header_or_footer() -> None:
    class OurPoint(pydantic.BaseModel):
        x: int

    writer = ts.stream_writer(ts.stream_types(OurPoint, codec="json"))
    frames = [bytes(writer.yield_item(OurPoint(x=i))) for i in range(3)]
    frames.append(bytes(writer.yield_end()))
    reader = tc_streaming.stream_reader(tc_streaming.stream_types(OurPoint), _aiter(frames))
    assert [p.x async for p in reader.read_items()] == [0, 1, 2]


def test_our_json_frames_are_byte_identical_to_truss_chains_frames() -> None:
    class Point(pydantic.BaseModel):
        x: int
        label: str

    ours = ts.stream_writer(ts.stream_types(Point, codec="json"))
    theirs = tc_streaming.stream_writer(tc_streaming.stream_types(Point))
    for i in range(3):
        point = Point(x=i, label=f"p{i} é")
        assert bytes(ours.yield_item(point)) == bytes(theirs.yield_item(point))


def test_our_reader_reads_truss_chains_stream_with_require_end_false(read: Any) -> None:
    header, items, footer = read_all(read(OUR_TYPES, their_frames(), require_end=False), OUR_TYPES)
    assert header.model == "m"
    for item, array in zip(items, ARRAYS, strict=True):
        assert_array_equal(item.tensor, array)
    assert footer.total == len(ARRAYS)


def test_our_reader_reads_truss_chains_stream_in_one_byte_chunks(read: Any) -> None:
    data = b"".join(bytes(f) for f in their_frames())
    chunks = [data[i : i + 1] for i in range(len(data))]
    _, items, footer = read_all(read(OUR_TYPES, chunks, require_end=False), OUR_TYPES)
    assert len(items) == len(ARRAYS)
    assert footer.total == len(ARRAYS)


def test_truss_chains_stream_without_end_is_truncated_when_end_is_required(read: Any) -> None:
    with pytest.raises(ts.StreamTruncatedError):
        read_all(read(OUR_TYPES, their_frames()), OUR_TYPES)


def test_truss_chains_big_endian_arrays_arrive_with_equal_values(read: Any) -> None:
    array = np.arange(6, dtype=">i4").reshape(2, 3)
    writer = tc_streaming.stream_writer(tc_streaming.stream_types(TheirItem))
    frame = writer.yield_item(TheirItem(index=0, words=[], tensor=NumpyArrayField(array)))
    types = ts.stream_types(OurItem, codec="json")
    (item,) = read(types, [frame], require_end=False).read_items()
    assert np.array_equal(item.tensor, array)


def test_importing_truss_stream_imports_no_transport_dependency() -> None:
    code = (
        "import sys, truss_stream\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'httpx', 'starlette', 'grpc', 'uvicorn', 'truss_chains', 'anyio'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""
