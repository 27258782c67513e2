"""The built-in demo models of ``--backend demo``, so the proxy runs without Triton.

They mirror the test Triton's models (``tests/triton/pytriton_server.py``):

- ``add_one_fp32``: FP32 input -> ``OUTPUT`` = input + 1
- ``invert_u8``: UINT8 input -> ``IMAGE_OUT`` = 255 - input
- ``echo``: any input -> ``OUTPUT``, unchanged
- ``stream_count`` (streaming): COUNT int32 [1] -> COUNT responses, response i:
  INDEX int32 [1] = i, TOKEN uint8 [-1] = the bytes of ``f"tok{i} "``
- ``stream_tokens`` (streaming): PROMPT uint8 [-1] (UTF-8 text) -> one response per
  whitespace-separated word: INDEX int32 [1], TOKEN uint8 [-1] (the word's bytes);
  ``--backend demo`` waits ``TOKEN_DELAY_S`` before each, as a language model would

The streaming two are the embedded twins of the PyTriton decoupled models in
``tests/triton/streaming_models.py``: same names, tensors and responses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

import numpy as np

from transports.triton.protocol import multimodal_pb2 as pb

__all__ = ["TOKEN_DELAY_S", "demo_metadata", "demo_model", "stream_count", "stream_tokens"]

TOKEN_DELAY_S = 0.05
"""Seconds ``stream_tokens`` waits before each token (so a browser shows them arrive)."""

STREAMING_MODELS = ("stream_count", "stream_tokens")


def _token(i: int, text: str) -> dict[str, np.ndarray]:
    return {
        "INDEX": np.array([i], dtype=np.int32),
        "TOKEN": np.frombuffer(text.encode(), dtype=np.uint8).copy(),
    }


def stream_count(inputs: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """COUNT responses ``{"INDEX": [i], "TOKEN": b"tok{i} "}``."""
    (array,) = inputs.values()
    for i in range(int(np.asarray(array).reshape(-1)[0])):
        yield _token(i, f"tok{i} ")


def stream_tokens(
    inputs: Mapping[str, np.ndarray], delay_s: float = 0.0
) -> Iterator[dict[str, np.ndarray]]:
    """One response per word of the UTF-8 prompt."""
    (array,) = inputs.values()
    text = np.asarray(array).astype(np.uint8).tobytes().decode("utf-8", "replace")
    for i, word in enumerate(text.split()):
        if delay_s:
            time.sleep(delay_s)
        yield _token(i, word)


def demo_model(
    model: str, inputs: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray] | Iterator[dict[str, np.ndarray]]:
    """Run one of the demo models on its single input (a generator for streaming ones).

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
    if model == "stream_count":
        return stream_count(inputs)
    if model == "stream_tokens":
        return stream_tokens(inputs, TOKEN_DELAY_S)
    raise KeyError(f"unknown demo model {model!r}")


def _tensor(name: str, dtype: int, dims: list[int], triton: str) -> pb.TensorMetadata:
    return pb.TensorMetadata(
        name=name,
        dtype=dtype,  # type: ignore[arg-type]
        triton_dtype=triton,
        shape=pb.Shape(dims=dims),
    )


def _model(
    name: str,
    inputs: list[pb.TensorMetadata],
    outputs: list[pb.TensorMetadata],
    *,
    max_batch_size: int = 0,
    decoupled: bool = False,
) -> pb.ModelMetadataResponse:
    return pb.ModelMetadataResponse(
        model=name,
        versions=["1"],
        platform="python",
        inputs=inputs,
        outputs=outputs,
        ready=True,
        max_batch_size=max_batch_size,
        decoupled=decoupled,
    )


def demo_metadata() -> dict[str, pb.ModelMetadataResponse]:
    """Model metadata of the demo models, for the proxy's ModelMetadata RPC.

    ``add_one_fp32`` and ``invert_u8`` batch (``max_batch_size`` 64: ``--coalesce``
    stacks their packets); the streaming two are ``decoupled``.
    """
    tokens = [
        _tensor("INDEX", pb.DT_INT32, [1], "INT32"),
        _tensor("TOKEN", pb.DT_UINT8, [-1], "UINT8"),
    ]
    models = [
        _model(
            "add_one_fp32",
            [_tensor("INPUT", pb.DT_FP32, [-1, -1], "FP32")],
            [_tensor("OUTPUT", pb.DT_FP32, [-1, -1], "FP32")],
            max_batch_size=64,
        ),
        _model(
            "invert_u8",
            [_tensor("IMAGE", pb.DT_UINT8, [-1, -1, -1, 3], "UINT8")],
            [_tensor("IMAGE_OUT", pb.DT_UINT8, [-1, -1, -1, 3], "UINT8")],
            max_batch_size=64,
        ),
        _model(
            "echo",
            [_tensor("INPUT", pb.DT_UNSPECIFIED, [-1], "")],
            [_tensor("OUTPUT", pb.DT_UNSPECIFIED, [-1], "")],
        ),
        _model(
            "stream_count", [_tensor("COUNT", pb.DT_INT32, [1], "INT32")], tokens, decoupled=True
        ),
        _model(
            "stream_tokens", [_tensor("PROMPT", pb.DT_UINT8, [-1], "UINT8")], tokens, decoupled=True
        ),
    ]
    return {m.model: m for m in models}
