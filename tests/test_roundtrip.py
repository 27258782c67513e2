"""Writer -> reader round trips over both codecs and both readers."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import msgpack
import numpy as np
import pydantic
import pytest
from core_helpers import (
    Footer,
    Header,
    Item,
    Point,
    assert_array_equal,
    full_types,
    read_all,
    rechunk,
    sample_frames,
)

import truss_stream as ts

CODECS = ["msgpack", "json"]


class Tensor(pydantic.BaseModel):
    array: ts.NDArray


class Inner(pydantic.BaseModel):
    name: str
    arrays: list[ts.NDArray]
    meta: dict[str, float]


class Nested(pydantic.BaseModel):
    inner: Inner
    maybe: Inner | None = None
    tags: tuple[str, ...] = ()
    raw: bytes = b""


def roundtrip_array(read: Any, codec: str, array: np.ndarray, **kwargs: Any) -> np.ndarray:
    types = ts.stream_types(Tensor, codec=codec)  # type: ignore[arg-type]
    writer = ts.stream_writer(types)
    frames = [writer.yield_item(Tensor(array=array)), writer.yield_end()]
    (item,) = read(types, frames, **kwargs).read_items()
    return item.array


@pytest.mark.parametrize("codec", CODECS)
def test_header_items_footer_round_trip(read: Any, codec: str) -> None:
    types = full_types(codec)
    header, items, footer = read_all(read(types, sample_frames(codec)), types)
    assert header == Header(request_id="r-1", scale=0.5)
    assert [item.index for item in items] == [0, 1, 2]
    assert items[1].points == [Point(x=1, y=-1)]
    assert_array_equal(items[0].tensor, np.arange(12, dtype=np.float32).reshape(3, 4) * 0)
    assert items[1].tensor is None
    assert footer == Footer(count=3)


@pytest.mark.parametrize("codec", CODECS)
def test_zero_items(read: Any, codec: str) -> None:
    types = full_types(codec)
    header, items, footer = read_all(read(types, sample_frames(codec, n_items=0)), types)
    assert header.request_id == "r-1"
    assert items == []
    assert footer.count == 0


@pytest.mark.parametrize("codec", CODECS)
def test_footer_can_be_read_without_calling_read_items_when_there_are_none(
    read: Any, codec: str
) -> None:
    types = full_types(codec)
    reader = read(types, sample_frames(codec, n_items=0))
    reader.read_header()
    assert reader.read_footer().count == 0
    assert reader.ended


@pytest.mark.parametrize("codec", CODECS)
def test_stream_type_without_header_or_footer(read: Any, codec: str) -> None:
    types = ts.stream_types(Point, codec=codec)  # type: ignore[arg-type]
    writer = ts.stream_writer(types)
    frames = [writer.yield_item(Point(x=i, y=i * i)) for i in range(5)] + [writer.yield_end()]
    reader = read(types, frames)
    assert [p.y for p in reader.read_items()] == [0, 1, 4, 9, 16]
    assert reader.ended


@pytest.mark.parametrize("codec", CODECS)
def test_whole_stream_in_one_chunk_and_in_one_byte_chunks(read: Any, codec: str) -> None:
    types = full_types(codec)
    data = b"".join(sample_frames(codec))
    expected = read_all(read(types, [data]), types)
    assert read_all(read(types, rechunk(data, [1])), types)[2] == expected[2]
    assert [i.index for i in read_all(read(types, rechunk(data, [1])), types)[1]] == [0, 1, 2]


def test_chunks_may_be_bytearray_or_memoryview(read: Any) -> None:
    types = full_types()
    data = b"".join(sample_frames())
    chunks = [bytearray(c) if i % 2 else memoryview(c) for i, c in enumerate(rechunk(data, [7]))]
    assert read_all(read(types, chunks), types)[2].count == 3


@pytest.mark.parametrize("codec", CODECS)
def test_nested_models_with_arrays(read: Any, codec: str) -> None:
    types = ts.stream_types(Nested, codec=codec)  # type: ignore[arg-type]
    value = Nested(
        inner=Inner(
            name="a",
            arrays=[np.arange(3, dtype=np.int16), np.ones((2, 2), dtype=np.float64)],
            meta={"k": 1.5},
        ),
        maybe=Inner(name="b", arrays=[], meta={}),
        tags=("x", "y"),
        raw=b"\x00\xff" if codec == "msgpack" else b"",
    )
    writer = ts.stream_writer(types)
    (got,) = read(types, [writer.yield_item(value), writer.yield_end()]).read_items()
    assert got.inner.name == "a"
    assert got.inner.meta == {"k": 1.5}
    assert_array_equal(got.inner.arrays[0], np.arange(3, dtype=np.int16))
    assert_array_equal(got.inner.arrays[1], np.ones((2, 2)))
    assert got.maybe == value.maybe
    assert got.tags == ("x", "y")
    assert got.raw == value.raw


STANDARD_DTYPES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
]


def sample_array(dtype: Any, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    if dtype.kind == "b":
        flat = np.arange(n) % 2 == 0
    elif dtype.kind == "U":
        flat = np.array([f"é{i}" * (i % 3) for i in range(n)], dtype=dtype)
    elif dtype.kind == "S":
        flat = np.array([b"\x00b" * (i % 3) for i in range(n)], dtype=dtype)
    elif dtype.kind == "c":
        flat = np.arange(n) + 1j * np.arange(n)[::-1]
    else:
        flat = np.arange(n) - (n // 2 if dtype.kind in "if" else 0)
    return np.asarray(flat).astype(dtype).reshape(shape)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", [*STANDARD_DTYPES, "<U5", "S4"])
def test_standard_dtypes_round_trip(read: Any, codec: str, dtype: str) -> None:
    array = sample_array(dtype)
    assert_array_equal(roundtrip_array(read, codec, array), array)


@pytest.mark.parametrize(
    "dtype",
    [*STANDARD_DTYPES, ">f4", ">c16", ">u2", "<U5", ">U3", "S4", "?", "longlong", "intc"],
)
def test_plain_dtypes_shortcut_agrees_with_the_full_dtype_checks(dtype: str) -> None:
    # wire_dtype / parse_descriptor decide plain dtypes by a table (no dtype.name);
    # the answer must be the one the full checks give.
    from truss_stream import _numpy

    wanted = np.dtype(dtype)
    little = wanted.newbyteorder("<") if wanted.byteorder == ">" else wanted
    assert _numpy.wire_dtype(wanted) == (little, little.str)
    assert _numpy.parse_descriptor(little.str) == _numpy._parse_descriptor(little.str)
    assert _numpy.parse_descriptor(little.str) == little


def test_ml_dtype_of_kind_f_still_travels_by_name() -> None:
    # float8_e5m2 reports kind "f" and descriptor "<f1", like no NumPy float.
    from truss_stream import _numpy

    dtype = np.dtype(ml_dtypes.float8_e5m2)
    assert dtype.kind == "f"
    assert _numpy.wire_dtype(dtype) == (dtype, "float8_e5m2")


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(
    "dtype", [ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2]
)
def test_ml_dtypes_round_trip(read: Any, codec: str, dtype: Any) -> None:
    array = np.array([[0.5, -1.0, 2.0], [0.0, 3.0, -0.25]], dtype=dtype)
    got = roundtrip_array(read, codec, array)
    assert got.dtype == np.dtype(dtype)
    assert np.array_equal(got.astype(np.float32), array.astype(np.float32))


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(
    "array",
    [
        pytest.param(np.array(3.25, dtype=np.float32), id="0-d"),
        pytest.param(np.zeros((0,), dtype=np.int32), id="empty"),
        pytest.param(np.zeros((3, 0, 2), dtype=np.float64), id="empty-3d"),
        pytest.param(np.arange(64, dtype=np.int8).reshape((2,) * 6), id="rank-6"),
        pytest.param(np.ones((1,) * 32, dtype=np.uint16), id="rank-32"),
        pytest.param(np.arange(40, dtype=np.int64).reshape(5, 8)[::2, 1::3], id="strided"),
        pytest.param(np.arange(12, dtype=np.float32).reshape(3, 4).T, id="transposed"),
        pytest.param(np.asfortranarray(np.arange(24.0).reshape(2, 3, 4)), id="fortran"),
        pytest.param(np.arange(6, dtype=">i4").reshape(2, 3), id="big-endian-int"),
        pytest.param(np.linspace(0, 1, 5, dtype=">f8"), id="big-endian-float"),
        pytest.param(np.array([1 + 2j], dtype=">c16"), id="big-endian-complex"),
        pytest.param(np.array(["ab", "c"], dtype=">U3"), id="big-endian-str"),
    ],
)
def test_array_layouts_arrive_with_equal_values(read: Any, codec: str, array: Any) -> None:
    got = roundtrip_array(read, codec, array)
    assert_array_equal(got, array)
    assert got.dtype.byteorder in "<|="


@pytest.mark.parametrize("codec", CODECS)
def test_decoded_arrays_are_read_only(read: Any, codec: str) -> None:
    got = roundtrip_array(read, codec, np.arange(4.0))
    assert not got.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        got[0] = 1.0


@pytest.mark.parametrize("codec", CODECS)
def test_large_decoded_arrays_are_read_only(read: Any, codec: str) -> None:
    got = roundtrip_array(read, codec, np.arange(100_000, dtype=np.float32))
    assert not got.flags.writeable


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("size", [4, 100_000])
def test_copy_arrays_gives_writable_arrays(read: Any, codec: str, size: int) -> None:
    got = roundtrip_array(read, codec, np.arange(size, dtype=np.float32), copy_arrays=True)
    got[0] = 42.0
    assert got[0] == 42.0


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize(
    "array",
    [
        pytest.param(np.array([object(), 1], dtype=object), id="object"),
        pytest.param(np.zeros(2, dtype="V4"), id="void"),
        pytest.param(np.zeros(2, dtype=[("a", "<i4"), ("b", "<f4")]), id="structured"),
        pytest.param(np.array(["2024-01-01"], dtype="datetime64[D]"), id="datetime"),
        pytest.param(np.array([1], dtype="timedelta64[s]"), id="timedelta"),
        pytest.param(np.zeros(2, dtype=np.longdouble), id="longdouble"),
        pytest.param(np.zeros(2, dtype=np.clongdouble), id="clongdouble"),
    ],
)
def test_unsupported_dtypes_are_refused_at_write_time(codec: str, array: Any) -> None:
    class Free(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(arbitrary_types_allowed=True)
        array: Any

    types = ts.stream_types(Free, codec=codec)  # type: ignore[arg-type]
    with pytest.raises(ts.UnsupportedValueError):
        ts.stream_writer(types).yield_item(Free(array=array))


@pytest.mark.parametrize("dtype", ["O", "V4", "M8[D]", np.longdouble])
def test_ndarray_field_refuses_unsupported_dtypes_at_validation(dtype: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        Tensor(array=np.zeros(2, dtype=dtype))


def test_msgpack_payload_parses_with_plain_msgpack() -> None:
    types = ts.stream_types(Item)
    frame = bytes(
        ts.stream_writer(types).yield_item(
            Item(index=7, text="t", tensor=np.arange(3, dtype=np.uint8))
        )
    )
    payload = frame[ts.TAG_SIZE :]
    data = msgpack.unpackb(payload, raw=False)
    assert data["index"] == 7
    assert data["text"] == "t"
    assert isinstance(data["tensor"], msgpack.ExtType)
    assert data["tensor"].code == ts.NDARRAY_EXT_CODE
    assert data["tensor"].data.endswith(bytes([0, 1, 2]))


def test_msgpack_frame_tag_carries_kind_codec_and_length() -> None:
    frame = bytes(ts.stream_writer(ts.stream_types(Point)).yield_item(Point(x=1, y=2)))
    kind, codec, _, length = ts.parse_tag(frame[: ts.TAG_SIZE])
    assert (kind, codec, length) == (ts.FrameKind.ITEM, ts.Codec.MSGPACK, len(frame) - 5)
    assert ts.frame_info(frame) == (ts.FrameKind.ITEM, ts.Codec.MSGPACK)


def test_json_frames_use_truss_chains_tags() -> None:
    writer = ts.stream_writer(ts.stream_types(Point, codec="json"))
    frame = bytes(writer.yield_item(Point(x=1, y=2)))
    assert frame[0] == 3
    assert frame[ts.TAG_SIZE :] == b'{"x":1,"y":2}'
    assert bytes(writer.yield_end()) == b"\x05\x00\x00\x00\x00"


@pytest.mark.parametrize("codec", CODECS)
def test_reader_detects_the_codec_of_each_frame(read: Any, codec: str) -> None:
    other = "json" if codec == "msgpack" else "msgpack"
    types = full_types(codec)
    mixed = sample_frames(codec)[:2] + sample_frames(other)[2:]
    header, items, footer = read_all(read(types, mixed), types)
    assert header.request_id == "r-1"
    assert [i.index for i in items] == [0, 1, 2]
    assert footer.count == 3


def test_array_of_a_frame_fed_as_one_chunk_shares_memory_with_the_chunk(read: Any) -> None:
    array = np.arange(1 << 16, dtype=np.float32)
    types = ts.stream_types(Tensor)
    writer = ts.stream_writer(types)
    frame = bytes(writer.yield_item(Tensor(array=array)))
    chunk = np.frombuffer(frame, dtype=np.uint8)
    (item,) = read(types, [frame, writer.yield_end()]).read_items()
    assert np.shares_memory(item.array, chunk)
    assert_array_equal(item.array, array)


def test_msgpack_frame_data_is_aligned_for_zero_copy() -> None:
    array = np.arange(1 << 16, dtype=np.float64)
    frame = bytes(ts.stream_writer(ts.stream_types(Tensor)).yield_item(Tensor(array=array)))
    at = frame.find(array.tobytes())
    assert at > 0
    assert at % 8 == 0


def test_array_of_a_frame_split_over_chunks_is_copied_once_into_one_buffer(read: Any) -> None:
    array = np.arange(1 << 16, dtype=np.float32)
    types = ts.stream_types(Tensor)
    writer = ts.stream_writer(types)
    frame = bytes(writer.yield_item(Tensor(array=array)))
    chunks = [*rechunk(frame, [4096]), bytes(writer.yield_end())]
    (item,) = read(types, chunks).read_items()
    assert_array_equal(item.array, array)
    assert not any(np.shares_memory(item.array, np.frombuffer(c, np.uint8)) for c in chunks)


def test_copy_arrays_does_not_share_memory_with_the_chunk(read: Any) -> None:
    array = np.arange(1 << 16, dtype=np.float32)
    types = ts.stream_types(Tensor)
    writer = ts.stream_writer(types)
    frame = bytes(writer.yield_item(Tensor(array=array)))
    (item,) = read(types, [frame, writer.yield_end()], copy_arrays=True).read_items()
    assert not np.shares_memory(item.array, np.frombuffer(frame, dtype=np.uint8))


def test_writer_frames_are_bytes_with_or_without_arrays() -> None:
    writer = ts.stream_writer(ts.stream_types(Tensor))
    frame = writer.yield_item(Tensor(array=np.arange(3)))
    assert type(frame) is bytes
    assert type(writer.yield_end()) is bytes


def reusing_producer(pieces: list[bytes]) -> Any:
    """Yields one bytearray, refilled in place for every piece (as a recv_into loop does)."""
    buf = bytearray()
    for piece in pieces:
        if len(piece) != len(buf):
            buf = bytearray(len(piece))
        buf[:] = piece
        yield buf
        buf[:] = b"\xff" * len(buf)  # the producer scribbles over its buffer


@pytest.mark.parametrize(
    ("n", "chunk"),
    [
        pytest.param(100_000, None, id="one-frame-per-chunk"),
        pytest.param(1000, 3, id="tiny-chunks"),
        pytest.param(5_000_000, 1 << 16, id="frame-above-16-MiB"),
    ],
)
def test_a_producer_may_reuse_its_buffer_after_yielding_it(read: Any, n: int, chunk: Any) -> None:
    array = np.arange(n, dtype=np.float32)
    types = ts.stream_types(Tensor)
    writer = ts.stream_writer(types)
    frames = [bytes(writer.yield_item(Tensor(array=array))), bytes(writer.yield_end())]
    pieces = frames if chunk is None else rechunk(b"".join(frames), [chunk])
    items = list(read(types, reusing_producer(pieces)).read_items())
    assert_array_equal(items[0].array, array)
