"""The sans-IO reading core: bytes in, frames and validated models out.

:class:`FrameDecoder` splits any chunking of a byte stream into frames (in the
style of h11: ``feed()`` data, ``next_frame()`` returns a frame or ``None`` for
"need data"). :class:`ReaderCore` adds the stream's order (header, items,
footer, END) and the codecs. The sync and async readers in ``_reader.py`` are
thin loops that move bytes from their source into a ``ReaderCore``.

Copies of payload bytes: a frame that arrives inside one chunk is handed on as a
view of that chunk (no copy); a frame spread over several chunks is assembled
once into a buffer of its declared size, allocated when its tag arrives (for
frames above 16 MiB, once half the payload is there, so a lying tag costs nothing).
The one exception is the small-item fast path (:attr:`ReaderCore.item_taker`): ITEM
frames of at most 4 KiB without the array hint, in a chunk that is exactly one of
them or in a chunk of many frames (decoded in one loop), have their payload copied
out (cheaper than a view at that size) and decoded at once; such a frame cut by the
chunk's end is kept as bytes and completed from the next chunk.
"""

from __future__ import annotations

import collections
import enum
import struct
from collections.abc import Generator, Iterator
from typing import Any, Final

import msgpack
import pydantic

from ._codec import MsgpackLimits, decode_error, decode_model, item_decoding, item_failure
from ._errors import (
    FrameTooLargeError,
    MalformedFrameError,
    StreamConsumedError,
    StreamOrderError,
    StreamTruncatedError,
)
from ._frames import (
    DEFAULT_MAX_FRAME_BYTES,
    TAG_SIZE,
    TAG_STRUCT,
    TAG_TABLE,
    Codec,
    Frame,
    FrameKind,
    parse_tag,
)
from ._schema import StreamTypes

__all__ = ["BATCH", "DONE", "NEED_DATA", "NOT_TAKEN", "FrameDecoder", "ReaderCore", "Sentinel"]


class Sentinel(enum.Enum):
    """Markers the core returns instead of a value."""

    NEED_DATA = "NEED_DATA"
    DONE = "DONE"
    NOT_TAKEN = "NOT_TAKEN"
    BATCH = "BATCH"


NEED_DATA: Final = Sentinel.NEED_DATA
DONE: Final = Sentinel.DONE
#: :meth:`ReaderCore.take_item` did not take the chunk (nothing was consumed).
NOT_TAKEN: Final = Sentinel.NOT_TAKEN
#: :meth:`ReaderCore.next_item_after` after the taker took a chunk of several frames:
#: deliver :attr:`ReaderCore.batch` (maybe empty), then call
#: :meth:`ReaderCore.next_item_after_batch`.
BATCH: Final = Sentinel.BATCH
#: Most items one BATCH holds (a chunk with more gives several batches in turn): the
#: items of a batch are alive at once, and a whole 64 KiB read of them (600 models)
#: set off the collector's gen-0 collections, 5k instructions an item.
BATCH_ITEMS: Final = 64
_BATCH_DONE: Final = 1
_BATCH_MORE: Final = 2
# Sent to the taker: go on with the chunk of the last batch. A bytes object of its
# own (compared by identity), so that the one-frame check, which it fails (0xFF is
# no tag byte), stays the first thing the taker does.
_RESUME: Final = bytes(bytearray(b"\xffresume"))
# The taker's table of item tags while it is not armed (an empty one: every lookup
# fails) and while it keeps a cut frame (another empty one, told apart by identity).
_DISARMED: Final[tuple[bytes, ...]] = ()
_TAGS_HELD: Final = range(0)
#: Most chunk sizes whose item tag the taker keeps (one dict per reader).
_TAKER_TAGS: Final = 512
_unpack_tag = TAG_STRUCT.unpack_from
_ITEM: Final = FrameKind.ITEM
_DEFAULT_LIMITS: Final = MsgpackLimits()
_END_KIND: Final = FrameKind.END
_new_frame = tuple.__new__  # builds a Frame without NamedTuple's Python-level __new__
_END: Final = Frame(FrameKind.END, Codec.JSON, False, memoryview(b""))
_unpackb = msgpack.unpackb
#: Frames up to this size get their assembly buffer as soon as their tag arrives;
#: bigger ones once half their payload is buffered (peak about 1.5x the frame).
EAGER_ASSEMBLY_BYTES: Final = 16 * 1024 * 1024


class FrameDecoder:
    """Splits a byte stream, chunked any way, into :class:`Frame` values.

    Args:
        max_frame_bytes: largest payload accepted; a tag declaring more raises
            :class:`FrameTooLargeError` before anything of the payload is buffered.
    """

    __slots__ = (
        "_assembly",
        "_buffered",
        "_chunks",
        "_eof",
        "_filled",
        "_frames",
        "_max",
        "_offset",
        "_tag",
    )

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes < 0:
            raise ValueError("max_frame_bytes must be >= 0")
        self._max = max_frame_bytes
        self._chunks: collections.deque[memoryview] = collections.deque()
        self._buffered = 0
        self._tag: tuple[FrameKind, Codec, bool, int] | None = None
        self._assembly: bytearray | None = None
        self._filled = 0
        self._eof = False
        self._offset = 0
        self._frames = 0

    @property
    def frames(self) -> int:
        """Frames decoded so far, by this decoder or by ReaderCore's fast path (whose
        one-frame chunks are added when the core next reads from the decoder)."""
        return self._frames

    @property
    def offset(self) -> int:
        """Bytes of the stream consumed into whole frames so far."""
        return self._offset

    @property
    def at_boundary(self) -> bool:
        """True when no partial frame is buffered."""
        return self._tag is None and self._buffered == 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add the next chunk: ``bytes`` are kept by reference, mutable chunks are copied."""
        if self._eof:
            raise RuntimeError("feed() after feed_eof()")
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        if not view:
            return
        if self._assembly is not None:
            # A frame is being assembled: copy straight into its buffer.
            need = len(self._assembly) - self._filled
            take = min(need, len(view))
            self._assembly[self._filled : self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if not view:
                return
        if not view.readonly:
            # A mutable chunk (bytearray, writable memoryview) may be refilled by its
            # producer as soon as we return (a recv_into loop does): keep a copy, not a
            # view. Immutable bytes stay zero-copy.
            view = memoryview(view.tobytes())
        self._chunks.append(view)
        self._buffered += len(view)

    def feed_frame(self, data: bytes | bytearray | memoryview) -> Frame | None:
        """Feed one chunk; if it is exactly one whole frame, return that frame at once.

        The common case (a transport handing on the writer's frames one by one) then
        skips the buffer entirely. Anything else is fed as by :meth:`feed` and gives
        None: ask :meth:`next_frame` as usual.
        """
        # Only immutable bytes: the payload stays a view of the chunk.
        if type(data) is bytes and self._tag is None and not self._chunks and not self._eof:
            size = len(data)
            if size >= TAG_SIZE:
                byte, length = _unpack_tag(data)
                info = TAG_TABLE[byte]
                if (
                    info is not None
                    and size == TAG_SIZE + length
                    and length <= self._max
                    and (length == 0 or info[0] is not _END_KIND)
                ):
                    self._offset += size
                    self._frames += 1
                    payload = memoryview(data)[TAG_SIZE:]
                    return _new_frame(Frame, (info[0], info[1], info[2], payload))
        self.feed(data)
        return None

    def feed_eof(self) -> None:
        """Mark the end of the stream."""
        self._eof = True

    @property
    def eof(self) -> bool:
        """True once :meth:`feed_eof` was called."""
        return self._eof

    def _take(self, n: int) -> memoryview:
        """Remove ``n`` buffered bytes (n <= buffered); a view when one chunk holds them."""
        if n == 0:
            return memoryview(b"")
        first = self._chunks[0]
        if len(first) >= n:
            if len(first) == n:
                self._chunks.popleft()
            else:
                self._chunks[0] = first[n:]
            self._buffered -= n
            return first[:n]
        out = bytearray(n)
        filled = 0
        while filled < n:
            chunk = self._chunks[0]
            take = min(n - filled, len(chunk))
            out[filled : filled + take] = chunk[:take]
            filled += take
            if take == len(chunk):
                self._chunks.popleft()
            else:
                self._chunks[0] = chunk[take:]
        self._buffered -= n
        return memoryview(out)

    def next_frame(self) -> Frame | None:
        """The next whole frame, or None when more data is needed.

        Raises:
            FrameTooLargeError: a tag declares more than ``max_frame_bytes``.
            MalformedFrameError: a tag is invalid.
            StreamTruncatedError: the stream ended inside a frame.
        """
        tag = self._tag
        if tag is None and self._chunks:
            # Hot path: a whole frame at the front of the first chunk, as a view.
            first = self._chunks[0]
            size = len(first)
            if size >= TAG_SIZE:
                byte, length = _unpack_tag(first)
                info = TAG_TABLE[byte]
                end = TAG_SIZE + length
                if (
                    info is not None
                    and size >= end
                    and length <= self._max
                    and (length == 0 or info[0] is not _END_KIND)
                ):
                    if size == end:
                        self._chunks.popleft()
                    else:
                        self._chunks[0] = first[end:]
                    self._buffered -= end
                    self._offset += end
                    self._frames += 1
                    return _new_frame(Frame, (info[0], info[1], info[2], first[TAG_SIZE:end]))
        if tag is None:
            if self._buffered < TAG_SIZE:
                if self._eof and self._buffered:
                    raise StreamTruncatedError(
                        f"stream ended inside a frame tag at byte {self.offset} "
                        f"({self._buffered} of {TAG_SIZE} tag bytes)"
                    )
                return None
            tag = parse_tag(self._take(TAG_SIZE))
            if tag[3] > self._max:
                raise FrameTooLargeError(tag[3], self._max)
            self._tag = tag
        kind, codec, hint, length = tag
        if self._assembly is None:
            if self._buffered >= length:
                payload = self._take(length)
            elif self._eof:
                raise self._truncated(length, self._buffered)
            elif length > EAGER_ASSEMBLY_BYTES and self._buffered * 2 < length:
                # A big frame's buffer waits until half of it has arrived: what a tag
                # merely claims (up to max_frame_bytes) costs no memory.
                return None
            else:
                # Allocate once, at the declared size; later chunks copy straight in.
                self._assembly = bytearray(length)
                self._filled = 0
                while self._chunks:
                    chunk = self._chunks.popleft()
                    self._assembly[self._filled : self._filled + len(chunk)] = chunk
                    self._filled += len(chunk)
                self._buffered = 0
                return None
        else:
            if self._filled < length:
                if self._eof:
                    raise self._truncated(length, self._filled)
                return None
            payload = memoryview(self._assembly)
            self._assembly = None
        self._tag = None
        self._offset += TAG_SIZE + length
        self._frames += 1
        return _new_frame(Frame, (kind, codec, hint, payload.toreadonly()))

    def _truncated(self, length: int, have: int) -> StreamTruncatedError:
        return StreamTruncatedError(
            f"stream ended inside frame {self.frames + 1} at byte {self.offset}: "
            f"{have} of {length} payload bytes arrived"
        )


class ReaderCore:
    """Order state machine and decoding over a :class:`FrameDecoder`; no I/O.

    Each ``read_*`` step returns a value, :data:`NEED_DATA` (feed more bytes with
    :meth:`receive_data` / :meth:`receive_eof` and call again) or, for items,
    :data:`DONE`. A step that raises an order error consumes nothing.
    """

    __slots__ = (
        "_batch",
        "_batch_state",
        "_copy",
        "_decoder",
        "_ended",
        "_ext_hook",
        "_failed",
        "_footer_read",
        "_header_read",
        "_held",
        "_item_byte",
        "_item_tags",
        "_items_started",
        "_limits",
        "_peeked",
        "_pending",
        "_require_end",
        "_run_send",
        "_small_max",
        "_tail",
        "_take_byte",
        "_taker",
        "_types",
        "_validate",
    )

    def __init__(
        self,
        types: StreamTypes[Any, Any, Any],
        *,
        require_end: bool = True,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        copy_arrays: bool = False,
        msgpack_limits: MsgpackLimits | None = None,
    ) -> None:
        self._types = types
        self._decoder = FrameDecoder(max_frame_bytes)
        self._require_end = require_end
        self._copy = copy_arrays
        self._limits = msgpack_limits if msgpack_limits is not None else _DEFAULT_LIMITS
        self._peeked: Frame | None = None
        self._header_read = False
        self._items_started = False
        self._footer_read = False
        self._ended = False
        # The per-item fast path (take_item): the tag byte of an ITEM frame in the
        # stream type's codec without the array hint, and the prepared decoding of
        # small payloads (bound in start_items, when the item model is surely complete).
        self._item_byte = int(FrameKind.ITEM) | int(types.codec)
        self._small_max = -1
        self._ext_hook: Any = None
        self._validate: Any = None
        # The item tags take_item accepts, in a one-element list shared with its
        # generator: while the core is "armed", the table of the tag a small ITEM
        # frame has for each chunk size (_item_tags, filled by the taker as sizes
        # come); an empty table (_DISARMED) otherwise.
        # Armed only by next_item when it returns NEED_DATA with nothing buffered or
        # peeked during read_items; every way in for bytes (receive_data,
        # receive_eof, next_item_after) disarms it first. One lookup and compare in take_item
        # thus stands for all of the order and buffer state.
        self._take_byte: list[Any] = [_DISARMED]
        self._item_tags: dict[int, bytes] = {}
        # The start of a small ITEM frame that the taker's chunk-of-frames loop met at
        # the end of a chunk (a frame split by the transport's reads), kept as bytes
        # for the taker to complete from the next chunk; while it is kept the armed
        # table is _TAGS_HELD. Every other way in for bytes hands it to the decoder
        # first (_flush_tail), so the decoder sees the stream's bytes in order.
        self._tail = [b""]
        # The items of the taker's last BATCH (refilled by each one), and whether one
        # is there to deliver (_BATCH_DONE, _BATCH_MORE: the chunk has more) or not (0).
        self._batch: list[Any] = []
        self._batch_state = [0]
        # An error take_item's generator met on a frame it took, for the caller to
        # raise (the generator itself must live on); and the generator's send.
        self._failed: list[BaseException] = []
        self._taker: Any = None
        # The last chunk the taker gave NOT_TAKEN for (see pending_chunk).
        self._pending: list[Any] = [None]
        # The chunk (and where in it) a BATCH stopped at BATCH_ITEMS items, for the
        # taker's next round (any taker: a run's or item_taker's generator).
        self._held: list[Any] = [None]
        # The send of the latest item_run's generator (for _sync_counts).
        self._run_send: Any = None

    # Input ------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed the next chunk of bytes."""
        self._sync_counts()
        self._take_byte[0] = _DISARMED
        if self._tail[0]:
            self._flush_tail()
        self._decoder.feed(data)

    def receive_eof(self) -> None:
        """Tell the core the source is exhausted."""
        self._sync_counts()
        self._take_byte[0] = _DISARMED
        if self._tail[0]:
            self._flush_tail()
        self._decoder.feed_eof()

    def _sync_counts(self) -> None:
        """Add the frames and bytes the takers took since they last did to the decoder's."""
        if self._run_send is not None:
            try:
                self._run_send(None)  # a live run keeps counting; an ended one has synced
            except StopIteration:
                self._run_send = None
        if self._taker is not None:
            self._taker(None)

    def _flush_tail(self) -> None:
        """Hand the partial frame the taker kept to the decoder (it checks it afresh)."""
        tail = self._tail[0]
        self._tail[0] = b""
        self._decoder.feed(tail)

    @property
    def frames(self) -> int:
        """Frames read so far (whole frames, of any kind, the fast path's included)."""
        self._sync_counts()
        return self._decoder.frames

    @property
    def offset(self) -> int:
        """Bytes of the stream read so far into whole frames."""
        self._sync_counts()
        return self._decoder.offset

    @property
    def ended(self) -> bool:
        """True once the END frame (or, without ``require_end``, a clean EOF) was seen."""
        return self._ended

    # Frames -----------------------------------------------------------------------

    def _peek(self) -> Frame | Sentinel:
        frame = self._peeked
        if frame is None and self._ended:
            # Nothing after END belongs to the stream: never read past it.
            return _END
        if frame is None:
            frame = self._decoder.next_frame()
            if frame is None:
                if not self._decoder.eof:
                    return NEED_DATA
                if self._require_end:
                    raise StreamTruncatedError(
                        f"stream ended after {self._decoder.frames} frames "
                        f"({self._decoder.offset} bytes) without an END frame"
                    )
                frame = _END
            self._peeked = frame
        if frame.kind is FrameKind.ERROR:
            raise decode_error(frame.codec, frame.payload, self._limits)
        return frame

    def _decode(self, model_type: Any, frame: Frame) -> Any:
        self._peeked = None
        return decode_model(
            model_type, frame.codec, frame.array_hint, frame.payload, self._limits, self._copy
        )

    def _decode_item(self, frame: Frame) -> Any:
        """Decode an ITEM frame that is not (or no longer) peeked."""
        return decode_model(
            self._types.item_type, frame[1], frame[2], frame[3], self._limits, self._copy
        )

    # Steps ------------------------------------------------------------------------

    def read_header(self) -> Any:
        """The header model, or NEED_DATA."""
        header_type = self._types.header_type
        if header_type is None:
            raise StreamOrderError("this stream type declares no header")
        if self._header_read:
            raise StreamConsumedError("the header was already read")
        if self._items_started:
            raise StreamOrderError("the header cannot be read after the items")
        frame = self._peek()
        if frame is NEED_DATA:
            return NEED_DATA
        assert isinstance(frame, Frame)
        if frame.kind is not FrameKind.HEADER:
            raise StreamOrderError(
                f"expected the header, but the stream's next frame is {frame.kind.name}"
            )
        header = self._decode(header_type, frame)
        self._header_read = True
        return header

    def start_items(self) -> None:
        """Mark the start of ``read_items``; items are read once.

        Raises:
            StreamConsumedError: ``read_items`` was already called.
        """
        if self._items_started:
            raise StreamConsumedError("read_items() can be called only once per stream")
        if self._footer_read:
            raise StreamOrderError("the items cannot be read after the footer")
        self._items_started = True
        if self._validate is None:
            decoding = item_decoding(
                self._types.item_type, self._types.codec, self._limits, self._copy
            )
            self._small_max = min(decoding.max_bytes, self._decoder._max)
            self._ext_hook = decoding.ext_hook
            self._validate = decoding.validate
            taker = self._take_items()
            next(taker)
            self._taker = taker.send

    @property
    def item_taker(self) -> Any:
        """:meth:`take_item` without its error check, and for chunks of many frames.

        A callable ``take(data)`` for the readers' loops: it gives an item or
        :data:`NOT_TAKEN`, and on NOT_TAKEN the caller calls
        :meth:`next_item_after` with ``data``, which handles every case. For a chunk
        that is one small ITEM frame it gives what :meth:`take_item` gives, except
        that a frame it took and failed to decode gives NOT_TAKEN too (the error is
        raised by the :meth:`next_item_after` call that follows). A chunk holding
        several frames (a socket read of chunked HTTP holds hundreds of small
        frames, the last one often cut) it takes whole: the items of the small ITEM
        frames at its front are decoded in one tight loop, :data:`BATCH_ITEMS` at a
        time, and :meth:`next_item_after` then gives :data:`BATCH` (deliver
        :attr:`batch`, then call :meth:`next_item_after_batch`, which gives BATCH
        again for the chunk's next items, raises the error that stopped the loop
        after the items before it, or goes on as :meth:`next_item`). Of the rest, a
        small ITEM frame cut at the chunk's end waits in the core for the next chunk
        (at most a tag + 4 KiB, its declared length checked first), anything else
        goes to the decoder.

        It is the ``send`` of a generator that keeps everything it needs in local
        variables, which saves the per-item cost of a function call and of reading
        attributes. None before :meth:`start_items`.
        """
        return self._taker

    def item_run(self, chunks: Iterator[Any]) -> Iterator[Any] | None:
        """The items of the next chunks of ``chunks``, for as long as the taker takes them.

        For a driver that can iterate in C (the sync reader chains the runs): an
        iterator that pulls a chunk and gives its item while each chunk is one small
        ITEM frame (or its chunks of many frames give a :data:`BATCH`), and stops at
        the first chunk it does not take, which is then in :attr:`pending_chunk`
        (None there: ``chunks`` ended). Then call :meth:`next_item_after` with that
        chunk (or :meth:`receive_eof`). None when the taker would take nothing now
        (not right after :meth:`next_item` gave NEED_DATA with nothing buffered):
        feed the next chunk with :meth:`next_item_after` instead.

        It is ``map`` over the ``send`` of a generator that returns at the first
        chunk it does not take, so that its StopIteration ends the run: no
        Python-level check per item.
        """
        if self._taker is None or self._take_byte[0] is _DISARMED:
            return None
        self._sync_counts()
        run = self._take_items(ends=True)
        next(run)
        self._run_send = run.send
        return map(run.send, chunks)

    @property
    def pending_chunk(self) -> list[Any]:
        """A one-element list: the last chunk :attr:`item_taker` gave NOT_TAKEN for.

        For a driver that runs the taker over its source in C (:meth:`item_run`, the
        sync reader) and so never sees the chunk a run stopped at: it sets the
        element to None before the run and afterwards hands the chunk found there to
        :meth:`next_item_after` (None: the source ended). The taker only ever writes
        it.
        """
        return self._pending

    @property
    def batch(self) -> list[Any]:
        """The items of the last :data:`BATCH` :attr:`item_taker` gave (the same list,
        refilled each time): deliver them before calling the taker again."""
        return self._batch

    def take_item(self, data: bytes | bytearray | memoryview) -> Any:
        """The item, if ``data`` is exactly one small ITEM frame between frames; else NOT_TAKEN.

        The per-item fast path for transports that hand on the writer's frames one
        per chunk: no buffering, no Frame, no Python call of ours between the chunk
        and msgpack/pydantic. It takes a chunk only right after :meth:`next_item`
        returned NEED_DATA (or after a taken item), with nothing buffered or
        peeked, and only immutable ``bytes`` holding one whole ITEM frame of the
        stream type's codec, without the array hint, of at most 4 KiB (and within
        ``max_frame_bytes`` and the msgpack limits). Anything else gives
        :data:`NOT_TAKEN` and consumes nothing: feed ``data`` with
        :meth:`next_item_after` instead, which handles every case.

        Raises:
            MalformedFrameError, pydantic.ValidationError: as :meth:`next_item`.
        """
        if self._taker is None or self._tail[0]:
            return NOT_TAKEN
        if type(data) is not bytes or len(data) < TAG_SIZE:
            return NOT_TAKEN
        if _unpack_tag(data)[1] != len(data) - TAG_SIZE:
            return NOT_TAKEN  # not exactly one frame (item_taker takes several)
        item = self._taker(data)
        if item is NOT_TAKEN and self._failed:
            raise self._failed.pop()
        return item

    def _take_items(self, ends: bool = False) -> Generator[Any, Any, None]:
        """The generator behind :attr:`item_taker` and :meth:`item_run`: send a chunk,
        get what it gives. ``ends``: return (its ``send`` raises StopIteration) at the
        first chunk it does not take, instead of giving NOT_TAKEN."""
        decoder = self._decoder
        armed = self._take_byte  # read on every chunk: the state may change in between
        kept = self._tail
        batch = self._batch
        append = batch.append
        failed = self._failed
        pending = self._pending
        small_max = self._small_max
        validate = self._validate
        ext_hook = self._ext_hook  # None for JSON
        item_byte = self._item_byte
        unpack_tag = _unpack_tag
        unpackb = _unpackb
        not_taken = NOT_TAKEN
        state = self._batch_state
        resume = _RESUME
        batch_items = BATCH_ITEMS
        held = self._held
        held_tags = _TAGS_HELD
        disarmed = _DISARMED
        tags = self._item_tags
        pack_tag = TAG_STRUCT.pack
        tag_size = TAG_SIZE
        del self  # the core holds this generator: no reference back, no cycle
        item: Any = not_taken
        # The frames and bytes of the one-frame chunks taken since the decoder's
        # counts were last brought up to date: counted here, in locals, and added to
        # the decoder's whenever anything else may read them (any chunk not taken, a
        # failed item, and _sync_counts' send of None before the core reads on).
        taken = taken_bytes = 0
        started = False
        while True:
            # Back from the general path (below) with a chunk it did not take: a run
            # (`ends`, see item_run) ends here, the taker yields NOT_TAKEN.
            if ends and started:
                return
            started = True
            while True:
                data = yield item
                if type(data) is not bytes:
                    if taken:
                        decoder._frames += taken
                        decoder._offset += taken_bytes
                        taken = taken_bytes = 0
                    item = not_taken
                    if data is None:  # only _sync_counts
                        continue
                    pending[0] = data
                    if ends:
                        return
                    continue  # bytearray, memoryview: the general path
                try:
                    # While armed, armed[0] is `tags`: the tag of the small ITEM frame
                    # each chunk size would be (filled as sizes come); else an empty
                    # table.
                    tag = armed[0][size := len(data)]
                except LookupError:
                    tag = None
                    if armed[0] is tags and tag_size <= size <= tag_size + small_max:
                        tag = pack_tag(item_byte, size - tag_size)
                        if len(tags) < _TAKER_TAGS:
                            tags[size] = tag
                if data[:tag_size] != tag:
                    break  # to the general path
                # The chunk is one whole small ITEM frame (one frame per chunk: SSE,
                # gRPC, a producer's frames handed on one by one): its 5 bytes are the
                # tag of exactly such a frame of its size, while armed. A payload this
                # small is copied out of its chunk: cheaper than a view, and what
                # validate_json needs. (Comparing the tag by size costs 450
                # instructions less than unpacking it and comparing its fields.)
                taken += 1
                taken_bytes += size
                try:
                    if ext_hook is None:  # JSON
                        try:
                            item = validate(data[tag_size:])
                        except pydantic.ValidationError as exc:
                            if (failure := item_failure(Codec.JSON, exc)) is exc:
                                raise
                            raise failure from exc
                    else:
                        try:
                            # The options of _codec._unpack_options, minus the limits
                            # (see _codec.ItemDecoding; raw=False is msgpack's default).
                            obj = unpackb(
                                data[tag_size:],
                                ext_hook=ext_hook,
                                timestamp=3,
                                strict_map_key=False,
                            )
                        except Exception as exc:
                            if (failure := item_failure(Codec.MSGPACK, exc)) is exc:
                                raise
                            raise failure from exc
                        item = validate(obj)
                except BaseException as exc:  # the frame is consumed; the caller raises it
                    failed.append(exc)
                    pending[0] = data
                    item = not_taken
                    decoder._frames += taken
                    decoder._offset += taken_bytes
                    taken = taken_bytes = 0
                    if ends:
                        return
            item = not_taken
            if taken:
                decoder._frames += taken
                decoder._offset += taken_bytes
                taken = taken_bytes = 0
            byte = length = -9
            if data is resume:
                # The next round of the chunk the last round stopped in (at
                # BATCH_ITEMS items, to keep the items alive at once below the
                # collector's threshold: a batch of a whole 64 KiB read set off
                # gen-0 collections, 5k instructions an item).
                data, pos = held[0]
                held[0] = None
                size = len(data)
                fresh = False
                tail = b""
            else:
                pending[0] = data
                size = len(data)
                if armed[0] is disarmed or not size:
                    continue  # not between frames (or nothing to take): the general path
                # A chunk of several frames (a socket read), or one that begins or
                # ends inside a small ITEM frame: its whole small ITEM frames in a loop.
                fresh = True
                pos = 0  # where the next frame of `data` starts
                tail = kept[0]
            batch.clear()
            start = pos
            payload: Any = None
            if tail:
                # This chunk continues the frame the last one ended inside.
                joined = tail + data[: tag_size + small_max + 1 - len(tail)]
                if len(joined) >= tag_size:
                    byte, length = unpack_tag(joined)
                    if byte != item_byte or length > small_max:
                        # Its tag, whole only now, is no small item's: the decoder
                        # judges it (and this chunk after it, via next_item_after).
                        kept[0] = b""
                        armed[0] = disarmed
                        decoder.feed(tail)
                        continue
                if len(joined) < tag_size or len(joined) < tag_size + length:
                    kept[0] = joined  # still not whole: all of `data` is in it
                    state[0] = _BATCH_DONE
                    continue
                kept[0] = b""
                armed[0] = tags
                pos = tag_size + length - len(tail)
                payload = joined[tag_size : tag_size + length]
            error = False
            left = batch_items
            while True:
                if payload is not None:
                    # The decoding of the one-frame case above, once per frame here (a
                    # helper would cost a Python call per item).
                    try:
                        if ext_hook is None:
                            try:
                                append(validate(payload))
                            except pydantic.ValidationError as exc:
                                if (failure := item_failure(Codec.JSON, exc)) is exc:
                                    raise
                                raise failure from exc
                        else:
                            try:
                                obj = unpackb(
                                    payload, ext_hook=ext_hook, timestamp=3, strict_map_key=False
                                )
                            except Exception as exc:
                                if (failure := item_failure(Codec.MSGPACK, exc)) is exc:
                                    raise
                                raise failure from exc
                            append(validate(obj))
                    except BaseException as exc:  # consumed; raised after the items before it
                        failed.append(exc)
                        error = True
                        break
                    left -= 1
                    if not left:
                        break
                try:
                    byte, length = unpack_tag(data, pos)
                except struct.error:  # less than a tag left
                    break
                end = pos + tag_size + length
                if byte != item_byte or length > small_max or end > size:
                    break
                payload = data[pos + tag_size : end]
                pos = end
            rest = size - pos
            if fresh and pos == 0 and not tail:
                # Nothing at the chunk's front to take. A small ITEM frame bigger than
                # the chunk is kept (below); anything else is left to the general path.
                if rest >= tag_size and not (byte == item_byte and length <= small_max):
                    continue
                if rest < tag_size and data[0] != item_byte:
                    continue
            decoder._frames += len(batch) + error
            decoder._offset += pos - start + len(tail)
            if error:
                # After the items before it (the caller raises it after them): the
                # rest of the chunk goes to the decoder, for whoever reads on.
                state[0] = _BATCH_DONE
                armed[0] = disarmed
                if rest:
                    decoder.feed(memoryview(data)[pos:])
            elif not left and rest:
                held[0] = (data, pos)
                state[0] = _BATCH_MORE
            else:
                state[0] = _BATCH_DONE
                if rest:
                    if rest >= tag_size:
                        byte, length = unpack_tag(data, pos)
                        cut = byte == item_byte and length <= small_max
                    else:
                        cut = data[pos] == item_byte
                    if cut:  # a small ITEM frame the transport's read cut: wait for the rest
                        kept[0] = data[pos:]
                        armed[0] = held_tags
                    else:
                        armed[0] = disarmed
                        decoder.feed(memoryview(data)[pos:])

    def next_item_after(self, data: bytes | bytearray | memoryview) -> Any:
        """Feed ``data``, then return what :meth:`next_item` returns.

        Raises first the error :attr:`item_taker` met on the frame it took, if any.
        """
        if self._batch_state[0]:
            return BATCH  # the taker took `data` as a batch
        if self._failed:
            raise self._failed.pop()
        self._take_byte[0] = _DISARMED
        if self._tail[0]:
            self._flush_tail()
        if self._peeked is None and not self._ended:
            frame = self._decoder.feed_frame(data)
            if frame is not None:
                if frame[0] is _ITEM:
                    return self._decode_item(frame)
                self._peeked = frame
        else:
            self._decoder.feed(data)
        return self.next_item()

    def next_item_after_batch(self) -> Any:
        """After the items of a :data:`BATCH`: BATCH again (the next items of the same
        chunk are in :attr:`batch`), or what :meth:`next_item` gives.

        Raises first the error that ended the batch, if any (the frame that failed is
        consumed; the frames after it are buffered for whoever reads on).
        """
        if self._batch_state[0] is _BATCH_MORE:
            self._batch_state[0] = 0
            self._taker(_RESUME)  # refills the batch, sets the state again
            return BATCH
        self._batch_state[0] = 0
        if self._failed:
            raise self._failed.pop()
        return self.next_item()

    def next_item(self) -> Any:
        """The next item, NEED_DATA, or DONE at the footer or END."""
        frame = self._peeked
        if frame is None and not self._ended:
            decoder = self._decoder
            frame = decoder.next_frame()
            if frame is None:
                if not decoder._eof:
                    # The common case between two items: a frame per chunk. With
                    # nothing buffered, arm take_item for the next chunk.
                    if decoder._tag is None and not decoder._chunks and self._items_started:
                        self._take_byte[0] = _TAGS_HELD if self._tail[0] else self._item_tags
                    return NEED_DATA
            elif frame[0] is _ITEM:
                # Hot path: an item frame straight from the decoder, never peeked.
                return self._decode_item(frame)
            self._peeked = frame
        peeked = self._peek()
        if peeked is NEED_DATA:
            return NEED_DATA
        assert isinstance(peeked, Frame)
        frame = peeked
        kind = frame.kind
        if kind is FrameKind.ITEM:
            self._peeked = None
            return self._decode_item(frame)
        if kind is FrameKind.FOOTER:
            if self._types.footer_type is None:
                # Nobody could read it (nor the END after it): a truncated stream
                # would pass unnoticed.
                raise MalformedFrameError("a FOOTER frame on a stream type without a footer")
            return DONE  # stays peeked for read_footer
        if kind is FrameKind.END:
            self._peeked = None
            self._ended = True
            return DONE
        # HEADER: only ever the first frame (the decoder has counted it already)
        if self._types.header_type is None:
            raise MalformedFrameError("a HEADER frame on a stream type without a header")
        if self._header_read or self._decoder.frames > 1:
            raise MalformedFrameError("a HEADER frame after the stream's first frame")
        # Nothing was consumed: read_header() and then read_items() still work.
        self._items_started = False
        raise StreamOrderError("the stream starts with a header: call read_header() first")

    def read_footer(self) -> Any:
        """The footer model (once END follows it), or NEED_DATA."""
        footer_type = self._types.footer_type
        if footer_type is None:
            raise StreamOrderError("this stream type declares no footer")
        if self._footer_read:
            raise StreamConsumedError("the footer was already read")
        if self._batch_state[0] or self._tail[0]:
            # Items the taker decoded (or began to) that read_items has not delivered
            # yet: they are no longer in the decoder, where _peek would find them.
            raise StreamOrderError("items are unread: read them with read_items() first")
        frame = self._peek()
        if frame is NEED_DATA:
            return NEED_DATA
        assert isinstance(frame, Frame)
        if frame.kind is FrameKind.HEADER:
            raise StreamOrderError("the header is unread: call read_header() first")
        if frame.kind is FrameKind.ITEM:
            raise StreamOrderError("items are unread: read them with read_items() first")
        if frame.kind is FrameKind.END:
            raise StreamOrderError("the stream ended without a footer")
        footer = self._decode(footer_type, frame)
        self._footer_read = True
        return footer

    def read_end(self) -> Sentinel:
        """Consume the END frame after the footer: DONE, or NEED_DATA."""
        frame = self._peek()
        if frame is NEED_DATA:
            return NEED_DATA
        assert isinstance(frame, Frame)
        if frame.kind is not FrameKind.END:
            raise MalformedFrameError(f"a {frame.kind.name} frame after the footer")
        self._peeked = None
        self._ended = True
        return DONE
