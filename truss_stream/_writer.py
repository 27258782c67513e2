"""StreamWriter: sans-IO, every call returns one whole frame."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, Final, Generic

import pydantic

from ._codec import MsgpackEncoder, encode_error, encode_json, encode_msgpack
from ._errors import MalformedFrameError, StreamError, StreamOrderError
from ._frames import TAG_SIZE, TAG_STRUCT, Codec, FrameKind, pack_tag, parse_tag
from ._schema import FooterT, FooterTT, HeaderT, HeaderTT, ItemT, StreamTypes

__all__ = [
    "FrameBytes",
    "StreamWriter",
    "WrongModelError",
    "end_frame",
    "error_frame",
    "frame_info",
    "stream_writer",
]

FrameBytes = bytes
"""A frame as the writer returns it: always ``bytes`` (a frame holding NumPy arrays
is still built with one copy of their bytes)."""


class WrongModelError(StreamError, TypeError):
    """The writer was given an instance of the wrong model for its stream type."""


class _State(enum.IntEnum):
    START = 0
    HEADER = 1
    ITEMS = 2
    FOOTER = 3
    CLOSED = 4


# Module constants for the per-item path: an enum attribute lookup costs ~85 ns on 3.11.
_ITEMS: Final = _State.ITEMS
_FOOTER: Final = _State.FOOTER
_TAG_PACK = TAG_STRUCT.pack
_CACHED_TAGS: Final = 4096  # item tags kept for payloads below this size (<= 4096 entries)
_NO_ARRAYS: Final = ()  # JSON frames never hold array placeholders


class StreamWriter(Generic[ItemT, HeaderTT, FooterTT]):
    """Turns a stream type's header, items and footer into frames.

    The writer does no I/O: each method returns one frame (``bytes``-like) for the
    caller to send. It enforces the order header, items, footer, then END (or
    ERROR); a call out of order raises :class:`StreamOrderError` and changes nothing.
    """

    __slots__ = (
        "_arrays",
        "_codec",
        "_encoder",
        "_fast_item_type",
        "_footer_tag",
        "_header_tag",
        "_item_tag",
        "_item_tags",
        "_pack",
        "_serialize",
        "_state",
        "_types",
    )

    def __new__(cls, types: StreamTypes[ItemT, HeaderTT, FooterTT]) -> StreamWriter[Any, Any, Any]:
        # A JSON stream gets the subclass whose yield_item has no msgpack branches
        # (and so this class's yield_item none for JSON): a few bytecodes an item.
        if cls is StreamWriter and types.codec is Codec.JSON:
            cls = _JsonStreamWriter
        return object.__new__(cls)

    def __init__(self, types: StreamTypes[ItemT, HeaderTT, FooterTT]) -> None:
        self._types = types
        self._codec = types.codec
        self._encoder = MsgpackEncoder() if types.codec is Codec.MSGPACK else None
        self._state = _State.START
        # Tag bytes as plain ints: enum arithmetic is slow on the per-item path.
        codec = int(types.codec)
        self._header_tag = int(FrameKind.HEADER) | codec
        self._item_tag = int(FrameKind.ITEM) | codec
        self._footer_tag = int(FrameKind.FOOTER) | codec
        # The per-item fast path (yield_item): _fast_item_type is the item model once
        # an item was written and until the footer/END/ERROR, None otherwise; while
        # it holds, an instance of exactly that model needs no order or isinstance
        # check, and the codec's calls are bound (at the first item, when the model
        # is surely complete).
        self._fast_item_type: Any = None
        self._serialize: Any = None
        self._pack: Any = None
        self._arrays: Sequence[Any] = _NO_ARRAYS
        # Item tags by payload size (a dict lookup costs a third of struct.pack).
        self._item_tags: dict[int, bytes] = {}

    @property
    def types(self) -> StreamTypes[ItemT, HeaderTT, FooterTT]:
        """The stream type this writer writes."""
        return self._types

    @property
    def closed(self) -> bool:
        """True once END or ERROR was written."""
        return self._state is _State.CLOSED

    def _encode(self, tag_byte: int, model: pydantic.BaseModel, expected: Any) -> bytes:
        if not isinstance(model, expected):
            raise WrongModelError(
                f"{FrameKind(tag_byte & 0x0F).name.lower()} must be a {expected.__name__}, "
                f"got {type(model).__name__}"
            )
        encoder = self._encoder
        if encoder is None:
            return encode_json(tag_byte, model)
        return encode_msgpack(encoder, tag_byte, model)

    def yield_header(self: StreamWriter[ItemT, HeaderT, FooterTT], header: HeaderT) -> bytes:
        """Return the HEADER frame; only as the stream's first frame.

        Raises:
            StreamOrderError: something was written already.
            WrongModelError: ``header`` is not the stream type's header model.
            UnsupportedValueError: a value cannot be encoded (object arrays, ...).
        """
        if self._types.header_type is None:
            raise StreamOrderError("this stream type declares no header")
        if self._state is not _State.START:
            raise StreamOrderError("the header must be the first frame of a stream")
        frame = self._encode(self._header_tag, header, self._types.header_type)
        self._state = _State.HEADER
        return frame

    def yield_item(self, item: ItemT) -> bytes:
        """Return an ITEM frame.

        Raises:
            StreamOrderError: after the footer, END or ERROR.
            WrongModelError: ``item`` is not the stream type's item model.
            UnsupportedValueError: a value cannot be encoded.
        """
        # What _encode does for an item, inlined: a Python call of ours costs a few
        # percent of a small item. type(), not __class__: pydantic models have a
        # __getattr__, which makes every attribute lookup on them slow.
        if type(item) is self._fast_item_type:
            # msgpack only: a JSON stream's writer is a _JsonStreamWriter (see __new__).
            serialize = self._serialize  # locals: a callable held in a slot is slow to call
            pack = self._pack
            try:
                payload = pack(serialize(item))
            except Exception:
                # The codec's own path raises its own error (or, should it succeed,
                # writes the frame): one place for every encoding error.
                return self._retry_item(item)
            except BaseException:  # KeyboardInterrupt...: no retry, but no stale state
                if self._encoder is not None:
                    self._encoder.reset()
                raise
            if self._arrays:
                return self._encoder.splice(self._item_tag, payload)  # type: ignore[union-attr]
            try:
                # A subscript: cheaper than .get's method call.
                return self._item_tags[len(payload)] + payload  # type: ignore[no-any-return]
            except KeyError:
                return self._item_tag_for(len(payload)) + payload  # type: ignore[no-any-return]
        return self._first_item(item)

    def _item_tag_for(self, size: int) -> bytes:
        tag = _TAG_PACK(self._item_tag, size)
        if size < _CACHED_TAGS:
            self._item_tags[size] = tag
        return tag

    def _retry_item(self, item: ItemT) -> bytes:
        if self._encoder is not None:
            self._encoder.reset()
        return self._encode(self._item_tag, item, self._types.item_type)

    def _first_item(self, item: ItemT) -> bytes:
        """yield_item's checked path: the first item, a subclass instance, or misuse."""
        if self._state >= _FOOTER:
            raise StreamOrderError("cannot write an item after the footer, END or ERROR")
        frame = self._encode(self._item_tag, item, self._types.item_type)
        self._state = _ITEMS
        item_type = self._types.item_type
        if type(item) is item_type:
            serializer = item_type.__pydantic_serializer__
            if self._encoder is None:
                if not isinstance(self, _JsonStreamWriter):
                    return frame  # a subclass of ours for JSON: this class's checked path
                self._serialize = serializer.to_json
            else:
                self._serialize = serializer.to_python
                self._pack = self._encoder.pack
                self._arrays = self._encoder.arrays
            self._fast_item_type = item_type
        return frame

    def yield_footer(self: StreamWriter[ItemT, HeaderTT, FooterT], footer: FooterT) -> bytes:
        """Return the FOOTER frame; after the items, at most once.

        Raises:
            StreamOrderError: after the footer, END or ERROR.
            WrongModelError: ``footer`` is not the stream type's footer model.
        """
        if self._types.footer_type is None:
            raise StreamOrderError("this stream type declares no footer")
        if self._state >= _State.FOOTER:
            raise StreamOrderError("cannot write a footer after the footer, END or ERROR")
        frame = self._encode(self._footer_tag, footer, self._types.footer_type)
        self._state = _State.FOOTER
        self._fast_item_type = None
        return frame

    def yield_end(self) -> bytes:
        """Return the END frame that closes the stream.

        Raises:
            StreamOrderError: END or ERROR was already written.
        """
        if self._state is _State.CLOSED:
            raise StreamOrderError("the stream is already closed")
        self._state = _State.CLOSED
        self._fast_item_type = None
        return end_frame(self._codec)

    def yield_error(self, exc: BaseException) -> bytes:
        """Return an ERROR frame carrying ``exc`` (its type name and message).

        The ERROR frame closes the stream; the reader raises
        :class:`RemoteStreamError` when it reaches it.

        Raises:
            StreamOrderError: END or ERROR was already written.
        """
        if self._state is _State.CLOSED:
            raise StreamOrderError("the stream is already closed")
        self._state = _State.CLOSED
        self._fast_item_type = None
        return encode_error(self._codec, exc)


class _JsonStreamWriter(StreamWriter[ItemT, HeaderTT, FooterTT]):
    """A JSON stream's writer: :meth:`StreamWriter.yield_item` without the msgpack
    branches (packing, arrays), nine bytecodes an item fewer; the rest is shared."""

    __slots__ = ()

    def yield_item(self, item: ItemT) -> bytes:
        """Return an ITEM frame; see :meth:`StreamWriter.yield_item`."""
        if type(item) is self._fast_item_type:
            to_json = self._serialize
            try:
                payload = to_json(item)
            except Exception:  # as StreamWriter.yield_item (JSON holds no encoder state)
                return self._retry_item(item)
            try:
                return self._item_tags[len(payload)] + payload  # type: ignore[no-any-return]
            except KeyError:
                return self._item_tag_for(len(payload)) + payload  # type: ignore[no-any-return]
        return self._first_item(item)


def stream_writer(
    types: StreamTypes[ItemT, HeaderTT, FooterTT],
) -> StreamWriter[ItemT, HeaderTT, FooterTT]:
    """Create a :class:`StreamWriter` for ``types``; one writer per stream."""
    return StreamWriter(types)


def end_frame(codec: Codec = Codec.MSGPACK) -> bytes:
    """The END frame (empty payload) in ``codec``'s tag."""
    return pack_tag(FrameKind.END, codec, 0)


def error_frame(
    exc: BaseException,
    codec: Codec = Codec.MSGPACK,
    *,
    error_id: str | None = None,
    expose: bool = True,
) -> bytes:
    """An ERROR frame carrying ``exc``, for transports that catch a producer's failure.

    Args:
        exc: the failure; a :class:`ServerGoingAwayError` is marked as such on the wire.
        codec: the frame's codec.
        error_id: the id the server logged the failure under (sent to the reader).
        expose: False sends the exception's type but withholds its message.
    """
    return encode_error(codec, exc, error_id=error_id, expose=expose)


def frame_info(frame: bytes | bytearray | memoryview) -> tuple[FrameKind, Codec]:
    """The (kind, codec) of one whole frame, checked against its declared length.

    Raises:
        MalformedFrameError: not a whole, well-formed frame.
    """
    view = memoryview(frame)
    if len(view) < TAG_SIZE:
        raise MalformedFrameError(f"a frame has at least {TAG_SIZE} bytes, got {len(view)}")
    kind, codec, _, length = parse_tag(view[:TAG_SIZE])
    if len(view) != TAG_SIZE + length:
        raise MalformedFrameError(
            f"frame declares {length} payload bytes but holds {len(view) - TAG_SIZE}"
        )
    return kind, codec
