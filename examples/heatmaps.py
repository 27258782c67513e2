"""A stream of 2-D tensors for the browser page's heatmap: one activation map per frame.

The page (examples/browser/index.html) reads it as binary msgpack over chunked HTTP
with the JS package (js/) and paints each ``float32[rows, cols]`` map on a canvas.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import numpy as np
import pydantic

from truss_stream import NDArray, StreamTypes, stream_types, stream_writer

__all__ = ["HEATMAPS", "Heatmap", "HeatmapFooter", "heatmap_values", "heatmaps"]


class Heatmap(pydantic.BaseModel):
    """One frame's activation map, values in [0, 1]."""

    frame_index: int
    heat: NDArray  # (rows, cols) float32


class HeatmapFooter(pydantic.BaseModel):
    frames: int
    peak: float


HEATMAPS: StreamTypes[Heatmap, None, HeatmapFooter] = stream_types(
    Heatmap, footer_type=HeatmapFooter, codec="msgpack"
)


def heatmap_values(index: int, rows: int = 48, cols: int = 64) -> np.ndarray:
    """Frame ``index``'s map: two Gaussian blobs drifting across the image."""
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cx = (index * 5.0) % cols
    blob = np.exp(-(((x - cx) / 8) ** 2 + ((y - rows / 2) / 6) ** 2))
    blob += 0.6 * np.exp(-(((x - cols + cx) / 5) ** 2 + ((y - rows / 4) / 5) ** 2))
    heat: np.ndarray = (blob / blob.max()).astype(np.float32)
    return heat


async def heatmaps(frames: int = 8, delay: float = 0.0) -> AsyncIterator[bytes]:
    """The producer: ``frames`` heatmap items, a footer, END."""
    writer = stream_writer(HEATMAPS)
    peak = 0.0
    for index in range(frames):
        if delay:
            await anyio.sleep(delay)
        heat = heatmap_values(index)
        peak = max(peak, float(heat.max()))
        yield writer.yield_item(Heatmap(frame_index=index, heat=heat))
    yield writer.yield_footer(HeatmapFooter(frames=frames, peak=peak))
    yield writer.yield_end()
