"""SSE and chunked HTTP specifics, over real uvicorn (the shared behaviour is in conformance/)."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import httpx
import httpx_sse
import numpy as np
import pydantic
import pytest
from live_server import live_server
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from transports import http, sse
from transports.base import TransportError
from transports.sse import SSEFrameDecoder, encode_event
from truss_stream import (
    NDArray,
    StreamTruncatedError,
    stream_reader,
    stream_types,
    stream_writer,
)


class Header(pydantic.BaseModel):
    name: str


class Item(pydantic.BaseModel):
    index: int
    text: str = ""
    tensor: NDArray | None = None


JSON_TYPES = stream_types(Item, header_type=Header, codec="json")
MSGPACK_TYPES = stream_types(Item, header_type=Header, codec="msgpack")
TRICKY = "line\nbreak\r\n\u2028\u2029\x85\x0b\x0c\x1c\x1d\x1e:data: x\n\nevent: end"


def app_for(endpoint: Callable[[Request], Any]) -> Starlette:
    return Starlette(routes=[Route("/s", endpoint)])


def frames(types: Any, n: int = 3, text: str = "") -> list[bytes | memoryview]:
    writer = stream_writer(types)
    out = [writer.yield_header(Header(name="h"))]
    out += [
        writer.yield_item(Item(index=i, text=text, tensor=np.full((2, 2), i, np.int16)))
        for i in range(n)
    ]
    out.append(writer.yield_end())
    return out


# SSE encoding -------------------------------------------------------------------------------


@pytest.mark.parametrize("types", [JSON_TYPES, MSGPACK_TYPES], ids=["json", "msgpack"])
def test_events_never_break_framing_and_decode_byte_by_byte(types: Any) -> None:
    original = frames(types, text=TRICKY)
    body = b"".join(encode_event(i, f) for i, f in enumerate(original))
    text = body.decode()
    events = text.split("\n\n")[:-1]
    assert len(events) == len(original)
    for event in events:
        # Nothing any SSE parser takes for a line break, besides our own LFs.
        assert not set("\r\u2028\u2029\x85\x0b\x0c\x1c\x1d\x1e") & set(event)
        lines = event.split("\n")
        assert lines[0].startswith("event: ")
        assert lines[1].startswith("id: ")
        assert all(line.startswith("data: ") for line in lines[2:])
    decoder = SSEFrameDecoder()
    rebuilt = b"".join(decoder.feed(body[i : i + 1]) for i in range(len(body)))
    reader = stream_reader(types, [rebuilt])
    assert reader.read_header().name == "h"
    items = list(reader.read_items())
    assert [item.text for item in items] == [TRICKY] * 3
    np.testing.assert_array_equal(items[2].tensor, np.full((2, 2), 2, np.int16))
    assert decoder.last_event_id == "4"


def test_json_frames_are_plain_json_and_binary_frames_base64() -> None:
    json_events = [encode_event(i, f) for i, f in enumerate(frames(JSON_TYPES, 1))]
    assert json_events[0] == b'event: header\nid: 0\ndata: {"name":"h"}\n\n'
    assert json_events[-1] == b"event: end\nid: 2\ndata: {}\n\n"
    msgpack_events = [encode_event(i, f) for i, f in enumerate(frames(MSGPACK_TYPES, 1))]
    assert msgpack_events[-1] == b"event: end\nid: 2\ndata: FQAAAAA=\n\n"


# Over uvicorn ------------------------------------------------------------------------------


def test_third_party_sse_client_sees_plain_events() -> None:
    original = frames(JSON_TYPES, 2, text=TRICKY)

    async def endpoint(request: Request) -> Response:
        return sse.sse_response(iter(original))

    with (
        live_server(app_for(endpoint)) as server,
        httpx.Client() as client,
        httpx_sse.connect_sse(client, "GET", f"{server.url}/s") as source,
    ):
        response = source.response
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        events = list(source.iter_sse())
    assert [e.event for e in events] == ["header", "item", "item", "end"]
    assert [e.id for e in events] == ["0", "1", "2", "3"]
    payloads = [json.loads(e.data) for e in events]
    assert payloads[0] == {"name": "h"}
    assert payloads[2]["text"] == TRICKY
    assert payloads[2]["tensor"]["shape"] == [2, 2]
    assert set(payloads[2]["tensor"]) == {"data_b64", "shape", "dtype"}


@pytest.mark.parametrize("module", [sse, http], ids=["sse", "http"])
def test_failure_before_first_frame_is_an_http_error(module: Any) -> None:
    async def produce(status: int) -> AsyncIterator[bytes]:
        if status == 403:
            raise HTTPException(403, "no key")
        raise ValueError("model missing")
        yield b""  # pragma: no cover

    async def endpoint(request: Request) -> Response:
        frames_ = produce(int(request.query_params["status"]))
        if module is sse:
            return sse.sse_response(frames_)
        return http.stream_response(frames_)

    with live_server(app_for(endpoint)) as server, httpx.Client() as client:
        for status, text in ((500, "ValueError: model missing"), (403, "no key")):
            with (
                pytest.raises(module.StreamResponseError) as info,
                module.connect(
                    client, "GET", f"{server.url}/s", JSON_TYPES, params={"status": status}
                ),
            ):
                pass
            assert info.value.status == status
            assert text in info.value.body
            assert isinstance(info.value, TransportError)


@pytest.mark.parametrize("module", [sse, http], ids=["sse", "http"])
def test_wrong_content_type_and_error_status(module: Any) -> None:
    async def endpoint(request: Request) -> Response:
        if request.query_params.get("missing"):
            return JSONResponse({"detail": "not here"}, status_code=404)
        return JSONResponse({"not": "a stream"})

    with live_server(app_for(endpoint)) as server:

        async def main() -> None:
            async with httpx.AsyncClient() as client:
                with pytest.raises(module.StreamResponseError) as info:
                    async with module.aconnect(client, "GET", f"{server.url}/s", JSON_TYPES):
                        pass
                assert info.value.status == 200
                assert info.value.content_type == "application/json"
                assert '"a stream"' in info.value.body
                url = f"{server.url}/s?missing=1"
                with pytest.raises(module.StreamResponseError) as info:
                    async with module.aconnect(client, "GET", url, JSON_TYPES):
                        pass
                assert info.value.status == 404
                assert "not here" in info.value.body

        anyio.run(main)


def test_connection_refused_is_a_transport_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        httpx.Client() as client,
        pytest.raises(TransportError),
        http.connect(client, "GET", f"http://127.0.0.1:{port}/s", JSON_TYPES),
    ):
        pass


def test_pings_keep_an_idle_stream_alive() -> None:
    async def produce() -> AsyncIterator[bytes | memoryview]:
        writer = stream_writer(JSON_TYPES)
        yield writer.yield_header(Header(name="slow"))
        await anyio.sleep(0.4)
        yield writer.yield_item(Item(index=1))

    async def endpoint(request: Request) -> Response:
        return sse.sse_response(produce(), ping_interval=0.05)

    with live_server(app_for(endpoint)) as server:
        raw = httpx.get(f"{server.url}/s").content
        assert raw.count(b": ping\n\n") >= 3
        with (
            httpx.Client() as client,
            sse.connect(client, "GET", f"{server.url}/s", JSON_TYPES) as r,
        ):
            assert r.read_header().name == "slow"
            assert [i.index for i in r.read_items()] == [1]


@pytest.mark.parametrize("module", [sse, http], ids=["sse", "http"])
def test_client_that_stops_reading_is_bounded_then_dropped(module: Any) -> None:
    produced = 0
    closed = threading.Event()
    types = stream_types(Item, codec="msgpack")

    async def produce() -> AsyncIterator[bytes | memoryview]:
        nonlocal produced
        writer = stream_writer(types)
        big = np.zeros(256 * 1024, np.float32)  # 1 MiB items
        try:
            while True:
                yield writer.yield_item(Item(index=produced, tensor=big))
                produced += 1
        finally:
            closed.set()

    async def endpoint(request: Request) -> Response:
        if module is sse:
            return sse.sse_response(produce(), send_timeout=0.5)
        return http.stream_response(produce(), send_timeout=0.5)

    with (
        live_server(app_for(endpoint)) as server,
        socket.create_connection(("127.0.0.1", server.port)) as sock,
    ):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(b"GET /s HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
        assert closed.wait(5), "the producer was never closed"
        # Flow control stopped the producer after a few MiB of socket buffers.
        assert produced < 40, produced
        time.sleep(0.2)
        assert produced < 40, produced


@pytest.mark.parametrize("module", [sse, http], ids=["sse", "http"])
def test_stream_ending_without_end_frame_is_truncated(module: Any) -> None:
    # A server that just stops (no END, body complete): never reported as complete.
    good = frames(MSGPACK_TYPES, 2)[:-1]
    body = (
        b"".join(encode_event(i, f) for i, f in enumerate(good))
        if module is sse
        else b"".join(bytes(f) for f in good)
    )

    async def endpoint(request: Request) -> Response:
        return Response(body, media_type=module.MEDIA_TYPE)

    with (
        live_server(app_for(endpoint)) as server,
        httpx.Client() as client,
        module.connect(client, "GET", f"{server.url}/s", MSGPACK_TYPES) as reader,
    ):
        reader.read_header()
        with pytest.raises(StreamTruncatedError):
            list(reader.read_items())


@pytest.mark.parametrize("module", [sse, http], ids=["sse", "http"])
def test_each_frame_is_flushed_while_the_producer_waits(module: Any) -> None:
    # The producer waits for the client to have read item 0: a frame held back in
    # a batch would deadlock this until the producer's own timeout fails it.
    seen = threading.Event()
    types = stream_types(Item, codec="msgpack")

    async def produce() -> AsyncIterator[bytes | memoryview]:
        writer = stream_writer(types)
        yield writer.yield_item(Item(index=0))
        with anyio.fail_after(5):
            while not seen.is_set():
                await anyio.sleep(0.002)
        yield writer.yield_item(Item(index=1))

    async def endpoint(request: Request) -> Response:
        respond = sse.sse_response if module is sse else http.stream_response
        return respond(produce())

    async def main(url: str) -> list[int]:
        async with httpx.AsyncClient() as client, module.aconnect(client, "GET", url, types) as r:
            indices = []
            async for item in r.read_items():
                indices.append(item.index)
                seen.set()
            return indices

    with live_server(app_for(endpoint)) as server:
        assert anyio.run(main, f"{server.url}/s") == [0, 1]


@pytest.mark.parametrize("module", [sse, http], ids=["sse", "http"])
def test_client_leaving_before_the_first_frame_closes_the_producer(module: Any) -> None:
    closed = threading.Event()

    async def produce() -> AsyncIterator[bytes | memoryview]:
        try:
            await anyio.sleep(30)  # a slow model, before anything was sent
            yield b""  # pragma: no cover
        finally:
            closed.set()

    async def endpoint(request: Request) -> Response:
        respond = sse.sse_response if module is sse else http.stream_response
        return respond(produce())

    with live_server(app_for(endpoint)) as server, httpx.Client(timeout=0.3) as client:
        url = f"{server.url}/s"
        # httpx's read timeout expires while opening: the client closes the connection.
        with pytest.raises(TransportError), module.connect(client, "GET", url, JSON_TYPES):
            pass  # pragma: no cover
        assert closed.wait(5)


@pytest.mark.parametrize("module", [sse, http], ids=["sse", "http"])
def test_large_tensor_items_arrive_intact(module: Any) -> None:
    types = stream_types(Item, codec="msgpack")
    tensors = [np.random.default_rng(i).random((512, 1024), np.float32) for i in range(3)]

    async def produce() -> AsyncIterator[bytes | memoryview]:
        writer = stream_writer(types)
        for i, tensor in enumerate(tensors):  # 2 MiB each
            yield writer.yield_item(Item(index=i, tensor=tensor))

    async def endpoint(request: Request) -> Response:
        respond = sse.sse_response if module is sse else http.stream_response
        return respond(produce())

    async def main(url: str) -> list[Any]:
        async with httpx.AsyncClient() as client, module.aconnect(client, "GET", url, types) as r:
            return [item async for item in r.read_items()]

    with live_server(app_for(endpoint)) as server:
        items = anyio.run(main, f"{server.url}/s")
    assert [item.index for item in items] == [0, 1, 2]
    for item, tensor in zip(items, tensors, strict=True):
        np.testing.assert_array_equal(item.tensor, tensor)


@pytest.mark.parametrize("transport", [http, sse], ids=["http", "sse"])
def test_response_lets_go_of_its_first_frame_once_sent(transport: Any) -> None:
    # A long stream must not pin its first frame (a 4 MiB tensor, say) until it ends:
    # once later frames went out, only the producer may still hold it.
    seen: list[int] = []

    async def produce() -> AsyncIterator[bytes]:
        writer = stream_writer(MSGPACK_TYPES)
        first = writer.yield_header(Header(name="h"))
        yield first
        for i in range(3):
            await anyio.sleep(0.01)  # each frame flushed on its own
            yield writer.yield_item(Item(index=i))
        seen.append(sys.getrefcount(first) - 1)  # less getrefcount's own argument
        yield writer.yield_end()

    async def endpoint(request: Request) -> Response:
        response: Response = (
            http.stream_response(produce()) if transport is http else sse.sse_response(produce())
        )
        return response

    with live_server(app_for(endpoint)) as server, httpx.Client() as client:
        url = f"{server.url}/s"
        with transport.connect(client, "GET", url, MSGPACK_TYPES) as reader:
            assert reader.read_header() == Header(name="h")
            assert [item.index for item in reader.read_items()] == [0, 1, 2]
    assert seen == [1]
