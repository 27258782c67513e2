"""The Triton proxy's clients: :class:`TritonBytesStreamer` (sync) and
:class:`AsyncTritonBytesStreamer` (asyncio).

One sans-IO core (:mod:`._core`: settings and every unary operation -- connect probe,
metadata, prepare, ``send_unary``, readiness -- as a generator of steps; :mod:`._chat`:
one ``Chat`` call as a state machine, with its idle and per-frame limits;
:mod:`._packets`: packet building, the Ack pipeline, result parsing) and two thin
drivers that only do I/O (:mod:`.sync` on a gRPC channel and threads, :mod:`.aio` on
``grpc.aio`` and tasks). See ``docs/triton-clients.md``.
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
