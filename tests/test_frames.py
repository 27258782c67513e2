"""Bad bytes: truncation at every offset, frame limits, lying arrays, unknown codes."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import pydantic
import pytest
from core_helpers import Item, full_types, read_all, rechunk, sample_frames

import truss_stream as ts


class Tensor(pydantic.BaseModel):
    array: ts.NDArray


def frame(payload: bytes, kind: Any = ts.FrameKind.ITEM, *, hint: bool = False) -> bytes:
    return ts.pack_tag(kind, ts.Codec.MSGPACK, len(payload), array_hint=hint) + payload


def ext_payload(shape: tuple[int, ...], descr: str, data: bytes, *, version: int = 1) -> bytes:
    """An NDArray ext value's bytes as docs/wire-format.md lays them out (no padding)."""
    raw_descr = descr.encode()
    return (
        struct.pack("<BBBB", version, len(shape), len(raw_descr), 0)
        + struct.pack(f"<{len(shape)}Q", *shape)
        + raw_descr
        + data
    )


def tensor_stream(ext: bytes, *, hint: bool) -> list[bytes]:
    payload = msgpack.packb({"array": msgpack.ExtType(ts.NDARRAY_EXT_CODE, ext)})
    return [frame(payload, hint=hint), ts.end_frame()]


def read_tensor(read: Any, frames: list[bytes], **kwargs: Any) -> Any:
    return list(read(ts.stream_types(Tensor), frames, **kwargs).read_items())


# Truncation ------------------------------------------------------------------------------


def boundaries(frames: list[bytes]) -> set[int]:
    ends = {0}
    at = 0
    for f in frames:
        at += len(f)
        ends.add(at)
    return ends


@pytest.mark.parametrize("codec", ["msgpack", "json"])
@pytest.mark.parametrize("chunk", [None, 7])
def test_a_stream_cut_at_any_offset_raises_truncated(read: Any, codec: str, chunk: Any) -> None:
    types = full_types(codec)
    data = b"".join(sample_frames(codec))
    for cut in range(len(data)):
        head = data[:cut]
        chunks = [head] if chunk is None else rechunk(head, [chunk])
        with pytest.raises(ts.StreamTruncatedError):
            read_all(read(types, chunks), types)


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_without_require_end_only_cuts_inside_a_frame_raise_truncated(
    read: Any, codec: str
) -> None:
    types = full_types(codec)
    frames = sample_frames(codec)
    data = b"".join(frames)
    clean = boundaries(frames)
    for cut in range(len(data) + 1):
        reader = read(types, [data[:cut]], require_end=False)
        if cut in clean:
            # A clean cut reads as a shorter stream: what is missing is an order error.
            with contextlib.suppress(ts.StreamOrderError):
                read_all(reader, types)
        else:
            with pytest.raises(ts.StreamTruncatedError):
                read_all(reader, types)


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_a_cut_inside_a_tensor_item_raises_truncated_after_earlier_items(
    read: Any, codec: str
) -> None:
    types = ts.stream_types(Tensor, codec=codec)  # type: ignore[arg-type]
    writer = ts.stream_writer(types)
    first = bytes(writer.yield_item(Tensor(array=np.arange(10))))
    big = bytes(writer.yield_item(Tensor(array=np.ones(50_000, dtype=np.float32))))
    reader = read(types, rechunk(first + big[: len(big) // 2], [4096]))
    items = reader.read_items()
    assert next(items).array[3] == 3
    with pytest.raises(ts.StreamTruncatedError):
        next(items)


def test_a_complete_stream_is_not_truncated(read: Any) -> None:
    types = full_types()
    read_all(read(types, sample_frames()), types)


# Frame size -------------------------------------------------------------------------------


def test_a_tag_declaring_more_than_max_frame_bytes_raises_before_buffering(read: Any) -> None:
    def source() -> Iterator[bytes]:
        yield ts.pack_tag(ts.FrameKind.ITEM, ts.Codec.MSGPACK, 1_000_001)
        raise AssertionError("the reader asked for the payload")

    reader = read(ts.stream_types(Item), list(_take_tag(source())), max_frame_bytes=1_000_000)
    with pytest.raises(ts.FrameTooLargeError) as info:
        list(reader.read_items())
    assert (info.value.length, info.value.limit) == (1_000_001, 1_000_000)


def _take_tag(source: Iterator[bytes]) -> Iterator[bytes]:
    yield next(source)


def test_a_frame_at_max_frame_bytes_is_accepted(read: Any) -> None:
    types = ts.stream_types(Item)
    writer = ts.stream_writer(types)
    item = bytes(writer.yield_item(Item(index=1, text="x" * 100)))
    reader = read(types, [item, writer.yield_end()], max_frame_bytes=len(item) - ts.TAG_SIZE)
    assert [i.index for i in reader.read_items()] == [1]


def test_max_frame_bytes_is_checked_for_every_frame(read: Any) -> None:
    types = ts.stream_types(Item)
    writer = ts.stream_writer(types)
    frames = [writer.yield_item(Item(index=1)), writer.yield_item(Item(index=2, text="y" * 500))]
    reader = read(types, [b"".join(bytes(f) for f in frames)], max_frame_bytes=100)
    items = reader.read_items()
    assert next(items).index == 1
    with pytest.raises(ts.FrameTooLargeError):
        next(items)


# Tags -------------------------------------------------------------------------------------


@pytest.mark.parametrize("byte", [0x43, 0x83, 0xD3])
def test_reserved_codec_bits_raise_unknown_codec(read: Any, byte: int) -> None:
    bad = struct.pack(">BI", byte, 2) + b"{}"
    with pytest.raises(ts.UnknownCodecError):
        list(read(ts.stream_types(Item), [bad, ts.end_frame()]).read_items())


def test_array_hint_on_a_json_frame_raises_unknown_codec(read: Any) -> None:
    bad = struct.pack(">BI", 0x23, 2) + b"{}"
    with pytest.raises(ts.UnknownCodecError):
        list(read(ts.stream_types(Item), [bad]).read_items())


@pytest.mark.parametrize("kind", [0, 1, 7, 15])
def test_unknown_frame_kinds_are_malformed(read: Any, kind: int) -> None:
    bad = struct.pack(">BI", 0x10 | kind, 1) + b"\x80"
    with pytest.raises(ts.MalformedFrameError):
        list(read(ts.stream_types(Item), [bad, ts.end_frame()]).read_items())


def test_an_end_frame_with_a_payload_is_malformed(read: Any) -> None:
    bad = struct.pack(">BI", 0x15, 1) + b"\x00"
    with pytest.raises(ts.MalformedFrameError):
        list(read(ts.stream_types(Item), [bad]).read_items())


@pytest.mark.parametrize("codec", [ts.Codec.MSGPACK, ts.Codec.JSON])
@pytest.mark.parametrize("payload", [b"", b"\xc1", b"[1,2]", b'{"type": 1}'])
def test_a_malformed_error_frame_is_malformed(read: Any, codec: Any, payload: bytes) -> None:
    bad = ts.pack_tag(ts.FrameKind.ERROR, codec, len(payload)) + payload
    with pytest.raises(ts.MalformedFrameError):
        list(read(ts.stream_types(Item), [bad]).read_items())


@pytest.mark.parametrize("payload", [b"\xc1", b"\x92\x01", b"\x81\xa5index\x01\x00", b"\xdc\xff"])
def test_invalid_msgpack_payloads_are_malformed(read: Any, payload: bytes) -> None:
    with pytest.raises(ts.MalformedFrameError):
        list(read(ts.stream_types(Item), [frame(payload), ts.end_frame()]).read_items())


@pytest.mark.parametrize("payload", [b"{", b'{"index": 1,}', b"\xff\xfe", b""])
def test_invalid_json_payloads_are_malformed(read: Any, payload: bytes) -> None:
    bad = ts.pack_tag(ts.FrameKind.ITEM, ts.Codec.JSON, len(payload)) + payload
    with pytest.raises(ts.MalformedFrameError):
        list(read(ts.stream_types(Item), [bad, ts.end_frame()]).read_items())


# Arrays -----------------------------------------------------------------------------------

BIG = 100_000  # above the zero-copy threshold: the structure-walking path


@pytest.mark.parametrize("n", [4, BIG])
def test_a_well_formed_hand_built_ext_decodes(read: Any, n: int) -> None:
    data = np.arange(n, dtype="<f4").tobytes()
    (item,) = read_tensor(read, tensor_stream(ext_payload((n,), "<f4", data), hint=n == BIG))
    assert item.array[3] == 3.0


@pytest.mark.parametrize("n", [4, BIG])
@pytest.mark.parametrize(
    ("shape", "descr", "extra"),
    [
        pytest.param((5,), "<f4", 0, id="shape-too-big"),
        pytest.param((3,), "<f4", 0, id="shape-too-small"),
        pytest.param((2**40, 2**40), "<f4", 0, id="huge-shape"),
        pytest.param((4,), "<f8", 0, id="dtype-too-wide"),
        pytest.param((4,), "<f4", 1, id="extra-byte"),
        pytest.param((10**12,), "<U0", 0, id="zero-width-dtype"),
    ],
)
def test_lying_array_shapes_raise_malformed(
    read: Any, n: int, shape: tuple[int, ...], descr: str, extra: int
) -> None:
    data = b"\0" * (4 * n + extra)
    scaled = tuple(d * n // 4 if d in (3, 5) else d for d in shape)
    with pytest.raises(ts.MalformedFrameError):
        read_tensor(read, tensor_stream(ext_payload(scaled, descr, data), hint=n == BIG))


@pytest.mark.parametrize(
    "ext",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\x01\x02\x03", id="short-fixed-header"),
        pytest.param(struct.pack("<BBBB", 1, 3, 3, 0) + b"\0" * 8, id="short-shape"),
        pytest.param(struct.pack("<BBBB", 1, 200, 3, 0), id="too-many-dims"),
        pytest.param(ext_payload((1,), "<f4", b"\0" * 4)[:-7], id="cut-descriptor"),
    ],
)
def test_truncated_ext_headers_raise_malformed(read: Any, ext: bytes) -> None:
    with pytest.raises(ts.MalformedFrameError):
        read_tensor(read, tensor_stream(ext, hint=True))


@pytest.mark.parametrize("descr", ["|O8", "|V4", "<M8", "<f3", "xyz", "\xff\xfe", "<i4 "])
def test_unknown_array_dtypes_raise_unknown_ext(read: Any, descr: str) -> None:
    raw = descr.encode("latin-1")
    ext = struct.pack("<BBBB", 1, 1, len(raw), 0) + struct.pack("<Q", 1) + raw + b"\0" * 4
    with pytest.raises(ts.MalformedFrameError):
        read_tensor(read, tensor_stream(ext, hint=False))


def test_an_unknown_ext_version_raises_unknown_ext(read: Any) -> None:
    ext = ext_payload((1,), "<f4", b"\0" * 4, version=2)
    with pytest.raises(ts.UnknownExtError):
        read_tensor(read, tensor_stream(ext, hint=False))


@pytest.mark.parametrize("size", [2, BIG])
@pytest.mark.parametrize("code", [0, 5, 42, -5])
def test_an_unknown_ext_code_raises_unknown_ext(read: Any, code: int, size: int) -> None:
    # ext 32: 0xc9, 4-byte length, signed 1-byte code (negative codes are msgpack's own)
    ext = struct.pack(">BIb", 0xC9, size, code) + b"\0" * size
    payload = b"\x81\xa5array" + ext
    with pytest.raises(ts.UnknownExtError):
        read_tensor(read, [frame(payload, hint=size == BIG), ts.end_frame()])


@pytest.mark.parametrize("size", [2, BIG])
def test_the_writers_internal_placeholder_code_is_refused_on_the_wire(read: Any, size: int) -> None:
    payload = msgpack.packb({"array": msgpack.ExtType(127, b"\0" * size)})
    with pytest.raises(ts.UnknownExtError):
        read_tensor(read, [frame(payload, hint=size == BIG), ts.end_frame()])


def test_a_json_array_whose_base64_does_not_match_its_shape_is_a_validation_error(
    read: Any,
) -> None:
    payload = b'{"array": {"data_b64": "AAAAAA==", "shape": [3], "dtype": "float32"}}'
    bad = ts.pack_tag(ts.FrameKind.ITEM, ts.Codec.JSON, len(payload)) + payload
    with pytest.raises(pydantic.ValidationError):
        read_tensor(read, [bad, ts.end_frame()])


@pytest.mark.parametrize(
    "array_json",
    [
        '{"data_b64": "", "shape": [0, 100000000000000000000], "dtype": "float32"}',
        '{"data_b64": "", "shape": [-1], "dtype": "float32"}',
        '{"data_b64": "", "shape": [0], "dtype": "object"}',
        '{"data_b64": "", "shape": [0], "dtype": "V8"}',
        '{"data_b64": "", "shape": [0], "dtype": "datetime64"}',
        '{"data_b64": "!!!!", "shape": [3], "dtype": "uint8"}',
        '{"data_b64": 5, "shape": [0], "dtype": "uint8"}',
        '{"data_b64": "", "shape": 0, "dtype": "uint8"}',
        '{"data_b64": "", "shape": [0], "dtype": "no-such"}',
    ],
)
def test_bad_json_arrays_are_validation_errors(read: Any, array_json: str) -> None:
    payload = b'{"array": ' + array_json.encode() + b"}"
    bad = ts.pack_tag(ts.FrameKind.ITEM, ts.Codec.JSON, len(payload)) + payload
    with pytest.raises((pydantic.ValidationError, ts.StreamError)):
        read_tensor(read, [bad, ts.end_frame()])


def test_frame_info_checks_a_whole_frame() -> None:
    good = bytes(ts.stream_writer(ts.stream_types(Item)).yield_item(Item(index=1)))
    assert ts.frame_info(good) == (ts.FrameKind.ITEM, ts.Codec.MSGPACK)
    with pytest.raises(ts.MalformedFrameError):
        ts.frame_info(good[:-1])
    with pytest.raises(ts.MalformedFrameError):
        ts.frame_info(good[:3])
