"""Clients for the example server: the same typed reader over SSE and chunked HTTP.

python -m examples.client http://127.0.0.1:8000            # async, both transports
python -m examples.client http://127.0.0.1:8000 --sync     # the sync twins
"""

from __future__ import annotations

import argparse
import asyncio

import httpx

from examples.shared_types import DETECTIONS, Detection, DetectionFooter, DetectionHeader
from transports import http, sse


def show_header(header: DetectionHeader) -> None:
    print(f"  header: request {header.request_id}, model {header.model}, {header.frames} frames")


def show_item(item: Detection) -> None:
    print(
        f"  item {item.frame_index}: boxes {item.boxes.dtype}{list(item.boxes.shape)}, "
        f"scores {item.scores.dtype}{list(item.scores.shape)}, labels {item.labels}"
    )


def show_footer(footer: DetectionFooter) -> None:
    print(f"  footer: {footer.detections} detections in {footer.frames} frames")


async def consume_async(base_url: str, frames: int = 5) -> int:
    """Read the msgpack stream over SSE and over chunked HTTP with the async reader."""
    count = 0
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for name, transport in (("SSE", sse), ("chunked HTTP", http)):
            print(f"async, {name}:")
            path = "/sse/detections" if transport is sse else "/http/detections"
            params = {"frames": frames, "codec": "msgpack"}
            async with transport.aconnect(client, "GET", path, DETECTIONS, params=params) as reader:
                show_header(await reader.read_header())
                async for item in reader.read_items():
                    show_item(item)
                    count += 1
                show_footer(await reader.read_footer())
    return count


def consume_sync(base_url: str, frames: int = 5) -> int:
    """The same with the sync reader, over ``httpx.Client``."""
    count = 0
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for name, transport in (("SSE", sse), ("chunked HTTP", http)):
            print(f"sync, {name}:")
            path = "/sse/detections" if transport is sse else "/http/detections"
            params = {"frames": frames, "codec": "msgpack"}
            with transport.connect(client, "GET", path, DETECTIONS, params=params) as reader:
                show_header(reader.read_header())
                for item in reader.read_items():
                    show_item(item)
                    count += 1
                show_footer(reader.read_footer())
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("base_url", nargs="?", default="http://127.0.0.1:8000")
    parser.add_argument("--sync", action="store_true", help="use the sync clients")
    parser.add_argument("--frames", type=int, default=5)
    args = parser.parse_args()
    if args.sync:
        consume_sync(args.base_url, args.frames)
    else:
        asyncio.run(consume_async(args.base_url, args.frames))


if __name__ == "__main__":
    main()
