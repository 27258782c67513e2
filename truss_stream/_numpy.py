"""NDArray: a pydantic field type holding ``numpy.ndarray`` directly.

On the msgpack codec an array travels as raw bytes in a msgpack ext value
(:data:`NDARRAY_EXT_CODE`); on the JSON codec as truss_chains'
``{"data_b64", "shape", "dtype"}`` object. Both refuse object and void dtypes:
nothing here ever pickles.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from types import MappingProxyType
from typing import Annotated, Any, Final

import numpy as np
from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from ._errors import MalformedFrameError, UnknownExtError, UnsupportedValueError

__all__ = ["MAX_NDIM", "NDARRAY_EXT_CODE", "NDArray"]

#: msgpack ext type code of an NDArray value (application range 0..127).
NDARRAY_EXT_CODE: Final = 1
#: Most dimensions an array on the wire may declare (NumPy's own limit).
MAX_NDIM: Final = 64
#: Raw data starts at a multiple of this many bytes into the ext payload.
ALIGNMENT: Final = 8

_EXT_VERSION: Final = 1
_FIXED = struct.Struct("<BBBB")  # version, ndim, dtype descriptor length, padding length
_STANDARD_KINDS: Final = frozenset("biufcUS")
# Byte order, kind, item size in bytes (characters for U) without leading zeros.
_DESCR_RE: Final = re.compile(r"[<>|][biufcUS](?:0|[1-9][0-9]{0,8})")
# The exact NumPy names the JSON codec accepts besides descriptors (what ``str(dtype)``
# gives for little-endian numeric arrays, as truss_chains writes it).
_JSON_NAMES: Final = frozenset(
    {
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
    }
)
#: Largest Unicode code point: a ``U`` element above it is not a string.
_MAX_CODE_POINT: Final = 0x10FFFF
# ml_dtypes types report a void typestr ("<V2"), so they travel by name.
_ML_DTYPES: Final = frozenset(
    {
        "bfloat16",
        "float8_e4m3fn",
        "float8_e4m3fnuz",
        "float8_e4m3b11fnuz",
        "float8_e5m2",
        "float8_e5m2fnuz",
        "int4",
        "uint4",
    }
)


# NumPy's plain scalar types (bool, fixed-size integers and floats, complex, U, S):
# every dtype of these types is sent as its little-endian descriptor. Not
# long double (its layout differs by platform), not ml_dtypes' types (sent by name,
# one of them reports kind "f").
_PLAIN_TYPES: Final = frozenset(
    {
        np.bool_,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.float16,
        np.float32,
        np.float64,
        np.complex64,
        np.complex128,
        np.str_,
        np.bytes_,
    }
)


def _ml_dtype(name: str) -> np.dtype[Any]:
    try:
        import ml_dtypes
    except ImportError:
        raise UnknownExtError(
            f"array dtype {name!r} needs the ml_dtypes package, which is not installed"
        ) from None
    scalar = getattr(ml_dtypes, name, None)
    if scalar is None:
        raise UnknownExtError(f"array dtype {name!r} is not known to the installed ml_dtypes")
    dtype: np.dtype[Any] = np.dtype(scalar)
    return dtype


def _portable(dtype: np.dtype[Any]) -> bool:
    """False for long double (float96/128, complex192/256): its layout differs by platform."""
    return not (
        (dtype.kind == "f" and dtype.itemsize > 8) or (dtype.kind == "c" and dtype.itemsize > 16)
    )


def wire_dtype(dtype: np.dtype[Any]) -> tuple[np.dtype[Any], str]:
    """Return (the little-endian dtype the bytes travel as, its descriptor string).

    Raises:
        UnsupportedValueError: object, void, datetime and other non-plain dtypes.
    """
    if dtype.type in _PLAIN_TYPES:
        # The common case, decided without ``dtype.name``: a Python-level property in
        # NumPy that costs 50 us when the CPU cache is cold, as it is right after a
        # tensor's bytes were copied (docs/wire-format.md, copies).
        little = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
        return little, little.str
    if dtype.name in _ML_DTYPES and dtype.names is None:
        return dtype, dtype.name
    if (
        dtype.kind not in _STANDARD_KINDS
        or dtype.names is not None
        or dtype.subdtype is not None
        or not _portable(dtype)
    ):
        raise UnsupportedValueError(
            f"arrays of dtype {dtype!r} cannot be sent: supported are bool, (u)int8..64, "
            "float16/32/64, complex64/128, fixed-width U and S (bfloat16/float8 via ml_dtypes)"
        )
    little = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    return little, little.str


def parse_descriptor(descr: str) -> np.dtype[Any]:
    """Turn a wire dtype descriptor back into a dtype, refusing anything unknown."""
    common = _COMMON_DESCRIPTORS.get(descr)
    if common is not None:
        return common
    return _parse_descriptor(descr)


def _parse_descriptor(descr: str) -> np.dtype[Any]:
    if descr in _ML_DTYPES:
        return _ml_dtype(descr)
    if not _DESCR_RE.fullmatch(descr) or (descr[0] == "|" and descr[1] not in "biuS"):
        # "|" (no byte order) only fits one-byte kinds and S: for the others it
        # would mean "whatever this machine uses".
        raise UnknownExtError(f"unsupported array dtype descriptor {descr!r}")
    try:
        dtype = np.dtype(descr)
    except TypeError as exc:
        raise UnknownExtError(f"unsupported array dtype descriptor {descr!r}") from exc
    if (
        dtype.kind not in _STANDARD_KINDS
        or (dtype.itemsize == 0 and dtype.kind not in "US")
        or (descr[0] == "|" and dtype.itemsize > 1 and dtype.kind != "S")
        or not _portable(dtype)
    ):
        raise UnknownExtError(f"unsupported array dtype descriptor {descr!r}")
    return dtype


def _plain_descriptors() -> list[str]:
    """The descriptors of the plain fixed-size dtypes (all but U and S)."""
    return [np.dtype(t).newbyteorder("<").str for t in _PLAIN_TYPES if np.dtype(t).itemsize]


# The plain dtypes' descriptors, parsed once by the full check (an immutable table: a
# dict lookup instead of a regex and np.dtype() per array).
_COMMON_DESCRIPTORS: Final = MappingProxyType(
    {descr: _parse_descriptor(descr) for descr in _plain_descriptors()}
)


def ext_header(array: np.ndarray[Any, Any], offset: int = 0) -> tuple[bytes, np.dtype[Any]]:
    """Return the ext payload's header for ``array`` and the dtype its data travels as.

    ``offset`` is where the ext payload starts inside the frame; padding aligns the
    raw data to :data:`ALIGNMENT` from the frame's start.
    """
    dtype, descr = wire_dtype(array.dtype)
    if array.ndim > MAX_NDIM:
        raise UnsupportedValueError(f"arrays may have at most {MAX_NDIM} dimensions")
    raw_descr = descr.encode("ascii")
    unpadded = _FIXED.size + 8 * array.ndim + len(raw_descr)
    pad = -(offset + unpadded) % ALIGNMENT
    header = b"".join(
        (
            _FIXED.pack(_EXT_VERSION, array.ndim, len(raw_descr), pad),
            struct.pack(f"<{array.ndim}Q", *array.shape),
            raw_descr,
            b"\0" * pad,
        )
    )
    return header, dtype


def decode_ext(data: memoryview | bytes, *, copy: bool) -> np.ndarray[Any, Any]:
    """Decode one NDArray ext payload into an array (a view of ``data`` unless ``copy``).

    Shape and dtype are checked against the bytes present before anything is
    allocated, so a lying header costs nothing.
    """
    view = memoryview(data)
    if len(view) < _FIXED.size:
        raise MalformedFrameError("NDArray ext payload shorter than its fixed header")
    version, ndim, descr_len, pad = _FIXED.unpack_from(view)
    if version != _EXT_VERSION:
        raise UnknownExtError(f"NDArray ext version {version} is not supported")
    if ndim > MAX_NDIM:
        raise MalformedFrameError(f"NDArray ext declares {ndim} dimensions (at most {MAX_NDIM})")
    start = _FIXED.size + 8 * ndim + descr_len + pad
    if len(view) < start:
        raise MalformedFrameError("NDArray ext payload shorter than its declared header")
    shape = struct.unpack_from(f"<{ndim}Q", view, _FIXED.size)
    descr_at = _FIXED.size + 8 * ndim
    try:
        descr = bytes(view[descr_at : descr_at + descr_len]).decode("ascii")
    except UnicodeDecodeError as exc:
        raise MalformedFrameError("NDArray dtype descriptor is not ASCII") from exc
    dtype = parse_descriptor(descr)
    count = math.prod(shape)
    raw = view[start:]
    if count * dtype.itemsize != len(raw):
        raise MalformedFrameError(
            f"NDArray of shape {tuple(shape)} and dtype {descr} needs "
            f"{count * dtype.itemsize} bytes, the ext holds {len(raw)}"
        )
    if dtype.itemsize == 0:
        # NumPy stores U0/S0 as U1/S1: only an empty array is honest (and cheap).
        if count:
            raise MalformedFrameError(f"NDArray of zero-width dtype {descr} must be empty")
        array = np.zeros(shape, dtype=dtype)
    else:
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)
        if dtype.kind == "U" and not _code_points_ok(array):
            raise MalformedFrameError(f"NDArray of dtype {descr} holds a code point above U+10FFFF")
    if copy:
        copied: np.ndarray[Any, Any] = array.copy()
        return copied
    array.flags.writeable = False
    return array


def _code_points_ok(array: np.ndarray[Any, Any]) -> bool:
    """False when a ``U`` array holds a value that is no code point (NumPy fails on it later)."""
    units = array.reshape(-1).view(array.dtype.byteorder + "u4")
    return not units.size or int(units.max()) <= _MAX_CODE_POINT


# JSON form (truss_chains.pydantic_numpy.NumpyArrayField compatible) --------------------

_DATA_KEY: Final = "data_b64"
_SHAPE_KEY: Final = "shape"
_DTYPE_KEY: Final = "dtype"


def array_to_json(array: np.ndarray[Any, Any]) -> dict[str, Any]:
    """The truss_chains JSON form: base64 of the C-order little-endian bytes."""
    dtype, _ = wire_dtype(array.dtype)
    data = np.ascontiguousarray(array, dtype=dtype)
    dtype_name = dtype.name if dtype.kind not in "US" else dtype.str
    return {
        # Viewed as bytes: ml_dtypes types cannot export a buffer of their own dtype.
        _DATA_KEY: base64.b64encode(
            data.reshape(-1).view(np.uint8).data if data.size else b""
        ).decode("ascii"),
        _SHAPE_KEY: list(array.shape),
        _DTYPE_KEY: dtype_name,
    }


def _json_descr(dtype_name: str) -> np.dtype[Any]:
    """The dtype a JSON array's ``dtype`` names: a NumPy name, a descriptor, an ml_dtypes name."""
    if dtype_name in _JSON_NAMES:
        return np.dtype(dtype_name)
    try:
        return parse_descriptor(dtype_name)
    except UnknownExtError as exc:
        raise PydanticCustomError("ndarray_dtype", "{reason}", {"reason": str(exc)}) from None


#: pydantic validation context key: JSON arrays decode writable (``copy_arrays=True``).
COPY_ARRAYS_CONTEXT: Final = "truss_stream.copy_arrays"


def array_from_json(value: dict[str, Any], *, writable: bool = False) -> np.ndarray[Any, Any]:
    data, shape, dtype_name = value[_DATA_KEY], value[_SHAPE_KEY], value[_DTYPE_KEY]
    if not isinstance(data, str) or not isinstance(dtype_name, str):
        raise PydanticCustomError("ndarray_json", "data_b64 and dtype must be strings")
    if not isinstance(shape, (list, tuple)) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise PydanticCustomError("ndarray_json", "shape must be a list of non-negative integers")
    if len(shape) > MAX_NDIM:
        raise PydanticCustomError("ndarray_json", "too many dimensions")
    dtype = _json_descr(dtype_name)
    expected = math.prod(shape) * dtype.itemsize
    # base64 length tells the byte count before decoding anything.
    if len(data) // 4 * 3 < expected or len(data) // 4 * 3 > expected + 3:
        raise PydanticCustomError(
            "ndarray_json",
            "data_b64 holds about {got} bytes, shape and dtype need {expected}",
            {"got": len(data) // 4 * 3, "expected": expected},
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise PydanticCustomError("ndarray_json", "data_b64 is not valid base64") from exc
    if len(raw) != expected:
        raise PydanticCustomError(
            "ndarray_json",
            "data_b64 holds {got} bytes, shape and dtype need {expected}",
            {"got": len(raw), "expected": expected},
        )
    if dtype.itemsize == 0:
        if math.prod(shape):
            raise PydanticCustomError("ndarray_json", "a zero-width dtype needs an empty shape")
        return np.zeros(shape, dtype=dtype)
    if writable:
        array = np.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)
    else:
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)
        array.flags.writeable = False
    if dtype.kind == "U" and not _code_points_ok(array):
        raise PydanticCustomError("ndarray_json", "a U array holds a code point above U+10FFFF")
    return array


# The pydantic field -----------------------------------------------------------------------


def _validate(value: Any, info: core_schema.ValidationInfo) -> np.ndarray[Any, Any]:
    if isinstance(value, np.ndarray):
        try:
            wire_dtype(value.dtype)
        except UnsupportedValueError as exc:
            raise PydanticCustomError("ndarray_dtype", str(exc)) from None
        return value
    if isinstance(value, dict) and {_DATA_KEY, _SHAPE_KEY, _DTYPE_KEY} <= value.keys():
        context = info.context
        writable = isinstance(context, dict) and bool(context.get(COPY_ARRAYS_CONTEXT))
        return array_from_json(value, writable=writable)
    raise PydanticCustomError(
        "ndarray_type",
        "expected a numpy.ndarray or a {{data_b64, shape, dtype}} object, got {type}",
        {"type": type(value).__name__},
    )


def _serialize(value: np.ndarray[Any, Any], info: core_schema.SerializationInfo) -> Any:
    if info.mode == "json":
        return array_to_json(value)
    return value


class _NDArrayAnnotation:
    @classmethod
    def __get_pydantic_core_schema__(
        cls, source_type: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.with_info_plain_validator_function(
            _validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                _serialize, info_arg=True
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, _schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "type": "object",
            "properties": {
                _DATA_KEY: {"type": "string", "contentEncoding": "base64"},
                _SHAPE_KEY: {"type": "array", "items": {"type": "integer", "minimum": 0}},
                _DTYPE_KEY: {"type": "string"},
            },
            "required": [_DATA_KEY, _SHAPE_KEY, _DTYPE_KEY],
        }


NDArray = Annotated[np.ndarray, _NDArrayAnnotation]
"""A pydantic field holding a ``numpy.ndarray`` directly.

Arrays read from a stream are read-only views of the received frame (no copy);
pass ``copy_arrays=True`` to :func:`stream_reader`, or call ``.copy()``, for
writable arrays.
"""
