"""The Triton thin proxy: its protocol (``multimodal.proto``), server and clients.

- ``transports.triton.multimodal_pb2`` / ``multimodal_pb2_grpc``: the generated protocol.
- ``python -m transports.triton.proxy``: the proxy (see ``docs/triton-proxy.md``).
- :class:`TritonBytesStreamer` / :class:`AsyncTritonBytesStreamer`: the clients, many
  frames pipelined over one ``Chat`` call (see ``docs/triton-clients.md``).
- :func:`triton_frames` / :func:`triton_stream_types`: their results as a typed
  truss_stream stream (header, items, footer), to re-serve on any transport.
"""
# ruff: noqa: E402 - the extra is checked before the imports that need it

from transports._extras import require_extra

require_extra(__name__)

from . import multimodal_pb2, multimodal_pb2_grpc
from ._client_errors import TritonClientError
from ._client_packets import FrameResult, ModelInfo, PacketSpec, ResponseResult, TensorInfo
from .aio_client import AsyncTritonBytesStreamer
from .client import TritonBytesStreamer
from .typed import (
    TritonFooter,
    TritonHeader,
    TritonItem,
    TritonTensorSpec,
    triton_frames,
    triton_stream_types,
)

__all__ = [
    "AsyncTritonBytesStreamer",
    "FrameResult",
    "ModelInfo",
    "PacketSpec",
    "ResponseResult",
    "TensorInfo",
    "TritonBytesStreamer",
    "TritonClientError",
    "TritonFooter",
    "TritonHeader",
    "TritonItem",
    "TritonTensorSpec",
    "multimodal_pb2",
    "multimodal_pb2_grpc",
    "triton_frames",
    "triton_stream_types",
]
