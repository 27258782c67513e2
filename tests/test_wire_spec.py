"""docs/wire-format.md, statement by statement: each test pins one rule of the spec.

The section numbers in the test names are the spec's; js/ implements the same rules
and tests/test_js_interop.py runs both implementations against each other.
"""

from __future__ import annotations

import datetime
import json
import math
import struct
from typing import Any

import ml_dtypes
import msgpack
import numpy as np
import pydantic
import pytest

import truss_stream as ts


class Tensor(pydantic.BaseModel):
    array: ts.NDArray


class Floats(pydantic.BaseModel):
    x: float


class MaybeFloat(pydantic.BaseModel):
    x: float | None


class Blob(pydantic.BaseModel):
    data: bytes


class Big(pydantic.BaseModel):
    n: int


class When(pydantic.BaseModel):
    at: datetime.datetime


class Header(pydantic.BaseModel):
    name: str


class Footer(pydantic.BaseModel):
    count: int


FULL = ts.stream_types(Tensor, header_type=Header, footer_type=Footer)


def frame(kind: int, payload: bytes, codec: ts.Codec = ts.Codec.MSGPACK) -> bytes:
    return struct.pack(">BI", kind | codec, len(payload)) + payload


def item(value: Any) -> bytes:
    return frame(ts.FrameKind.ITEM, msgpack.packb(value))


def ext(shape: tuple[int, ...], descr: str, data: bytes, pad: bytes = b"") -> msgpack.ExtType:
    raw = descr.encode()
    body = struct.pack("<BBBB", 1, len(shape), len(raw), len(pad)) + struct.pack(
        f"<{len(shape)}Q", *shape
    )
    return msgpack.ExtType(1, body + raw + pad + data)


def read_items(types: Any, frames: list[bytes], **kwargs: Any) -> list[Any]:
    return list(ts.stream_reader(types, frames, **kwargs).read_items())


def read_tensor(value: msgpack.ExtType) -> np.ndarray[Any, Any]:
    items = read_items(ts.stream_types(Tensor), [item({"array": value}), ts.end_frame()])
    array: np.ndarray[Any, Any] = items[0].array
    return array


# 4.1 dtype descriptors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("descr", "itemsize"),
    [
        ("|b1", 1), ("<b1", 1), ("|i1", 1), ("|u1", 1), ("<i2", 2), ("<i4", 4), ("<i8", 8),
        ("<u2", 2), ("<u4", 4), ("<u8", 8), ("<f2", 2), ("<f4", 4), ("<f8", 8), ("<c8", 8),
        ("<c16", 16), ("<U1", 4), ("<U7", 28), ("|S5", 5), ("<S5", 5), (">f4", 4), (">U3", 12),
    ],
)  # fmt: skip
def test_4_1_accepted_descriptors_and_itemsizes(descr: str, itemsize: int) -> None:
    array = read_tensor(ext((2,), descr, b"\0" * 2 * itemsize))
    assert array.dtype.itemsize == itemsize
    assert array.shape == (2,)


@pytest.mark.parametrize(
    "descr",
    ["<i3", "<f1", "<f16", "<c4", "<b2", "|i4", "|f8", "|U5", "<i04", "<U01", "<O8", "<V4",
     "<M8", "f4", "float32", "<i", "bfloat16x", "float8_e8m0fnu", "int2", "<f12"],
)  # fmt: skip
def test_4_1_rejected_descriptors(descr: str) -> None:
    with pytest.raises(ts.UnknownExtError):
        read_tensor(ext((1,), descr, b"\0" * 4))


def test_4_1_zero_width_string_with_elements_is_malformed() -> None:
    assert read_tensor(ext((0,), "<U0", b"")).shape == (0,)
    with pytest.raises(ts.MalformedFrameError):
        read_tensor(ext((3,), "<U0", b""))


def test_4_1_big_endian_descriptors_are_read() -> None:
    array = read_tensor(ext((2,), ">i4", struct.pack(">ii", 1, -2)))
    assert array.tolist() == [1, -2]


ML_DTYPES = {
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "float8_e4m3fnuz": 1,
    "float8_e4m3b11fnuz": 1,
    "float8_e5m2": 1,
    "float8_e5m2fnuz": 1,
    "int4": 1,
    "uint4": 1,
}


@pytest.mark.parametrize(("name", "itemsize"), ML_DTYPES.items())
@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_4_1_ml_dtypes_full_list(name: str, itemsize: int, codec: Any) -> None:
    dtype = np.dtype(getattr(ml_dtypes, name))
    assert dtype.itemsize == itemsize
    array = np.arange(4).astype(dtype)
    types = ts.stream_types(Tensor, codec=codec)
    writer = ts.stream_writer(types)
    got = read_items(types, [writer.yield_item(Tensor(array=array)), writer.yield_end()])[0].array
    assert got.dtype == dtype
    assert got.view(np.uint8).tolist() == array.view(np.uint8).tolist()


def test_4_1_writer_descriptors_are_little_endian() -> None:
    writer = ts.stream_writer(ts.stream_types(Tensor))
    data = writer.yield_item(Tensor(array=np.arange(3, dtype=">i4")))
    assert b"<i4" in data
    assert b">i4" not in data


# 4.1 U and S arrays -------------------------------------------------------------------


def test_4_1_unicode_is_ucs4_nul_padded_and_trailing_nuls_strip() -> None:
    writer = ts.stream_writer(ts.stream_types(Tensor))
    array = np.array(["ab", "\U0001f600"], dtype="<U3")
    data = writer.yield_item(Tensor(array=array))
    raw = "ab\0\U0001f600\0\0".encode("utf-32-le")
    assert raw in data
    got = read_tensor(ext((3,), "<U2", "a\0b\0c\0\0\0".encode("utf-32-le")[:24]))
    assert got.tolist() == ["a", "b", "c"]
    got = read_tensor(ext((1,), "<U4", "a\0b\0".encode("utf-32-le")))
    assert got.tolist() == ["a\0b"]  # only trailing NULs are padding


def test_4_1_bytes_strings_strip_trailing_nuls() -> None:
    got = read_tensor(ext((2,), "|S3", b"ab\0x\0\0"))
    assert got.tolist() == [b"ab", b"x"]


def test_4_1_code_points_above_unicode_are_malformed() -> None:
    with pytest.raises(ts.MalformedFrameError, match="U\\+10FFFF"):
        read_tensor(ext((1,), "<U1", struct.pack("<I", 0x110000)))


def test_4_1_padding_content_is_ignored() -> None:
    array = read_tensor(ext((2,), "|u1", b"\x07\x08", pad=b"\xff\xee\xdd"))
    assert array.tolist() == [7, 8]


def test_4_1_writer_pads_with_zeros_to_8_bytes() -> None:
    writer = ts.stream_writer(ts.stream_types(Tensor))
    data = writer.yield_item(Tensor(array=np.arange(3, dtype="<f8")))
    raw = np.arange(3, dtype="<f8").tobytes()
    at = data.index(raw)
    assert at % 8 == 0
    descr_end = data.index(b"<f8") + 3
    assert set(data[descr_end:at]) <= {0}


# 4.3 msgpack ext codes ----------------------------------------------------------------


def test_4_3_timestamp_ext_is_a_utc_datetime() -> None:
    moment = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc)
    payload = msgpack.packb({"at": moment}, datetime=True)
    (got,) = read_items(ts.stream_types(When), [frame(3, payload), ts.end_frame()])
    assert got.at == moment


@pytest.mark.parametrize("code", [-2, -128, 0, 2, 42, 126, 127])
def test_4_3_other_ext_codes_are_unknown(code: int) -> None:
    # {"n": fixext4(code, b"abcd")}, packed by hand: msgpack-python packs codes 0..127 only.
    payload = b"\x81\xa1n\xd6" + struct.pack("b", code) + b"abcd"
    with pytest.raises(ts.UnknownExtError):
        read_items(ts.stream_types(Big), [frame(3, payload), ts.end_frame()])


# 2 / 1: which error each violation raises ---------------------------------------------


def test_2_unknown_kind_is_malformed() -> None:
    for kind in (0, 1, 7, 15):
        with pytest.raises(ts.MalformedFrameError):
            read_items(ts.stream_types(Big), [frame(kind, b"\x80")])


def test_2_reserved_bits_and_hint_on_json_are_unknown_codec() -> None:
    for byte in (0x43, 0x83, 0x23):  # reserved 0x40, reserved 0x80, hint on a JSON frame
        with pytest.raises(ts.UnknownCodecError):
            read_items(ts.stream_types(Big), [struct.pack(">BI", byte, 2) + b"{}"])


def test_2_end_with_a_payload_is_malformed() -> None:
    with pytest.raises(ts.MalformedFrameError, match="END"):
        read_items(ts.stream_types(Big), [frame(5, b"\x80")])


def test_1_second_header_is_malformed() -> None:
    header = frame(2, msgpack.packb({"name": "a"}))
    reader = ts.stream_reader(FULL, [header, header, ts.end_frame()])
    reader.read_header()
    with pytest.raises(ts.MalformedFrameError, match="HEADER"):
        list(reader.read_items())


def test_1_item_after_footer_is_malformed() -> None:
    arr = ext((0,), "|u1", b"")
    frames = [
        frame(2, msgpack.packb({"name": "a"})),
        frame(4, msgpack.packb({"count": 0})),
        item({"array": arr}),
        ts.end_frame(),
    ]
    reader = ts.stream_reader(FULL, frames)
    reader.read_header()
    assert list(reader.read_items()) == []
    with pytest.raises(ts.MalformedFrameError, match="ITEM frame after the footer"):
        reader.read_footer()


@pytest.mark.parametrize(
    "payload",
    [b"[]", b'{"type": "E"}', b'{"type": 1, "message": "m"}', b"not json", b'"x"'],
)
def test_5_malformed_error_payload(payload: bytes) -> None:
    with pytest.raises(ts.MalformedFrameError, match="ERROR"):
        read_items(ts.stream_types(Big), [frame(6, payload, ts.Codec.JSON)])


def test_5_error_payload_exact_bytes() -> None:
    json_writer = ts.stream_writer(ts.stream_types(Big, codec="json"))
    assert json_writer.yield_error(ValueError("é 'x'"))[5:] == (
        b'{"type": "ValueError", "message": "\\u00e9 \'x\'"}'
    )
    msgpack_writer = ts.stream_writer(ts.stream_types(Big))
    assert msgpack_writer.yield_error(KeyError("k"))[5:] == (
        b"\x82\xa4type\xa8KeyError\xa7message\xa3'k'"
    )


def test_5_error_payload_extra_keys_are_ignored() -> None:
    body = b'{"type": "E", "message": "m", "error_id": "e-1", "reason": "going_away", "x": 1}'
    with pytest.raises(ts.RemoteStreamError) as info:
        read_items(ts.stream_types(Big), [frame(6, body, ts.Codec.JSON)])
    assert (info.value.remote_type, info.value.remote_message) == ("E", "m")


def test_5_error_payload_form_and_attributes() -> None:
    for codec in ("json", "msgpack"):
        writer = ts.stream_writer(ts.stream_types(Big, codec=codec))
        data = writer.yield_error(KeyError("boom"))
        body = data[5:]
        parsed = json.loads(body) if codec == "json" else msgpack.unpackb(body)
        assert parsed == {"type": "KeyError", "message": "'boom'"}
        first = ts.stream_writer(ts.stream_types(Big, codec=codec)).yield_item(Big(n=1))
        with pytest.raises(ts.RemoteStreamError) as info:
            read_items(ts.stream_types(Big), [first, data])
        assert info.value.remote_type == "KeyError"
        assert info.value.remote_message == "'boom'"
    assert json.loads(ts.stream_writer(ts.stream_types(Big, codec="json")).yield_error(
        RuntimeError("x")
    )[5:]) == {"type": "RuntimeError", "message": "x"}  # fmt: skip


def test_1_bytes_after_end_are_never_read() -> None:
    chunks = [item({"n": 1}), ts.end_frame(), b"\xff garbage that is no frame"]
    pulled: list[bytes] = []

    def source() -> Any:
        for chunk in chunks:
            pulled.append(chunk)
            yield chunk

    assert [x.n for x in read_items(ts.stream_types(Big), source())] == [1]
    assert len(pulled) == 2  # the reader stopped at END
    # Bytes after END in the same chunk are ignored too.
    joined = b"".join(chunks)
    assert [x.n for x in read_items(ts.stream_types(Big), [joined])] == [1]


# 3 JSON codec ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_3_non_finite_floats_are_written_as_null(value: float) -> None:
    types = ts.stream_types(Floats, codec="json")
    data = ts.stream_writer(types).yield_item(Floats(x=value))
    assert data[5:] == b'{"x":null}'  # as pydantic and truss_chains write it
    with pytest.raises(pydantic.ValidationError):
        read_items(types, [data, ts.end_frame()])
    (got,) = read_items(ts.stream_types(MaybeFloat, codec="json"), [data, ts.end_frame()])
    assert got.x is None
    mp = ts.stream_types(Floats)
    (back,) = read_items(mp, [ts.stream_writer(mp).yield_item(Floats(x=value)), ts.end_frame()])
    assert back.x == value or (math.isnan(back.x) and math.isnan(value))


def test_3_integers_above_2_53_are_exact() -> None:
    for codec in ("json", "msgpack"):
        types = ts.stream_types(Big, codec=codec)
        writer = ts.stream_writer(types)
        for n in (2**53 + 1, 2**63 - 1, -(2**63), 2**64 - 1):
            (got,) = read_items(types, [writer.yield_item(Big(n=n)), ts.end_frame()])
            assert got.n == n
    data = ts.stream_writer(ts.stream_types(Big, codec="json")).yield_item(Big(n=2**53 + 1))
    assert data[5:] == b'{"n":9007199254740993}'


def test_3_bytes_fields_are_utf8_text_and_other_bytes_fail_clearly() -> None:
    types = ts.stream_types(Blob, codec="json")
    writer = ts.stream_writer(types)
    data = writer.yield_item(Blob(data="é".encode()))
    assert data[5:] == '{"data":"é"}'.encode()
    with pytest.raises(ts.UnsupportedValueError, match="msgpack codec"):
        writer.yield_item(Blob(data=b"\xff\x00"))


@pytest.mark.parametrize(
    "name",
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
     "float16", "float32", "float64", "complex64", "complex128", "<f4", ">i8", "|S3", "<U2",
     *ML_DTYPES],
)  # fmt: skip
def test_3_json_dtype_strings_accepted(name: str) -> None:
    types = ts.stream_types(Tensor, codec="json")
    body = json.dumps({"array": {"data_b64": "", "shape": [0], "dtype": name}}).encode()
    (got,) = read_items(types, [frame(3, body, ts.Codec.JSON), ts.end_frame()])
    assert got.array.shape == (0,)


@pytest.mark.parametrize(
    "name", ["float", "int", "double", "half", "str", "uint", "complex", "f4", "U5", "S3",
             "object", "float128", "<f1", "|i4"],
)  # fmt: skip
def test_3_json_dtype_strings_rejected(name: str) -> None:
    types = ts.stream_types(Tensor, codec="json")
    body = json.dumps({"array": {"data_b64": "", "shape": [0], "dtype": name}}).encode()
    with pytest.raises(pydantic.ValidationError, match="dtype"):
        read_items(types, [frame(3, body, ts.Codec.JSON), ts.end_frame()])


def test_3_json_base64_must_be_padded() -> None:
    types = ts.stream_types(Tensor, codec="json")

    def read(data: str) -> Any:
        body = json.dumps({"array": {"data_b64": data, "shape": [2], "dtype": "uint8"}})
        return read_items(types, [frame(3, body.encode(), ts.Codec.JSON), ts.end_frame()])

    assert read("AAE=")[0].array.tolist() == [0, 1]
    for bad in ("AAE", "AA==", "AA E=", "AAE=AA=="):
        with pytest.raises(pydantic.ValidationError):
            read(bad)


def test_1_header_after_an_item_is_malformed() -> None:
    frames = [
        item({"array": ext((0,), "|u1", b"")}),
        frame(2, msgpack.packb({"name": "a"})),
        ts.end_frame(),
    ]
    reader = ts.stream_reader(FULL, frames)
    items = reader.read_items()
    next(items)
    with pytest.raises(ts.MalformedFrameError, match="HEADER"):
        next(items)
