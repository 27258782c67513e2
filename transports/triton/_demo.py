"""The built-in demo models of ``--backend demo``, so the proxy runs without Triton.

They mirror the test Triton's models (``tests/triton/pytriton_server.py``):

- ``add_one_fp32``: FP32 input -> ``OUTPUT`` = input + 1
- ``invert_u8``: UINT8 input -> ``IMAGE_OUT`` = 255 - input
- ``echo``: any input -> ``OUTPUT``, unchanged
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from transports.triton import multimodal_pb2 as pb

__all__ = ["demo_metadata", "demo_model"]


def demo_model(model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run one of the demo models on its single input.

    Raises:
        KeyError: unknown model.
        TypeError: wrong input dtype for the model.
    """
    (array,) = inputs.values()
    if model == "add_one_fp32":
        if array.dtype != np.float32:
            raise TypeError(f"add_one_fp32 takes FP32, got {array.dtype}")
        return {"OUTPUT": array + np.float32(1)}
    if model == "invert_u8":
        if array.dtype != np.uint8:
            raise TypeError(f"invert_u8 takes UINT8, got {array.dtype}")
        return {"IMAGE_OUT": np.uint8(255) - array}
    if model == "echo":
        return {"OUTPUT": array}
    raise KeyError(f"unknown demo model {model!r}")


def _tensor(name: str, dtype: int, dims: list[int], triton: str) -> pb.TensorMetadata:
    return pb.TensorMetadata(
        name=name,
        dtype=dtype,  # type: ignore[arg-type]
        triton_dtype=triton,
        shape=pb.Shape(dims=dims),
    )


def demo_metadata() -> dict[str, pb.ModelMetadataResponse]:
    """Model metadata of the demo models, for the proxy's ModelMetadata RPC."""
    return {
        "add_one_fp32": pb.ModelMetadataResponse(
            model="add_one_fp32",
            versions=["1"],
            platform="python",
            inputs=[_tensor("INPUT", pb.DT_FP32, [-1, -1], "FP32")],
            outputs=[_tensor("OUTPUT", pb.DT_FP32, [-1, -1], "FP32")],
            ready=True,
            max_batch_size=64,
        ),
        "invert_u8": pb.ModelMetadataResponse(
            model="invert_u8",
            versions=["1"],
            platform="python",
            inputs=[_tensor("IMAGE", pb.DT_UINT8, [-1, -1, -1, 3], "UINT8")],
            outputs=[_tensor("IMAGE_OUT", pb.DT_UINT8, [-1, -1, -1, 3], "UINT8")],
            ready=True,
            max_batch_size=64,
        ),
        "echo": pb.ModelMetadataResponse(
            model="echo",
            versions=["1"],
            platform="python",
            inputs=[_tensor("INPUT", pb.DT_UNSPECIFIED, [-1], "")],
            outputs=[_tensor("OUTPUT", pb.DT_UNSPECIFIED, [-1], "")],
            ready=True,
            max_batch_size=0,
        ),
    }
