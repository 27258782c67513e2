"""Order semantics: header, items, footer, END; misordered calls raise and lose nothing."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest
from core_helpers import Footer, Header, Item, Point, full_types, read_all, sample_frames

import truss_stream as ts


def test_read_items_before_header_raises_and_loses_nothing(read: Any) -> None:
    reader = read(full_types(), sample_frames())
    with pytest.raises(ts.StreamOrderError, match="read_header"):
        list(reader.read_items())
    assert reader.read_header().request_id == "r-1"
    assert [i.index for i in reader.read_items()] == [0, 1, 2]
    assert reader.read_footer().count == 3


def test_read_footer_before_header_raises_and_loses_nothing(read: Any) -> None:
    reader = read(full_types(), sample_frames())
    with pytest.raises(ts.StreamOrderError):
        reader.read_footer()
    assert read_all(reader, full_types())[2].count == 3


def test_read_footer_with_unread_items_raises_and_items_stay_readable(read: Any) -> None:
    reader = read(full_types(), sample_frames())
    reader.read_header()
    with pytest.raises(ts.StreamOrderError, match="items"):
        reader.read_footer()
    assert [i.index for i in reader.read_items()] == [0, 1, 2]
    assert reader.read_footer().count == 3


def test_read_footer_after_partly_read_items_raises_and_the_rest_stay_readable(
    read: Any,
) -> None:
    reader = read(full_types(), sample_frames())
    reader.read_header()
    items = reader.read_items()
    assert next(items).index == 0
    with pytest.raises(ts.StreamOrderError):
        reader.read_footer()
    assert [i.index for i in items] == [1, 2]
    assert reader.read_footer().count == 3


def test_read_items_twice_raises_stream_consumed(read: Any) -> None:
    reader = read(full_types(), sample_frames())
    reader.read_header()
    list(reader.read_items())
    with pytest.raises(ts.StreamConsumedError):
        list(reader.read_items())


def test_read_header_twice_raises_stream_consumed(read: Any) -> None:
    reader = read(full_types(), sample_frames())
    reader.read_header()
    with pytest.raises(ts.StreamConsumedError):
        reader.read_header()


def test_read_footer_twice_raises_stream_consumed(read: Any) -> None:
    reader = read(full_types(), sample_frames())
    read_all(reader, full_types())
    with pytest.raises(ts.StreamConsumedError):
        reader.read_footer()


def test_read_header_after_items_raises_order_error(read: Any) -> None:
    types = ts.stream_types(Item, header_type=Header)
    writer = ts.stream_writer(types)
    frames = [writer.yield_item(Item(index=1)), writer.yield_end()]
    reader = read(types, frames)
    assert [i.index for i in reader.read_items()] == [1]
    with pytest.raises(ts.StreamOrderError):
        reader.read_header()


def test_missing_header_on_the_wire_raises_order_error_and_items_stay_readable(
    read: Any,
) -> None:
    types = ts.stream_types(Item, header_type=Header)
    writer = ts.stream_writer(types)
    frames = [writer.yield_item(Item(index=1)), writer.yield_end()]
    reader = read(types, frames)
    with pytest.raises(ts.StreamOrderError, match="ITEM"):
        reader.read_header()
    assert [i.index for i in reader.read_items()] == [1]


def test_read_header_on_stream_type_without_header_raises_order_error(read: Any) -> None:
    types = ts.stream_types(Point)
    reader = read(types, [ts.stream_writer(types).yield_end()])
    with pytest.raises(ts.StreamOrderError, match="no header"):
        reader.read_header()


def test_read_footer_on_stream_type_without_footer_raises_order_error(read: Any) -> None:
    types = ts.stream_types(Point)
    reader = read(types, [ts.stream_writer(types).yield_end()])
    with pytest.raises(ts.StreamOrderError, match="no footer"):
        reader.read_footer()


def test_read_footer_when_the_stream_sent_none_raises_order_error(read: Any) -> None:
    types = ts.stream_types(Point, footer_type=Footer)
    writer = ts.stream_writer(types)
    reader = read(types, [writer.yield_item(Point(x=1, y=1)), writer.yield_end()])
    assert len(list(reader.read_items())) == 1
    with pytest.raises(ts.StreamOrderError, match="without a footer"):
        reader.read_footer()


def test_nothing_after_end_is_read(read: Any) -> None:
    types = ts.stream_types(Point)
    writer = ts.stream_writer(types)
    frames = [writer.yield_item(Point(x=1, y=1)), writer.yield_end(), b"garbage after END"]
    reader = read(types, frames)
    assert [p.x for p in reader.read_items()] == [1]
    assert reader.ended


def test_read_items_after_footer_raises_order_error(read: Any) -> None:
    reader = read(full_types(), sample_frames(n_items=0))
    reader.read_header()
    reader.read_footer()
    with pytest.raises(ts.StreamOrderError):
        list(reader.read_items())


def test_items_stop_at_the_footer(read: Any) -> None:
    reader = read(full_types(), sample_frames())
    reader.read_header()
    assert len(list(reader.read_items())) == 3
    assert not reader.ended
    reader.read_footer()
    assert reader.ended


def test_a_second_header_frame_is_malformed(read: Any) -> None:
    frames = sample_frames()
    reader = read(full_types(), [frames[0], frames[0], *frames[1:]])
    reader.read_header()
    with pytest.raises(ts.MalformedFrameError):
        list(reader.read_items())


def test_a_frame_after_the_footer_other_than_end_is_malformed(read: Any) -> None:
    frames = sample_frames()
    reader = read(full_types(), [*frames[:-1], frames[1], frames[-1]])
    reader.read_header()
    list(reader.read_items())
    with pytest.raises(ts.MalformedFrameError):
        reader.read_footer()


def test_payload_not_matching_the_model_raises_validation_error(read: Any) -> None:
    class Other(pydantic.BaseModel):
        index: str

    writer = ts.stream_writer(ts.stream_types(Other))
    frames = [writer.yield_item(Other(index="not an int")), writer.yield_end()]
    with pytest.raises(pydantic.ValidationError):
        list(read(ts.stream_types(Item), frames).read_items())


# Writer ------------------------------------------------------------------------------


def test_writer_refuses_a_header_after_an_item() -> None:
    writer = ts.stream_writer(full_types())
    writer.yield_item(Item(index=0))
    with pytest.raises(ts.StreamOrderError):
        writer.yield_header(Header(request_id="late"))


def test_writer_refuses_a_second_header() -> None:
    writer = ts.stream_writer(full_types())
    writer.yield_header(Header(request_id="a"))
    with pytest.raises(ts.StreamOrderError):
        writer.yield_header(Header(request_id="b"))


@pytest.mark.parametrize("closing", ["footer", "end", "error"])
def test_writer_refuses_items_after_footer_end_or_error(closing: str) -> None:
    writer = ts.stream_writer(full_types())
    {
        "footer": lambda: writer.yield_footer(Footer(count=0)),
        "end": writer.yield_end,
        "error": lambda: writer.yield_error(RuntimeError("x")),
    }[closing]()
    with pytest.raises(ts.StreamOrderError):
        writer.yield_item(Item(index=0))
    with pytest.raises(ts.StreamOrderError):
        writer.yield_footer(Footer(count=0))


@pytest.mark.parametrize("closing", ["end", "error"])
def test_writer_refuses_anything_after_end_or_error(closing: str) -> None:
    writer = ts.stream_writer(full_types())
    writer.yield_end() if closing == "end" else writer.yield_error(RuntimeError("x"))
    assert writer.closed
    with pytest.raises(ts.StreamOrderError):
        writer.yield_end()
    with pytest.raises(ts.StreamOrderError):
        writer.yield_error(RuntimeError("again"))


def test_writer_order_error_changes_nothing() -> None:
    writer = ts.stream_writer(full_types())
    writer.yield_item(Item(index=0))
    with pytest.raises(ts.StreamOrderError):
        writer.yield_header(Header(request_id="late"))
    writer.yield_item(Item(index=1))
    writer.yield_footer(Footer(count=2))
    writer.yield_end()


def test_writer_refuses_the_wrong_model() -> None:
    writer = ts.stream_writer(full_types())
    with pytest.raises(ts.WrongModelError, match="Item"):
        writer.yield_item(Point(x=1, y=2))  # type: ignore[arg-type]
    with pytest.raises(ts.WrongModelError):
        writer.yield_header(Footer(count=1))  # type: ignore[arg-type]


def test_wrong_model_error_is_a_stream_error_and_a_type_error() -> None:
    assert issubclass(ts.WrongModelError, ts.StreamError)
    assert issubclass(ts.WrongModelError, TypeError)


def test_writer_refuses_a_header_or_footer_on_a_stream_type_without_one() -> None:
    writer: Any = ts.stream_writer(ts.stream_types(Item))
    with pytest.raises(ts.StreamOrderError, match="no header"):
        writer.yield_header(Header(request_id="x"))
    with pytest.raises(ts.StreamOrderError, match="no footer"):
        writer.yield_footer(Footer(count=1))
    writer.yield_item(Item(index=0))


# Errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_error_frame_raises_remote_stream_error_with_type_and_message(
    read: Any, codec: str
) -> None:
    types = full_types(codec)
    writer = ts.stream_writer(types)
    frames = [
        writer.yield_header(Header(request_id="r")),
        writer.yield_item(Item(index=0)),
        writer.yield_error(KeyError("model crashed")),
    ]
    reader = read(types, frames)
    reader.read_header()
    items = reader.read_items()
    assert next(items).index == 0
    with pytest.raises(ts.RemoteStreamError) as info:
        next(items)
    assert info.value.remote_type == "KeyError"
    assert "model crashed" in info.value.remote_message


def test_error_frame_in_place_of_the_header_raises_remote_stream_error(read: Any) -> None:
    types = full_types()
    frames = [ts.stream_writer(types).yield_error(ValueError("bad input"))]
    with pytest.raises(ts.RemoteStreamError, match="bad input") as info:
        read(types, frames).read_header()
    assert info.value.remote_type == "ValueError"


def test_error_tree_is_rooted_at_stream_error_which_is_a_value_error() -> None:
    for name in ts.__all__:
        obj = getattr(ts, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, ts.StreamError)
    assert issubclass(ts.StreamError, ValueError)
    assert issubclass(ts.UnknownCodecError, ts.MalformedFrameError)
    assert issubclass(ts.UnknownExtError, ts.MalformedFrameError)


def test_stream_types_refuses_non_models() -> None:
    with pytest.raises(TypeError):
        ts.stream_types(int)  # type: ignore[type-var]
    with pytest.raises(ValueError, match="codec"):
        ts.stream_types(Item, codec="cbor")  # type: ignore[call-overload]


def test_stream_reader_refuses_a_bytes_source() -> None:
    with pytest.raises(TypeError, match="iterable of byte chunks"):
        ts.stream_reader(full_types(), b"\x05\0\0\0\0")  # type: ignore[call-overload]


def test_a_footer_frame_on_a_stream_type_without_footer_is_malformed(read: Any) -> None:
    writer = ts.stream_writer(ts.stream_types(Point, footer_type=Footer))
    frames = [writer.yield_item(Point(x=1, y=1)), writer.yield_footer(Footer(count=1))]
    items = read(ts.stream_types(Point), frames).read_items()
    assert next(items).x == 1
    with pytest.raises(ts.MalformedFrameError, match="FOOTER"):
        next(items)
