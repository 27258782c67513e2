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

from . import multimodal_pb2, multimodal_pb2_grpc  # the seed's paths: see .protocol

# The clients and the typed view load on first use, so importing the proxy (a submodule)
# never imports them.
_LAZY = {
    "TritonClientError": ".client.errors",
    "FrameResult": ".client._packets",
    "ModelInfo": ".client._packets",
    "PacketSpec": ".client._packets",
    "ResponseResult": ".client._packets",
    "TensorInfo": ".client._packets",
    "AsyncTritonBytesStreamer": ".client.aio",
    "TritonBytesStreamer": ".client.sync",
    "TritonFooter": ".typed",
    "TritonHeader": ".typed",
    "TritonItem": ".typed",
    "TritonTensorSpec": ".typed",
    "triton_frames": ".typed",
    "triton_stream_types": ".typed",
}

if TYPE_CHECKING:
    from .client._packets import FrameResult, ModelInfo, PacketSpec, ResponseResult, TensorInfo
    from .client.aio import AsyncTritonBytesStreamer
    from .client.errors import TritonClientError
    from .client.sync import TritonBytesStreamer
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
