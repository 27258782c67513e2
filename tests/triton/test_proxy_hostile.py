"""Hostile packets against the real proxy process (``python -m transports.triton.proxy``).

Each case was observed on the proxy before it was hardened (docs/reliability.md, "Triton
proxy: hostile packets"): a shape of 60,000 huge dims stalled every call for seconds,
validation errors escaped as Python exceptions, one over-long correlation id ended its
whole Chat call, and in-flight bytes were bounded per call only. Also here: the access
log, which says what each call did.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from triton_helpers import (
    API_KEY,
    PrincipalEndpoint,
    ProxyProcess,
    ack_json,
    auth_metadata,
    packet,
    running_proxy,
)

from transports.triton.protocol import multimodal_pb2 as pb
from transports.triton.protocol import multimodal_pb2_grpc as pbg
from transports.triton.server import InflightBudget
from transports.triton.server.packets import MAX_ID_BYTES, MAX_RANK

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

HERE = str(Path(__file__).resolve().parent)
X = np.arange(4, dtype=np.float32).reshape(1, 4)
MiB = 1024 * 1024
BIG_CHANNEL = [
    ("grpc.max_send_message_length", 64 * MiB),
    ("grpc.max_receive_message_length", 64 * MiB),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def hostile_shape(cid: str, dims: int = 60_000) -> pb.DataPacket:
    """The reported packet: 60,000 dims of 2**62 (about 540 KB on the wire)."""
    bad = packet(cid, X)
    del bad.control.inputs[0].shape.dims[:]
    bad.tensor.shape.dims[:] = [2**62] * dims
    return bad


# CPU: hostile shapes must not stall other calls ------------------------------------------


def test_hostile_shapes_do_not_stall_other_calls_or_the_health_check() -> None:
    proxy = ProxyProcess(["--backend", "demo"])
    stop = threading.Event()
    hostile_acks: list[pb.Ack] = []
    try:
        with (
            grpc.insecure_channel(proxy.target) as attacker,
            grpc.insecure_channel(proxy.target) as other,
        ):
            stub = pbg.MultimodalServiceStub(other)
            health = health_pb2_grpc.HealthStub(other)
            assert stub.SendUnary(packet("warm", X), timeout=10).status == pb.OK

            def hostile() -> Iterator[pb.DataPacket]:
                i = 0
                while not stop.is_set() and i < 200:
                    yield hostile_shape(f"hostile:{i}")
                    i += 1

            def attack() -> None:
                calls = pbg.MultimodalServiceStub(attacker).Chat(hostile(), timeout=120)
                hostile_acks.extend(calls)

            thread = threading.Thread(target=attack, daemon=True)
            thread.start()
            under_way = time.monotonic() + 0.5
            while not hostile_acks and time.monotonic() < under_way:
                time.sleep(0.01)
            slowest = 0.0
            for i in range(20):
                started = time.monotonic()
                health.Check(health_pb2.HealthCheckRequest(), timeout=60)
                ack = stub.SendUnary(packet(f"probe:{i}", X + i), timeout=60)
                took = time.monotonic() - started
                assert ack.status == pb.OK, ack_json(ack)
                slowest = max(slowest, took)
                if took > 1.0:
                    break
            stop.set()
            thread.join(10)
    finally:
        stop.set()
        proxy.stop()
    print(f"FIGURE hostile-shapes slowest_probe_s={slowest:.3f} hostile_acks={len(hostile_acks)}")
    assert slowest < 1.0, f"a health check + unary call took {slowest:.1f}s during the attack"
    assert hostile_acks
    for ack in hostile_acks:
        assert ack.status == pb.BAD_REQUEST
        assert f"more than {MAX_RANK}" in ack_json(ack)["error"]
        assert ack.ByteSize() < 4096


# Validation errors are BAD_REQUEST Acks, over Chat and SendUnary ----------------------------


def _cases() -> dict[str, pb.DataPacket]:
    out_of_enum = packet("enum", X)
    out_of_enum.tensor.dtype = 999  # type: ignore[assignment]
    unformattable = packet("format", X)
    del unformattable.control.inputs[0].shape.dims[:]
    unformattable.tensor.shape.dims[:] = [2**62] * 1000  # a product of ~62,000 bits
    negative = packet("negative", X)
    negative.control.inputs[0].shape.dims[1] = -4
    negative.tensor.shape.dims[1] = -4
    nan_timeout = packet("nan", X)
    nan_timeout.control.timeout_secs = float("nan")
    far_timeout = packet("far", X)
    far_timeout.control.timeout_secs = 1e300  # gRPC would make it an instant deadline
    return {
        "enum": out_of_enum,
        "format": unformattable,
        "negative": negative,
        "nan": nan_timeout,
        "far": far_timeout,
    }


def test_validation_errors_are_bad_request_acks_over_chat_and_unary() -> None:
    proxy = ProxyProcess(["--backend", "demo"])
    try:
        with grpc.insecure_channel(proxy.target) as channel:
            stub = pbg.MultimodalServiceStub(channel)
            cases = _cases()
            chat = {a.correlation_id: a for a in stub.Chat(iter(cases.values()), timeout=30)}
            unary = {cid: stub.SendUnary(p, timeout=30) for cid, p in cases.items()}
    finally:
        stderr = proxy.stop()
    for acks in (chat, unary):
        assert set(acks) == set(cases)
        for cid, ack in acks.items():
            body = ack_json(ack)
            assert ack.status == pb.BAD_REQUEST, (cid, body)
            assert "Error" not in body["error"], body
    assert "tensor says 999" in ack_json(chat["enum"])["error"]
    assert "1000 dims" in ack_json(chat["format"])["error"]
    assert "negative dim" in ack_json(chat["negative"])["error"]
    assert "timeout_secs" in ack_json(chat["far"])["error"]
    assert "Traceback" not in stderr


# One packet must not end its call ---------------------------------------------------------


async def test_a_huge_correlation_id_does_not_end_the_call() -> None:
    """12 MiB of control characters: JSON-escaped six-fold and echoed twice, its Ack was
    about 88 MB, above the 64 MiB send limit, and the call died with all 11 Acks."""
    proxy = ProxyProcess(["--backend", "python:embedded_model:slow_echo"], env={"PYTHONPATH": HERE})
    huge_cid = "\x01" * (12 * MiB)
    try:
        async with grpc.aio.insecure_channel(proxy.target, options=BIG_CHANNEL) as channel:
            stub = pbg.MultimodalServiceStub(channel)
            packets = [packet(f"ok:{i}", X + i, model="m") for i in range(10)]
            packets.insert(5, packet(huge_cid, X, model="m"))
            acks = [a async for a in stub.Chat(iter(packets), timeout=60)]

            # Every other echoed string is bounded too; a long note is not echoed at all.
            long_note = packet("note", X, model="m")
            long_note.meta.note = "n" * (12 * MiB)
            long_model = packet("model", X, model="m" * (12 * MiB))
            long_output = packet("output", X, model="m", outputs=("o" * (4 * MiB),))
            marker = pb.DataPacket(meta=pb.Meta(correlation_id=huge_cid), event=pb.SEV_START)
            more = [long_note, long_model, long_output, marker]
            others = [a async for a in stub.Chat(iter(more), timeout=60)]
    finally:
        proxy.stop()
    answered = sorted(a.correlation_id for a in acks if a.status == pb.OK)
    assert answered == sorted(f"ok:{i}" for i in range(10)), "every other packet answered"
    (refused,) = [a for a in acks if a.status != pb.OK]
    assert refused.status == pb.BAD_REQUEST
    assert refused.correlation_id == huge_cid[:MAX_ID_BYTES]
    assert "correlation_id is 12582912 bytes" in ack_json(refused)["error"]
    assert refused.ByteSize() < 16 * 1024
    statuses = {a.correlation_id[:10]: a.status for a in others}
    assert statuses == {
        "note": pb.OK,
        "model": pb.BAD_REQUEST,
        "output": pb.BAD_REQUEST,
        huge_cid[:10]: pb.BAD_REQUEST,
    }
    assert all(a.ByteSize() < 16 * 1024 for a in others)


async def test_an_ack_above_the_send_limit_fails_its_packet_not_the_call() -> None:
    """A model's output may outgrow the message limit once base64-encoded: that packet
    gets an error Ack, the call and the other packets go on."""
    proxy = ProxyProcess(["--backend", "demo", "--max-message-mb", "1"])
    big = np.zeros((1, 900 * 1024), np.uint8)  # 0.9 MiB in, 1.2 MiB of base64 out
    try:
        async with grpc.aio.insecure_channel(proxy.target, options=BIG_CHANNEL) as channel:
            stub = pbg.MultimodalServiceStub(channel)
            packets = [packet(f"small:{i}", X, model="echo") for i in range(5)]
            packets.insert(2, packet("big", big, model="echo"))
            acks = {a.correlation_id: a async for a in stub.Chat(iter(packets), timeout=60)}
            binary = await stub.SendUnary(packet("big-binary", big, model="echo", binary=True))
    finally:
        proxy.stop()
    assert len(acks) == 6
    assert all(acks[f"small:{i}"].status == pb.OK for i in range(5))
    assert acks["big"].status == pb.INTERNAL
    assert "message limit" in ack_json(acks["big"])["error"]
    assert binary.status == pb.OK  # raw bytes fit where base64 did not


async def test_an_oversized_ack_still_ends_its_packet_and_frees_its_slot() -> None:
    """The error Ack that replaces one above the send limit is the packet's final Ack: with
    one packet in flight per call, the packets after it are still answered (before, the
    replacement lost ``final``, the slot stayed taken and the call stalled)."""
    proxy = ProxyProcess(["--backend", "demo", "--max-message-mb", "1", "--max-in-flight", "1"])
    big = np.zeros((1, 900 * 1024), np.uint8)  # 1.2 MiB of base64 out
    try:
        async with grpc.aio.insecure_channel(proxy.target, options=BIG_CHANNEL) as channel:
            stub = pbg.MultimodalServiceStub(channel)
            packets = [packet("big", big, model="echo")]
            packets += [packet(f"after:{i}", X, model="echo") for i in range(3)]
            acks = [a async for a in stub.Chat(iter(packets), timeout=20)]
    finally:
        proxy.stop()
    assert [a.correlation_id for a in acks] == ["big", "after:0", "after:1", "after:2"]
    assert acks[0].status == pb.INTERNAL
    assert "message limit" in ack_json(acks[0])["error"]
    assert all(a.final and a.index == 0 for a in acks)
    assert all(a.status == pb.OK for a in acks[1:])


# Memory across calls ------------------------------------------------------------------------


def _memory_mib(pid: int, field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (resident at most) of ``pid``, in MiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


async def _pile_up(
    target: str, calls: int, per_call: int, size: int, model: str = "echo"
) -> list[pb.Ack]:
    payload = np.zeros((1, size), np.uint8)

    async def one(call: int) -> list[pb.Ack]:
        async with grpc.aio.insecure_channel(target, options=BIG_CHANNEL) as channel:
            stub = pbg.MultimodalServiceStub(channel)

            async def packets() -> Any:
                for i in range(per_call):
                    yield packet(f"{call}:{i}", payload, model=model, binary=True, timeout=60)

            return [a async for a in stub.Chat(packets(), timeout=120)]

    results = await asyncio.gather(*(one(c) for c in range(calls)))
    return [a for acks in results for a in acks]


BUDGET_LOG = re.compile(r"in-flight budget: peak (\d+) of (\d+) bytes, (\d+) packets waited")


@dataclass
class _Memory:
    growth_mib: float  # peak RSS during the load minus RSS after the warm-up
    budget_peak: int  # bytes the proxy's budget held at most (the proxy's own figure)
    budget_limit: int
    budget_waits: int


async def _memory_under_load(budget_mb: int, model: str, backend: str) -> _Memory:
    """3 calls x 32 in-flight 8 MiB packets to ``backend``'s ``model``.

    The peak is the kernel's high-water mark (``VmHWM``, reset after the warm-up
    through ``clear_refs``), not samples a starved test loop may take too late; the
    baseline is taken after one warm-up call, so gRPC's threads and buffers and the
    code paths first used are not counted as load. ``MALLOC_ARENA_MAX=1``: glibc gives
    each thread that meets another in malloc an arena of its own, gRPC's threads
    receive packets in theirs while the event loop copies them out in another, and
    memory freed in one arena neither serves another nor returns to the system: by
    default RSS measures what every arena once held, not what the proxy holds, and
    moves with thread timing (the flake: +816 MiB under load, +360 to +451 MiB alone).
    """
    proxy = ProxyProcess(
        ["--backend", f"python:embedded_model:{backend}", "--max-inflight-mb", str(budget_mb)],
        env={"PYTHONPATH": HERE, "MALLOC_ARENA_MAX": "1"},
    )
    try:
        warm = await _pile_up(proxy.target, 1, 2, 8 * MiB, model="held:0")
        assert [a.status for a in warm] == [pb.OK, pb.OK]
        start = _memory_mib(proxy.pid, "VmRSS")
        with open(f"/proc/{proxy.pid}/clear_refs", "w") as refs:
            refs.write("5")  # VmHWM := VmRSS
        acks = await _pile_up(proxy.target, 3, 32, 8 * MiB, model=model)
        peak = _memory_mib(proxy.pid, "VmHWM")
    finally:
        stderr = proxy.stop()
    assert len(acks) == 96
    assert all(a.status == pb.OK for a in acks), [ack_json(a) for a in acks if a.status]
    assert all(len(a.outputs[0].data) == 8 * MiB for a in acks)
    budget = BUDGET_LOG.search(stderr)
    assert budget is not None, stderr[-2000:]
    used, limit, waits = map(int, budget.groups())
    return _Memory(peak - start, used, limit, waits)


async def test_in_flight_bytes_are_bounded_across_calls() -> None:
    """3 Chat calls x 32 in-flight 8 MiB packets took the proxy from 71 MiB to 2.4 GiB.
    With a proxy-wide budget the calls wait for each other, no packet is dropped, and
    the bytes in flight follow the budget, not calls x in-flight x packet size.

    The guarantee is the proxy's own figure: the budget never held more than its
    limit (a packet is larger only when admitted alone). Resident memory is bounded
    too, by what the proxy keeps per byte in flight. A packet in the budget lives at
    most 6 times at once: its parsed message, the request's bytes, the model's output,
    the Ack and a second copy while it is built, then the Ack serialised and gRPC's
    copy of that: 6 x (64 + 8) MiB = 432 MiB. Outside the budget, per call: the packet
    read ahead and waiting for the budget (parsed + received: 16 MiB) and what gRPC
    received and the proxy did not read yet (its HTTP/2 window, which gRPC grows from
    its bandwidth-delay estimate: about 40 MiB per call measured here with an 8 MiB
    budget, 3 calls: +223 MiB, 96 of it the two terms before) -> 3 x 56 = 168 MiB.
    Allowing 1/4 for the allocator's fragmentation: (432 + 168) x 1.25 = 750 MiB
    (measured: +243 to +425 MiB, load up to 15). The yardstick: the same load without
    a budget (0), to a model that answers once all 96 packets are in (with a fixed
    hold, how much piled up depended on how fast a loaded machine read them)."""
    unbounded = await _memory_under_load(0, "gather:96", backend="gathered")
    bounded = await _memory_under_load(64, "held:0.5", backend="held_echo")
    print(
        f"FIGURE inflight-budget growth_unbounded={unbounded.growth_mib:.0f}MiB "
        f"in_flight_unbounded={unbounded.budget_peak / MiB:.0f}MiB "
        f"growth_64MiB_budget={bounded.growth_mib:.0f}MiB "
        f"budget_peak={bounded.budget_peak / MiB:.1f}MiB waits={bounded.budget_waits}"
    )
    assert unbounded.budget_peak >= 96 * 8 * MiB, "the load no longer piles up: no point"
    assert unbounded.growth_mib > 1024
    assert bounded.budget_limit == 64 * MiB
    packet_bytes = 8 * MiB + 1024  # an 8 MiB tensor and its few fields
    assert bounded.budget_limit - packet_bytes < bounded.budget_peak <= bounded.budget_limit
    assert bounded.budget_waits > 0, "the budget never made a call wait: not exercised"
    assert bounded.growth_mib < 750, f"RSS grew {bounded.growth_mib:.0f} MiB for a 64 MiB budget"


async def test_a_packet_larger_than_the_budget_is_admitted_alone() -> None:
    proxy = ProxyProcess(["--backend", "demo", "--max-inflight-mb", "1"])
    try:
        acks = await _pile_up(proxy.target, calls=2, per_call=3, size=4 * MiB)
    finally:
        proxy.stop()
    assert sorted(a.correlation_id for a in acks) == sorted(
        f"{c}:{i}" for c in range(2) for i in range(3)
    )
    assert all(a.status == pb.OK for a in acks)


async def test_budget_serves_waiters_in_order_and_survives_cancellation() -> None:
    budget = InflightBudget(10)
    await budget.acquire(6)
    order: list[str] = []

    async def take(name: str, size: int) -> None:
        await budget.acquire(size)
        order.append(name)

    big = asyncio.ensure_future(take("big", 20))  # larger than the budget: alone
    await asyncio.sleep(0)
    small = asyncio.ensure_future(take("small", 1))  # fits, but waits its turn
    cancelled = asyncio.ensure_future(take("cancelled", 1))
    await asyncio.sleep(0)
    assert order == []
    cancelled.cancel()
    budget.release(6)
    await big
    assert order == ["big"]
    assert budget.used == 20
    budget.release(20)
    await small
    assert order == ["big", "small"]
    assert budget.used == 1
    assert cancelled.cancelled()


async def test_budget_skips_a_waiter_cancelled_before_it_ran() -> None:
    """Cancelled, then woken before its task saw the cancellation: no double grant."""
    budget = InflightBudget(10)
    await budget.acquire(10)
    waiter = asyncio.ensure_future(budget.acquire(5))
    await asyncio.sleep(0)
    waiter.cancel()
    budget.release(10)  # _wake meets the cancelled future first
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert budget.used == 0
    await budget.acquire(10)
    assert budget.used == 10


# The access log -------------------------------------------------------------------------------


ACCESS = re.compile(
    r"INFO transports\.triton\.access: (?P<rpc>Chat|SendUnary) peer=(?P<peer>\S+) "
    r"models=(?P<models>\S+) packets=(?P<packets>\d+) statuses=(?P<statuses>\S+) "
    r"duration_ms=(?P<ms>[\d.]+) outcome=(?P<outcome>\S+)"
)


def _mixed_call(target: str, metadata: tuple[tuple[str, str], ...]) -> None:
    bad = packet("bad:size", X)
    bad.tensor.data = bad.tensor.data[:-1]
    no_control = packet("bad:control", X)
    no_control.ClearField("control")
    packets = [packet(f"good:{i}", X) for i in range(3)] + [bad, no_control]
    with grpc.insecure_channel(target) as channel:
        stub = pbg.MultimodalServiceStub(channel)
        acks = list(stub.Chat(iter(packets), metadata=metadata, timeout=30))
        assert len(acks) == 5
        assert stub.SendUnary(packet("unary", X), metadata=metadata, timeout=30).status == pb.OK


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_access_log_one_record_per_call_and_failures_at_debug(level: str) -> None:
    endpoint = PrincipalEndpoint().start()
    proxy = ProxyProcess(["--backend", "demo", "--auth-url", endpoint.url, "--log-level", level])
    try:
        _mixed_call(proxy.target, auth_metadata("key"))
    finally:
        stderr = proxy.stop()
        endpoint.stop()
    records = [m.groupdict() for m in ACCESS.finditer(stderr)]
    assert [r["rpc"] for r in records] == ["Chat", "SendUnary"], stderr
    chat, unary = records
    assert chat["peer"].startswith("ipv4:127.0.0.1:")
    assert chat["models"] == "add_one_fp32"
    assert (chat["packets"], chat["statuses"]) == ("5", "BAD_REQUEST:2,OK:3")
    assert (unary["packets"], unary["statuses"]) == ("1", "OK:1")
    assert chat["outcome"] == unary["outcome"] == "ok"
    failures = re.findall(r"DEBUG transports\.triton\.access: Chat packet '(bad:\w+)'", stderr)
    if level == "DEBUG":
        assert sorted(failures) == ["bad:control", "bad:size"]
        assert "size mismatch: got 15 bytes, expected 16" in stderr
    else:
        assert failures == []
    assert API_KEY not in stderr


async def test_access_record_has_structured_fields(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="transports.triton.access")
    async with (
        running_proxy(backend="demo") as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        stub = pbg.MultimodalServiceStub(channel)
        bad = packet("bad", X, model="invert_u8")
        acks = [a async for a in stub.Chat(iter([packet("good", X), bad]), timeout=30)]
        assert len(acks) == 2
    (record,) = [r for r in caplog.records if r.levelno == logging.INFO]
    fields: dict[str, Any] = record.__dict__
    assert fields["rpc"] == "Chat"
    assert fields["peer"].startswith("ipv4:127.0.0.1:")
    assert fields["models"] == ["add_one_fp32", "invert_u8"]
    assert fields["packets"] == 2
    assert fields["statuses"] == {"OK": 1, "INTERNAL": 1}
    assert fields["errors"] == 1
    assert fields["duration_ms"] > 0
    assert fields["outcome"] == "ok"
    (failure,) = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert failure.__dict__["cid"] == "bad"
    assert failure.__dict__["status"] == "INTERNAL"


# What held before must still hold: a client that reads its Acks late loses none ------------


async def _send_all_then_read(count: int, read_after_s: float) -> tuple[int, int]:
    proxy = ProxyProcess(["--backend", "demo"])
    try:
        async with grpc.aio.insecure_channel(proxy.target) as channel:
            stub = pbg.MultimodalServiceStub(channel)
            sent = [0]

            async def packets() -> Any:
                for i in range(count):
                    yield packet(f"p:{i}", X)
                    sent[0] += 1

            call = stub.Chat(packets(), timeout=600)
            await asyncio.sleep(read_after_s)  # not reading: the proxy must hold back
            seen: set[str] = set()
            ok = 0
            async for ack in call:
                seen.add(ack.correlation_id)
                ok += ack.status == pb.OK
    finally:
        proxy.stop()
    assert sent[0] == count
    return len(seen), ok


async def test_packets_sent_before_any_ack_is_read_are_all_answered() -> None:
    answered, ok = await _send_all_then_read(5_000, read_after_s=2.0)
    assert (answered, ok) == (5_000, 5_000)


@pytest.mark.soak
@pytest.mark.timeout(900)
async def test_100k_packets_sent_before_any_ack_is_read_are_all_answered() -> None:
    answered, ok = await _send_all_then_read(100_000, read_after_s=5.0)
    assert (answered, ok) == (100_000, 100_000)
