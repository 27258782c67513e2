"""Python and the JS package (js/) read each other's streams, case by case of docs/wire-format.md.

Python writes every case (both codecs, tensors of every dtype, ERROR, truncation,
violations) to files; one `node js/interop/interop.mjs read` run reads them all and
reports JSON. JS writes its cases; Python reads them. Then Node reads the live
Python server over fetch: chunked HTTP, SSE, POST with auth, Last-Event-ID resume.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import json
import math
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import ml_dtypes
import msgpack
import numpy as np
import pydantic
import pytest
from chromium_cdp import evaluate_page
from hypothesis import given, settings
from hypothesis import strategies as st
from js_interop_app import EVERY_DTYPE, Everything, Footer, Header, make_app
from live_server import live_server

import truss_stream as ts

pytestmark = pytest.mark.js

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "js"


def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.skip("no node on PATH")
    if not (JS / "dist" / "index.js").exists():
        pytest.skip("js/dist is not built: `make js` builds it")
    return path


def run_node(*args: str) -> Any:
    done = subprocess.run(
        [node(), "interop/interop.mjs", *args],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


# What the JS report of a value looks like (js/interop/interop.mjs `report`) -------------------


def js_number(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return {"__float__": "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")}
    return x


CTORS = {
    "bool": "Uint8Array", "int8": "Int8Array", "uint8": "Uint8Array", "int16": "Int16Array",
    "uint16": "Uint16Array", "int32": "Int32Array", "uint32": "Uint32Array",
    "int64": "BigInt64Array", "uint64": "BigUint64Array", "float32": "Float32Array",
    "float64": "Float64Array", "complex64": "Float32Array", "complex128": "Float64Array",
    "bfloat16": "Uint16Array", "float16": "Uint16Array",
}  # fmt: skip


def js_array(array: np.ndarray[Any, Any], *, float16: bool = False) -> dict[str, Any]:
    """The report JS gives for ``array``; ``float16``: the runtime has Float16Array
    (Chromium does, Node 20 does not: raw bits in a Uint16Array)."""
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    flat = np.ascontiguousarray(array, dtype=dtype).reshape(-1)
    out: dict[str, Any] = {"__ndarray__": True, "shape": list(array.shape)}
    if dtype.kind in "US":
        out["dtype"] = f"<U{dtype.itemsize // 4}" if dtype.kind == "U" else f"|S{dtype.itemsize}"
        out["ctor"] = "Array"
        out["data"] = [x if dtype.kind == "U" else x.decode("latin-1") for x in flat.tolist()]
        return out
    out["dtype"] = dtype.name
    out["ctor"] = CTORS.get(dtype.name, "Uint8Array")
    if float16 and dtype.name == "float16":
        out["ctor"] = "Float16Array"
        out["data"] = [js_number(x) for x in flat.astype(np.float64).tolist()]
        out["decoded"] = out["data"]
        return out
    if dtype.kind == "c":
        data = flat.view(np.float32 if dtype.itemsize == 8 else np.float64).tolist()
    elif dtype.kind in "iub":
        data = [int(x) for x in flat.tolist()]
        if dtype.itemsize == 8:
            data = [{"__bigint__": str(x)} for x in data]
    elif dtype.name in ("float32", "float64"):
        data = flat.tolist()
    else:  # raw bits: float16, bfloat16, float8, int4
        data = flat.view(np.uint16 if dtype.itemsize == 2 else np.uint8).tolist()
        out["decoded"] = [js_number(float(x)) for x in flat.astype(np.float64).tolist()]
    out["data"] = [js_number(x) for x in data]
    return out


# Python writes, JS reads --------------------------------------------------------------------


class Small(pydantic.BaseModel):
    n: int
    text: str = ""
    x: float = 0.0


def frame(
    kind: int, payload: bytes, codec: ts.Codec = ts.Codec.MSGPACK, hint: bool = False
) -> bytes:
    return struct.pack(">BI", kind | codec | (0x20 if hint else 0), len(payload)) + payload


def ext(shape: tuple[int, ...], descr: str, data: bytes) -> msgpack.ExtType:
    raw = descr.encode()
    head = struct.pack("<BBBB", 1, len(shape), len(raw), 0) + struct.pack(f"<{len(shape)}Q", *shape)
    return msgpack.ExtType(1, head + raw + data)


def item(value: Any) -> bytes:
    return frame(3, msgpack.packb(value))


END = ts.end_frame()
MOMENT = datetime.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.timezone.utc)
JSON_BAD_DTYPE = b'{"a":{"data_b64":"","shape":[0],"dtype":"float"}}'
JSON_UNPADDED = b'{"a":{"data_b64":"AAE","shape":[2],"dtype":"uint8"}}'


def python_cases() -> dict[str, tuple[list[bytes], dict[str, Any]]]:
    """name -> (frames, case options for the JS reader)."""
    cases: dict[str, tuple[list[bytes], dict[str, Any]]] = {}
    for codec in ("msgpack", "json"):
        full = ts.stream_types(Everything, header_type=Header, footer_type=Footer, codec=codec)
        w = ts.stream_writer(full)
        stream = [
            w.yield_header(Header(name="every dtype")),
            w.yield_item(Everything(name="all", arrays=EVERY_DTYPE)),
            w.yield_item(Everything(name="none", arrays={})),
            w.yield_footer(Footer(count=2)),
            w.yield_end(),
        ]
        cases[f"dtypes-{codec}"] = (stream, {})
        cases[f"dtypes-{codec}-chunk1"] = (stream, {"chunk": 1})
        cases[f"dtypes-{codec}-chunk7"] = (stream, {"chunk": 7})
        small = ts.stream_types(Small, codec=codec)
        e = ts.stream_writer(small)
        cases[f"error-{codec}"] = (
            [e.yield_item(Small(n=1)), e.yield_error(KeyError("boom"))],
            {"header": False},
        )
        s = ts.stream_writer(small)
        body = [s.yield_item(Small(n=i, text="é\u2028", x=0.5)) for i in range(3)] + [s.yield_end()]
        joined = b"".join(body)
        cases[f"truncated-no-end-{codec}"] = (body[:-1], {"header": False})
        cases[f"truncated-mid-frame-{codec}"] = ([joined[: len(body[0]) + 3]], {"header": False})
        cases[f"truncated-mid-tag-{codec}"] = ([joined[: len(body[0]) + 7 + 2]], {"header": False})
        cases[f"no-end-allowed-{codec}"] = (
            body[:-1],
            {"header": False, "options": {"requireEnd": False}},
        )
        b = ts.stream_writer(ts.stream_types(Small, codec=codec))
        cases[f"big-int-{codec}"] = (
            [b.yield_item(Small(n=2**53 + 1)), b.yield_item(Small(n=-(2**63))), b.yield_end()],
            {"header": False},
        )
    # big-endian descriptors, written by hand (truss-stream writes little-endian only)
    cases["big-endian"] = (
        [
            item({"a": ext((2,), ">f4", struct.pack(">2f", 1.5, -2)),
                  "b": ext((1,), ">i8", struct.pack(">q", -(2**40))),
                  "c": ext((1,), ">U2", "hi".encode("utf-32-be")),
                  "d": ext((1,), ">c8", struct.pack(">2f", 1, -1))}),
            END,
        ],
        {"header": False},
    )  # fmt: skip
    cases["fp8-all-bits"] = (
        [
            item({name: ext((256,), name, bytes(range(256)))
                  for name in ("float8_e4m3fn", "float8_e4m3fnuz", "float8_e4m3b11fnuz",
                               "float8_e5m2", "float8_e5m2fnuz")}),
            END,
        ],
        {"header": False},
    )  # fmt: skip
    cases["timestamp"] = (
        [
            frame(3, msgpack.packb({"at": MOMENT}, datetime=True)),
            END,
        ],
        {"header": False},
    )  # fmt: skip
    cases["json-nan"] = ([frame(3, b'{"x":null}', ts.Codec.JSON), END], {"header": False})
    violations: dict[str, list[bytes]] = {
        "unknown-kind": [frame(7, b"\x80")],
        "reserved-bits": [struct.pack(">BI", 0x43, 2) + b"{}"],
        "hint-on-json": [frame(3, b"{}", ts.Codec.JSON, hint=True)],
        "end-with-payload": [frame(5, b"\x80")],
        "second-header": [frame(2, msgpack.packb({"name": "a"}))] * 2 + [END],
        "late-header": [item({"n": 1}), frame(2, msgpack.packb({"name": "a"})), END],
        "item-after-footer": [frame(4, msgpack.packb({"count": 0})), item({"n": 1}), END],
        "malformed-error-json": [frame(6, b'{"type": "E"}', ts.Codec.JSON)],
        "malformed-error-msgpack": [frame(6, msgpack.packb(["E", "m"]))],
        "unknown-ext-2": [frame(3, b"\x81\xa1n\xd6\x02abcd"), END],
        "unknown-ext-minus-2": [frame(3, b"\x81\xa1n\xd6\xfeabcd"), END],
        "reserved-ext-127": [frame(3, b"\x81\xa1n\xd6\x7fabcd"), END],
        "descr-i3": [item({"a": ext((1,), "<i3", b"\0\0\0")}), END],
        "descr-f1": [item({"a": ext((1,), "<f1", b"\0")}), END],
        "descr-pipe-i4": [item({"a": ext((1,), "|i4", b"\0" * 4)}), END],
        "descr-U0-elements": [item({"a": ext((2,), "<U0", b"")}), END],
        "code-point": [item({"a": ext((1,), "<U1", struct.pack("<I", 0x110000))}), END],
        "size-mismatch": [item({"a": ext((3,), "<f4", b"\0" * 8)}), END],
        "json-bad-dtype": [frame(3, JSON_BAD_DTYPE, ts.Codec.JSON), END],
        "json-unpadded": [frame(3, JSON_UNPADDED, ts.Codec.JSON), END],
        "invalid-msgpack": [frame(3, b"\xc1"), END],
        "extra-msgpack": [frame(3, b"\x80\x80"), END],
        "invalid-json": [frame(3, b"{", ts.Codec.JSON), END],
        "too-large": [frame(3, msgpack.packb({"a": "x" * 200})), END],
        "bytes-after-end": [item({"n": 1}), END, b"\xff\xff not a frame"],
    }  # fmt: skip
    for name, frames in violations.items():
        options: dict[str, Any] = {"header": name in ("second-header",)}
        if name == "too-large":
            options["options"] = {"maxFrameBytes": 100}
        if name == "item-after-footer":
            options["footer"] = True
        cases[f"violation-{name}"] = (frames, options)
    return cases


#: The error class the JS reader raises for each violation (the same as Python's).
VIOLATION_ERRORS = {
    "unknown-kind": "MalformedFrameError",
    "reserved-bits": "UnknownCodecError",
    "hint-on-json": "UnknownCodecError",
    "end-with-payload": "MalformedFrameError",
    "second-header": "MalformedFrameError",
    "late-header": "MalformedFrameError",
    "item-after-footer": "MalformedFrameError",
    "malformed-error-json": "MalformedFrameError",
    "malformed-error-msgpack": "MalformedFrameError",
    "unknown-ext-2": "UnknownExtError",
    "unknown-ext-minus-2": "UnknownExtError",
    "reserved-ext-127": "UnknownExtError",
    "descr-i3": "UnknownExtError",
    "descr-f1": "UnknownExtError",
    "descr-pipe-i4": "UnknownExtError",
    "descr-U0-elements": "MalformedFrameError",
    "code-point": "MalformedFrameError",
    "size-mismatch": "MalformedFrameError",
    "json-bad-dtype": "UnknownExtError",
    "json-unpadded": "MalformedFrameError",
    "invalid-msgpack": "MalformedFrameError",
    "extra-msgpack": "MalformedFrameError",
    "invalid-json": "MalformedFrameError",
    "too-large": "FrameTooLargeError",
}


class Loose(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")


def python_error(frames: list[bytes], **kwargs: Any) -> str:
    """The error class Python's reader raises on the same bytes (header/footer allowed)."""
    types = ts.stream_types(Loose, header_type=Loose, footer_type=Loose)
    reader = ts.stream_reader(types, frames, **kwargs)
    try:
        with contextlib.suppress(ts.StreamOrderError):
            reader.read_header()
        list(reader.read_items())
        if not reader.ended:
            reader.read_footer()
    except Exception as exc:
        if isinstance(exc, pydantic.ValidationError):
            return "ValidationError"
        return type(exc).__name__
    return "none"


@pytest.fixture(scope="module")
def js_read(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("py-streams")
    manifest = []
    for name, (frames, options) in python_cases().items():
        path = directory / f"{name}.bin"
        path.write_bytes(b"".join(frames))
        manifest.append({"name": name, "path": str(path), **options})
    (directory / "manifest.json").write_text(json.dumps({"cases": manifest}))
    result: dict[str, Any] = run_node("read", str(directory / "manifest.json"))
    return result


@pytest.mark.parametrize("codec", ["msgpack", "json"])
@pytest.mark.parametrize("chunk", ["", "-chunk1", "-chunk7"])
def test_js_reads_every_dtype(js_read: dict[str, Any], codec: str, chunk: str) -> None:
    got = js_read[f"dtypes-{codec}{chunk}"]
    assert "error" not in got, got.get("error")
    assert got["header"] == {"name": "every dtype"}
    assert got["footer"] == {"count": 2}
    assert got["ended"] is True
    first, second = got["items"]
    assert first["name"] == "all"
    assert second == {"name": "none", "arrays": {}}
    assert set(first["arrays"]) == set(EVERY_DTYPE)
    for name, array in EVERY_DTYPE.items():
        assert first["arrays"][name] == js_array(array), name


def test_js_reads_big_endian_descriptors(js_read: dict[str, Any]) -> None:
    (got,) = js_read["big-endian"]["items"]
    assert got["a"] == js_array(np.array([1.5, -2], np.float32))
    assert got["b"] == js_array(np.array([-(2**40)], np.int64))
    assert got["c"] == js_array(np.array(["hi"], "<U2"))
    assert got["d"] == js_array(np.array([1 - 1j], np.complex64))


def test_js_float8_decoders_match_ml_dtypes(js_read: dict[str, Any]) -> None:
    (got,) = js_read["fp8-all-bits"]["items"]
    for name, value in got.items():
        expected = np.arange(256, dtype=np.uint8).view(getattr(ml_dtypes, name))
        assert value["decoded"] == js_array(expected)["decoded"], name


def test_js_reads_remote_errors(js_read: dict[str, Any]) -> None:
    for codec in ("msgpack", "json"):
        got = js_read[f"error-{codec}"]
        assert got["items"] == [{"n": 1, "text": "", "x": 0.0 if codec == "msgpack" else 0}]
        assert got["error"]["name"] == "RemoteStreamError"
        assert got["error"]["remoteType"] == "KeyError"
        assert got["error"]["remoteMessage"] == "'boom'"


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_js_detects_truncation(js_read: dict[str, Any], codec: str) -> None:
    got = js_read[f"truncated-no-end-{codec}"]
    assert [i["n"] for i in got["items"]] == [0, 1, 2]
    assert got["error"]["name"] == "StreamTruncatedError"
    for where in ("mid-frame", "mid-tag"):
        got = js_read[f"truncated-{where}-{codec}"]
        assert [i["n"] for i in got["items"]] == [0]
        assert got["error"]["name"] == "StreamTruncatedError"
    allowed = js_read[f"no-end-allowed-{codec}"]
    assert "error" not in allowed
    assert [i["n"] for i in allowed["items"]] == [0, 1, 2]
    assert allowed["items"][0]["text"] == "é\u2028"


def test_js_big_integers(js_read: dict[str, Any]) -> None:
    got = js_read["big-int-msgpack"]["items"]
    assert [i["n"] for i in got] == [{"__bigint__": str(2**53 + 1)}, {"__bigint__": str(-(2**63))}]
    # JSON: exact where JSON.parse gives revivers the source text (Node 21+, Chrome 114+);
    # Node 20 gives the nearest double, as the spec allows and js/README.md says.
    got = js_read["big-int-json"]["items"]
    assert got[0]["n"] in ({"__bigint__": str(2**53 + 1)}, float(2**53 + 1), 2**53)


def test_js_timestamp_ext_is_a_date(js_read: dict[str, Any]) -> None:
    (got,) = js_read["timestamp"]["items"]
    assert got == {"at": {"__date__": "2026-01-02T03:04:05.678Z"}}


def test_js_json_nan_is_null(js_read: dict[str, Any]) -> None:
    assert js_read["json-nan"]["items"] == [{"x": None}]


@pytest.mark.parametrize("name", sorted(VIOLATION_ERRORS))
def test_js_raises_the_spec_error_for_each_violation(js_read: dict[str, Any], name: str) -> None:
    got = js_read[f"violation-{name}"]
    assert got["error"]["name"] == VIOLATION_ERRORS[name], got
    assert got["error"]["isStreamError"] is True
    # Python raises the same class on the same bytes (JSON arrays: pydantic's ValidationError,
    # since Python validates them against the model).
    frames, _ = python_cases()[f"violation-{name}"]
    kwargs = {"max_frame_bytes": 100} if name == "too-large" else {}
    expected = VIOLATION_ERRORS[name]
    if name in ("json-bad-dtype", "json-unpadded"):
        expected = "none"  # Loose keeps the object as a dict: no NDArray field asks for it
    assert python_error(frames, **kwargs) == expected


def test_js_ignores_bytes_after_end(js_read: dict[str, Any]) -> None:
    got = js_read["violation-bytes-after-end"]
    assert "error" not in got
    assert got["items"] == [{"n": 1}]
    assert got["ended"] is True


# JS writes, Python reads --------------------------------------------------------------------


class JSDetection(pydantic.BaseModel):
    frame_index: int
    boxes: ts.NDArray
    scores: ts.NDArray
    labels: list[str]
    latency_ms: float


class JSHeader(pydantic.BaseModel):
    request_id: str
    model: str
    frames: int
    image_size: tuple[int, int]


class JSFooter(pydantic.BaseModel):
    frames: int
    detections: int
    elapsed_ms: float


class JSScalars(pydantic.BaseModel):
    n: int
    neg: int
    small: int
    f: float
    big_float: float
    text: str
    flag: bool
    none: None
    list: list[Any]
    nested: dict[str, dict[str, int]]


class JSBytes(pydantic.BaseModel):
    data: bytes
    when: datetime.datetime


class JSNan(pydantic.BaseModel):
    x: float | None


@pytest.fixture(scope="module")
def js_written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    directory = tmp_path_factory.mktemp("js-streams")
    result = run_node("write", str(directory))
    return directory, result


def read_file(path: Path, types: Any, chunk: int = 0) -> ts.StreamReader[Any, Any, Any]:
    data = path.read_bytes()
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
    return ts.stream_reader(types, chunks)


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_python_reads_js_streams(js_written: tuple[Path, dict[str, Any]], codec: Any) -> None:
    directory, _ = js_written
    types = ts.stream_types(JSDetection, header_type=JSHeader, footer_type=JSFooter, codec=codec)
    for chunk in (0, 3):
        reader = read_file(directory / f"full-{codec}.bin", types, chunk)
        assert reader.read_header() == JSHeader(
            request_id="js-1", model="m", frames=2, image_size=(640, 480)
        )
        first, second = list(reader.read_items())
        assert first.boxes.dtype == np.float32
        assert first.boxes.tolist() == [[1, 2, 3, 4]]
        assert first.labels == ["person"]
        assert second.boxes.shape == (0, 4)
        assert reader.read_footer().elapsed_ms == 3.25
    scalars = read_file(directory / f"scalars-{codec}.bin", ts.stream_types(JSScalars))
    (got,) = list(scalars.read_items())
    assert got.n == 2**60
    assert got.neg == -(2**62)
    assert got.text == "héllo \u2028 \U0001f600"
    assert got.big_float == 1e300
    assert got.list == [1, "a", [2]]
    assert got.nested == {"a": {"b": 1}}


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_python_reads_every_js_dtype(js_written: tuple[Path, dict[str, Any]], codec: str) -> None:
    directory, _ = js_written
    (got,) = list(read_file(directory / f"dtypes-{codec}.bin", ts.stream_types(Loose)).read_items())
    arrays = got.model_extra
    assert arrays is not None
    if codec == "json":
        types = ts.stream_types(_json_model(arrays), codec="json")
        (got,) = list(read_file(directory / f"dtypes-{codec}.bin", types).read_items())
        arrays = dict(got)
    expect = {
        "bool": np.array([True, False, True]),
        "int8": np.array([-128, 127], np.int8),
        "uint8": np.array([0, 255], np.uint8),
        "int16": np.array([-32768, 32767], np.int16),
        "uint16": np.array([0, 65535], np.uint16),
        "int32": np.array([-(2**31), 2**31 - 1], np.int32),
        "uint32": np.array([0, 2**32 - 1], np.uint32),
        "int64": np.array([-(2**63), 2**63 - 1], np.int64),
        "uint64": np.array([0, 2**64 - 1], np.uint64),
        "float16": np.array([1.0, -2.0], np.float16),
        "float32": np.array([[0.5, -1], [np.inf, np.nan]], np.float32),
        "float64": np.array([math.pi, -0.0]),
        "complex64": np.array([1 + 2j, 3 - 4j], np.complex64),
        "complex128": np.array([0.25 - 0.5j]),
        "bfloat16": np.array([1.0, -3.0], ml_dtypes.bfloat16),
        "float8_e4m3fn": np.array([1.0, 448.0], ml_dtypes.float8_e4m3fn),
        "uint4": np.array([0, 15], ml_dtypes.uint4),
        "int4": np.array([-1, 7], ml_dtypes.int4),
        "text": np.array(["ab", "\U0001f600"], "<U3"),
        "raw": np.array([b"ab", b"xyz"], "S3"),
        "scalar": np.array(7.0),
    }
    for name, want in expect.items():
        have = arrays[name]
        assert isinstance(have, np.ndarray), name
        assert have.dtype == want.dtype, name
        assert have.shape == want.shape, name
        np.testing.assert_array_equal(have, want, err_msg=name)
    assert np.signbit(arrays["float64"][1])


def _json_model(arrays: dict[str, Any]) -> type[pydantic.BaseModel]:
    fields: dict[str, Any] = {name: (ts.NDArray, ...) for name in arrays if name != "name"}
    fields["name"] = (str, ...)
    model: type[pydantic.BaseModel] = pydantic.create_model("JSDtypes", **fields)
    return model


def test_python_reads_js_errors_bytes_and_nan(js_written: tuple[Path, dict[str, Any]]) -> None:
    directory, result = js_written
    for codec in ("msgpack", "json"):
        reader = read_file(directory / f"error-{codec}.bin", ts.stream_types(Small))
        with pytest.raises(ts.RemoteStreamError) as info:
            list(reader.read_items())
        assert info.value.remote_type == "TypeError"
        assert info.value.remote_message == "bad input"
    (got,) = list(read_file(directory / "bytes-msgpack.bin", ts.stream_types(JSBytes)).read_items())
    assert got.data == b"\x00\xff\x01"
    assert got.when == datetime.datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=datetime.timezone.utc)
    assert result["jsonBytesError"]["name"] == "UnsupportedValueError"
    assert "msgpack" in result["jsonBytesError"]["message"]
    (nan,) = list(read_file(directory / "nan-json.bin", ts.stream_types(JSNan)).read_items())
    assert nan.x is None


# JS reads the live Python server over fetch ---------------------------------------------------


# Polls until the page's module script has set window.trussResult, then awaits it.
AWAIT_RESULT = """new Promise((resolve) => {
  const poll = setInterval(() => {
    if (window.trussResult) { clearInterval(poll); resolve(window.trussResult); }
  }, 20);
})"""


def run_chromium(url: str, profile: Path) -> dict[str, Any]:
    """Run the live scenarios in headless Chromium (js/interop/browser.html)."""
    text = evaluate_page(url, AWAIT_RESULT, profile)
    result: dict[str, Any] = json.loads(text)
    return result


@pytest.fixture(
    scope="module", params=["node", pytest.param("chromium", marks=pytest.mark.browser)]
)
def js_live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The live scenarios (js/interop/report.mjs ``live``) run by Node, or in Chromium."""
    node()
    with live_server(make_app()) as server:
        if request.param == "node":
            result: dict[str, Any] = run_node("live", server.url)
        else:
            result = run_chromium(f"{server.url}/js-test", tmp_path_factory.mktemp("chromium"))
    result["runtime"] = request.param
    return result


def test_chromium_has_float16_array(js_live: dict[str, Any]) -> None:
    # So the browser run covers the Float16Array path, and Node 20 the Uint16Array one.
    assert js_live["float16Array"] is (js_live["runtime"] == "chromium")


@pytest.mark.parametrize("transport", ["http", "sse"])
@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_js_reads_the_python_server(js_live: dict[str, Any], transport: str, codec: str) -> None:
    got = js_live[f"{transport}-{codec}"]
    assert "error" not in got, got.get("error")
    assert got["header"]["model"] == "toy-detector-v1"
    assert [i["frame_index"] for i in got["items"]] == list(range(5))
    boxes = got["items"][0]["boxes"]
    assert boxes["dtype"] == "float32"
    assert boxes["ctor"] == "Float32Array"
    assert boxes["shape"][1] == 4
    assert got["footer"]["frames"] == 5
    assert got["ended"] is True
    failed = js_live[f"{transport}-fail-{codec}"]
    assert [i["frame_index"] for i in failed["items"]] == [0, 1]
    assert failed["error"]["name"] == "RemoteStreamError"
    assert failed["error"]["remoteType"] == "RuntimeError"
    assert failed["error"]["remoteMessage"] == "detector crashed at frame 2"


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_js_sse_post_with_auth_header(js_live: dict[str, Any], codec: str) -> None:
    got = js_live[f"sse-post-{codec}"]
    assert got["header"] == {"user": "js-token"}
    assert got["items"] == [{"index": i, "word": w} for i, w in enumerate("abc")]
    assert got["ended"] is True


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_js_sse_resumes_with_last_event_id(js_live: dict[str, Any], codec: str) -> None:
    got = js_live[f"resume-{codec}"]
    assert "error" not in got, got.get("error")
    assert got["header"] == {"name": "resumable"}
    assert [i["index"] for i in got["items"]] == list(range(10))  # nothing lost or repeated
    assert got["items"][9]["tensor"]["data"] == [36.0, 37.0, 38.0, 39.0]
    assert got["footer"] == {"count": 10}
    exhausted = js_live[f"resume-exhausted-{codec}"]
    assert exhausted["error"]["name"] == "StreamTruncatedError"
    # A server that restarts its producer instead of resuming (ids from 0 again, no
    # position header): caught from the first resumed id, nothing repeated.
    wrong = js_live[f"resume-wrong-{codec}"]
    assert wrong["error"]["name"] == "StreamResumeError"
    assert wrong["error"]["isTruncated"] is True
    assert wrong["error"]["expectedPosition"] == 3
    assert wrong["error"]["position"] == 0
    assert [i["index"] for i in wrong["items"]] == [0, 1]


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_js_sse_resume_integrity_headers(js_live: dict[str, Any], codec: str) -> None:
    """docs/transports.md "Resume integrity": Truss-Stream-Id and Truss-Stream-Position."""
    got = js_live[f"resume-identity-{codec}"]
    assert "error" not in got, got.get("error")  # the server refuses resumes without the id
    assert [i["index"] for i in got["items"]] == list(range(10))
    other = js_live[f"resume-other-identity-{codec}"]
    assert other["error"]["name"] == "StreamResumeError"
    assert other["error"]["expectedStreamId"] == "s-1"
    assert other["error"]["streamId"] == "s-1-other"
    assert [i["index"] for i in other["items"]] == [0, 1]
    moved = js_live[f"resume-wrong-position-{codec}"]
    assert moved["error"]["name"] == "StreamResumeError"
    assert moved["error"]["position"] == 0
    assert moved["error"]["expectedPosition"] == 3


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_js_sse_going_away_reconnects(js_live: dict[str, Any], codec: str) -> None:
    got = js_live[f"going-away-resumed-{codec}"]
    assert "error" not in got, got.get("error")
    assert [i["index"] for i in got["items"]] == list(range(10))
    assert got["footer"] == {"count": 10}
    stopped = js_live[f"going-away-no-attempts-{codec}"]
    assert stopped["error"]["name"] == "ServerGoingAwayError"
    assert stopped["error"]["remoteType"] == "ServerGoingAwayError"
    assert [i["index"] for i in stopped["items"]] == [0, 1, 2]


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_js_http_cut_mid_frame_is_truncated(js_live: dict[str, Any], codec: str) -> None:
    got = js_live[f"truncated-http-{codec}"]
    assert [i["index"] for i in got["items"]] == [0, 1]
    assert got["error"]["name"] == "StreamTruncatedError"


def test_js_response_errors(js_live: dict[str, Any]) -> None:
    status = js_live["status"]["error"]
    assert status["name"] == "StreamResponseError"
    assert status["status"] == 400
    assert "frames" in status["body"]
    content_type = js_live["contentType"]["error"]
    assert content_type["name"] == "StreamResponseError"
    assert content_type["status"] == 200
    assert content_type["contentType"].startswith("application/vnd.truss-stream")
    assert js_live["unauthorized"]["error"]["status"] == 401


def check_every_dtype(got: dict[str, Any], *, float16: bool) -> None:
    """The every-dtype stream as JS reports it (tests/js_interop_app.py writes it)."""
    assert "error" not in got, got.get("error")
    assert got["header"] == {"name": "every dtype"}
    (item,) = got["items"]
    assert set(item["arrays"]) == set(EVERY_DTYPE)
    for name, array in EVERY_DTYPE.items():
        assert item["arrays"][name] == js_array(array, float16=float16), name
    assert got["footer"] == {"count": 1}


@pytest.mark.parametrize("transport", ["http", "sse"])
@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_js_reads_every_dtype_over_fetch(
    js_live: dict[str, Any], transport: str, codec: str
) -> None:
    check_every_dtype(js_live[f"every-dtype-{transport}-{codec}"], float16=js_live["float16Array"])


# The package as published -------------------------------------------------------------------

CONSUMER_TS = """
import { NDArray, RemoteStreamError, StreamReader, fetchSSE } from "truss-stream";
import { ndarray, streamReader, streamWriter } from "truss-stream";

interface Item { index: number; tensor: NDArray<Float32Array> }
const writer = streamWriter<{ name: string }, Item, { count: number }>("msgpack");
const frames: Uint8Array[] = [
  writer.header({ name: "h" }),
  writer.item({ index: 0, tensor: ndarray("float32", [2], new Float32Array([1, 2])) }),
  writer.footer({ count: 1 }),
  writer.end(),
];
const reader: StreamReader<{ name: string }, Item, { count: number }> = streamReader(frames);
export async function main(): Promise<number> {
  const header: { name: string } = await reader.readHeader();
  let total = 0;
  for await (const item of reader.readItems()) total += item.tensor.data[0] ?? 0;
  const footer = await reader.readFooter();
  void fetchSSE;
  void RemoteStreamError;
  return header.name.length + total + footer.count;
}
"""


def test_npm_pack_gives_a_package_that_installs_imports_and_types(tmp_path: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("no npm on PATH")
    node()
    done = subprocess.run(
        [npm, "pack", "--json", "--pack-destination", str(tmp_path)],
        cwd=JS, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (packed,) = json.loads(done.stdout[done.stdout.index("[") :])
    files = {f["path"] for f in packed["files"]}
    assert {"package.json", "README.md", "dist/index.js", "dist/index.d.ts"} <= files
    assert not any(f.startswith(("src/", "test/", "interop/", "node_modules/")) for f in files)
    consumer = tmp_path / "consumer"
    consumer.mkdir()
    (consumer / "package.json").write_text(
        '{"name": "consumer", "private": true, "type": "module"}'
    )
    tarball = str(tmp_path / packed["filename"])
    done = subprocess.run(
        [npm, "install", "--offline", "--no-audit", "--no-fund", tarball],
        cwd=consumer, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    script = (
        "import * as ts from 'truss-stream';"
        "const w = ts.streamWriter('json');"
        "const r = ts.streamReader([w.item({a: 1}), w.end()]);"
        "const items = []; for await (const x of r.readItems()) items.push(x);"
        "console.log(JSON.stringify(items), ts.WIRE_FORMAT_VERSION);"
    )
    ran = subprocess.run(
        [node(), "--input-type=module", "-e", script],
        cwd=consumer, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split() == ['[{"a":1}]', "2"]
    # The shipped types check a TypeScript consumer (tsc from js/'s dev dependencies).
    (consumer / "main.ts").write_text(CONSUMER_TS)
    (consumer / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "strict": True, "noEmit": True, "target": "ES2022", "module": "ES2022",
                    "moduleResolution": "Bundler", "lib": ["ES2022", "DOM"], "types": [],
                },
                "files": ["main.ts"],
            }
        )
    )  # fmt: skip
    tsc = JS / "node_modules" / ".bin" / "tsc"
    checked = subprocess.run(
        [str(tsc), "-p", "tsconfig.json"],
        cwd=consumer, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (consumer / "bad.ts").write_text(
        'import { streamWriter } from "truss-stream";\n'
        "streamWriter<{ a: number }, { b: string }, never>().item({ b: 1 });\n"
    )
    (consumer / "tsconfig.json").write_text(
        (consumer / "tsconfig.json").read_text().replace('"main.ts"', '"bad.ts"')
    )
    failed = subprocess.run(
        [str(tsc), "-p", "tsconfig.json"],
        cwd=consumer, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert failed.returncode != 0
    assert "bad.ts" in failed.stdout


# Property: random models written by Python read the same in JS --------------------------------


class Random(pydantic.BaseModel):
    value: Any
    arrays: list[ts.NDArray]


def js_value(value: Any, codec: str) -> Any:
    """What the JS report holds for a plain Python value read from ``codec``."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if abs(value) <= 2**53 - 1 else {"__bigint__": str(value)}
    if isinstance(value, float):
        return js_number(value)
    if isinstance(value, bytes):
        return (
            base64.b64encode(value).decode()
            if codec == "json"
            else {"__bytes__": base64.b64encode(value).decode()}
        )
    if isinstance(value, list):
        return [js_value(v, codec) for v in value]
    return {k: js_value(v, codec) for k, v in value.items()}


def _values(codec: str) -> st.SearchStrategy[Any]:
    leaves: st.SearchStrategy[Any]
    if codec == "json":  # what survives JSON exactly in every JS runtime
        leaves = st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**53) + 1, 2**53 - 1),
            st.text(max_size=8),
            st.floats(allow_nan=False, allow_infinity=False),
        )
    else:
        leaves = st.one_of(
            st.none(),
            st.booleans(),
            st.integers(-(2**63), 2**64 - 1),
            st.text(max_size=8),
            st.floats(),
            st.binary(max_size=8),
        )
    return st.recursive(
        leaves,
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
        ),
        max_leaves=8,
    )


ARRAY_DTYPES = [
    "bool",
    "int8",
    "uint16",
    "int32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "complex64",
    "<U3",
    "S2",
]


def _arrays() -> st.SearchStrategy[list[np.ndarray[Any, Any]]]:
    from hypothesis.extra import numpy as hnp

    one = st.sampled_from(ARRAY_DTYPES).flatmap(
        lambda dtype: hnp.arrays(
            np.dtype(dtype), hnp.array_shapes(min_dims=0, max_dims=3, max_side=3)
        )
    )
    return st.lists(one, max_size=3)


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_random_models_read_the_same_in_js(codec: str, tmp_path: Path) -> None:
    # One node run reads a whole batch: Hypothesis draws the batch, node checks it.
    batch: list[Random] = []

    @settings(max_examples=60, deadline=None, database=None)
    @given(value=_values(codec), arrays=_arrays())
    def collect(value: Any, arrays: list[np.ndarray[Any, Any]]) -> None:
        batch.append(Random(value=value, arrays=arrays))

    collect()
    types = ts.stream_types(Random, codec=codec)  # type: ignore[call-overload]
    writer = ts.stream_writer(types)
    path = tmp_path / "random.bin"
    path.write_bytes(b"".join([*(writer.yield_item(m) for m in batch), writer.yield_end()]))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(
        json.dumps({"cases": [{"name": "random", "path": str(path), "header": False}]})
    )
    got = run_node("read", str(manifest))["random"]
    assert "error" not in got, got.get("error")
    assert len(got["items"]) == len(batch)
    for model, item in zip(batch, got["items"], strict=True):
        assert as_floats(item["value"]) == as_floats(js_value(model.value, codec))
        assert as_floats(item["arrays"]) == as_floats([js_array(a) for a in model.arrays])


def as_floats(value: Any) -> Any:
    """Numbers as floats: JSON has one number type, and JS prints 1e17 as 100000000000000000."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):
        return [as_floats(v) for v in value]
    return {k: as_floats(v) for k, v in value.items()}


# A Node service written with the JS writer, read by Python's transports.http ----------------


@pytest.fixture(scope="module")
def node_service() -> Any:
    process = subprocess.Popen(
        [node(), "interop/interop.mjs", "serve"],
        cwd=JS,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        port = json.loads(process.stdout.readline())["port"]
        yield f"http://127.0.0.1:{port}"
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_python_reads_a_node_service(node_service: str, codec: Any) -> None:
    import httpx

    from examples.shared_types import Detection, DetectionFooter, DetectionHeader
    from transports import http

    types = ts.stream_types(
        Detection, header_type=DetectionHeader, footer_type=DetectionFooter, codec=codec
    )
    auth = {"authorization": "Bearer node-token"}
    with httpx.Client(base_url=node_service, headers=auth) as client:
        with http.connect(client, "GET", f"/detections?codec={codec}&frames=4", types) as reader:
            assert reader.read_header().model == "node-model"
            items = list(reader.read_items())
            assert [i.frame_index for i in items] == [0, 1, 2, 3]
            assert items[1].boxes.shape == (2, 4)
            assert items[1].boxes.dtype == np.float32
            assert items[1].boxes[1].tolist() == [14.0, 15.0, 16.0, 17.0]
            assert reader.read_footer().detections == 8
        url = f"/detections?codec={codec}&frames=4&fail_at=2"
        with http.connect(client, "GET", url, types) as reader:
            reader.read_header()
            got: list[int] = []
            with pytest.raises(ts.RemoteStreamError) as info:
                got.extend(item.frame_index for item in reader.read_items())
            assert got == [0, 1]
            assert info.value.remote_type == "RangeError"
            assert info.value.remote_message == "node producer failed at 2"
    with httpx.Client(base_url=node_service) as client:
        with (
            pytest.raises(http.StreamResponseError) as refused,
            http.connect(client, "GET", "/detections", types),
        ):
            pass  # pragma: no cover
        assert refused.value.status == 401
