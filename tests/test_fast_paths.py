"""The per-item fast paths keep every guarantee of the checked paths.

``ReaderCore.take_item`` decodes a chunk that is one whole small ITEM frame with one
compare standing for the order and buffer state; ``StreamWriter.yield_item`` encodes
an instance of exactly the item model inline. These tests pin that both behave
exactly like the general paths: order, limits, errors, offsets, nothing lost.
"""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import numpy as np
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import truss_stream as ts
from tests.core_helpers import Footer, Header, Item, ReaderFactory, full_types
from truss_stream._codec import MsgpackLimits
from truss_stream._frames import pack_tag
from truss_stream._protocol import BATCH, NEED_DATA, NOT_TAKEN


class Small(pydantic.BaseModel):
    index: int
    words: list[str] = []


def _frames(codec: str, n: int) -> list[bytes]:
    types = ts.stream_types(Small, codec=codec)  # type: ignore[call-overload]
    writer = ts.stream_writer(types)
    frames = [writer.yield_item(Small(index=i, words=[f"w{i}"] * (i % 3))) for i in range(n)]
    return [*frames, writer.yield_end()]


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_take_item_takes_only_between_frames_after_start_items(codec: str) -> None:
    types = ts.stream_types(Small, codec=codec)  # type: ignore[call-overload]
    frames = _frames(codec, 3)
    core = ts.ReaderCore(types)
    assert core.take_item(frames[0]) is NOT_TAKEN  # read_items not started
    core.start_items()
    assert core.take_item(frames[0]) is NOT_TAKEN  # not armed: next_item not asked yet
    assert core.next_item() is NEED_DATA
    assert core.take_item(frames[0]).index == 0
    assert core.take_item(frames[1]).index == 1
    # Half a frame, a bytearray, two frames in one chunk: not taken, nothing consumed.
    assert core.take_item(frames[2][:3]) is NOT_TAKEN
    assert core.take_item(bytearray(frames[2])) is NOT_TAKEN
    assert core.take_item(frames[2] + frames[3]) is NOT_TAKEN
    assert core.take_item(b"") is NOT_TAKEN
    assert core.next_item_after(frames[2] + frames[3]).index == 2
    assert core.next_item() is ts._protocol.DONE
    # Nothing after END is read, not even by the fast path.
    assert core.take_item(frames[0]) is NOT_TAKEN
    assert core.offset == sum(len(f) for f in frames)
    assert core.frames == 4


def test_take_item_is_disarmed_by_any_other_input() -> None:
    types = ts.stream_types(Small)
    frames = _frames("msgpack", 2)
    core = ts.ReaderCore(types)
    core.start_items()
    assert core.next_item() is NEED_DATA
    core.receive_data(frames[0][:2])  # a partial frame is buffered now
    assert core.take_item(frames[1]) is NOT_TAKEN
    assert core.next_item_after(frames[0][2:]).index == 0


def test_a_misordered_call_between_taken_items_loses_nothing(read: ReaderFactory) -> None:
    writer = ts.stream_writer(full_types())
    chunks = [writer.yield_header(Header(request_id="r"))]
    chunks += [writer.yield_item(Item(index=i)) for i in range(4)]
    chunks += [writer.yield_footer(Footer(count=4)), writer.yield_end()]
    reader = read(full_types(), chunks)
    assert reader.read_header().request_id == "r"
    got: list[Any] = []
    for item in reader.read_items():
        got.append(item.index)
        if item.index == 1:
            # Pulls the next chunk into the core's buffer, then refuses.
            with pytest.raises(ts.StreamOrderError):
                reader.read_footer()
    assert got == [0, 1, 2, 3]
    assert reader.read_footer().count == 4


@pytest.mark.parametrize("codec", ["msgpack", "json"])
@settings(max_examples=60, deadline=None)
@given(shapes=st.lists(st.sampled_from(["whole", "bytearray", "split", "joined"]), max_size=12))
def test_any_mix_of_whole_and_other_chunks_reads_every_item(codec: str, shapes: list[str]) -> None:
    frames = _frames(codec, 2 * len(shapes) + 1)
    chunks: list[Any] = []
    at = 0
    for shape in shapes:
        frame = frames[at]
        if shape == "whole":
            chunks.append(frame)
        elif shape == "bytearray":
            chunks.append(bytearray(frame))
        elif shape == "split":
            chunks += [frame[:4], frame[4:]]
        else:
            chunks.append(frame + frames[at + 1])
            at += 1
        at += 1
    chunks += frames[at:]
    types = ts.stream_types(Small, codec=codec)  # type: ignore[call-overload]
    for kind in ("sync", "async"):
        factory = ReaderFactory(kind)
        try:
            got = [item.index for item in factory(types, chunks).read_items()]
        finally:
            factory.close()
        assert got == list(range(len(frames) - 1))


def test_msgpack_limits_hold_for_frames_small_enough_for_the_fast_path(
    read: ReaderFactory,
) -> None:
    class Loose(pydantic.BaseModel):
        x: Any

    types = ts.stream_types(Loose)
    limits = MsgpackLimits(max_str_len=100)
    end = pack_tag(ts.FrameKind.END, ts.Codec.MSGPACK, 0)

    def frame(value: Any) -> bytes:
        payload: bytes = msgpack.packb({"x": value})
        return pack_tag(ts.FrameKind.ITEM, ts.Codec.MSGPACK, len(payload)) + payload

    ok = read(types, [frame("y" * 100), end], msgpack_limits=limits)
    assert [item.x for item in ok.read_items()] == ["y" * 100]
    over = read(types, [frame("y" * 101), end], msgpack_limits=limits)
    with pytest.raises(ts.MalformedFrameError, match="max_str_len"):
        list(over.read_items())


def test_fast_path_errors_are_the_checked_paths_errors(read: ReaderFactory) -> None:
    class Loose(pydantic.BaseModel):
        x: Any

    types = ts.stream_types(Loose)
    good = ts.stream_writer(types).yield_item(Loose(x=1))
    bad = pack_tag(ts.FrameKind.ITEM, ts.Codec.MSGPACK, 2) + b"\xc1\x00"  # 0xc1: never used
    reader = read(types, [good, bad])
    items = reader.read_items()
    assert next(items).x == 1
    with pytest.raises(ts.MalformedFrameError, match="invalid msgpack payload"):
        next(items)
    json_types = ts.stream_types(Small, codec="json")
    good = ts.stream_writer(json_types).yield_item(Small(index=1))
    bad = pack_tag(ts.FrameKind.ITEM, ts.Codec.JSON, 3) + b"{x]"
    wrong = pack_tag(ts.FrameKind.ITEM, ts.Codec.JSON, 2) + b"{}"
    items = read(json_types, [good, bad]).read_items()
    assert next(items).index == 1
    with pytest.raises(ts.MalformedFrameError, match="invalid JSON payload"):
        next(items)
    items = read(json_types, [good, wrong]).read_items()
    assert next(items).index == 1
    with pytest.raises(pydantic.ValidationError):
        next(items)


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_writer_fast_path_fails_like_the_first_item_and_recovers(codec: str) -> None:
    class Loose(pydantic.BaseModel):
        x: Any

    types = ts.stream_types(Loose, codec=codec)  # type: ignore[call-overload]
    unencodable = Loose(x=object())
    with pytest.raises(ts.UnsupportedValueError) as first:
        ts.stream_writer(types).yield_item(unencodable)
    writer = ts.stream_writer(types)
    frames = [writer.yield_item(Loose(x=1))]
    with pytest.raises(ts.UnsupportedValueError) as later:
        writer.yield_item(unencodable)
    assert str(later.value) == str(first.value)
    frames += [writer.yield_item(Loose(x=[2, 3])), writer.yield_end()]
    assert [item.x for item in ts.stream_reader(types, frames).read_items()] == [1, [2, 3]]


def test_writer_fast_path_failure_inside_an_array_item_leaves_no_stale_array() -> None:
    class WithArray(pydantic.BaseModel):
        a: ts.NDArray
        x: Any = None

    types = ts.stream_types(WithArray)
    writer = ts.stream_writer(types)
    frames = [writer.yield_item(WithArray(a=np.arange(3)))]
    with pytest.raises(ts.UnsupportedValueError):
        writer.yield_item(WithArray(a=np.arange(4), x=object()))
    frames += [writer.yield_item(WithArray(a=np.arange(5))), writer.yield_end()]
    sizes = [item.a.size for item in ts.stream_reader(types, frames).read_items()]
    assert sizes == [3, 5]


def test_writer_fast_path_keeps_the_order_and_the_model_checks() -> None:
    class Sub(Item):
        extra: int = 7

    writer = ts.stream_writer(full_types())
    writer.yield_item(Item(index=0))
    with pytest.raises(ts.WrongModelError):
        writer.yield_item(Header(request_id="r"))
    sub = ts.frame_info(writer.yield_item(Sub(index=1)))  # a subclass: the checked path
    assert sub == (ts.FrameKind.ITEM, ts.Codec.MSGPACK)
    writer.yield_footer(Footer(count=2))
    with pytest.raises(ts.StreamOrderError):
        writer.yield_item(Item(index=2))
    writer.yield_end()
    with pytest.raises(ts.StreamOrderError):
        writer.yield_item(Item(index=3))


def test_take_item_raises_for_a_frame_it_took_and_goes_on() -> None:
    types = ts.stream_types(Small)
    good = _frames("msgpack", 2)
    bad = pack_tag(ts.FrameKind.ITEM, ts.Codec.MSGPACK, 2) + b"\xc1\x00"
    core = ts.ReaderCore(types)
    core.start_items()
    assert core.next_item() is NEED_DATA
    with pytest.raises(ts.MalformedFrameError, match="invalid msgpack payload"):
        core.take_item(bad)
    assert core.take_item(good[1]).index == 1  # the bad frame was consumed, nothing else
    assert core.frames == 2


# Chunks of many frames (item_taker's BATCH): a socket read holds hundreds of small
# frames and cuts the last one; the loop must give exactly what the checked path gives.


def _cuts(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def _collect(reader: Any, got: list[Any], how: Any = lambda item: item.index) -> None:
    """Read items into ``got`` until the end or an error (which propagates)."""
    for item in reader.read_items():
        got.append(how(item))


def _checked(types: Any, data: bytes) -> list[Any]:
    """What the general path gives: the stream fed one byte at a time (never taken)."""
    factory = ReaderFactory("sync")
    return [item.model_dump() for item in factory(types, rechunk_bytes(data)).read_items()]


def rechunk_bytes(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_a_chunk_of_many_frames_is_taken_in_one_batch(codec: str) -> None:
    types = ts.stream_types(Small, codec=codec)  # type: ignore[call-overload]
    frames = _frames(codec, 40)
    data = b"".join(frames)
    core = ts.ReaderCore(types)
    core.start_items()
    assert core.next_item() is NEED_DATA
    cut = len(data) // 2 + 3  # inside a frame
    take = core.item_taker
    assert take(data[:cut]) is NOT_TAKEN
    assert core.next_item_after(data[:cut]) is BATCH
    first = [item.index for item in core.batch]
    assert core.next_item_after_batch() is NEED_DATA
    assert take(data[cut:]) is NOT_TAKEN  # completes the cut frame, then the rest up to END
    assert core.next_item_after(data[cut:]) is BATCH
    second = [item.index for item in core.batch]
    assert first + second == list(range(40))
    assert core.next_item_after_batch() is ts._protocol.DONE
    assert core.offset == len(data)
    assert core.frames == 41


@pytest.mark.parametrize("codec", ["msgpack", "json"])
@settings(max_examples=60, deadline=None)
@given(
    n=st.sampled_from([0, 1, 2, 5, 12, 63, 64, 65, 130, 200]),
    bad_at=st.none() | st.integers(0, 200),
    cuts=st.lists(st.integers(0, 10_000), max_size=6),
    kind=st.sampled_from(["sync", "async"]),
)
def test_any_cut_of_a_stream_reads_as_the_checked_path_reads_it(
    codec: str, n: int, bad_at: int | None, cuts: list[int], kind: str
) -> None:
    types = ts.stream_types(Small, codec=codec)  # type: ignore[call-overload]
    frames = _frames(codec, n)
    bad = pack_tag(ts.FrameKind.ITEM, ts.Codec(types.codec), 2) + b"\xc1}"  # neither parses
    if bad_at is not None and bad_at <= n:
        frames.insert(bad_at, bad)
    data = b"".join(frames)
    want_error: type[Exception] | None = None
    try:
        want = _checked(types, data)
    except ts.MalformedFrameError:
        want_error = ts.MalformedFrameError
        want = [Small(index=i, words=[f"w{i}"] * (i % 3)).model_dump() for i in range(bad_at or 0)]
    factory = ReaderFactory(kind)
    try:
        got: list[Any] = []
        reader = factory(types, _cuts(data, cuts))
        if want_error is None:
            got = [item.model_dump() for item in reader.read_items()]
        else:
            with pytest.raises(want_error):
                _collect(reader, got, lambda item: item.model_dump())
        assert got == want  # the items before a bad frame arrive before its error
    finally:
        factory.close()


def test_after_a_bad_frame_in_a_batch_the_core_reads_on_from_the_next_frame() -> None:
    types = ts.stream_types(Small)
    frames = _frames("msgpack", 3)
    bad = pack_tag(ts.FrameKind.ITEM, ts.Codec.MSGPACK, 2) + b"\xc1\x00"
    core = ts.ReaderCore(types)
    core.start_items()
    assert core.next_item() is NEED_DATA
    chunk = frames[0] + bad + frames[1] + frames[2][:4]
    assert core.item_taker(chunk) is NOT_TAKEN
    assert core.next_item_after(chunk) is BATCH
    assert [item.index for item in core.batch] == [0]
    with pytest.raises(ts.MalformedFrameError, match="invalid msgpack payload"):
        core.next_item_after_batch()
    assert core.next_item().index == 1  # the bad frame was consumed, nothing else
    assert core.next_item() is NEED_DATA
    assert core.next_item_after(frames[2][4:] + frames[3]).index == 2
    assert core.next_item() is ts._protocol.DONE
    assert core.frames == 5


def test_a_cut_frame_the_taker_keeps_is_reported_when_the_stream_ends(read: ReaderFactory) -> None:
    frames = _frames("msgpack", 3)
    data = b"".join(frames[:3])
    reader = read(ts.stream_types(Small), [data[:-3]])
    got: list[Any] = []
    with pytest.raises(ts.StreamTruncatedError, match=r"inside frame 3 at byte \d+"):
        _collect(reader, got)
    assert got == [0, 1]


def test_a_cut_tag_declaring_too_much_is_refused_before_buffering(read: ReaderFactory) -> None:
    frames = _frames("msgpack", 2)
    huge = pack_tag(ts.FrameKind.ITEM, ts.Codec.MSGPACK, 1 << 30)
    reader = read(ts.stream_types(Small), [frames[0] + huge[:3], huge[3:] + b"\x00" * 10])
    got: list[Any] = []
    with pytest.raises(ts.FrameTooLargeError):
        _collect(reader, got)
    assert got == [0]


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_a_batch_stops_at_a_frame_that_is_no_small_item(read: ReaderFactory, codec: str) -> None:
    # A footer, an array-bearing item and an item above 4 KiB inside one chunk: each
    # goes to the checked path, the small items around them are all read, in order.
    types = full_types(codec)
    writer = ts.stream_writer(types)
    frames = [writer.yield_header(Header(request_id="r"))]
    frames += [writer.yield_item(Item(index=i)) for i in range(3)]
    frames += [writer.yield_item(Item(index=3, text="x" * 5000))]
    frames += [writer.yield_item(Item(index=4, tensor=np.arange(4)))]
    frames += [writer.yield_item(Item(index=i)) for i in range(5, 8)]
    frames += [writer.yield_footer(Footer(count=8)), writer.yield_end()]
    data = b"".join(frames)
    for cut in (len(frames[0]) + 7, len(data) // 2, len(data) - 9):
        reader = read(types, [data[:cut], data[cut:]])
        assert reader.read_header().request_id == "r"
        assert [item.index for item in reader.read_items()] == list(range(8))
        assert reader.read_footer().count == 8


@pytest.mark.parametrize("split", [None, 37])
def test_a_misordered_footer_call_inside_a_batch_loses_nothing(
    read: ReaderFactory, split: int | None
) -> None:
    # The items of a chunk of many frames are decoded before they are delivered: the
    # footer must still be refused until they are, and nothing may be skipped.
    writer = ts.stream_writer(full_types())
    header = writer.yield_header(Header(request_id="r"))
    frames = [writer.yield_item(Item(index=i)) for i in range(10)]
    frames += [writer.yield_footer(Footer(count=10)), writer.yield_end()]
    data = b"".join(frames)
    chunks = [header, data] if split is None else [header, data[:split], data[split:]]
    reader = read(full_types(), chunks)
    assert reader.read_header().request_id == "r"
    got: list[Any] = []
    for item in reader.read_items():
        got.append(item.index)
        if item.index in (1, 9):
            with pytest.raises(ts.StreamOrderError, match="items are unread"):
                reader.read_footer()
    assert got == list(range(10))
    assert reader.read_footer().count == 10


def test_leaving_a_batch_early_leaves_the_footer_refused() -> None:
    writer = ts.stream_writer(full_types())
    header = writer.yield_header(Header(request_id="r"))
    frames = [writer.yield_item(Item(index=i)) for i in range(10)]
    frames += [writer.yield_footer(Footer(count=10)), writer.yield_end()]
    reader = ts.stream_reader(full_types(), [header, b"".join(frames)])
    reader.read_header()
    items = reader.read_items()
    assert [next(items).index, next(items).index] == [0, 1]
    items.close()
    with pytest.raises(ts.StreamOrderError, match="items are unread"):
        reader.read_footer()


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_counts_of_taken_frames_are_exact_when_the_stream_is_truncated(
    read: ReaderFactory, codec: str
) -> None:
    # The taker counts its one-frame chunks in locals and hands them to the decoder
    # only when the core reads on: the truncation error must still count every frame.
    frames = _frames(codec, 5)[:5]  # no END
    types = ts.stream_types(Small, codec=codec)  # type: ignore[call-overload]
    reader = read(types, frames)
    got: list[Any] = []
    size = sum(len(f) for f in frames)
    with pytest.raises(ts.StreamTruncatedError, match=rf"after 5 frames \({size} bytes\)"):
        _collect(reader, got)
    assert got == [0, 1, 2, 3, 4]


def test_closing_the_sync_items_iterator_reads_no_more_chunks() -> None:
    # read_items() was a generator: close() still ends it, with no chunk pulled after.
    frames = _frames("msgpack", 6)
    pulled: list[int] = []

    def source() -> Any:
        for at, frame in enumerate(frames):
            pulled.append(at)
            yield frame

    reader = ts.stream_reader(ts.stream_types(Small), source())
    items = reader.read_items()
    assert [next(items).index, next(items).index] == [0, 1]
    items.close()  # type: ignore[attr-defined]
    assert list(items) == []
    assert pulled == [0, 1]
