"""Every limit, exceeded: ``max_frame_bytes`` (core and through each transport), each
``MsgpackLimits`` field (msgpack's own path and the zero-copy array path), the SSE event
size, and gRPC's message size in both directions. Defaults are checked against the
documented values.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import msgpack
import numpy as np
import pydantic
import pytest
from conformance.harness import TransportHarness
from core_helpers import ReaderFactory
from harness_clients import ClientSettings, each_harness, read_stream, served
from live_server import live_server
from reliability_helpers import TYPES, grpc_request, grpc_service
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

import truss_stream as ts
from transports import grpc as tgrpc
from transports import sse
from transports.grpc import GrpcOptions, GrpcStatusError, serve_in_thread
from transports.sse import SSEEventTooLargeError, SSEFrameDecoder
from truss_stream import Codec, FrameKind, MsgpackLimits, pack_tag

MiB = 1024 * 1024


class Loose(pydantic.BaseModel):
    x: Any = None


class WithArray(pydantic.BaseModel):
    a: ts.NDArray


LOOSE = ts.stream_types(Loose)
ARRAY = ts.stream_types(WithArray)
END = pack_tag(FrameKind.END, Codec.MSGPACK, 0)


def item_frame(payload: bytes, hint: bool = False) -> bytes:
    return pack_tag(FrameKind.ITEM, Codec.MSGPACK, len(payload), array_hint=hint) + payload


def test_documented_defaults() -> None:
    assert 256 * MiB == ts.DEFAULT_MAX_FRAME_BYTES
    limits = MsgpackLimits()
    assert limits.max_array_len == 1_000_000
    assert limits.max_map_len == 100_000
    assert limits.max_str_len == 64 * MiB
    assert limits.max_bin_len == 1 << 31
    assert limits.max_ext_len == 1 << 31
    assert GrpcOptions().max_message_bytes == 64 * MiB
    assert (
        sse.max_event_bytes_for(ts.DEFAULT_MAX_FRAME_BYTES) >= ts.DEFAULT_MAX_FRAME_BYTES * 4 // 3
    )


# MsgpackLimits -----------------------------------------------------------------------------

TIGHT = MsgpackLimits(
    max_array_len=10, max_map_len=10, max_str_len=100, max_bin_len=100, max_ext_len=1000
)
OVER: dict[str, Any] = {
    "max_array_len": list(range(11)),
    "max_map_len": {str(i): i for i in range(11)},
    "max_str_len": "x" * 101,
    "max_bin_len": b"x" * 101,
}


@pytest.mark.parametrize("field", sorted(OVER))
@pytest.mark.parametrize("pad", [0, 70_000], ids=["msgpack-path", "zero-copy-path"])
def test_each_msgpack_container_limit_is_enforced(
    read: ReaderFactory, field: str, pad: int
) -> None:
    # With an array and padding the payload takes the reader's structure walk.
    body: dict[str, Any] = {"x": OVER[field]}
    at_limit: dict[str, Any] = {"x": OVER[field][:10] if field != "max_map_len" else {}}
    if pad:
        for b in (body, at_limit):
            b["arr"] = msgpack.ExtType(1, _ext_f4(4))
            b["p"] = [b"\0" * 90] * 8 + ["y" * 90] * 2  # within every limit
            b["q"] = b"\0" * 90
    ok = read(
        LOOSE, [item_frame(msgpack.packb(at_limit), hint=bool(pad)) + END], msgpack_limits=TIGHT
    )
    assert len(list(ok.read_items())) == 1
    reader = read(
        LOOSE, [item_frame(msgpack.packb(body), hint=bool(pad)) + END], msgpack_limits=TIGHT
    )
    with pytest.raises(ts.MalformedFrameError, match=field):
        list(reader.read_items())


def _ext_f4(n: int) -> bytes:
    import struct

    return struct.pack("<BBBB", 1, 1, 3, 0) + struct.pack("<Q", n) + b"<f4" + b"\0" * (4 * n)


@pytest.mark.parametrize("size", [100, 100_000], ids=["msgpack-path", "zero-copy-path"])
def test_max_ext_len_bounds_arrays_on_both_decode_paths(read: ReaderFactory, size: int) -> None:
    writer = ts.stream_writer(ARRAY)
    data = bytes(writer.yield_item(WithArray(a=np.zeros(size, np.float32)))) + END
    limits = MsgpackLimits(max_ext_len=4 * size)  # the data fits, the ext header does not
    with pytest.raises(ts.MalformedFrameError, match="max_ext_len"):
        list(read(ARRAY, [data], msgpack_limits=limits).read_items())
    roomy = MsgpackLimits(max_ext_len=4 * size + 64)
    (item,) = list(read(ARRAY, [data], msgpack_limits=roomy).read_items())
    assert item.a.size == size


def test_max_frame_bytes_is_exact(read: ReaderFactory) -> None:
    payload = msgpack.packb({"x": "y" * 100})
    data = item_frame(payload) + END
    assert len(list(read(LOOSE, [data], max_frame_bytes=len(payload)).read_items())) == 1
    with pytest.raises(ts.FrameTooLargeError):
        list(read(LOOSE, [data], max_frame_bytes=len(payload) - 1).read_items())


# SSE event size -----------------------------------------------------------------------------


def test_sse_decoder_refuses_an_event_above_max_event_bytes() -> None:
    decoder = SSEFrameDecoder(max_event_bytes=1000)
    decoder.feed(b"event: item\nid: 0\ndata: " + b"A" * 500)  # under the limit: waits
    with pytest.raises(SSEEventTooLargeError) as info:
        decoder.feed(b"A" * 600)
    assert isinstance(info.value, ts.FrameTooLargeError)
    assert info.value.limit == 1000


def test_sse_server_that_never_ends_an_event_is_cut_off_with_bounded_memory() -> None:
    # A hostile (or broken) server streams one endless data line.
    async def endless(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"event: item\nid: 0\ndata: "
            chunk = b"A" * 65536
            for _ in range(10_000):  # 640 MiB if nobody stops it
                yield chunk

        return StreamingResponse(body(), media_type=sse.MEDIA_TYPE)

    app = Starlette(routes=[Route("/endless", endless)])
    limit = 1 * MiB
    with live_server(app) as server, httpx.Client(timeout=10) as client:
        tracemalloc.start()
        try:
            with (
                pytest.raises(SSEEventTooLargeError),
                sse.connect(
                    client,
                    "GET",
                    f"{server.url}/endless",
                    LOOSE,
                    reader_options={"max_frame_bytes": limit * 3 // 4 - 64 * 1024},
                ) as reader,
            ):
                list(reader.read_items())
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak < 8 * MiB, f"client buffered {peak / MiB:.1f} MiB of one event"


# max_frame_bytes through the transports --------------------------------------------------


@each_harness
def test_max_frame_bytes_through_each_transport(harness: TransportHarness) -> None:
    # Items of 400 KiB; the reader accepts 100 KiB frames.
    params = {"stream": 1, "n": 3, "floats": 100 * 1024}
    settings = ClientSettings(reader={"max_frame_bytes": 100 * 1024}, timeout=10)
    with served(harness) as app:
        error, _, _ = read_stream(harness, "async", app.address, params, settings)
    assert isinstance(error, ts.FrameTooLargeError), error


# gRPC message size, both directions ----------------------------------------------------------


def test_grpc_request_above_the_servers_max_message_is_refused() -> None:
    small = GrpcOptions(max_message_bytes=64 * 1024)
    big = GrpcOptions(max_message_bytes=4 * MiB)
    request = grpc_request(stream=1, n=1, pad="x" * (256 * 1024))
    with (
        serve_in_thread(grpc_service(), options=small, reflection=False) as running,
        pytest.raises(GrpcStatusError) as info,
        tgrpc.connect(running.target, "Stream", TYPES["msgpack"], request=request, options=big),
    ):
        pass
    assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_grpc_frame_above_the_servers_max_message_is_an_error_not_a_short_stream() -> None:
    # The server may not send a message above its own limit: the client gets an
    # error, never a stream that silently lacks the item.
    small = GrpcOptions(max_message_bytes=256 * 1024)
    request = grpc_request(stream=1, n=3, floats=128 * 1024)  # 512 KiB items
    with (  # noqa: PT012
        serve_in_thread(grpc_service(), options=small, reflection=False) as running,
        pytest.raises(ts.StreamError),
        tgrpc.connect(
            running.target, "Stream", TYPES["msgpack"], request=request, options=small
        ) as reader,
    ):
        reader.read_header()
        list(reader.read_items())
        reader.read_footer()
