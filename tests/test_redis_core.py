"""transports.redis's sans-IO parts, without a server: entry ids, the read core's steps, and
the SSE event encoding with Redis entry ids (property tests)."""

from __future__ import annotations

import collections
from typing import Any

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from transports import redis as tr
from transports._sse_events import SSEFrameDecoder
from transports.redis._core import (
    Deliver,
    Exists,
    ReadOptions,
    XRange,
    XRead,
    parse_entry_id,
    read_steps,
)
from transports.redis._serve import _event_encoder
from transports.sse import encode_event
from truss_stream import MalformedFrameError, stream_types, stream_writer


class Item(pydantic.BaseModel):
    text: str
    value: float


TYPES = {c: stream_types(Item, codec=c) for c in ("msgpack", "json")}


@given(st.integers(0, 2**48), st.integers(0, 2**40))
def test_entry_ids_parse_to_their_numbers(ms: int, seq: int) -> None:
    assert parse_entry_id(f"{ms}-{seq}") == (ms, seq)
    assert parse_entry_id(f"{ms}".encode()) == (ms, 0)


@given(st.text(max_size=50) | st.sampled_from(["\u0663", "1-\u0663", "1-2-3", "-1", ""]))
def test_anything_else_is_a_position_error(text: str) -> None:
    ms, _, seq = text.partition("-")
    if ms.isascii() and ms.isdigit() and (seq == "" or (seq.isascii() and seq.isdigit())):
        return
    with pytest.raises(tr.StreamPositionError):
        parse_entry_id(text)


@given(
    st.sampled_from(["msgpack", "json"]),
    st.text(),
    st.floats(allow_nan=False),
    st.integers(0, 2**48),
    st.integers(0, 2**20),
)
def test_events_carry_entry_ids_and_decode_to_the_same_frame(
    codec: str, text: str, value: float, ms: int, seq: int
) -> None:
    frame = bytes(stream_writer(TYPES[codec]).yield_item(Item(text=text, value=value)))
    entry_id = f"{ms}-{seq}".encode()
    ids: collections.deque[bytes] = collections.deque([entry_id])
    event = _event_encoder(ids)(0, frame)
    # The direct encoding, with the entry id in place of the sequence number.
    assert event == encode_event(0, frame).replace(b"\nid: 0\n", b"\nid: " + entry_id + b"\n", 1)
    decoder = SSEFrameDecoder()
    # What a client decodes: the frame a direct SSE stream gives (JSON may come back with
    # U+0085/U+2028/U+2029 escaped, the same value).
    assert decoder.feed(event) == SSEFrameDecoder().feed(encode_event(0, frame))
    assert decoder.last_event_id == entry_id.decode()


def _entry(entry_id: bytes, n: int, frame: bytes, s: bytes = b"s1") -> tuple[bytes, Any]:
    return entry_id, {b"f": frame, b"n": b"%d" % n, b"s": s}


def test_read_steps_look_up_the_start_then_follow() -> None:
    writer = stream_writer(TYPES["msgpack"])
    item = bytes(writer.yield_item(Item(text="a", value=1)))
    end = bytes(writer.yield_end())
    steps = read_steps("k", "5-0", ReadOptions())
    assert next(steps) == XRange(b"5-0", b"5-0", 1)
    step = steps.send([_entry(b"5-0", 3, item)])
    assert step == XRead(b"5-0", 256, 1000)
    delivered = steps.send([_entry(b"6-0", 4, item), _entry(b"7-0", 5, end)])
    assert isinstance(delivered, Deliver)
    assert [e.position for e in delivered.entries] == [4, 5]
    with pytest.raises(StopIteration):
        steps.send(None)  # END delivered: nothing more to read


def test_read_steps_raise_on_gaps_and_foreign_entries() -> None:
    item = bytes(stream_writer(TYPES["msgpack"]).yield_item(Item(text="a", value=1)))
    steps = read_steps("k", "0", ReadOptions())
    next(steps)
    with pytest.raises(tr.StreamTrimmedError, match=r"0\.\.2"):
        steps.send([_entry(b"1-0", 3, item)])
    steps = read_steps("k", "0", ReadOptions())
    next(steps)
    with pytest.raises(tr.StreamIdentityError):
        steps.send([_entry(b"1-0", 0, item), _entry(b"2-0", 1, item, s=b"other")])
    steps = read_steps("k", "0", ReadOptions())
    next(steps)
    with pytest.raises(MalformedFrameError, match="not a truss_stream frame"):
        steps.send([(b"1-0", {b"x": b"y"})])


def test_read_steps_retry_an_outage_then_give_up() -> None:
    steps = read_steps("k", "0", ReadOptions(outage_limit=0.0))
    step = next(steps)
    assert isinstance(step, XRead)
    with pytest.raises(tr.RedisUnavailableError):
        steps.throw(ConnectionError("refused"))


def test_idle_limit_checks_the_key_then_reports() -> None:
    steps = read_steps("k", "0", ReadOptions(idle_limit=0.0))
    next(steps)
    assert steps.send([]) == Exists()
    with pytest.raises(tr.StreamNotFoundError):
        steps.send(0)
    steps = read_steps("k", "0", ReadOptions(idle_limit=0.0))
    next(steps)
    steps.send([])
    with pytest.raises(tr.ProducerGoneError):
        steps.send(1)
