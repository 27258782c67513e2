"""truss_chains endpoints over transports.http, and error messages that do not mislead."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pydantic
import pytest
from live_server import live_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from transports import http
from transports.http import StreamResponseError
from truss_stream import MalformedFrameError, stream_reader, stream_types, stream_writer

tc_streaming = pytest.importorskip("truss_chains.streaming")


class Header(pydantic.BaseModel):
    model: str


class Item(pydantic.BaseModel):
    index: int


class Footer(pydantic.BaseModel):
    total: int


OUR_TYPES = stream_types(Item, header_type=Header, footer_type=Footer, codec="json")
THEIR_TYPES = tc_streaming.stream_types(Item, header_type=Header, footer_type=Footer)


def truss_chains_app() -> Starlette:
    """A truss_chains-style endpoint: its own writer, a StreamingResponse, octet-stream."""

    async def produce() -> AsyncIterator[bytes]:
        writer = tc_streaming.stream_writer(THEIR_TYPES)
        yield writer.yield_header(Header(model="m"))
        for i in range(5):
            yield writer.yield_item(Item(index=i))
            await anyio.sleep(0)
        yield writer.yield_footer(Footer(total=5))  # and no END: truss_chains never writes one

    async def endpoint(request: Request) -> Response:
        return StreamingResponse(produce(), media_type="application/octet-stream")

    return Starlette(routes=[Route("/chain", endpoint)])


@pytest.fixture(scope="module")
def chains_url() -> Iterator[str]:
    with live_server(truss_chains_app()) as server:
        yield f"{server.url}/chain"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_reading_a_truss_chains_endpoint(chains_url: str, mode: str) -> None:
    options = {"require_end": False}
    media = http.TRUSS_CHAINS_MEDIA_TYPE
    if mode == "sync":
        with (
            httpx.Client() as client,
            http.connect(
                client, "GET", chains_url, OUR_TYPES, media_type=media, reader_options=options
            ) as reader,
        ):
            header = reader.read_header()
            items = [item.index for item in reader.read_items()]
            footer = reader.read_footer()
    else:

        async def main() -> tuple[Header, list[int], Footer]:
            async with (
                httpx.AsyncClient() as client,
                http.aconnect(
                    client, "GET", chains_url, OUR_TYPES, media_type=media, reader_options=options
                ) as reader,
            ):
                header = await reader.read_header()
                items = [item.index async for item in reader.read_items()]
                return header, items, await reader.read_footer()

        header, items, footer = anyio.run(main)
    assert (header.model, items, footer.total) == ("m", list(range(5)), 5)


def test_a_truss_chains_endpoint_without_the_option_says_what_it_got(chains_url: str) -> None:
    with (
        httpx.Client() as client,
        pytest.raises(StreamResponseError, match="got application/octet-stream") as info,
        http.connect(client, "GET", chains_url, OUR_TYPES),
    ):
        pass
    # The binary body is not dumped into the message: a short repr of its start.
    message = str(info.value)
    assert len(message) < 300
    assert "binary data" in message
    assert "\x00" not in message


def test_a_text_body_is_kept_as_text() -> None:
    async def endpoint(request: Request) -> Response:
        return Response("model not loaded", status_code=503)

    app = Starlette(routes=[Route("/s", endpoint)])
    with (
        live_server(app) as server,
        httpx.Client() as client,
        pytest.raises(StreamResponseError) as info,
        http.connect(client, "GET", f"{server.url}/s", OUR_TYPES),
    ):
        pass
    assert info.value.body == "model not loaded"


def test_a_header_on_a_stream_type_without_one_says_so() -> None:
    writer = stream_writer(OUR_TYPES)
    frames = [writer.yield_header(Header(model="m")), writer.yield_end()]
    reader = stream_reader(stream_types(Item, codec="json"), [bytes(f) for f in frames])
    with pytest.raises(MalformedFrameError, match="stream type without a header"):
        list(reader.read_items())
