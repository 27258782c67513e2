"""Typed streams for model serving.

A stream type (:func:`stream_types`) declares an item model and optional header and
footer models. :func:`stream_writer` turns them into frames, msgpack (NumPy arrays as
raw-byte ext values) or JSON (byte-compatible with ``truss_chains.streaming``);
:func:`stream_reader` turns bytes back into validated models, in order: header,
items, footer. See docs/wire-format.md for the frames.
"""

from ._codec import MsgpackLimits
from ._errors import (
    FrameTooLargeError,
    MalformedFrameError,
    RemoteStreamError,
    ServerGoingAwayError,
    StreamConsumedError,
    StreamError,
    StreamOrderError,
    StreamTimeoutError,
    StreamTruncatedError,
    UnknownCodecError,
    UnknownExtError,
    UnsupportedValueError,
)
from ._frames import (
    DEFAULT_MAX_FRAME_BYTES,
    TAG_SIZE,
    WIRE_FORMAT_VERSION,
    Codec,
    Frame,
    FrameKind,
    pack_tag,
    parse_tag,
)
from ._numpy import NDARRAY_EXT_CODE, NDArray
from ._protocol import FrameDecoder, ReaderCore
from ._reader import AsyncStreamReader, StreamReader, stream_reader
from ._schema import StreamTypes, stream_types
from ._writer import (
    FrameBytes,
    StreamWriter,
    WrongModelError,
    end_frame,
    error_frame,
    frame_info,
    stream_writer,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "NDARRAY_EXT_CODE",
    "TAG_SIZE",
    "WIRE_FORMAT_VERSION",
    "AsyncStreamReader",
    "Codec",
    "Frame",
    "FrameBytes",
    "FrameDecoder",
    "FrameKind",
    "FrameTooLargeError",
    "MalformedFrameError",
    "MsgpackLimits",
    "NDArray",
    "ReaderCore",
    "RemoteStreamError",
    "ServerGoingAwayError",
    "StreamConsumedError",
    "StreamError",
    "StreamOrderError",
    "StreamReader",
    "StreamTimeoutError",
    "StreamTruncatedError",
    "StreamTypes",
    "StreamWriter",
    "UnknownCodecError",
    "UnknownExtError",
    "UnsupportedValueError",
    "WrongModelError",
    "end_frame",
    "error_frame",
    "frame_info",
    "pack_tag",
    "parse_tag",
    "stream_reader",
    "stream_types",
    "stream_writer",
]
