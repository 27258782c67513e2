"""The Triton proxy's clients: :class:`TritonBytesStreamer` (sync) and
:class:`AsyncTritonBytesStreamer` (asyncio).

One sans-IO core (:mod:`._packets`: packet building, the Ack pipeline, result parsing;
:mod:`._core`: settings, readiness and metadata steps, timeouts) and two thin drivers
(:mod:`.sync` on a gRPC channel and a thread, :mod:`.aio` on ``grpc.aio``). See
``docs/triton-clients.md``.
"""

from transports.triton.client._packets import (
    FrameResult,
    ModelInfo,
    PacketSpec,
    ResponseResult,
    TensorInfo,
)
from transports.triton.client.aio import AsyncTritonBytesStreamer
from transports.triton.client.errors import TritonClientError
from transports.triton.client.sync import TritonBytesStreamer

__all__ = [
    "AsyncTritonBytesStreamer",
    "FrameResult",
    "ModelInfo",
    "PacketSpec",
    "ResponseResult",
    "TensorInfo",
    "TritonBytesStreamer",
    "TritonClientError",
]
