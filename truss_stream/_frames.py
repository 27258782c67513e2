"""Frame layout: a 5-byte tag (1 byte kind/codec, 4-byte big-endian length), then the payload.

The tag byte's low nibble is the frame kind, and with codec bits 0 it is byte for
byte the tag of ``truss_chains.streaming`` (HEADER=2 ITEM=3 FOOTER=4 END=5). The
high nibble carries the codec and a hint; see docs/wire-format.md.
"""

from __future__ import annotations

import enum
import struct
from typing import Final, NamedTuple

from ._errors import MalformedFrameError, UnknownCodecError

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "TAG_SIZE",
    "WIRE_FORMAT_VERSION",
    "Codec",
    "Frame",
    "FrameKind",
    "pack_tag",
    "parse_tag",
]

WIRE_FORMAT_VERSION: Final = 2
TAG_SIZE: Final = 5
#: Default limit on one frame's payload; a reader checks the declared length against it.
DEFAULT_MAX_FRAME_BYTES: Final = 256 * 1024 * 1024
MAX_WIRE_LENGTH: Final = 0xFFFF_FFFF

_TAG = struct.Struct(">BI")
_KIND_MASK: Final = 0x0F
_CODEC_MASK: Final = 0x10
#: Set by the writer on msgpack frames whose payload holds NDArray ext values, so
#: the reader can take its zero-copy path. Only a hint: without it arrays still decode.
ARRAY_HINT: Final = 0x20
_RESERVED_MASK: Final = 0xC0


class FrameKind(enum.IntEnum):
    """The kind of a frame: the low nibble of its tag byte."""

    HEADER = 2
    ITEM = 3
    FOOTER = 4
    END = 5
    ERROR = 6


class Codec(enum.IntEnum):
    """The payload codec: bit 4 of the tag byte."""

    JSON = 0x00
    MSGPACK = 0x10


_KINDS: Final = {k.value: k for k in FrameKind}


class Frame(NamedTuple):
    """One decoded frame. ``payload`` is a read-only view, not a copy."""

    kind: FrameKind
    codec: Codec
    array_hint: bool
    payload: memoryview


def pack_tag(kind: FrameKind, codec: Codec, length: int, *, array_hint: bool = False) -> bytes:
    """Return the 5-byte tag for a frame of ``length`` payload bytes."""
    if length > MAX_WIRE_LENGTH:
        raise MalformedFrameError(f"frame payload of {length} bytes exceeds the 4 GiB wire limit")
    return _TAG.pack(kind | codec | (ARRAY_HINT if array_hint else 0), length)


def _tag_info(byte: int) -> tuple[FrameKind, Codec, bool] | None:
    kind = _KINDS.get(byte & _KIND_MASK)
    if kind is None or byte & _RESERVED_MASK:
        return None
    codec = Codec.MSGPACK if byte & _CODEC_MASK else Codec.JSON
    hint = bool(byte & ARRAY_HINT)
    if hint and codec is not Codec.MSGPACK:
        return None
    return kind, codec, hint


#: (kind, codec, array_hint) for each valid tag byte, None for invalid ones: the
#: reader's hot path looks a tag up here instead of decoding its bits.
TAG_TABLE: Final = tuple(_tag_info(byte) for byte in range(256))
TAG_STRUCT: Final = _TAG


def parse_tag(tag: bytes | bytearray | memoryview) -> tuple[FrameKind, Codec, bool, int]:
    """Split a 5-byte tag into (kind, codec, array_hint, length).

    Raises:
        MalformedFrameError: unknown kind, reserved bits set, or END with a payload.
        UnknownCodecError: codec bits this version does not define.
    """
    byte, length = _TAG.unpack_from(tag)
    info = TAG_TABLE[byte]
    if info is not None:
        if info[0] is FrameKind.END and length:
            raise MalformedFrameError(f"END frame with a {length}-byte payload (must be empty)")
        return info[0], info[1], info[2], length
    kind = _KINDS.get(byte & _KIND_MASK)
    if kind is None:
        raise MalformedFrameError(
            f"unknown frame kind {byte & _KIND_MASK} in tag byte 0x{byte:02x}"
        )
    if byte & _RESERVED_MASK:
        raise UnknownCodecError(f"reserved codec bits set in tag byte 0x{byte:02x}")
    codec = Codec.MSGPACK if byte & _CODEC_MASK else Codec.JSON
    hint = bool(byte & ARRAY_HINT)
    if hint and codec is not Codec.MSGPACK:
        raise UnknownCodecError(f"array hint on a JSON frame (tag byte 0x{byte:02x})")
    raise MalformedFrameError(f"invalid tag byte 0x{byte:02x}")  # pragma: no cover
