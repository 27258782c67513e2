"""Stream types shared by the server and its clients: an object-detection stream.

Both sides import this module, so the producer and the consumer agree on the
models by construction. A request gets a header (its metadata), one item per
video frame (boxes and scores as NumPy tensors) and a footer (stats).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import anyio
import numpy as np
import pydantic

from truss_stream import NDArray, StreamTypes, stream_types, stream_writer

__all__ = [
    "DETECTIONS",
    "DETECTIONS_JSON",
    "Detection",
    "DetectionFooter",
    "DetectionHeader",
    "LABELS",
    "detect",
]

LABELS = ("person", "car", "bicycle", "dog", "traffic light")


class DetectionHeader(pydantic.BaseModel):
    """Sent first: what was asked for."""

    request_id: str
    model: str
    frames: int
    image_size: tuple[int, int]


class Detection(pydantic.BaseModel):
    """One video frame's detections."""

    frame_index: int
    boxes: NDArray  # (n, 4) float32: x0, y0, x1, y1 in pixels
    scores: NDArray  # (n,) float32
    labels: list[str]
    latency_ms: float


class DetectionFooter(pydantic.BaseModel):
    """Sent last: totals."""

    frames: int
    detections: int
    elapsed_ms: float


#: Binary (msgpack) variant: tensors travel as raw bytes.
DETECTIONS: StreamTypes[Detection, DetectionHeader, DetectionFooter] = stream_types(
    Detection, header_type=DetectionHeader, footer_type=DetectionFooter, codec="msgpack"
)
#: JSON variant: what a browser's EventSource reads (tensors as base64 in JSON).
DETECTIONS_JSON: StreamTypes[Detection, DetectionHeader, DetectionFooter] = stream_types(
    Detection, header_type=DetectionHeader, footer_type=DetectionFooter, codec="json"
)


async def detect(
    types: StreamTypes[Detection, DetectionHeader, DetectionFooter],
    *,
    request_id: str,
    frames: int = 8,
    delay: float = 0.0,
    seed: int = 0,
    fail_at: int | None = None,
) -> AsyncIterator[bytes | memoryview]:
    """A stand-in detector: the producer every transport serves, written once.

    Args:
        types: which variant (codec) to write.
        request_id: echoed in the header.
        frames: how many items.
        delay: seconds between items (a model's inference time).
        seed: makes the fake detections reproducible.
        fail_at: raise at this frame, to show how a failure reaches the client.

    Returns:
        An async iterator of frames (header, items, footer, END).
    """
    writer = stream_writer(types)
    rng = np.random.default_rng(seed)
    width, height = 640, 480
    yield writer.yield_header(
        DetectionHeader(
            request_id=request_id,
            model="toy-detector-v1",
            frames=frames,
            image_size=(width, height),
        )
    )
    start = time.perf_counter()
    total = 0
    for index in range(frames):
        t0 = time.perf_counter()
        if delay:
            await anyio.sleep(delay)
        if index == fail_at:
            raise RuntimeError(f"detector crashed at frame {index}")
        n = int(rng.integers(1, 5))
        xy = rng.uniform(0, [width - 50, height - 50], size=(n, 2))
        wh = rng.uniform(20, 50, size=(n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        scores = rng.uniform(0.3, 1.0, size=n).astype(np.float32)
        labels = [LABELS[int(k)] for k in rng.integers(0, len(LABELS), size=n)]
        total += n
        yield writer.yield_item(
            Detection(
                frame_index=index,
                boxes=boxes,
                scores=scores,
                labels=labels,
                latency_ms=(time.perf_counter() - t0) * 1000,
            )
        )
    yield writer.yield_footer(
        DetectionFooter(
            frames=frames, detections=total, elapsed_ms=(time.perf_counter() - start) * 1000
        )
    )
    yield writer.yield_end()
