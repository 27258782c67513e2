"""The Triton thin proxy: its protocol (``multimodal.proto``), server and clients.

- ``transports.triton.multimodal_pb2`` / ``multimodal_pb2_grpc``: the generated protocol.
- ``python -m transports.triton.proxy``: the proxy (see ``docs/triton-proxy.md``).
- :class:`TritonBytesStreamer` / :class:`AsyncTritonBytesStreamer`: the clients, many
  frames pipelined over one ``Chat`` call (see ``docs/triton-clients.md``).
- :func:`triton_frames` / :func:`triton_stream_types`: their results as a typed
  truss_stream stream (header, items, footer), to re-serve on any transport.
"""

from transports._extras import missing_extra

try:
    from . import multimodal_pb2, multimodal_pb2_grpc
    from ._client_errors import TritonClientError
    from ._client_packets import FrameResult, ModelInfo, PacketSpec, TensorInfo
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
except ImportError as exc:
    raise missing_extra("transports.triton", "triton", exc) from exc

__all__ = [
    "AsyncTritonBytesStreamer",
    "FrameResult",
    "ModelInfo",
    "PacketSpec",
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
