"""gRPC typed streams over a real grpc.aio server on loopback, sync and async clients."""

from __future__ import annotations

import asyncio
import gc
import logging
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pydantic
import pytest

from transports.base import aopen_reader
from transports.grpc import (
    AsyncGrpcTransport,
    ClientTLS,
    FrameStreamService,
    GrpcClientOptions,
    GrpcOptions,
    GrpcStatusError,
    GrpcTransport,
    ServerTLS,
    aconnect,
    add_stream_method,
    connect,
    create_channel,
    serve_in_thread,
    start_server,
)
from transports.grpc._wire import (
    build_descriptor_pool,
    encode_frame_message,
    encode_request,
    frames_pool,
    message_class,
)
from truss_stream import (
    NDArray,
    RemoteStreamError,
    ServerGoingAwayError,
    StreamError,
    StreamTimeoutError,
    StreamTruncatedError,
    stream_reader,
    stream_types,
    stream_writer,
)

pytestmark = pytest.mark.timeout(30)


class Header(pydantic.BaseModel):
    count: int


class Item(pydantic.BaseModel):
    index: int
    tensor: NDArray


class Footer(pydantic.BaseModel):
    total: float


TYPES = stream_types(Item, header_type=Header, footer_type=Footer)
JSON_TYPES = stream_types(Item, header_type=Header, footer_type=Footer, codec="json")


def _tensor(index: int, size: int = 16) -> np.ndarray[Any, Any]:
    return np.arange(size, dtype=np.float32).reshape(4, -1) + index


async def tensors(body: bytes, context: Any) -> AsyncIterator[bytes | memoryview]:
    count = int(body or b"3")
    writer = stream_writer(TYPES)
    yield writer.yield_header(Header(count=count))
    for i in range(count):
        yield writer.yield_item(Item(index=i, tensor=_tensor(i)))
    yield writer.yield_footer(Footer(total=float(count)))


def sync_tensors(body: bytes, context: Any) -> Iterator[bytes | memoryview]:
    writer = stream_writer(JSON_TYPES)
    yield writer.yield_header(Header(count=2))
    for i in range(2):
        yield writer.yield_item(Item(index=i, tensor=_tensor(i)))
    yield writer.yield_footer(Footer(total=2.0))


async def fails_midway(body: bytes, context: Any) -> AsyncIterator[bytes | memoryview]:
    writer = stream_writer(TYPES)
    yield writer.yield_header(Header(count=2))
    yield writer.yield_item(Item(index=0, tensor=_tensor(0)))
    raise KeyError("model went away")


async def fails_first(body: bytes, context: Any) -> AsyncIterator[bytes | memoryview]:
    raise RuntimeError("no such model")
    yield b""  # pragma: no cover


def fails_on_call(body: bytes, context: Any) -> Iterator[bytes]:
    raise ValueError("bad request body")


async def sleeps_first(body: bytes, context: Any) -> AsyncIterator[bytes | memoryview]:
    await asyncio.sleep(float(body))
    yield stream_writer(TYPES).yield_header(Header(count=0))


async def header_then_sleeps(body: bytes, context: Any) -> AsyncIterator[bytes | memoryview]:
    writer = stream_writer(TYPES)
    yield writer.yield_header(Header(count=1))
    await asyncio.sleep(float(body))
    yield writer.yield_item(Item(index=0, tensor=_tensor(0)))


class Endless:
    """A producer that never ends; ``closed`` is set when its ``finally`` ran."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    async def __call__(self, body: bytes, context: Any) -> AsyncIterator[bytes | memoryview]:
        writer = stream_writer(TYPES)
        try:
            yield writer.yield_header(Header(count=-1))
            i = 0
            while True:
                yield writer.yield_item(Item(index=i, tensor=_tensor(i)))
                i += 1
                await asyncio.sleep(0.01)
        finally:
            self.closed.set()


def _check_items(items: list[Item], count: int) -> None:
    assert [item.index for item in items] == list(range(count))
    for item in items:
        np.testing.assert_array_equal(item.tensor, _tensor(item.index))
        assert item.tensor.dtype == np.float32


@pytest.fixture(scope="module")
def endless() -> Endless:
    return Endless()


@pytest.fixture(scope="module")
def target(endless: Endless) -> Iterator[str]:
    service = FrameStreamService(
        {
            "Tensors": tensors,
            "SyncTensors": sync_tensors,
            "FailsMidway": fails_midway,
            "FailsFirst": fails_first,
            "FailsOnCall": fails_on_call,
            "SleepsFirst": sleeps_first,
            "HeaderThenSleeps": header_then_sleeps,
            "Endless": endless,
        }
    )
    with serve_in_thread(service) as running:
        yield running.target


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- round trips ---------------------------------------------------------------------------


def test_sync_round_trip(target: str) -> None:
    with connect(target, "Tensors", TYPES, request=b"5") as reader:
        assert reader.read_header() == Header(count=5)
        _check_items(list(reader.read_items()), 5)
        assert reader.read_footer() == Footer(total=5.0)


@pytest.mark.anyio
async def test_async_round_trip(target: str) -> None:
    async with aconnect(target, "Tensors", TYPES, request=b"5") as reader:
        assert await reader.read_header() == Header(count=5)
        _check_items([item async for item in reader.read_items()], 5)
        assert await reader.read_footer() == Footer(total=5.0)


def test_sync_producer_and_json_codec(target: str) -> None:
    with connect(target, "SyncTensors", JSON_TYPES) as reader:
        assert reader.read_header() == Header(count=2)
        _check_items(list(reader.read_items()), 2)
        assert reader.read_footer() == Footer(total=2.0)


def test_client_on_an_open_channel_leaves_it_open(target: str) -> None:
    with create_channel(target) as channel:
        for _ in range(2):
            with connect(channel, "Tensors", TYPES, request=b"1") as reader:
                reader.read_header()
                _check_items(list(reader.read_items()), 1)
                reader.read_footer()


def test_transport_gives_one_frame_per_message(target: str) -> None:
    with GrpcTransport(target, "Tensors", request=b"2").open_stream() as chunks:
        messages = list(chunks)
    # header, 2 items, footer, END
    assert len(messages) == 5
    assert all(isinstance(m, bytes) for m in messages)
    assert messages[-1] == b"\x15\x00\x00\x00\x00"


def test_protobuf_wire_for_clients_that_do_not_ask_for_raw(target: str) -> None:
    frame_type = message_class(frames_pool(), "Frame")
    request_type = message_class(frames_pool(), "StreamRequest")
    with create_channel(target) as channel:
        call = channel.unary_stream(
            "/truss_stream.FrameStream/Tensors",
            request_serializer=request_type.SerializeToString,
            response_deserializer=frame_type.FromString,
        )
        frames = [message.data for message in call(request_type(body=b"2"), timeout=10)]
    with GrpcTransport(target, "Tensors", request=b"2").open_stream() as chunks:
        assert frames == list(chunks)
    reader = stream_reader(TYPES, frames)
    reader.read_header()
    _check_items(list(reader.read_items()), 2)


# -- errors --------------------------------------------------------------------------------


def test_sync_producer_error_midway_is_remote_error(target: str) -> None:
    with connect(target, "FailsMidway", TYPES) as reader:
        reader.read_header()
        items = reader.read_items()
        assert next(items).index == 0
        with pytest.raises(RemoteStreamError) as info:
            next(items)
    assert info.value.remote_type == "KeyError"
    assert "model went away" in info.value.remote_message


@pytest.mark.anyio
async def test_async_producer_error_midway_is_remote_error(target: str) -> None:
    async with aconnect(target, "FailsMidway", TYPES) as reader:
        await reader.read_header()
        items = reader.read_items().__aiter__()
        assert (await items.__anext__()).index == 0
        with pytest.raises(RemoteStreamError, match="model went away"):
            await items.__anext__()


@pytest.mark.parametrize("method", ["FailsFirst", "FailsOnCall"])
def test_error_before_first_frame_is_internal_status(target: str, method: str) -> None:
    with pytest.raises(GrpcStatusError) as info, connect(target, method, TYPES):
        pytest.fail("the stream must not open")
    assert info.value.code is grpc.StatusCode.INTERNAL
    assert info.value.status == "INTERNAL"
    assert info.value.details.startswith(
        ("RuntimeError: no such model (error id ", "ValueError: bad request body (error id ")
    )
    assert isinstance(info.value.__cause__, grpc.RpcError)


@pytest.mark.anyio
async def test_async_error_before_first_frame_is_internal_status(target: str) -> None:
    with pytest.raises(GrpcStatusError, match="no such model") as info:
        async with aconnect(target, "FailsFirst", TYPES):
            pytest.fail("the stream must not open")
    assert info.value.code is grpc.StatusCode.INTERNAL


def test_producer_may_choose_its_own_status() -> None:
    async def refuses(body: bytes, context: Any) -> AsyncIterator[bytes]:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not for you")
        yield b""  # pragma: no cover

    with (
        serve_in_thread(FrameStreamService({"Refuses": refuses})) as running,
        pytest.raises(GrpcStatusError) as info,
        connect(running.target, "Refuses", TYPES),
    ):
        pass
    assert info.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert info.value.details == "not for you"


def test_unknown_method_is_unimplemented(target: str) -> None:
    with pytest.raises(GrpcStatusError) as info, connect(target, "NoSuchMethod", TYPES):
        pass
    assert info.value.code is grpc.StatusCode.UNIMPLEMENTED


def test_deadline_before_first_frame(target: str) -> None:
    with (
        pytest.raises(GrpcStatusError) as info,
        connect(target, "SleepsFirst", TYPES, request=b"5", timeout=0.3),
    ):
        pass
    assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.anyio
async def test_deadline_mid_stream(target: str) -> None:
    async with aconnect(target, "HeaderThenSleeps", TYPES, request=b"5", timeout=0.5) as reader:
        assert await reader.read_header() == Header(count=1)
        with pytest.raises(GrpcStatusError) as info:
            async for _ in reader.read_items():
                pass
    assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert isinstance(info.value, StreamTruncatedError)


def test_unreachable_server_is_unavailable() -> None:
    with (
        pytest.raises(GrpcStatusError) as info,
        connect("127.0.0.1:1", "Tensors", TYPES, timeout=5),
    ):
        pass
    assert info.value.code is grpc.StatusCode.UNAVAILABLE


@pytest.mark.anyio
async def test_async_client_cancel_closes_producer(target: str, endless: Endless) -> None:
    endless.closed.clear()
    async with aconnect(target, "Endless", TYPES) as reader:
        await reader.read_header()
        async for item in reader.read_items():
            if item.index == 2:
                break
    assert await asyncio.to_thread(endless.closed.wait, 5)


def test_sync_client_cancel_closes_producer(target: str, endless: Endless) -> None:
    endless.closed.clear()
    with connect(target, "Endless", TYPES) as reader:
        reader.read_header()
        for item in reader.read_items():
            if item.index == 2:
                break
    assert endless.closed.wait(5)


class Flood:
    """A producer that yields as fast as gRPC takes frames: the server blocks in its write.

    ``sync`` picks a sync generator (run in worker threads) or an async one that never
    awaits between frames, so a client's cancel lands while the server writes.
    """

    def __init__(self, *, sync: bool) -> None:
        self.closed = threading.Event()
        self.sync = sync

    def __call__(self, body: bytes, context: Any) -> Any:
        return self._sync() if self.sync else self._async()

    def _frames(self) -> Iterator[bytes | memoryview]:
        writer = stream_writer(TYPES)
        yield writer.yield_header(Header(count=-1))
        i = 0
        while True:
            yield writer.yield_item(Item(index=i, tensor=np.zeros(16 * 1024, np.float32)))
            i += 1

    def _sync(self) -> Iterator[bytes | memoryview]:
        try:
            yield from self._frames()
        finally:
            self.closed.set()

    async def _async(self) -> AsyncIterator[bytes | memoryview]:
        try:
            for frame in self._frames():
                yield frame
        finally:
            self.closed.set()


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
def test_client_gone_while_the_server_writes_closes_the_producer(sync: bool) -> None:
    # The client stops reading, so the server's write waits for flow control, and then
    # cancels: the producer must be closed by the call itself, not whenever the garbage
    # collector finds the suspended generator (gc is off here to tell the two apart).
    flood = Flood(sync=sync)
    with serve_in_thread(FrameStreamService({"Flood": flood})) as running:
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            with connect(running.target, "Flood", TYPES) as reader:
                reader.read_header()
                time.sleep(0.3)  # the server fills the flow-control window and waits
            assert flood.closed.wait(10), "the producer was not closed after the client left"
        finally:
            if gc_was_on:
                gc.enable()


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "async"])
def test_shutdown_while_the_server_writes_still_ends_with_going_away(
    sync: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # The grace ends while a write waits for flow control (the client is not reading).
    # Cancelling that await does not take the write back inside gRPC: the going-away
    # frame written next was a second write on the call and failed with
    # GRPC_CALL_ERROR_TOO_MANY_OPERATIONS (seen as a flake under CPU load, when a slow
    # client made the window likely). The write must finish first, then the frame.
    caplog.set_level(logging.WARNING)
    flood = Flood(sync=sync)
    with serve_in_thread(FrameStreamService({"Flood": flood})) as running:
        with connect(running.target, "Flood", TYPES) as reader:
            reader.read_header()
            time.sleep(0.3)  # the server fills the flow-control window and waits
            stopper = threading.Thread(target=running.stop, args=(0,))
            stopper.start()
            time.sleep(0.3)  # the grace (0) is over while the write still waits
            with pytest.raises(ServerGoingAwayError):
                for _ in reader.read_items():
                    pass
            stopper.join(10)
        assert flood.closed.wait(5)
    failures = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not failures, [r.getMessage() for r in failures]


def test_server_stopped_mid_stream_is_never_a_complete_stream() -> None:
    # stop(grace=0) ends the open stream with the going-away ERROR frame at once.
    endless = Endless()
    reader_error: list[BaseException] = []
    with serve_in_thread(FrameStreamService({"Endless": endless}), grace=0) as running:
        stream = connect(running.target, "Endless", TYPES)
        reader = stream.__enter__()
        reader.read_header()
        items = reader.read_items()
        next(items)
    # the server is gone now
    try:
        with pytest.raises(StreamError) as info:
            for _ in items:
                pass
        reader_error.append(info.value)
    finally:
        stream.__exit__(None, None, None)
    assert isinstance(reader_error[0], ServerGoingAwayError)


def test_stream_without_end_is_truncated() -> None:
    """A server that is not a FrameStreamService and forgets END: the reader says so."""

    async def no_end(request: bytes, context: Any) -> AsyncIterator[bytes]:
        writer = stream_writer(TYPES)
        yield bytes(writer.yield_header(Header(count=1)))
        yield bytes(writer.yield_item(Item(index=0, tensor=_tensor(0))))

    handler = grpc.method_handlers_generic_handler(
        "truss_stream.FrameStream",
        {"NoEnd": grpc.unary_stream_rpc_method_handler(no_end)},
    )
    service = FrameStreamService()
    with serve_in_thread(service, reflection=False) as running:
        running.server.add_generic_rpc_handlers([handler])
        with connect(running.target, "NoEnd", TYPES) as reader:
            reader.read_header()
            items = reader.read_items()
            assert next(items).index == 0
            with pytest.raises(StreamTruncatedError):
                next(items)


# -- server furniture ----------------------------------------------------------------------


def test_health_check_serving(target: str) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with create_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", "truss_stream.FrameStream"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_describes_the_service_and_a_reflected_call_works(target: str) -> None:
    """What grpcurl does: list services, describe one, call it with reflected types."""
    from google.protobuf import descriptor_pool, message_factory
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with create_channel(target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {
            "truss_stream.FrameStream",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= services
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName("truss_stream.FrameStream")
        assert "Tensors" in service.methods_by_name
        assert pool.FindServiceByName("grpc.health.v1.Health").methods_by_name["Check"]
        method = service.methods_by_name["Tensors"]
        assert method.server_streaming
        assert not method.client_streaming
        request_type = message_factory.GetMessageClass(method.input_type)
        frame_type = message_factory.GetMessageClass(method.output_type)
        call = channel.unary_stream(
            f"/{service.full_name}/{method.name}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=frame_type.FromString,
        )
        frames = [m.data for m in call(request_type(body=b"1"), timeout=10)]
    reader = stream_reader(TYPES, frames)
    assert reader.read_header() == Header(count=1)


def test_tls(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_tls = ServerTLS(
        private_key=cert.private_key_pem.bytes(),
        certificate_chain=b"".join(blob.bytes() for blob in cert.cert_chain_pems),
    )
    client_tls = ClientTLS(root_certificates=ca.cert_pem.bytes())
    with serve_in_thread(FrameStreamService({"Tensors": tensors}), tls=server_tls) as running:
        with connect(running.target, "Tensors", TYPES, tls=client_tls, request=b"2") as reader:
            reader.read_header()
            _check_items(list(reader.read_items()), 2)

        async def read_async() -> int:
            async with aconnect(running.target, "Tensors", TYPES, tls=client_tls) as areader:
                await areader.read_header()
                return len([item async for item in areader.read_items()])

        assert asyncio.run(read_async()) == 3
        # a plaintext client cannot talk to the TLS server
        with (
            pytest.raises(GrpcStatusError) as info,
            connect(running.target, "Tensors", TYPES, timeout=5),
        ):
            pass
        assert info.value.code is grpc.StatusCode.UNAVAILABLE


def test_mutual_tls() -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    client_cert = ca.issue_cert("client@example.com")
    server_tls = ServerTLS(
        private_key=server_cert.private_key_pem.bytes(),
        certificate_chain=b"".join(blob.bytes() for blob in server_cert.cert_chain_pems),
        client_root_certificates=ca.cert_pem.bytes(),
        require_client_auth=True,
    )
    with_cert = ClientTLS(
        root_certificates=ca.cert_pem.bytes(),
        private_key=client_cert.private_key_pem.bytes(),
        certificate_chain=b"".join(blob.bytes() for blob in client_cert.cert_chain_pems),
    )
    without_cert = ClientTLS(root_certificates=ca.cert_pem.bytes())
    with serve_in_thread(FrameStreamService({"Tensors": tensors}), tls=server_tls) as running:
        with connect(running.target, "Tensors", TYPES, tls=with_cert, request=b"1") as reader:
            reader.read_header()
            _check_items(list(reader.read_items()), 1)
        with (
            pytest.raises(GrpcStatusError) as info,
            connect(running.target, "Tensors", TYPES, tls=without_cert, timeout=5),
        ):
            pass
    assert info.value.code is grpc.StatusCode.UNAVAILABLE


def test_health_reports_not_serving_while_draining() -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    def check(target: str) -> int:
        with create_channel(target) as channel:
            request = health_pb2.HealthCheckRequest(service="truss_stream.FrameStream")
            return int(health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status)

    with serve_in_thread(FrameStreamService({"Tensors": tensors})) as running:
        assert check(running.target) == health_pb2.HealthCheckResponse.SERVING
        stopper = threading.Thread(target=running.stop, kwargs={"grace": 1, "drain": 1.5})
        stopper.start()
        time.sleep(0.3)
        assert check(running.target) == health_pb2.HealthCheckResponse.NOT_SERVING
        # still accepting calls while draining
        with connect(running.target, "Tensors", TYPES, request=b"1") as reader:
            reader.read_header()
            _check_items(list(reader.read_items()), 1)
        stopper.join()


def test_message_size_mismatch_is_a_clear_error() -> None:
    big = 2 * 1024 * 1024  # floats: an 8 MiB item, above the client's 1 MiB

    async def big_item(body: bytes, context: Any) -> AsyncIterator[bytes | memoryview]:
        writer = stream_writer(TYPES)
        yield writer.yield_header(Header(count=1))
        yield writer.yield_item(Item(index=0, tensor=np.zeros(big, np.float32)))

    with serve_in_thread(FrameStreamService({"Big": big_item})) as running:
        with connect(running.target, "Big", TYPES) as reader:  # matched: 64 MiB default
            reader.read_header()
            assert [item.tensor.size for item in reader.read_items()] == [big]
        small = GrpcOptions(max_message_bytes=1024 * 1024)
        with connect(running.target, "Big", TYPES, options=small) as reader:
            reader.read_header()
            with pytest.raises(GrpcStatusError, match="max_message_bytes") as info:
                list(reader.read_items())
    assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_quiet_stream_survives_frequent_keepalive_pings() -> None:
    # Pings every 100 ms over a stream quiet for 1.5 s: without the matched server
    # settings the server would answer GOAWAY too_many_pings and kill the stream.
    options = GrpcOptions(keepalive_time_ms=100, keepalive_timeout_ms=1000, min_ping_interval_ms=50)
    service = FrameStreamService({"HeaderThenSleeps": header_then_sleeps})
    with (
        serve_in_thread(service, options=options) as running,
        connect(
            running.target, "HeaderThenSleeps", TYPES, options=options, request=b"1.5"
        ) as reader,
    ):
        reader.read_header()
        _check_items(list(reader.read_items()), 1)


def test_options_refuse_a_ping_interval_the_server_would_reject() -> None:
    with pytest.raises(ValueError, match="too_many_pings"):
        GrpcOptions(keepalive_time_ms=1000, min_ping_interval_ms=5000)


def test_add_stream_method_on_an_existing_server() -> None:
    async def main() -> list[int]:
        server = grpc.aio.server()
        add_stream_method(server, "Tensors", tensors, service_name="acme.models.Streams")
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with aconnect(
                f"127.0.0.1:{port}", "Tensors", TYPES, service_name="acme.models.Streams"
            ) as reader:
                await reader.read_header()
                return [item.index async for item in reader.read_items()]
        finally:
            await server.stop(None)

    assert asyncio.run(main()) == [0, 1, 2]


# -- the wire and the descriptors ----------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 70_000])
def test_hand_encoded_messages_match_protobuf(size: int) -> None:
    pool = frames_pool()
    data = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    assert encode_frame_message(data) == message_class(pool, "Frame")(data=data).SerializeToString()
    assert (
        encode_request(data) == message_class(pool, "StreamRequest")(body=data).SerializeToString()
    )


def test_names_are_validated() -> None:
    service = FrameStreamService({"Ok_1": tensors})
    with pytest.raises(ValueError, match="already served"):
        service.add("Ok_1", tensors)
    with pytest.raises(ValueError, match="method name"):
        service.add("not-valid", tensors)
    with pytest.raises(ValueError, match="service name"):
        FrameStreamService(service_name="NoPackage")


def test_frames_proto_matches_the_built_descriptors(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    from google.protobuf import descriptor_pb2

    proto_dir = Path(__file__).parents[1] / "transports" / "grpc"
    out = tmp_path / "frames.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"--descriptor_set_out={out}",
            "frames.proto",
        ],
        check=True,
    )
    compiled = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    pool = build_descriptor_pool("truss_stream.FrameStream", ["A"])
    built = descriptor_pb2.FileDescriptorProto()
    pool.FindFileByName("truss_stream/frames.proto").CopyToProto(built)
    assert compiled.package == built.package
    assert [m.name for m in compiled.message_type] == [m.name for m in built.message_type]
    for ours, theirs in zip(built.message_type, compiled.message_type, strict=True):
        assert [(f.name, f.number, f.type, f.label) for f in ours.field] == [
            (f.name, f.number, f.type, f.label) for f in theirs.field
        ]


def test_producer_runs_once_per_call_and_calls_are_independent(target: str) -> None:
    started = time.perf_counter()
    results: list[int] = []

    def read_one() -> None:
        with connect(target, "Tensors", TYPES, request=b"4") as reader:
            reader.read_header()
            results.append(len(list(reader.read_items())))

    threads = [threading.Thread(target=read_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [4, 4, 4, 4]
    assert time.perf_counter() - started < 10


# Timeouts and the one options object ------------------------------------------------------

KEEPALIVE = GrpcOptions(keepalive_time_ms=100, keepalive_timeout_ms=1000, min_ping_interval_ms=50)


def _read_all_sync(target: str, body: bytes, **kwargs: Any) -> None:
    with connect(target, "HeaderThenSleeps", TYPES, request=body, **kwargs) as reader:
        reader.read_header()
        list(reader.read_items())


async def _read_all_async(target: str, body: bytes, **kwargs: Any) -> None:
    async with aconnect(target, "HeaderThenSleeps", TYPES, request=body, **kwargs) as reader:
        await reader.read_header()
        async for _ in reader.read_items():
            pass


@pytest.mark.parametrize("limit", ["idle_timeout", "total_timeout"])
def test_sync_timeouts_hold_while_keepalive_pings_flow(limit: str) -> None:
    # The producer sends its header, then nothing for 60 s; HTTP/2 pings every 100 ms
    # are not frames. Before, a sync read with only total_timeout blocked in next().
    service = FrameStreamService({"HeaderThenSleeps": header_then_sleeps})
    with (
        serve_in_thread(service, options=KEEPALIVE, grace=0) as running,
        pytest.raises(StreamTimeoutError, match=limit),
    ):
        _read_all_sync(running.target, b"60", options=KEEPALIVE, **{limit: 0.5})


@pytest.mark.anyio
@pytest.mark.parametrize("limit", ["idle_timeout", "total_timeout"])
async def test_async_timeouts_hold_while_keepalive_pings_flow(limit: str) -> None:
    service = FrameStreamService({"HeaderThenSleeps": header_then_sleeps})
    running = await start_server(service, options=KEEPALIVE, reflection=False)
    try:
        with pytest.raises(StreamTimeoutError, match=limit):
            await _read_all_async(running.target, b"60", options=KEEPALIVE, **{limit: 0.5})
    finally:
        await running.stop(0)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_total_timeout_bounds_a_steady_endless_stream(target: str, mode: str) -> None:
    # Frames keep coming (the idle limit never fires); the total limit still does.
    def read_sync() -> None:
        with connect(target, "Endless", TYPES, total_timeout=0.5, idle_timeout=5) as reader:
            reader.read_header()
            list(reader.read_items())

    async def read_async() -> None:
        async with aconnect(target, "Endless", TYPES, total_timeout=0.5) as reader:
            await reader.read_header()
            async for _ in reader.read_items():
                pass

    with pytest.raises(StreamTimeoutError, match="total_timeout"):
        read_sync() if mode == "sync" else asyncio.run(read_async())


def test_client_options_object_and_keywords_are_the_same_call(target: str) -> None:
    opts = GrpcClientOptions(request=b"2", timeout=10)
    with connect(target, "Tensors", TYPES, client_options=opts) as reader:
        assert reader.read_header().count == 2
    # Keywords apply on top of the object.
    with connect(target, "Tensors", TYPES, client_options=opts, request=b"4") as reader:
        assert reader.read_header().count == 4
    transport = GrpcTransport(target, "Tensors", client_options=opts, options=KEEPALIVE)
    assert transport.options.channel_options is KEEPALIVE
    assert transport.options.request == b"2"


def test_client_options_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="idle_timeout"):
        GrpcClientOptions(idle_timeout=0)
    with pytest.raises(TypeError, match="unknown gRPC client option"):
        GrpcClientOptions().with_kwargs(retries=3)  # type: ignore[call-arg]


@pytest.mark.anyio
@pytest.mark.parametrize("limit", ["idle_timeout", "total_timeout"])
async def test_async_transport_enforces_its_own_timeouts(target: str, limit: str) -> None:
    # The transport alone (no reader limits), as the seam's users hold it.
    transport = AsyncGrpcTransport(target, "HeaderThenSleeps", request=b"20", **{limit: 0.5})

    async def read_all() -> None:
        async with aopen_reader(transport, TYPES) as reader:
            await reader.read_header()
            async for _ in reader.read_items():
                pass

    with pytest.raises(StreamTimeoutError, match=limit):
        await read_all()


def test_server_lets_go_of_each_frame_once_sent() -> None:
    # A long stream must not pin its first frame (a 4 MiB tensor, say) until it ends:
    # once later frames went out, only the producer may still hold it.
    seen: list[int] = []

    async def holds_its_first_frame(body: bytes, context: Any) -> AsyncIterator[bytes]:
        writer = stream_writer(TYPES)
        first = writer.yield_header(Header(count=3))
        yield first
        for i in range(3):
            yield writer.yield_item(Item(index=i, tensor=_tensor(i)))
        gc.collect()
        seen.append(sys.getrefcount(first) - 1)  # less getrefcount's own argument
        yield writer.yield_footer(Footer(total=3.0))

    service = FrameStreamService({"Holds": holds_its_first_frame})
    with serve_in_thread(service) as running, connect(running.target, "Holds", TYPES) as reader:
        reader.read_header()
        _check_items(list(reader.read_items()), 3)
        reader.read_footer()
    assert seen == [1]
