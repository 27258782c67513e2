"""SSE parsing by the WHATWG event-stream rules, and our frames served by real sse-starlette."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from live_server import live_server
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from transports import sse
from transports.sse import SSEFrameDecoder, encode_event
from truss_stream import Codec, FrameKind, pack_tag, stream_types, stream_writer


class Header(pydantic.BaseModel):
    name: str


class Item(pydantic.BaseModel):
    index: int
    text: str = ""


JSON_TYPES = stream_types(Item, header_type=Header, codec="json")
MSGPACK_TYPES = stream_types(Item, header_type=Header, codec="msgpack")


def json_frame(kind: FrameKind, payload: bytes) -> bytes:
    return pack_tag(kind, Codec.JSON, len(payload)) + payload


def decode_all(body: bytes, split: int | None = None) -> tuple[list[bytes], SSEFrameDecoder]:
    decoder = SSEFrameDecoder()
    step = split or len(body) or 1
    out: list[bytes] = []
    for i in range(0, len(body), step):
        out += decoder.feed_frames(body[i : i + step])
    return out, decoder


ITEM_A = json_frame(FrameKind.ITEM, b'{"index":1}')


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
@pytest.mark.parametrize("split", [None, 1, 2, 3])
def test_every_line_ending_gives_the_same_events(eol: bytes, split: int | None) -> None:
    body = eol.join([b"event: item", b"id: 4", b'data: {"index":1}', b"", b""])
    frames, decoder = decode_all(body, split)
    assert frames == [ITEM_A]
    assert decoder.last_event_id == "4"


def test_cr_ending_one_chunk_and_lf_starting_the_next_are_one_line_end() -> None:
    decoder = SSEFrameDecoder()
    assert decoder.feed_frames(b'event: item\r\ndata: {"index":1}\r') == []
    # "\n" completes the CRLF: not a blank line, so no event yet...
    assert decoder.feed_frames(b"\n") == []
    # ... until a real blank line.
    assert decoder.feed_frames(b"\r\n") == [ITEM_A]


def test_leading_bom_comments_retry_unknown_fields_and_no_space_after_colon() -> None:
    body = (
        b"\xef\xbb\xbf: a comment\n"
        b"retry: 2500\n"
        b"unknown: ignored\n"
        b"event:item\n"
        b"id:7\n"
        b'data:{"index":1}\n'
        b"\n"
    )
    for split in (None, 1):
        frames, decoder = decode_all(body, split)
        assert frames == [ITEM_A]
        assert decoder.retry_ms == 2500
        assert decoder.last_event_id == "7"


def test_multi_line_data_joins_with_lf() -> None:
    body = b'event: item\ndata: {"index":\ndata:  1}\n\n'
    frames, _ = decode_all(body)
    assert frames == [json_frame(FrameKind.ITEM, b'{"index":\n 1}')]


def test_id_with_nul_is_ignored_and_bad_retry_is_ignored() -> None:
    body = b"event: item\nid: 3\ndata: {}\n\nevent: item\nid: 4\x005\nretry: 1x\ndata: {}\n\n"
    frames, decoder = decode_all(body)
    assert len(frames) == 2
    assert decoder.last_event_id == "3"
    assert decoder.retry_ms is None


def test_event_without_data_is_not_dispatched() -> None:
    frames, decoder = decode_all(b"event: item\nid: 9\n\n\n\n: ping\n\n")
    assert frames == []
    assert decoder.last_event_id == "9"  # WHATWG: the id is set even so


@pytest.mark.parametrize("split", [None, 1, 5])
def test_bytes_after_the_end_event_do_not_fail_a_complete_stream(split: int | None) -> None:
    writer = stream_writer(JSON_TYPES)
    good = [writer.yield_header(Header(name="h")), writer.yield_end()]
    body = b"".join(encode_event(i, f) for i, f in enumerate(good))
    body += b"event: bogus\ndata: \x00not ours\n\ngarbage without end"
    frames, decoder = decode_all(body, split)
    assert frames == [bytes(f) for f in good]
    assert decoder.ended


# Property: any events, any line endings, any splits ------------------------------------

_KINDS = [FrameKind.HEADER, FrameKind.ITEM, FrameKind.FOOTER]
_NAMES = {FrameKind.HEADER: b"header", FrameKind.ITEM: b"item", FrameKind.FOOTER: b"footer"}
# Data lines: anything without CR/LF; the first line must not start with A-Z (that is base64).
_line = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]))
_event = st.tuples(
    st.sampled_from(_KINDS),
    st.lists(_line, min_size=1, max_size=3).filter(lambda ls: not ls[0][:1].isupper()),
    st.one_of(st.none(), st.text("0123456789abc-", min_size=1, max_size=8)),
    st.booleans(),  # a comment before the event
)


@st.composite
def _encoded(draw: Any) -> tuple[bytes, list[bytes], str | None]:
    events = draw(st.lists(_event, max_size=6))
    lines: list[bytes] = []
    expected: list[bytes] = []
    last_id = None
    for kind, data_lines, event_id, comment in events:
        if comment:
            lines.append(b": keep-alive")
        lines.append(b"event:" + draw(st.sampled_from([b"", b" "])) + _NAMES[kind])
        if event_id is not None:
            lines.append(b"id: " + event_id.encode())
            last_id = event_id
        for line in data_lines:
            raw = line.encode()
            # One space after the colon is dropped: write one when the value starts with one.
            space = b" " if raw.startswith(b" ") else draw(st.sampled_from([b"", b" "]))
            lines.append(b"data:" + space + raw)
        lines.append(b"")
        payload = "\n".join(data_lines).encode()
        expected.append(json_frame(kind, payload))
    body = bytearray(draw(st.sampled_from([b"", b"\xef\xbb\xbf"])))
    previous = b""
    for line in lines:
        # A CR line end followed by an empty line ending in LF would read as one CRLF.
        choices = [b"\r", b"\r\n"] if previous == b"\r" and not line else [b"\n", b"\r", b"\r\n"]
        previous = draw(st.sampled_from(choices))
        body += line + previous
    return bytes(body), expected, last_id


@settings(max_examples=300, deadline=None)
@given(_encoded(), st.lists(st.integers(min_value=0, max_value=10_000), max_size=8))
def test_any_line_endings_and_any_splits_decode_to_the_same_events(
    encoded: tuple[bytes, list[bytes], str | None], cuts: list[int]
) -> None:
    body, expected, last_id = encoded
    points = sorted({c % (len(body) + 1) for c in cuts})
    decoder = SSEFrameDecoder()
    frames: list[bytes] = []
    start = 0
    for point in [*points, len(body)]:
        frames += decoder.feed_frames(body[start:point])
        start = point
    assert frames == expected
    assert decoder.last_event_id == last_id


# Our frames served by sse-starlette (which writes CRLF) ---------------------------------


def sse_starlette_app(types: Any) -> Starlette:
    """Our frames as sse-starlette events: the same event/id/data, sse-starlette's framing."""

    async def events() -> AsyncIterator[dict[str, str]]:
        writer = stream_writer(types)
        frames = [writer.yield_header(Header(name="h"))]
        frames += [writer.yield_item(Item(index=i, text="line\nbreak")) for i in range(5)]
        frames.append(writer.yield_end())
        for seq, frame in enumerate(frames):
            lines = encode_event(seq, frame).decode().split("\n")
            fields: dict[str, list[str]] = {}
            for line in lines:
                if line:
                    name, _, value = line.partition(": ")
                    fields.setdefault(name, []).append(value)
            yield {
                "event": fields["event"][0],
                "id": fields["id"][0],
                "data": "\n".join(fields["data"]),
            }
            await anyio.sleep(0.01)

    async def endpoint(request: Request) -> Response:
        return EventSourceResponse(events(), ping=1)

    return Starlette(routes=[Route("/s", endpoint)])


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("types", [JSON_TYPES, MSGPACK_TYPES], ids=["json", "msgpack"])
def test_our_client_reads_our_frames_served_by_sse_starlette(types: Any, mode: str) -> None:
    with live_server(sse_starlette_app(types)) as server:
        url = f"{server.url}/s"
        with httpx.Client() as client, client.stream("GET", url) as raw:
            assert b"\r\n" in b"".join(raw.iter_raw())  # sse-starlette really writes CRLF
        if mode == "sync":
            with httpx.Client() as client, sse.connect(client, "GET", url, types) as reader:
                header = reader.read_header()
                items = [item for item in reader.read_items()]
        else:

            async def main() -> tuple[Any, list[Any]]:
                async with (
                    httpx.AsyncClient() as client,
                    sse.aconnect(client, "GET", url, types) as reader,
                ):
                    return await reader.read_header(), [i async for i in reader.read_items()]

            header, items = anyio.run(main)
    assert header.name == "h"
    assert [(i.index, i.text) for i in items] == [(i, "line\nbreak") for i in range(5)]


def test_base64_data_is_checked() -> None:
    bad = b"event: item\ndata: " + base64.b64encode(b"\x05\x00\x00\x00\x00") + b"\n\n"
    with pytest.raises(Exception, match="another frame kind"):
        decode_all(bad)
