"""Property tests of the clients' sans-IO Chat state machine (``client/_chat.py``).

Both clients run a ``ChatCall`` the same way: take a window slot per frame, send the
packet, feed each Ack to ``on_ack`` with the window's release. Here a simulated
driver does exactly that against a simulated proxy that answers packets in any order
it likes (only packets already sent, a streaming frame's responses in index order),
and the properties are what both clients promise: results in frame order (or, for
streaming models, each frame's responses in index order with exactly one final, its
last), a window slot freed once per frame just before its result is handed over, never
more than ``max_in_flight`` frames in flight, nothing lost.
"""

from __future__ import annotations

import math
import time

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from transports.triton.client._chat import AckWatch, ChatCall, FrameCall, ResponseCall
from transports.triton.client._packets import AckPipeline, PacketSpec
from transports.triton.protocol import multimodal_pb2 as pb

SPEC = PacketSpec("INPUT", (1, 2), pb.DT_FP32, ("OUTPUT",), 5.0, True)


def _call(kind: type[ChatCall], frames_per_packet: int = 1) -> ChatCall:  # type: ignore[type-arg]
    pipe = AckPipeline(SPEC, "m", "1", stream_id="s", parse_numpy=True)
    watch = AckWatch(pipe, math.inf, time.monotonic)
    return kind(pipe, watch, frames_per_packet=frames_per_packet, on_unavailable=lambda: None)


def _frames(n: int) -> list[bytes]:
    return [np.full(2, i, np.float32).tobytes() for i in range(n)]


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 40),
    window=st.integers(1, 8),
    per_packet=st.integers(1, 4),
    data=st.data(),
)
def test_frame_results_in_order_whatever_the_ack_order(
    n: int, window: int, per_packet: int, data: st.DataObject
) -> None:
    per_packet = min(per_packet, window)
    call = _call(FrameCall, per_packet)
    batches = iter(call.batches(_frames(n)))
    free = window
    freed = 0
    pending: list[str] = []  # correlation ids sent, not yet answered
    got: list[int] = []
    batch = next(batches, None)

    def release() -> None:
        nonlocal free, freed
        free += 1
        freed += 1

    while batch is not None or pending:
        can_send = batch is not None and free >= len(batch)
        if can_send and (not pending or data.draw(st.booleans())):
            assert batch is not None
            free -= len(batch)
            pending.append(call.packet(batch).meta.correlation_id)
            assert call.pipe.unreleased <= window
            batch = next(batches, None)
            continue
        cid = pending.pop(data.draw(st.integers(0, len(pending) - 1)))
        for result in call.on_ack(pb.Ack(correlation_id=cid, status=pb.OK), release):
            got.append(result.seq)
            assert freed == len(got)  # its slot was freed just before it was handed over
    assert got == list(range(n))
    assert free == window
    call.finished()


@settings(max_examples=200, deadline=None)
@given(
    counts=st.lists(st.integers(0, 4), max_size=20),
    window=st.integers(1, 6),
    data=st.data(),
)
def test_streaming_responses_in_index_order_one_final_each(
    counts: list[int], window: int, data: st.DataObject
) -> None:
    """``counts[i]``: how many non-final responses frame i gets before its final."""
    call = _call(ResponseCall)
    batches = iter(call.batches(_frames(len(counts))))
    free = window
    pending: dict[str, list[int]] = {}  # cid -> [next index, responses before the final]
    seq_of: dict[str, int] = {}
    got: dict[int, list[tuple[int, bool]]] = {}
    freed_at: list[int] = []
    batch = next(batches, None)

    def release() -> None:
        nonlocal free
        free += 1
        freed_at.append(len(freed_at))

    while batch is not None or pending:
        if batch is not None and free and (not pending or data.draw(st.booleans())):
            free -= 1
            cid = call.packet(batch).meta.correlation_id
            seq_of[cid] = len(seq_of)
            pending[cid] = [0, counts[seq_of[cid]]]
            assert call.pipe.unreleased <= window
            batch = next(batches, None)
            continue
        cid = data.draw(st.sampled_from(sorted(pending)))
        index, before_final = pending[cid]
        final = index == before_final
        before = len(freed_at)
        ack = pb.Ack(correlation_id=cid, status=pb.OK, index=index, final=final)
        (result,) = call.on_ack(ack, release)
        assert len(freed_at) == before + final  # a slot freed exactly at the frame's final
        got.setdefault(result.seq, []).append((result.index, result.final))
        if final:
            del pending[cid]
        else:
            pending[cid][0] += 1
    assert sorted(got) == list(range(len(counts)))
    for seq, responses in got.items():
        assert responses == [(i, i == counts[seq]) for i in range(counts[seq] + 1)]
    assert free == window
    call.finished()


@settings(max_examples=200, deadline=None)
@given(
    shape=st.lists(st.integers(0, 2**40), max_size=4).map(tuple),
    dtype=st.sampled_from([pb.DT_UNSPECIFIED, pb.DT_FP32, pb.DT_UINT8, pb.DT_INT64]),
    outputs=st.lists(st.text(max_size=8), min_size=1, max_size=3).map(tuple),
    version=st.text(max_size=4),
    stream_id=st.text(max_size=12),
    frames=st.lists(st.binary(max_size=64), max_size=4),
    binary=st.booleans(),
)
def test_packet_is_the_message_built_field_by_field(
    shape: tuple[int, ...],
    dtype: int,
    outputs: tuple[str, ...],
    version: str,
    stream_id: str,
    frames: list[bytes],
    binary: bool,
) -> None:
    # The pipeline copies one prepared packet per frame; it must be exactly the packet the
    # seed's client builds from scratch, field by field, for every frame.
    spec = PacketSpec("IN", shape, dtype, outputs, 2.5, binary)
    pipe = AckPipeline(spec, "model", version, stream_id=stream_id, parse_numpy=False)
    for seq, data in enumerate(frames):
        built = pb.DataPacket(
            meta=pb.Meta(correlation_id=f"{stream_id}:{seq}"),
            control=spec.control("model", version),
            tensor=pb.Tensor(dtype=dtype, shape=pb.Shape(dims=shape), data=data),  # type: ignore[arg-type]
            event=pb.SEV_DATA,
        )
        packet = pipe.packet(data)
        assert packet == built
        assert packet.SerializeToString(deterministic=True) == built.SerializeToString(
            deterministic=True
        )
