"""Hostile bytes into both readers: frames whose declared sizes lie, bad ext values, deep
or giant msgpack structures.

Only ``StreamError`` subclasses or ``pydantic.ValidationError`` may come out, each case
finishes at once (pytest-timeout would catch a hang), and memory is bounded by the
configured limits, never by what a frame claims (tracemalloc peak).
"""

from __future__ import annotations

import struct
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import pydantic
import pytest
from core_helpers import ReaderFactory

import truss_stream as ts
from truss_stream import Codec, FrameKind, pack_tag


class Loose(pydantic.BaseModel):
    x: Any = None


class WithArray(pydantic.BaseModel):
    a: ts.NDArray


LOOSE = ts.stream_types(Loose)
ARRAY = ts.stream_types(WithArray)
ARRAY_JSON = ts.stream_types(WithArray, codec="json")
LOOSE_JSON = ts.stream_types(Loose, codec="json")
END = pack_tag(FrameKind.END, Codec.MSGPACK, 0)
MiB = 1024 * 1024


def frame(payload: bytes, *, codec: Codec = Codec.MSGPACK, hint: bool = False) -> bytes:
    return pack_tag(FrameKind.ITEM, codec, len(payload), array_hint=hint) + payload


def ext_value(shape: tuple[int, ...], descr: bytes, data: bytes, *, version: int = 1) -> bytes:
    """An NDArray ext payload (docs/wire-format.md) with whatever header we like."""
    header = struct.pack("<BBBB", version, len(shape), len(descr), 0)
    header += struct.pack(f"<{len(shape)}Q", *shape) + descr
    return header + data


def array_item(ext: bytes, *, pad_to: int = 0) -> bytes:
    body: dict[str, Any] = {"a": msgpack.ExtType(1, ext)}
    if pad_to:  # big enough to take the reader's zero-copy structure walk
        body["pad"] = b"\0" * pad_to
    return msgpack.packb(body, use_bin_type=True)


def outcome(read: ReaderFactory, types: Any, data: bytes, chunk: int = 0) -> BaseException | None:
    chunks = [data] if not chunk else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    reader = read(types, chunks)
    started = time.monotonic()
    try:
        list(reader.read_items())
    except (ts.StreamError, pydantic.ValidationError) as exc:
        return exc
    finally:
        assert time.monotonic() - started < 5, "a hostile frame took seconds"
    return None


def peak_bytes(run: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# Lying lengths and claims ---------------------------------------------------------------


@pytest.mark.parametrize("claimed", [2**32 - 1, 2**31, 300 * MiB])
def test_a_frame_claiming_gigabytes_is_refused_without_allocating(
    read: ReaderFactory, claimed: int
) -> None:
    data = struct.pack(">BI", FrameKind.ITEM | Codec.MSGPACK, claimed) + b"\x80" * 64
    errors: list[BaseException | None] = []
    peak = peak_bytes(lambda: errors.append(outcome(read, LOOSE, data)))
    assert isinstance(errors[0], ts.FrameTooLargeError)
    assert peak < 1 * MiB, peak


@pytest.mark.parametrize("chunk", [0, 7, 4096])
def test_a_frame_claiming_the_whole_limit_costs_what_arrived_not_what_it_claims(
    read: ReaderFactory, chunk: int
) -> None:
    # 200 MiB claimed (under the 256 MiB default limit), 64 KiB sent, then the end.
    data = struct.pack(">BI", FrameKind.ITEM | Codec.MSGPACK, 200 * MiB) + b"\0" * 65536
    errors: list[BaseException | None] = []
    peak = peak_bytes(lambda: errors.append(outcome(read, LOOSE, data, chunk)))
    assert isinstance(errors[0], ts.StreamTruncatedError)
    assert peak < 4 * MiB, f"a lying tag cost {peak / MiB:.1f} MiB"


def test_a_big_honest_frame_in_small_chunks_still_decodes(read: ReaderFactory) -> None:
    # Above the eager-assembly size: assembled once half of it is there.
    import numpy as np

    writer = ts.stream_writer(ARRAY)
    array = np.arange(6 * MiB, dtype=np.float32)  # 24 MiB
    data = bytes(writer.yield_item(WithArray(a=array))) + bytes(writer.yield_end())
    reader = read(ARRAY, [data[i : i + MiB] for i in range(0, len(data), MiB)])
    (item,) = list(reader.read_items())
    np.testing.assert_array_equal(item.a, array)


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("map claims 2^32-1 entries", b"\xdf\xff\xff\xff\xff"),
        ("array claims 2^32-1 elements", b"\xdd\xff\xff\xff\xff"),
        ("str claims 4 GiB", b"\xdb\xff\xff\xff\xffabc"),
        ("bin claims 4 GiB", b"\xc6\xff\xff\xff\xffabc"),
        ("ext claims 4 GiB", b"\xc9\xff\xff\xff\xff\x01abc"),
        ("map16 claims 65535 entries", b"\xde\xff\xff"),
        ("nested map claims", b"\x81\xa1k\xdf\x7f\xff\xff\xff"),
    ],
)
@pytest.mark.parametrize("hint", [False, True], ids=["plain", "array-hint"])
def test_giant_declared_counts_raise_malformed_with_bounded_memory(
    read: ReaderFactory, name: str, payload: bytes, hint: bool
) -> None:
    errors: list[BaseException | None] = []
    peak = peak_bytes(lambda: errors.append(outcome(read, LOOSE, frame(payload, hint=hint) + END)))
    assert isinstance(errors[0], ts.MalformedFrameError), (name, errors[0])
    assert peak < 1 * MiB, (name, peak)


@pytest.mark.parametrize("pad", [0, 70_000], ids=["small", "zero-copy-walk"])
@pytest.mark.parametrize(
    ("shape", "descr", "data"),
    [
        ((2**32, 2**32), b"<f4", b""),  # product overflows 64 bits
        ((0, 2**64 - 1), b"<f4", b""),  # empty but beyond NumPy's dimension limit
        ((0, 2**63), b"<U0", b""),
        ((2**40,), b"<U0", b""),  # zero-width dtype claiming a trillion elements
        ((1000, 1000), b"<f8", b"\0" * 16),  # 8 MB claimed, 16 bytes present
        ((3,), b"<f4", b"\0" * 16),  # more bytes than the shape needs
    ],
)
def test_array_shapes_that_lie_raise_before_allocating(
    read: ReaderFactory, shape: tuple[int, ...], descr: bytes, data: bytes, pad: int
) -> None:
    payload = array_item(ext_value(shape, descr, data), pad_to=pad)
    errors: list[BaseException | None] = []
    peak = peak_bytes(lambda: errors.append(outcome(read, ARRAY, frame(payload, hint=True) + END)))
    assert isinstance(errors[0], ts.MalformedFrameError), errors[0]
    assert peak < 2 * MiB, peak


@pytest.mark.parametrize(
    "descr",
    [b"|O", b"|O8", b"|V4", b"<M8", b"<m8", b"<U999999999", b"|b1\x00", b"f4", b"<f\xc3\xa94"],
)
def test_object_void_and_odd_dtypes_on_the_wire_are_refused(
    read: ReaderFactory, descr: bytes
) -> None:
    payload = array_item(ext_value((1,), descr, b"\0" * 8))
    error = outcome(read, ARRAY, frame(payload, hint=True) + END)
    assert isinstance(error, ts.MalformedFrameError), error


@pytest.mark.parametrize("dtype", ["object", "O", "V8", "void", "datetime64", "|O8"])
def test_object_and_void_dtypes_in_json_arrays_are_validation_errors(
    read: ReaderFactory, dtype: str
) -> None:
    body = f'{{"a":{{"data_b64":"AAAAAAAAAAA=","shape":[1],"dtype":"{dtype}"}}}}'.encode()
    error = outcome(read, ARRAY_JSON, frame(body, codec=Codec.JSON) + END)
    assert isinstance(error, pydantic.ValidationError), error


@pytest.mark.parametrize("shape", ["[0,18446744073709551615]", "[0,1e30]", "[-1]", "[1.5]"])
def test_json_arrays_with_impossible_shapes_are_validation_errors(
    read: ReaderFactory, shape: str
) -> None:
    body = f'{{"a":{{"data_b64":"","shape":{shape},"dtype":"float32"}}}}'.encode()
    error = outcome(read, ARRAY_JSON, frame(body, codec=Codec.JSON) + END)
    assert isinstance(error, (pydantic.ValidationError, ts.MalformedFrameError)), error


@pytest.mark.parametrize("code", [0, 2, 42, 126, 127, -1, -128])
@pytest.mark.parametrize("pad", [0, 70_000], ids=["small", "zero-copy-walk"])
def test_unknown_and_reserved_ext_codes_are_refused(
    read: ReaderFactory, code: int, pad: int
) -> None:
    # Hand-built: msgpack's ExtType refuses negative (reserved) codes.
    ext = b"\xc7\x14" + struct.pack("b", code) + b"\0" * 20
    payload = b"\x82\xa1x" + ext + b"\xa3pad" + msgpack.packb(b"\0" * pad, use_bin_type=True)
    error = outcome(read, LOOSE, frame(payload, hint=True) + END)
    if code == -1:  # the timestamp extension: msgpack decodes it itself
        assert error is None or isinstance(error, ts.StreamError)
    else:
        assert isinstance(error, ts.UnknownExtError), error


def test_an_ext_payload_that_lies_about_its_length_is_malformed(read: ReaderFactory) -> None:
    good = array_item(ext_value((2,), b"<f4", b"\0" * 8), pad_to=70_000)
    at = good.index(b"\xc7")  # ext8: one length byte
    for lie in (0, 1, 255):
        bad = good[: at + 1] + bytes([lie]) + good[at + 2 :]
        error = outcome(read, ARRAY, frame(bad, hint=True) + END)
        assert isinstance(error, ts.StreamError), (lie, error)


# Deep nesting -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "payload"),
    [
        ("arrays 100k deep", b"\x91" * 100_000 + b"\xc0"),
        ("maps 100k deep", b"\x81\xc0" * 100_000 + b"\xc0"),
        ("arrays 2M deep", b"\x91" * 2_000_000 + b"\xc0"),
    ],
)
@pytest.mark.parametrize("hint", [False, True], ids=["plain", "array-hint"])
def test_deep_msgpack_nesting_is_malformed_not_a_crash(
    read: ReaderFactory, name: str, payload: bytes, hint: bool
) -> None:
    error = outcome(read, LOOSE, frame(payload, hint=hint) + END)
    assert isinstance(error, ts.MalformedFrameError), (name, error)


@pytest.mark.parametrize("depth", [10_000, 1_000_000])
def test_deep_json_nesting_is_malformed_not_a_crash(read: ReaderFactory, depth: int) -> None:
    body = b'{"x":' + b"[" * depth + b"]" * depth + b"}"
    error = outcome(read, LOOSE_JSON, frame(body, codec=Codec.JSON) + END)
    assert isinstance(error, ts.MalformedFrameError), error


def test_error_frames_are_as_hostile_as_any_other(read: ReaderFactory) -> None:
    cases = [
        msgpack.packb({"type": "X", "message": "\x91" * 10}),
        b"\x91" * 100_000 + b"\xc0",
        b"\xdf\xff\xff\xff\xff",
        msgpack.packb({"type": 1, "message": None}),
        msgpack.packb({"type": "X", "message": msgpack.ExtType(9, b"")}),
    ]
    for payload in cases:
        data = pack_tag(FrameKind.ERROR, Codec.MSGPACK, len(payload)) + payload
        error = outcome(read, LOOSE, data)
        assert isinstance(error, ts.StreamError), (payload[:10], error)
