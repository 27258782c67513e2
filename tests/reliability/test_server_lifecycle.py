"""The server side in real deployments: sync producers off the event loop, graceful
shutdown (SIGTERM to a real uvicorn process; the gRPC helper's stop), and what a
failed producer tells the client and the server's log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from live_server import live_server
from reliability_helpers import (
    TYPES,
    Header,
    Item,
    SubprocessServer,
    endless_frames,
    subprocess_server,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import truss_stream as ts
from transports import grpc as tgrpc
from transports import http, sse
from transports.shutdown import GracefulShutdown

TRANSPORTS = {"sse": (sse, sse.sse_response), "http": (http, http.stream_response)}


class Gate:
    """A sync producer that yields its header, then blocks (as a model loop would)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.blocked = threading.Event()
        self.closed = threading.Event()

    def frames(self, n: int = 2) -> Iterator[bytes]:
        writer = ts.stream_writer(TYPES["msgpack"])
        try:
            yield writer.yield_header(Header(stream=0, n=n))
            # Blocks the thread that calls next(): the event loop, before the fix.
            self.blocked.set()
            self.release.wait(20)
            for i in range(n):
                yield writer.yield_item(Item(index=i, stream=0))
        finally:
            self.closed.set()

    def endless(self) -> Iterator[bytes]:
        try:
            for frame in endless_frames():
                yield frame
                time.sleep(0.02)
        finally:
            self.closed.set()


def gate_app(gate: Gate, **options: Any) -> Starlette:
    async def stream(request: Request) -> Response:
        _, respond = TRANSPORTS[request.path_params["transport"]]
        frames = gate.endless() if request.query_params.get("endless") else gate.frames()
        return respond(frames, **options)  # type: ignore[operator]

    async def ping(request: Request) -> Response:
        return PlainTextResponse("pong")

    async def replay(request: Request) -> Response:
        # sse.replay_from over a sync producer: it too must iterate off the loop.
        return sse.sse_response(sse.replay_from(gate.frames(), 1), first_id=1, **options)

    return Starlette(
        routes=[
            Route("/replay/sse", replay),
            Route("/{transport}", stream),
            Route("/ping/now", ping),
        ]
    )


# 1. Sync producers never block the event loop ---------------------------------------------


@pytest.mark.parametrize("transport", ["sse", "http"])
def test_a_blocking_sync_producer_does_not_stall_other_requests(transport: str) -> None:
    gate = Gate()
    module, _ = TRANSPORTS[transport]
    with live_server(gate_app(gate)) as server, httpx.Client(timeout=10) as client:
        try:
            url = f"{server.url}/{transport}"
            with module.connect(client, "GET", url, TYPES["msgpack"]) as reader:
                assert reader.read_header().n == 2
                # The producer is now blocked in next(); the server must still answer.
                assert client.get(f"{server.url}/ping/now", timeout=5).text == "pong"
                gate.release.set()
                assert [i.index for i in reader.read_items()] == [0, 1]
        finally:
            gate.release.set()


def test_replay_from_does_not_run_a_blocking_sync_producer_on_the_loop() -> None:
    gate = Gate()
    bodies: list[bytes] = []
    with live_server(gate_app(gate)) as server, httpx.Client(timeout=10) as client:
        # replay_from skips the header: the producer blocks before the first event,
        # so the stream's request waits in its own thread.
        replaying = threading.Thread(
            target=lambda: bodies.append(client.get(f"{server.url}/replay/sse").content)
        )
        replaying.start()
        try:
            assert gate.blocked.wait(10)
            assert client.get(f"{server.url}/ping/now", timeout=5).text == "pong"
        finally:
            gate.release.set()
            replaying.join(10)
    assert bodies[0].count(b"event: item") == 2


@pytest.mark.parametrize("transport", ["sse", "http"])
def test_a_sync_producer_is_closed_when_the_client_disconnects(transport: str) -> None:
    gate = Gate()
    module, _ = TRANSPORTS[transport]
    with live_server(gate_app(gate)) as server, httpx.Client(timeout=10) as client:
        url = f"{server.url}/{transport}?endless=1"
        with module.connect(client, "GET", url, TYPES["msgpack"]) as reader:
            reader.read_header()
            items = reader.read_items()
            assert [next(items).index for _ in range(3)] == [0, 1, 2]
        assert gate.closed.wait(10), "the sync producer's finally never ran"


def test_grpc_a_blocking_sync_producer_does_not_stall_other_calls() -> None:
    gate = Gate()

    def quick(body: bytes, context: Any) -> Iterator[bytes]:
        writer = ts.stream_writer(TYPES["msgpack"])
        yield writer.yield_header(Header(stream=1, n=0))

    service = tgrpc.FrameStreamService(
        {"Blocking": lambda body, context: gate.frames(), "Quick": quick}
    )
    with tgrpc.serve_in_thread(service, reflection=False) as running:
        try:
            with tgrpc.connect(running.target, "Blocking", TYPES["msgpack"]) as reader:
                assert reader.read_header().n == 2
                with tgrpc.connect(running.target, "Quick", TYPES["msgpack"], timeout=5) as q:
                    assert q.read_header().stream == 1
                gate.release.set()
                assert [i.index for i in reader.read_items()] == [0, 1]
        finally:
            gate.release.set()


def test_grpc_a_sync_producer_is_closed_when_the_client_cancels() -> None:
    gate = Gate()
    service = tgrpc.FrameStreamService({"Endless": lambda body, context: gate.endless()})
    with tgrpc.serve_in_thread(service, reflection=False) as running:
        with tgrpc.connect(running.target, "Endless", TYPES["msgpack"]) as reader:
            reader.read_header()
            items = reader.read_items()
            assert [next(items).index for _ in range(3)] == [0, 1, 2]
        assert gate.closed.wait(10), "the sync producer's finally never ran"


# 2. Graceful shutdown ----------------------------------------------------------------------


def lifecycle_server(*args: str) -> contextlib.AbstractContextManager[SubprocessServer]:
    return subprocess_server(*args, script="lifecycle_server.py")


def _read_until_error(module: Any, url: str, started: threading.Event) -> BaseException | None:
    with httpx.Client(timeout=30) as client:
        try:
            with module.connect(client, "GET", url, TYPES["msgpack"]) as reader:
                reader.read_header()
                for item in reader.read_items():
                    if item.index == 2:
                        started.set()
        except BaseException as exc:
            return exc
    return None


def test_sigterm_ends_open_streams_with_server_going_away_and_the_process_exits() -> None:
    with lifecycle_server("--drain", "1") as server:
        proc, url = server.proc, server.http_url
        paths = [(sse, "/sse"), (sse, "/sync-sse"), (http, "/http")]
        results: list[BaseException | None] = [None] * len(paths)
        started = [threading.Event() for _ in paths]

        def run(k: int) -> None:
            module, path = paths[k]
            results[k] = _read_until_error(module, url + path, started[k])

        threads = [threading.Thread(target=run, args=(k,)) for k in range(len(paths))]
        for t in threads:
            t.start()
        for event in started:
            assert event.wait(15), "a stream did not start"
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(20)
        # uvicorn re-raises the captured SIGTERM once it has shut down cleanly.
        assert proc.wait(20) in (0, -signal.SIGTERM)
        stderr = proc.stderr.read() if proc.stderr else ""
        for (_, path), result in zip(paths, results, strict=True):
            assert isinstance(result, ts.ServerGoingAwayError), (path, result)
        assert "Traceback" not in stderr, stderr
        assert "Cancel" not in stderr, stderr  # uvicorn never had to cancel a stream


def test_without_the_recipe_uvicorn_cancels_and_the_stream_reads_truncated() -> None:
    # Plain `uvicorn --timeout-graceful-shutdown 1`: uvicorn cancels the stream once
    # its timeout is over and closes the connection mid-body; the client is told the
    # stream is truncated, never that it completed (the recipe gives going-away).
    with lifecycle_server("--timeout-graceful-shutdown", "1") as server:
        proc, url = server.proc, server.http_url
        started = threading.Event()
        result: list[BaseException | None] = [None]

        def run() -> None:
            result[0] = _read_until_error(sse, url + "/sse", started)

        thread = threading.Thread(target=run)
        thread.start()
        assert started.wait(15)
        proc.send_signal(signal.SIGTERM)
        thread.join(20)
        assert proc.wait(20) in (0, -signal.SIGTERM)
        assert isinstance(result[0], ts.StreamTruncatedError), result[0]


@pytest.mark.parametrize("transport", ["sse", "http"])
def test_new_streams_are_refused_with_503_once_shutdown_began(transport: str) -> None:
    gate = Gate()
    drain = GracefulShutdown(grace=5)
    with live_server(gate_app(gate, shutdown=drain)) as server, httpx.Client(timeout=10) as c:
        gate.release.set()
        assert c.get(f"{server.url}/{transport}").status_code == 200
        loop = server._loop
        assert loop is not None
        loop.call_soon_threadsafe(drain.begin)
        deadline = time.monotonic() + 5
        while not drain.shutting_down and time.monotonic() < deadline:
            time.sleep(0.01)
        response = c.get(f"{server.url}/{transport}")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"


def test_grpc_stop_ends_open_streams_with_server_going_away(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    gate = Gate()
    service = tgrpc.FrameStreamService({"Endless": lambda body, context: gate.endless()})
    with tgrpc.serve_in_thread(service, reflection=False, grace=1) as running:
        reader_cm = tgrpc.connect(running.target, "Endless", TYPES["msgpack"])
        reader = reader_cm.__enter__()
        try:
            reader.read_header()
            items = reader.read_items()
            next(items)
            stopper = threading.Thread(target=running.stop, args=(1.0,))
            stopper.start()
            with pytest.raises(ts.ServerGoingAwayError):
                for _ in items:
                    pass
            stopper.join(10)
            assert gate.closed.wait(5)
        finally:
            reader_cm.__exit__(None, None, None)
    # Nothing logged a traceback (grpc logs handler errors at ERROR with exc_info).
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_grpc_refuses_new_calls_once_stopping() -> None:
    drain = GracefulShutdown(grace=5)
    gate = Gate()
    gate.release.set()
    service = tgrpc.FrameStreamService(
        {"Stream": lambda body, context: gate.frames()}, shutdown=drain
    )
    with tgrpc.serve_in_thread(service, reflection=False) as running:
        running._loop.call_soon_threadsafe(drain.begin)  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5
        while not drain.shutting_down and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(tgrpc.GrpcStatusError) as info:
            _grpc_read_all(running.target, "Stream")
        assert info.value.status == "UNAVAILABLE"


def _grpc_read_all(target: str, method: str) -> None:
    with tgrpc.connect(target, method, TYPES["msgpack"]) as reader:
        reader.read_header()
        list(reader.read_items())


# 3. Error exposure and server logs ---------------------------------------------------------


def failing_app(**options: Any) -> Starlette:
    def frames(at: int) -> Iterator[bytes]:
        writer = ts.stream_writer(TYPES["msgpack"])
        if at == 0:
            raise KeyError("secret-db-password")
        yield writer.yield_header(Header(stream=0, n=1))
        raise KeyError("secret-db-password")

    async def stream(request: Request) -> Response:
        _, respond = TRANSPORTS[request.path_params["transport"]]
        return respond(frames(int(request.query_params["at"])), **options)  # type: ignore[operator]

    return Starlette(routes=[Route("/{transport}", stream)])


def _server_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "truss_stream.server"]


@pytest.mark.parametrize("expose", [True, False])
@pytest.mark.parametrize("transport", ["sse", "http"])
def test_a_failure_after_the_first_frame_is_logged_with_its_stream_and_error_id(
    transport: str, expose: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="truss_stream.server")
    module, _ = TRANSPORTS[transport]
    with live_server(failing_app(expose_errors=expose)) as server, httpx.Client() as client:
        url = f"{server.url}/{transport}?at=1"
        with module.connect(client, "GET", url, TYPES["msgpack"]) as reader:
            reader.read_header()
            with pytest.raises(ts.RemoteStreamError) as info:
                list(reader.read_items())
    error = info.value
    assert error.remote_type == "KeyError"
    assert error.error_id
    assert ("secret-db-password" in str(error)) is expose
    records = _server_records(caplog)
    assert len(records) == 1
    assert error.error_id in records[0].getMessage()
    assert "stream " in records[0].getMessage()
    assert records[0].exc_info is not None
    assert "secret-db-password" in records[0].getMessage()


@pytest.mark.parametrize("transport", ["sse", "http"])
def test_a_redacted_500_carries_the_type_and_error_id_not_the_message(
    transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="truss_stream.server")
    with live_server(failing_app(expose_errors=False)) as server, httpx.Client() as client:
        response = client.get(f"{server.url}/{transport}?at=0")
    assert response.status_code == 500
    assert "KeyError" in response.text
    assert "secret" not in response.text
    records = _server_records(caplog)
    assert len(records) == 1
    error_id = records[0].getMessage().split("error id ")[1].split(")")[0]
    assert error_id in response.text
    assert records[0].exc_info is not None


@pytest.mark.parametrize("at", [0, 1])
def test_grpc_redacts_errors_and_logs_them(at: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="truss_stream.server")

    def frames(body: bytes, context: Any) -> Iterator[bytes]:
        writer = ts.stream_writer(TYPES["msgpack"])
        if at == 0:
            raise KeyError("secret-db-password")
        yield writer.yield_header(Header(stream=0, n=1))
        raise KeyError("secret-db-password")

    service = tgrpc.FrameStreamService({"Fail": frames}, expose_errors=False)
    with (
        tgrpc.serve_in_thread(service, reflection=False) as running,
        pytest.raises(ts.StreamError) as info,
    ):
        _grpc_read_all(running.target, "Fail")
    assert "secret" not in str(info.value)
    assert "KeyError" in str(info.value)
    records = _server_records(caplog)
    assert len(records) == 1
    assert "secret-db-password" in records[0].getMessage()
    error_id = records[0].getMessage().split("error id ")[1].split(")")[0]
    assert error_id in str(info.value)


def test_json_encoded_error_frames_keep_the_error_id() -> None:
    frame = ts.error_frame(RuntimeError("x"), ts.Codec.JSON, error_id="abc")
    assert json.loads(bytes(frame[5:]))["error_id"] == "abc"
