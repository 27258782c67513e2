"""Payload codecs: a pydantic model <-> one frame's payload (msgpack or JSON).

msgpack frames carry NumPy arrays as ext values (code 1) holding the raw bytes. The
writer copies each array's bytes exactly once, straight into the frame: it packs
the model with a small placeholder per array, then lays the frame out around them.
The reader decodes large array-bearing frames without copying: it walks the msgpack
structure to find the array ext values, hands msgpack a compact copy of everything
else, and turns each array into a read-only view of the received frame.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import struct
from typing import Any, Final, NamedTuple

import msgpack
import numpy as np
import pydantic
import pydantic_core

from ._errors import (
    MalformedFrameError,
    RemoteStreamError,
    ServerGoingAwayError,
    StreamError,
    UnknownExtError,
    UnsupportedValueError,
)
from ._frames import TAG_SIZE, TAG_STRUCT, Codec, FrameKind, pack_tag
from ._numpy import COPY_ARRAYS_CONTEXT, NDARRAY_EXT_CODE, decode_ext, ext_header

__all__ = [
    "MsgpackLimits",
    "decode_error",
    "decode_model",
    "encode_error",
    "encode_json",
    "encode_msgpack",
    "item_decoding",
    "item_failure",
]

# Placeholders the writer packs in place of arrays; never on the wire.
_PLACEHOLDER_CODE: Final = 127
# Decoded frames smaller than this take msgpack's own path (one small copy per array)
# rather than the structure walk; the walk only pays off for big arrays.
_ZERO_COPY_MIN_BYTES: Final = 64 * 1024
# The walk gives up (and msgpack's own path takes over) after this many values.
_WALK_BUDGET: Final = 4096
_EXT32 = struct.Struct(">BIb")
_TAG_PACK = TAG_STRUCT.pack
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_STUB = struct.Struct(">BbI")  # fixext 4 carrying an array index


@dataclasses.dataclass(frozen=True, slots=True)
class MsgpackLimits:
    """Limits on msgpack payloads (besides the frame size, which bounds everything).

    Attributes:
        max_array_len: most elements in one msgpack array.
        max_map_len: most entries in one msgpack map.
        max_str_len: most bytes in one string.
        max_bin_len: most bytes in one binary value.
        max_ext_len: most bytes in one ext value (a NumPy array's header and data).
    """

    max_array_len: int = 1_000_000
    max_map_len: int = 100_000
    max_str_len: int = 64 * 1024 * 1024
    max_bin_len: int = 1 << 31
    max_ext_len: int = 1 << 31


def _default_hook(arrays: list[np.ndarray[Any, Any]], token: bytes) -> Any:
    def default(obj: Any) -> Any:
        if isinstance(obj, np.ndarray):
            arrays.append(obj)
            return msgpack.ExtType(_PLACEHOLDER_CODE, token + _U32.pack(len(arrays) - 1))
        if isinstance(obj, np.generic):
            return obj.item()
        try:
            return pydantic_core.to_jsonable_python(obj)
        except pydantic_core.PydanticSerializationError as exc:
            raise UnsupportedValueError(
                f"cannot encode a {type(obj).__name__} value with msgpack"
            ) from exc

    return default


class MsgpackEncoder:
    """Packs models into msgpack frames; one per writer (it holds a reusable packer).

    The writer's per-item path uses :attr:`pack`, :attr:`arrays` and
    :meth:`splice` inline, exactly as :meth:`encode` does, and :meth:`encode` for
    anything that fails there (see ``StreamWriter.yield_item``).
    """

    def __init__(self) -> None:
        self._arrays: list[np.ndarray[Any, Any]] = []
        # A random token per encoder: user data cannot collide with a placeholder.
        self._token = os.urandom(16)
        self._packer = msgpack.Packer(
            default=_default_hook(self._arrays, self._token), use_bin_type=True, datetime=False
        )
        self._placeholder_prefix = (
            b"\xc7" + _U8.pack(len(self._token) + 4) + _U8.pack(_PLACEHOLDER_CODE) + self._token
        )
        #: The packer's ``pack``: placeholders for arrays, which land in :attr:`arrays`.
        self.pack = self._packer.pack
        #: The arrays the last ``pack`` call met (empty when it met none).
        self.arrays = self._arrays

    def reset(self) -> None:
        """Forget a failed ``pack`` call: the packer's partial value and its arrays."""
        self._packer.reset()
        self._arrays.clear()

    def splice(self, tag_byte: int, packed: bytes) -> bytes:
        """The frame of ``packed`` with :attr:`arrays` put in place; clears them."""
        try:
            return self._splice(tag_byte, packed, self._arrays)
        finally:
            self._arrays.clear()

    def encode(self, tag_byte: int, data: Any) -> bytes:
        """Pack ``data`` as a whole frame whose tag byte (kind | codec) is ``tag_byte``."""
        arrays = self._arrays
        arrays.clear()
        try:
            packed: bytes = self._packer.pack(data)
        except StreamError:
            self.reset()
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            self.reset()
            raise UnsupportedValueError(f"cannot encode {_kind_name(tag_byte)}: {exc}") from exc
        if not arrays:
            return _TAG_PACK(tag_byte, len(packed)) + packed
        try:
            return self._splice(tag_byte, packed, arrays)
        finally:
            arrays.clear()

    def _splice(self, tag_byte: int, packed: bytes, arrays: list[np.ndarray[Any, Any]]) -> bytes:
        prefix = self._placeholder_prefix
        placeholder_len = len(prefix) + 4
        cuts: list[int] = []
        at = 0
        for index in range(len(arrays)):
            at = packed.find(prefix + _U32.pack(index), at)
            if at < 0:  # pragma: no cover - guaranteed by construction
                raise UnsupportedValueError("array placeholder lost while packing")
            cuts.append(at)
            at += placeholder_len
        # First pass: lay out headers to know the frame's size and alignment.
        layout: list[tuple[int, bytes, np.dtype[Any]]] = []
        size = TAG_SIZE
        prev = 0
        for cut, array in zip(cuts, arrays, strict=True):
            size += cut - prev
            ext_data_at = size + _EXT32.size
            header, dtype = ext_header(array, ext_data_at)
            layout.append((cut, header, dtype))
            size += _EXT32.size + len(header) + array.size * dtype.itemsize
            prev = cut + placeholder_len
        size += len(packed) - prev
        payload_len = size - TAG_SIZE
        # bytes.join sizes the frame once and copies each piece once: the array's
        # bytes go straight from the array into the frame, and the frame is `bytes`
        # (what gRPC, sockets and ASGI servers take without another copy).
        pieces: list[Any] = [
            pack_tag(FrameKind(tag_byte & 0x0F), Codec.MSGPACK, payload_len, array_hint=True)
        ]
        prev = 0
        for (cut, header, dtype), array in zip(layout, arrays, strict=True):
            pieces.append(packed[prev:cut])
            nbytes = array.size * dtype.itemsize
            ext_len = len(header) + nbytes
            if ext_len > 0xFFFF_FFFF:
                raise UnsupportedValueError("an array above 4 GiB cannot be sent in one frame")
            pieces.append(_EXT32.pack(0xC9, ext_len, NDARRAY_EXT_CODE))
            pieces.append(header)
            if nbytes:
                # C-order little-endian bytes; non-contiguous or big-endian input is
                # converted first (one extra copy only in that case).
                data = array
                if array.dtype != dtype or not array.flags.c_contiguous:
                    data = np.ascontiguousarray(array, dtype=dtype)
                pieces.append(data.reshape(-1).view(np.uint8))
            prev = cut + placeholder_len
        pieces.append(packed[prev:])
        frame = b"".join(pieces)
        if len(frame) != size:  # pragma: no cover - guaranteed by the layout
            raise UnsupportedValueError("frame layout mismatch while packing arrays")
        return frame


def _kind_name(tag_byte: int) -> str:
    return FrameKind(tag_byte & 0x0F).name.lower()


def encode_json(tag_byte: int, model: pydantic.BaseModel) -> bytes:
    """The truss_chains-compatible frame: tag + the model's JSON."""
    try:
        payload = model.__pydantic_serializer__.to_json(model)
    except pydantic_core.PydanticSerializationError as exc:
        hint = ""
        if "utf-8" in str(exc):
            # pydantic writes bytes fields as UTF-8 text (as truss_chains does).
            hint = (
                " (the JSON codec writes bytes fields as UTF-8 text: use the msgpack codec, "
                "or ser_json_bytes='base64' in the model's config, for arbitrary bytes)"
            )
        raise UnsupportedValueError(f"cannot encode {_kind_name(tag_byte)}: {exc}{hint}") from exc
    return _TAG_PACK(tag_byte, len(payload)) + payload


def encode_msgpack(encoder: MsgpackEncoder, tag_byte: int, model: pydantic.BaseModel) -> bytes:
    """Encode one model as a whole msgpack frame."""
    try:
        data = model.__pydantic_serializer__.to_python(model)
    except pydantic_core.PydanticSerializationError as exc:
        raise UnsupportedValueError(f"cannot encode {_kind_name(tag_byte)}: {exc}") from exc
    return encoder.encode(tag_byte, data)


#: The message of an ERROR frame whose details the server withheld.
REDACTED_MESSAGE: Final = "details withheld by the server"


def encode_error(
    codec: Codec, exc: BaseException, *, error_id: str | None = None, expose: bool = True
) -> bytes:
    """An ERROR frame carrying ``exc``'s type name and message.

    ``error_id`` adds the id the server logged the failure under; ``expose=False``
    replaces the message with :data:`REDACTED_MESSAGE`. A
    :class:`ServerGoingAwayError` is marked with ``"reason": "going_away"``.
    """
    body: dict[str, str] = {
        "type": type(exc).__name__,
        "message": str(exc) if expose else REDACTED_MESSAGE,
    }
    if isinstance(exc, ServerGoingAwayError):
        body["message"] = exc.remote_message
        body["reason"] = ServerGoingAwayError.REASON
    if error_id is not None:
        body["error_id"] = error_id
    if codec is Codec.JSON:
        payload = json.dumps(body).encode()
    else:
        payload = msgpack.packb(body, use_bin_type=True)
    return pack_tag(FrameKind.ERROR, codec, len(payload)) + payload


# Decoding -------------------------------------------------------------------------------


_unpackb = msgpack.unpackb
_JSON: Final = Codec.JSON


def _unpack_options(limits: MsgpackLimits, ext_hook: Any) -> dict[str, Any]:
    """The keyword arguments of msgpack.unpackb for every payload (one list for all)."""
    return {
        "ext_hook": ext_hook,
        "raw": False,
        # ext -1, msgpack's own timestamp type, is a timezone-aware UTC datetime
        # (docs/wire-format.md 4.3); no other ext code outside ours is accepted.
        "timestamp": 3,
        "strict_map_key": False,
        "max_array_len": limits.max_array_len,
        "max_map_len": limits.max_map_len,
        "max_str_len": limits.max_str_len,
        "max_bin_len": limits.max_bin_len,
        "max_ext_len": limits.max_ext_len,
    }


def _unpack(payload: memoryview, limits: MsgpackLimits, ext_hook: Any) -> Any:
    try:
        return _unpackb(payload, **_unpack_options(limits, ext_hook))
    except StreamError:
        raise
    except Exception as exc:
        raise _msgpack_failure(exc) from exc


def _msgpack_failure(exc: Exception) -> MalformedFrameError:
    # msgpack reports bad data as ValueError, TypeError, StackError, ExtraData,
    # FormatError, UnicodeDecodeError...: one error for all of them.
    return MalformedFrameError(f"invalid msgpack payload: {exc}")


def _walk(payload: memoryview) -> list[tuple[int, int, int]] | None:
    """Find the NDArray ext values in a msgpack payload.

    Returns (value start, data start, data end) for each, in order, or None when
    the structure has more values than the walk's budget.
    """
    found: list[tuple[int, int, int]] = []
    pos = 0
    end = len(payload)
    pending = 1
    budget = _WALK_BUDGET
    try:
        while pending:
            budget -= 1
            if budget < 0:
                return None
            pending -= 1
            b = payload[pos]
            if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):
                pos += 1
            elif b <= 0x8F:
                pending += 2 * (b & 0x0F)
                pos += 1
            elif b <= 0x9F:
                pending += b & 0x0F
                pos += 1
            elif b <= 0xBF:
                pos += 1 + (b & 0x1F)
            elif b in (0xC4, 0xD9):
                pos += 2 + payload[pos + 1]
            elif b in (0xC5, 0xDA):
                pos += 3 + _U16.unpack_from(payload, pos + 1)[0]
            elif b in (0xC6, 0xDB):
                pos += 5 + _U32.unpack_from(payload, pos + 1)[0]
            elif b in (0xC7, 0xC8, 0xC9):
                width = {0xC7: 1, 0xC8: 2, 0xC9: 4}[b]
                length = int.from_bytes(payload[pos + 1 : pos + 1 + width], "big")
                code = payload[pos + 1 + width]
                start = pos + 2 + width
                if code == NDARRAY_EXT_CODE:
                    found.append((pos, start, start + length))
                elif code == _PLACEHOLDER_CODE:
                    raise UnknownExtError(f"msgpack ext code {_PLACEHOLDER_CODE} is reserved")
                pos = start + length
            elif 0xCA <= b <= 0xD3:
                pos += 1 + (4, 8, 1, 2, 4, 8, 1, 2, 4, 8)[b - 0xCA]
            elif 0xD4 <= b <= 0xD8:
                length = 1 << (b - 0xD4)
                code = payload[pos + 1]
                if code == NDARRAY_EXT_CODE:
                    found.append((pos, pos + 2, pos + 2 + length))
                elif code == _PLACEHOLDER_CODE:
                    raise UnknownExtError(f"msgpack ext code {_PLACEHOLDER_CODE} is reserved")
                pos += 2 + length
            elif b in (0xDC, 0xDD):
                pending += (
                    _U16.unpack_from(payload, pos + 1)[0]
                    if b == 0xDC
                    else _U32.unpack_from(payload, pos + 1)[0]
                )
                pos += 3 if b == 0xDC else 5
            elif b in (0xDE, 0xDF):
                count = (
                    _U16.unpack_from(payload, pos + 1)[0]
                    if b == 0xDE
                    else _U32.unpack_from(payload, pos + 1)[0]
                )
                pending += 2 * count
                pos += 3 if b == 0xDE else 5
            else:  # 0xC1: never used
                raise MalformedFrameError(f"invalid msgpack type byte 0x{b:02x}")
            if pos > end:
                raise MalformedFrameError("msgpack value runs past the end of the frame")
    except (IndexError, struct.error) as exc:
        raise MalformedFrameError("msgpack value runs past the end of the frame") from exc
    if pos != end:
        raise MalformedFrameError(f"{end - pos} bytes of extra data after the msgpack value")
    return found


def _ext_hook_view(code: int, data: bytes) -> Any:
    if code == NDARRAY_EXT_CODE:
        return decode_ext(data, copy=False)
    raise UnknownExtError(f"unknown msgpack ext code {code}")


def _ext_hook_copy(code: int, data: bytes) -> Any:
    if code == NDARRAY_EXT_CODE:
        return decode_ext(data, copy=True)
    raise UnknownExtError(f"unknown msgpack ext code {code}")


def _decode_msgpack(
    payload: memoryview, array_hint: bool, limits: MsgpackLimits, copy_arrays: bool
) -> Any:
    ext_hook = _ext_hook_copy if copy_arrays else _ext_hook_view
    if not array_hint or len(payload) < _ZERO_COPY_MIN_BYTES:
        return _unpack(payload, limits, ext_hook)
    found = _walk(payload)
    if not found:
        return _unpack(payload, limits, ext_hook)
    for _, start, data_end in found:
        # The arrays skip msgpack (and its limits) on this path: check them here.
        if data_end - start > limits.max_ext_len:
            raise MalformedFrameError(
                f"invalid msgpack payload: {data_end - start} exceeds "
                f"max_ext_len({limits.max_ext_len})"
            )
    # Compact copy of everything but the arrays, each replaced by a 6-byte stub.
    pieces: list[bytes | memoryview] = []
    prev = 0
    for index, (value_at, _, data_end) in enumerate(found):
        pieces.append(payload[prev:value_at])
        pieces.append(_STUB.pack(0xD6, _PLACEHOLDER_CODE, index))
        prev = data_end
    pieces.append(payload[prev:])
    compact = b"".join(pieces)

    def stub_hook(code: int, data: bytes) -> Any:
        if code == _PLACEHOLDER_CODE:
            _, start, data_end = found[_U32.unpack(data)[0]]
            return decode_ext(payload[start:data_end], copy=copy_arrays)
        return ext_hook(code, data)

    return _unpack(memoryview(compact), limits, stub_hook)


def _unbounded_bytes(limits: MsgpackLimits) -> int:
    """Payloads up to this size cannot break ``limits``: msgpack may skip checking them.

    A msgpack string, binary or ext value of n bytes needs n bytes of payload, an
    array of n elements at least n, a map of n entries at least 2n; and ``unpackb``
    without limit arguments bounds each by the payload's own size (maps by half).
    So below the smallest limit, passing the limits changes nothing but the cost.
    """
    return min(
        limits.max_str_len,
        limits.max_bin_len,
        limits.max_ext_len,
        limits.max_array_len,
        2 * limits.max_map_len,
    )


#: Item payloads up to this size take the reader's per-item path (:class:`ItemDecoding`).
SMALL_PAYLOAD_BYTES: Final = 4096


class ItemDecoding(NamedTuple):
    """One stream type's small item payloads, decoded with everything bound in advance.

    The reader's per-item path (``ReaderCore.take_item``) calls these pieces inline,
    with no Python function of ours in between (each would cost a few percent of a
    small item): for JSON ``validate(payload)``; for msgpack ``validate(unpackb(
    payload, ext_hook=ext_hook, timestamp=3, strict_map_key=False))``, spelled out there because
    a ``**options`` call costs a tenth of unpackb. Either way it gives what
    :func:`decode_model` gives for a frame without the array hint. On failure,
    :func:`item_failure` says what to raise.
    """

    #: Payloads up to this many bytes (and no more) may be decoded this way.
    max_bytes: int
    #: None for JSON (``validate`` parses the payload), else unpackb's ext_hook.
    ext_hook: Any
    validate: Any


def item_decoding(
    model_type: type[pydantic.BaseModel],
    codec: Codec,
    limits: MsgpackLimits,
    copy_arrays: bool,
) -> ItemDecoding:
    """Prepare the per-item decoding of ``model_type`` payloads in ``codec``."""
    validator = model_type.__pydantic_validator__
    if codec is _JSON:
        validate: Any = validator.validate_json
        if copy_arrays:
            validate = functools.partial(validate, context=_COPY_CONTEXT)
        return ItemDecoding(SMALL_PAYLOAD_BYTES, None, validate)
    ext_hook = _ext_hook_copy if copy_arrays else _ext_hook_view
    # Below every limit the limits need not be passed; the other options are spelled
    # out in take_item. Should _unpack_options change, say so at once, not silently.
    options = {
        name: value
        for name, value in _unpack_options(limits, ext_hook).items()
        if not name.startswith("max_")
    }
    if options != {"ext_hook": ext_hook, "raw": False, "timestamp": 3, "strict_map_key": False}:
        raise RuntimeError(  # pragma: no cover - a guard for whoever edits _unpack_options
            "ReaderCore.take_item's unpackb arguments are out of step with _unpack_options"
        )
    return ItemDecoding(
        min(SMALL_PAYLOAD_BYTES, _unbounded_bytes(limits)), ext_hook, validator.validate_python
    )


def item_failure(codec: Codec, exc: Exception) -> Exception:
    """What to raise when :class:`ItemDecoding` failed with ``exc`` (maybe ``exc``).

    JSON: a ValidationError for malformed JSON is a MalformedFrameError, any other
    error stays. msgpack (called only for unpackb's errors): stream errors (from the
    ext hook) stay, anything else is a MalformedFrameError.
    """
    if codec is _JSON:
        if isinstance(exc, pydantic.ValidationError) and any(
            err["type"] == "json_invalid" for err in exc.errors()
        ):
            return MalformedFrameError(f"invalid JSON payload: {exc}")
        return exc
    if isinstance(exc, StreamError):
        return exc
    return _msgpack_failure(exc)


_COPY_CONTEXT: Final = {COPY_ARRAYS_CONTEXT: True}


def decode_model(
    model_type: type[pydantic.BaseModel],
    codec: Codec,
    array_hint: bool,
    payload: memoryview,
    limits: MsgpackLimits,
    copy_arrays: bool,
) -> Any:
    """Validate one frame's payload as ``model_type``.

    Raises:
        MalformedFrameError: the payload does not parse in its codec.
        pydantic.ValidationError: it parses but does not fit the model.
    """
    validator = model_type.__pydantic_validator__
    if codec is _JSON:
        try:
            return validator.validate_json(
                payload.tobytes(), context=_COPY_CONTEXT if copy_arrays else None
            )
        except pydantic.ValidationError as exc:
            if any(err["type"] == "json_invalid" for err in exc.errors()):
                raise MalformedFrameError(f"invalid JSON payload: {exc}") from exc
            raise
    data = _decode_msgpack(payload, array_hint, limits, copy_arrays)
    return validator.validate_python(data)


def decode_error(codec: Codec, payload: memoryview, limits: MsgpackLimits) -> StreamError:
    """The exception an ERROR frame's payload describes, ready to raise.

    A :class:`ServerGoingAwayError` for ``"reason": "going_away"``, otherwise a
    :class:`RemoteStreamError`; unknown keys are ignored (newer writers may add some).
    """
    body: Any
    if codec is Codec.JSON:
        try:
            body = json.loads(payload.tobytes())
        except ValueError as exc:
            raise MalformedFrameError(f"invalid ERROR frame payload: {exc}") from exc
    else:
        body = _unpack(payload, limits, _ext_hook_view)
    if not (
        isinstance(body, dict)
        and isinstance(body.get("type"), str)
        and isinstance(body.get("message"), str)
    ):
        raise MalformedFrameError("ERROR frame payload must be {type: str, message: str}")
    error_id = body.get("error_id")
    if not isinstance(error_id, str):
        error_id = None
    if body.get("reason") == ServerGoingAwayError.REASON:
        return ServerGoingAwayError(body["type"], body["message"], error_id=error_id)
    return RemoteStreamError(body["type"], body["message"], error_id=error_id)
