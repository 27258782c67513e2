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

from typing import TYPE_CHECKING, Any

from . import multimodal_pb2, multimodal_pb2_grpc

# The clients and the typed view load on first use, so importing the proxy (a submodule)
# never imports them.
_LAZY = {
    "TritonClientError": "._client_errors",
    "FrameResult": "._client_packets",
    "ModelInfo": "._client_packets",
    "PacketSpec": "._client_packets",
    "ResponseResult": "._client_packets",
    "TensorInfo": "._client_packets",
    "AsyncTritonBytesStreamer": ".aio_client",
    "TritonBytesStreamer": ".client",
    "TritonFooter": ".typed",
    "TritonHeader": ".typed",
    "TritonItem": ".typed",
    "TritonTensorSpec": ".typed",
    "triton_frames": ".typed",
    "triton_stream_types": ".typed",
}

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)


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
