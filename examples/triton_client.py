"""Stream tensors through the Triton thin proxy with the sync and async clients.

Start a proxy first; the embedded demo models need no Triton::

    python -m transports.triton.proxy --listen 127.0.0.1:50051 --backend demo
    python -m examples.triton_client 127.0.0.1:50051            # sync, then async
    python -m examples.triton_client 127.0.0.1:50051 --typed    # the typed view

In front of a real Triton the same commands work (``--triton-url``); auth headers
come from ``DOMINO_USER_API_KEY`` / ``Authorization`` when set.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator

import numpy as np

from transports.triton import AsyncTritonBytesStreamer, TritonBytesStreamer
from transports.triton.protocol import multimodal_pb2 as pb
from transports.triton.typed import triton_frames, triton_stream_types
from truss_stream import stream_reader

MODEL = "add_one_fp32"
SHAPE = (1, 8)


def frame_bytes_iter(n: int) -> Iterator[bytes]:
    """Raw tensor bytes, one C-ordered float32 array per frame, as the seed documents."""
    for i in range(n):
        yield np.full(SHAPE, i, np.float32).tobytes(order="C")


def run_sync(addr: str, frames: int) -> int:
    """The seed's documented usage, pipelined over one Chat call."""
    with TritonBytesStreamer(
        addr=addr,
        input_name="INPUT",
        shape=SHAPE,
        dtype_enum=pb.DT_FP32,
        outputs=("OUTPUT",),
        stream_id="cam-001",
        request_timeout_sec=10.0,
        parse_outputs_numpy=True,
        connect_timeout_sec=5.0,
        max_in_flight=16,
    ) as streamer:
        streamer.wait_for_ready(MODEL, timeout_s=30)
        count = 0
        for seq, ack, outputs in streamer.stream_bytes(MODEL, "1", frame_bytes_iter(frames)):
            out = None if outputs is None else outputs["OUTPUT"]
            print(f"sync  {seq}: {ack['status']} OUTPUT[0,0]={None if out is None else out[0, 0]}")
            count += 1
        return count


async def run_async(addr: str, frames: int) -> int:
    """The async twin; input name, dtype and outputs discovered from the model's metadata."""
    async with AsyncTritonBytesStreamer(addr, shape=SHAPE, max_in_flight=32) as streamer:
        await streamer.wait_for_ready(MODEL, timeout_s=30)
        spec = await streamer.prepare(MODEL, "1")
        print(f"async: discovered input {spec.input_name!r}, outputs {list(spec.outputs)}")
        count = 0
        async for result in streamer.stream_results(MODEL, "1", frame_bytes_iter(frames)):
            out = result.outputs["OUTPUT"] if result.outputs else None
            print(
                f"async {result.seq}: {result.status} in {result.timings['client_ms']:.2f} ms, "
                f"OUTPUT[0,0]={None if out is None else out[0, 0]}"
            )
            count += 1
        return count


async def run_typed(addr: str, frames: int) -> int:
    """The results as a typed stream: these frames are what an SSE endpoint would send."""
    types = triton_stream_types()
    async with AsyncTritonBytesStreamer(addr, shape=SHAPE) as streamer:
        wire = [
            bytes(f) async for f in triton_frames(streamer, MODEL, "1", frame_bytes_iter(frames))
        ]
    reader = stream_reader(types, iter(wire))
    header = reader.read_header()
    print(f"typed header: {header.model} inputs={[(t.name, t.dtype) for t in header.inputs]}")
    count = 0
    for item in reader.read_items():
        print(
            f"typed item {item.seq}: {item.status} OUTPUT={item.outputs['OUTPUT'].ravel()[:3]}..."
        )
        count += 1
    footer = reader.read_footer()
    print(
        f"typed footer: {footer.ok} ok, {footer.failed} failed, p50 {footer.latency_p50_ms:.2f} ms"
    )
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("addr", nargs="?", default="127.0.0.1:50051")
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--typed", action="store_true", help="show the typed view instead")
    args = parser.parse_args()
    if args.typed:
        asyncio.run(run_typed(args.addr, args.frames))
        return
    run_sync(args.addr, args.frames)
    asyncio.run(run_async(args.addr, args.frames))


if __name__ == "__main__":
    main()


def run_tokens(addr: str, prompt: str = "tokens stream from a decoupled model, one by one") -> int:
    """A streaming (decoupled) model: every response as it arrives, sync, then async."""
    from examples.triton_sse import PROMPT_BYTES, prompt_frame

    tokens = 0
    with TritonBytesStreamer(addr, shape=(PROMPT_BYTES,)) as streamer:
        text = []
        for r in streamer.stream_responses("stream_tokens", "1", [prompt_frame(prompt)]):
            if r.outputs is not None:
                text.append(bytes(r.outputs["TOKEN"]).decode())
                print(f"token {r.index}: {text[-1]!r}", flush=True)
            if r.final:
                print(f"final (response {r.index}, status {r.status}): {' '.join(text)}")
            tokens += 1

    async def counts() -> int:
        async with AsyncTritonBytesStreamer(addr, shape=(1,), max_in_flight=4) as client:
            frames = [np.array([n], np.int32).tobytes() for n in (3, 0, 2)]
            got = [r async for r in client.stream_responses("stream_count", "1", frames)]
        finals = sum(r.final for r in got)
        print(f"async stream_count: {len(got)} responses, {finals} finals for 3 frames")
        return len(got)

    return tokens + asyncio.run(counts())
