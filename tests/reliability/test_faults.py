"""Faults around the Triton thin proxy that need no Triton (the proxy's embedded demo
backend): the proxy SIGKILLed and restarted during a stream, and credentials never in
the proxy's logs, even at DEBUG.

Covered by the Triton teammates' tests and not repeated here: Triton stopped mid-stream
then back (tests/triton/test_proxy_triton.py), the principal endpoint answering 5xx or
unreachable, a proxy that is down before the client starts (tests/triton/test_clients.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from live_server import live_server
from reliability_helpers import ROOT
from test_security import SECRET_KEY, SECRET_TOKEN, WRONG_KEY, Principal

from transports.triton import AsyncTritonBytesStreamer, TritonBytesStreamer
from transports.triton.client._core import TritonClientError
from transports.triton.protocol import multimodal_pb2 as pb


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proxy:
    """``python -m transports.triton.proxy`` on a fixed port (so it can come back there)."""

    def __init__(self, port: int, *args: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "transports.triton.proxy",
                "--listen",
                f"127.0.0.1:{port}",
                "--backend",
                "demo",
                *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("LISTENING"):
            self.proc.kill()
            raise RuntimeError(f"proxy did not start: {line!r}")
        self.target = f"127.0.0.1:{port}"

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
        return err.decode()


def settings(target: str, **kwargs: Any) -> dict[str, Any]:
    return {
        "addr": target,
        "input_name": "INPUT",
        "shape": (1, 4),
        "dtype_enum": pb.DT_FP32,
        "outputs": ("OUTPUT",),
        "request_timeout_sec": 10.0,
        "connect_timeout_sec": 2.0,
        **kwargs,
    }


def slow_frames(stop: threading.Event) -> Iterator[bytes]:
    for i in range(10_000):
        if stop.is_set():
            return
        yield np.full((1, 4), i, np.float32).tobytes()
        time.sleep(0.02)


async def aslow_frames() -> AsyncIterator[bytes]:
    for i in range(10_000):
        yield np.full((1, 4), i, np.float32).tobytes()
        await asyncio.sleep(0.02)


def test_proxy_killed_mid_stream_fails_promptly_and_a_restarted_proxy_serves() -> None:
    port = free_port()
    proxy = Proxy(port)
    sync_seen: list[int] = []
    sync_error: list[BaseException] = []
    stop = threading.Event()
    errored_at: dict[str, float] = {}

    def sync_client() -> None:
        with TritonBytesStreamer(**settings(proxy.target)) as streamer:
            try:
                for seq, ack, _ in streamer.stream_bytes("add_one_fp32", "1", slow_frames(stop)):
                    assert ack["status"] == "OK"
                    sync_seen.append(seq)
            except TritonClientError as exc:
                errored_at["sync"] = time.monotonic()
                sync_error.append(exc)
            finally:
                stop.set()

    async def async_client(killed: asyncio.Event) -> tuple[list[int], BaseException | None]:
        seen: list[int] = []
        async with AsyncTritonBytesStreamer(**settings(proxy.target), max_in_flight=4) as streamer:
            try:
                async for seq, ack, _ in streamer.stream_bytes("add_one_fp32", "1", aslow_frames()):
                    assert ack["status"] == "OK"
                    seen.append(seq)
                    if len(seen) == 10:
                        killed.set()
            except TritonClientError as exc:
                errored_at["async"] = time.monotonic()
                return seen, exc
        return seen, None

    async def main() -> tuple[list[int], BaseException | None, float]:
        killed = asyncio.Event()
        task = asyncio.ensure_future(async_client(killed))
        await asyncio.wait_for(killed.wait(), 20)
        while len(sync_seen) < 10:
            await asyncio.sleep(0.01)
        proxy.kill()
        kill_time = time.monotonic()
        seen, error = await asyncio.wait_for(task, 15)
        return seen, error, kill_time

    thread = threading.Thread(target=sync_client, daemon=True)
    try:
        thread.start()
        seen, async_error, kill_time = asyncio.run(main())
        thread.join(15)
        assert not thread.is_alive(), "the sync client hung after the proxy died"
    finally:
        stop.set()
        proxy.stop()
    for name, error in (("async", async_error), ("sync", sync_error[0] if sync_error else None)):
        assert isinstance(error, TritonClientError), (name, error)
        assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), error
        assert errored_at[name] - kill_time < 3, f"{name} took {errored_at[name] - kill_time:.1f}s"
    # Results before the kill came in order, none lost in between.
    assert seen == list(range(len(seen)))
    assert sync_seen == list(range(len(sync_seen)))

    # The proxy comes back on the same port: new streams go through.
    proxy = Proxy(port)
    try:
        with TritonBytesStreamer(**settings(proxy.target)) as streamer:
            frames = [np.full((1, 4), i, np.float32).tobytes() for i in range(20)]
            results = list(streamer.stream_bytes("add_one_fp32", "1", frames))
        assert [seq for seq, _, _ in results] == list(range(20))
        for seq, _, outputs in results:
            assert outputs is not None
            np.testing.assert_array_equal(outputs["OUTPUT"], np.full((1, 4), seq + 1, np.float32))
    finally:
        proxy.stop()


@pytest.mark.parametrize("log_level", ["DEBUG"])
def test_credentials_never_reach_the_proxy_logs_or_client_errors(log_level: str) -> None:
    principal = Principal()
    with live_server(principal.app()) as web:
        proxy = Proxy(
            free_port(),
            "--auth-url",
            f"{web.url}/v4/auth/principal",
            "--auth-cache-secs",
            "0.2",
            "--log-level",
            log_level,
        )
        errors: list[str] = []
        try:
            frames = [np.zeros((1, 4), np.float32).tobytes()] * 3
            for environ in (
                {"DOMINO_USER_API_KEY": SECRET_KEY},
                {"Authorization": f"Bearer {SECRET_TOKEN}"},
                {"DOMINO_USER_API_KEY": WRONG_KEY},
                {},
            ):
                with TritonBytesStreamer(**settings(proxy.target, environ=environ)) as streamer:
                    try:
                        list(streamer.stream_bytes("add_one_fp32", "1", frames))
                    except TritonClientError as exc:
                        errors.append(f"{exc} {exc!r} {exc.details()}")
            principal.status_override = 503
            time.sleep(0.3)
            with TritonBytesStreamer(
                **settings(proxy.target, environ={"DOMINO_USER_API_KEY": SECRET_KEY})
            ) as streamer:
                with pytest.raises(TritonClientError) as info:
                    list(streamer.stream_bytes("add_one_fp32", "1", frames))
                errors.append(f"{info.value} {info.value!r} {info.value.details()}")
            assert info.value.code() is grpc.StatusCode.UNAVAILABLE
        finally:
            stderr = proxy.stop()
    assert len(errors) == 3, errors  # wrong key, no credentials, principal down
    assert "auth" in stderr, "expected the proxy's auth log lines at DEBUG"
    for secret in (SECRET_KEY, SECRET_TOKEN, WRONG_KEY):
        assert secret not in stderr
        for text in errors:
            assert secret not in text


def test_proxy_refuses_an_oversized_packet_cleanly_and_keeps_serving() -> None:
    from transports.triton.protocol import multimodal_pb2_grpc as pbg

    proxy = Proxy(free_port(), "--max-message-mb", "1")
    try:
        big = pb.DataPacket(
            meta=pb.Meta(correlation_id="big"),
            tensor=pb.Tensor(dtype=pb.DT_FP32, data=b"\0" * (2 * 1024 * 1024)),
        )
        options = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
        with grpc.insecure_channel(proxy.target, options=options) as channel:
            stub = pbg.MultimodalServiceStub(channel)
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as unary:
                stub.SendUnary(big, timeout=10)
            with pytest.raises(grpc.RpcError) as chat:
                list(stub.Chat(iter([big]), timeout=10))
            assert time.monotonic() - started < 5
        assert unary.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert chat.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        with TritonBytesStreamer(**settings(proxy.target)) as streamer:
            frames = [np.full((1, 4), i, np.float32).tobytes() for i in range(3)]
            assert [s for s, _, _ in streamer.stream_bytes("add_one_fp32", "1", frames)] == [
                0,
                1,
                2,
            ]
    finally:
        proxy.stop()


# Triton client timeouts ---------------------------------------------------------------------


def test_triton_clients_connect_timeout_against_a_black_hole() -> None:
    from test_timeouts import full_backlog_listener

    frames = [np.zeros((1, 4), np.float32).tobytes()]
    with full_backlog_listener() as port:
        target = f"127.0.0.1:{port}"
        started = time.monotonic()
        with (
            TritonBytesStreamer(**settings(target, connect_timeout_sec=0.5)) as streamer,
            pytest.raises(TritonClientError) as sync_info,
        ):
            list(streamer.stream_bytes("add_one_fp32", "1", frames))
        sync_took = time.monotonic() - started

        async def main() -> float:
            started = time.monotonic()
            async with AsyncTritonBytesStreamer(**settings(target, connect_timeout_sec=0.5)) as s:
                with pytest.raises(TritonClientError) as info:
                    async for _ in s.stream_bytes("add_one_fp32", "1", frames):
                        pass
            assert info.value.code() in (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.UNAVAILABLE,
            )
            return time.monotonic() - started

        async_took = asyncio.run(main())
    expected = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE)
    assert sync_info.value.code() in expected
    assert sync_took < 3, sync_took
    assert async_took < 3, async_took


def test_triton_clients_stream_timeout_is_a_total_limit() -> None:
    proxy = Proxy(free_port())
    stop = threading.Event()
    try:
        started = time.monotonic()
        with (
            TritonBytesStreamer(**settings(proxy.target, stream_timeout_sec=1.0)) as streamer,
            pytest.raises(TritonClientError) as sync_info,
        ):
            for _ in streamer.stream_bytes("add_one_fp32", "1", slow_frames(stop)):
                pass
        stop.set()
        sync_took = time.monotonic() - started

        async def main() -> float:
            started = time.monotonic()
            async with AsyncTritonBytesStreamer(
                **settings(proxy.target, stream_timeout_sec=1.0)
            ) as s:
                with pytest.raises(TritonClientError) as info:
                    async for _ in s.stream_bytes("add_one_fp32", "1", aslow_frames()):
                        pass
            assert info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            return time.monotonic() - started

        async_took = asyncio.run(main())
    finally:
        stop.set()
        proxy.stop()
    assert sync_info.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    # Frames keep coming every 20 ms for 200 s, so only a total limit ends these calls;
    # the upper bound is loose (a loaded 2-core machine: the first call also waits for
    # the proxy to come up), a stream that ran to its end would take 200 s.
    assert 0.9 < sync_took < 30, sync_took
    assert 0.9 < async_took < 30, async_took


def test_proxy_connection_cut_at_random_points_never_gives_a_short_result() -> None:
    import random

    from reliability_helpers import CutProxy

    from transports.grpc import GrpcOptions

    proxy = Proxy(free_port())
    rng = random.Random("proxy-cuts")
    cuts: list[int | None] = [None]
    frames = [np.full((1, 4), i, np.float32).tobytes() for i in range(20)]
    # A private subchannel pool, so each client really uses its own (cut) connection.
    private = GrpcOptions(extra=[("grpc.use_local_subchannel_pool", 1)])
    outcomes: dict[str, int] = {}
    try:
        upstream = int(proxy.target.rsplit(":", 1)[1])
        with CutProxy(upstream, lambda: cuts[-1]) as cutter:
            target = f"127.0.0.1:{cutter.port}"
            with TritonBytesStreamer(**settings(target, options=private)) as streamer:
                assert len(list(streamer.stream_bytes("add_one_fp32", "1", frames))) == 20
            total = cutter.sent[-1]
            for _ in range(10):
                cuts.append(rng.randrange(0, total))
                seen: list[int] = []
                started = time.monotonic()
                with TritonBytesStreamer(
                    **settings(target, options=private, connect_timeout_sec=2.0)
                ) as streamer:
                    try:
                        for seq, ack, _ in streamer.stream_bytes("add_one_fp32", "1", frames):
                            assert ack["status"] == "OK"
                            seen.append(seq)
                        outcome = "complete"
                    except TritonClientError as exc:
                        outcome = exc.code().name
                assert time.monotonic() - started < 10
                assert seen == list(range(len(seen))), "results out of order"
                if outcome == "complete":
                    assert len(seen) == 20, f"cut at {cuts[-1]}: a short stream read as complete"
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
    finally:
        proxy.stop()
    print(f"FIGURE proxy-cuts stream_bytes={total} {outcomes}")
    assert sum(outcomes.values()) == 10
