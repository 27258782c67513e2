"""The proxy's results as a typed truss_stream stream, ready to re-serve on any transport.

A header describes the model (from the proxy's ``ModelMetadata``), one item per
frame carries its status and outputs as ``NDArray`` fields, and a footer sums up
(counts, latency percentiles). :func:`triton_frames` is a producer in the sense of
the transports: its frames go unchanged into ``transports.sse.sse_response``,
``transports.http.stream_response`` or a gRPC stream::

    types = triton_stream_types()
    async def endpoint(request):
        return sse_response(triton_frames(streamer, "add_one_fp32", "1", frames))
    # the consumer:
    async with aconnect(client, "GET", url, types) as reader:
        header = await reader.read_header()
        async for item in reader.read_items(): ...
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pydantic

from truss_stream import FrameBytes, NDArray, StreamTypes, stream_types, stream_writer
from truss_stream._schema import CodecName

from .client._packets import (
    FrameResult,
    ModelInfo,
    PacketSpec,
    ResponseResult,
    latency_percentiles,
)
from .client.aio import AsyncTritonBytesStreamer, Frames
from .client.errors import TritonClientError
from .protocol.dtypes import triton_name

__all__ = [
    "TritonFooter",
    "TritonHeader",
    "TritonItem",
    "TritonResponseFooter",
    "TritonResponseHeader",
    "TritonResponseItem",
    "TritonTensorSpec",
    "triton_frames",
    "triton_response_types",
    "triton_responses",
    "triton_stream_types",
]


class TritonTensorSpec(pydantic.BaseModel):
    """One model input or output: name, Triton datatype (``"FP32"``), dims (-1: variable)."""

    name: str
    dtype: str
    shape: list[int]


class TritonHeader(pydantic.BaseModel):
    """The model the stream's results come from."""

    model: str
    version: str
    platform: str = ""
    max_batch_size: int = 0
    inputs: list[TritonTensorSpec]
    outputs: list[TritonTensorSpec]


class TritonItem(pydantic.BaseModel):
    """The result of one frame, in frame order.

    ``status`` is the Ack status name (``"OK"``, ``"BAD_REQUEST"``, ...); ``error``
    the proxy's message for a failed frame; ``timings`` in ms (``client_ms``, and
    the proxy's ``triton_infer_ms`` / ``total_ms`` when it sent them).
    """

    seq: int
    correlation_id: str
    status: str
    outputs: dict[str, NDArray] = pydantic.Field(default_factory=dict)
    timings: dict[str, float] = pydantic.Field(default_factory=dict)
    error: str | None = None


class TritonFooter(pydantic.BaseModel):
    """Totals of the stream; latencies are the client-side round trips (``client_ms``)."""

    count: int
    ok: int
    failed: int
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    elapsed_s: float
    frames_per_s: float


TritonStreamTypes = StreamTypes[TritonItem, TritonHeader, TritonFooter]


def triton_stream_types(codec: CodecName = "msgpack") -> TritonStreamTypes:
    """The stream type of :func:`triton_frames`: header, items and footer above.

    Args:
        codec: ``"msgpack"`` (arrays as raw bytes) or ``"json"`` (truss-compatible,
            arrays as base64, readable by a browser's ``EventSource``).
    """
    return stream_types(TritonItem, header_type=TritonHeader, footer_type=TritonFooter, codec=codec)


def header_from(info: ModelInfo, version: str) -> TritonHeader:
    """The header for a model's metadata."""

    def specs(tensors: Any) -> list[TritonTensorSpec]:
        return [
            TritonTensorSpec(name=t.name, dtype=t.triton_dtype, shape=list(t.shape))
            for t in tensors
        ]

    return TritonHeader(
        model=info.name,
        version=version,
        platform=info.platform,
        max_batch_size=info.max_batch_size,
        inputs=specs(info.inputs),
        outputs=specs(info.outputs),
    )


def header_from_spec(model: str, version: str, spec: PacketSpec) -> TritonHeader:
    """The header when the proxy has no metadata RPC: what the client sends."""
    return TritonHeader(
        model=model,
        version=version,
        inputs=[
            TritonTensorSpec(
                name=spec.input_name,
                dtype=triton_name(spec.dtype) or "",
                shape=list(spec.shape),
            )
        ],
        outputs=[TritonTensorSpec(name=name, dtype="", shape=[]) for name in spec.outputs],
    )


async def model_header(
    streamer: AsyncTritonBytesStreamer, model: str, model_version: str
) -> TritonHeader:
    """The model's header from the proxy's metadata, or from the packet spec without it."""
    try:
        info = await streamer.model_metadata(model, model_version)
    except TritonClientError as exc:
        if exc.code() is not grpc.StatusCode.UNIMPLEMENTED:
            raise
        return header_from_spec(
            model, model_version, await streamer.packet_spec(model, model_version)
        )
    return header_from(info, model_version)


def _array_outputs(outputs: dict[str, Any] | None) -> dict[str, np.ndarray]:
    """A result's outputs that are arrays (JSON maps, when not parsed to NumPy, are left out)."""
    return {k: v for k, v in (outputs or {}).items() if isinstance(v, np.ndarray)}


def item_from(result: FrameResult) -> TritonItem:
    """The item for one frame's result (outputs that are not arrays are left out)."""
    outputs = _array_outputs(result.outputs)
    return TritonItem(
        seq=result.seq,
        correlation_id=result.correlation_id,
        status=result.status,
        outputs=outputs,
        timings=result.timings,
        error=result.error,
    )


async def triton_frames(
    streamer: AsyncTritonBytesStreamer,
    model: str,
    model_version: str,
    frames: Frames,
    *,
    types: TritonStreamTypes | None = None,
) -> AsyncIterator[FrameBytes]:
    """Stream ``frames`` through the proxy and yield the results as writer frames.

    Header (model metadata), one item per frame in frame order, footer, END. The
    streamer must parse outputs to NumPy (``parse_outputs_numpy=True``, the default).

    Args:
        streamer: an open async client.
        model, model_version: what to run.
        frames: the raw tensor bytes, sync or async iterable.
        types: the stream type; default ``triton_stream_types()`` (msgpack).

    Raises:
        ValueError: the streamer does not parse outputs to NumPy.
        TritonClientError: the stream failed as a whole (transports turn an error
            after the first frame into an ERROR frame for the reader).
    """
    if not streamer.parse_outputs_numpy:
        raise ValueError("triton_frames needs a streamer with parse_outputs_numpy=True")
    writer = stream_writer(types or triton_stream_types())
    header = await model_header(streamer, model, model_version)
    yield writer.yield_header(header)
    started = time.perf_counter()
    latencies: list[float] = []
    ok = failed = 0
    async for result in streamer.stream_results(model, model_version, frames):
        if result.ok:
            ok += 1
        else:
            failed += 1
        latencies.append(result.timings.get("client_ms", 0.0))
        yield writer.yield_item(item_from(result))
    elapsed = time.perf_counter() - started
    pct = latency_percentiles(latencies)
    yield writer.yield_footer(
        TritonFooter(
            count=ok + failed,
            ok=ok,
            failed=failed,
            latency_p50_ms=pct["p50"],
            latency_p90_ms=pct["p90"],
            latency_p99_ms=pct["p99"],
            elapsed_s=elapsed,
            frames_per_s=(ok + failed) / elapsed if elapsed > 0 else 0.0,
        )
    )
    yield writer.yield_end()


# Streaming (decoupled) models: one item per model response ------------------------------


class TritonResponseHeader(pydantic.BaseModel):
    """The model (as :class:`TritonHeader`) and the request the responses answer."""

    model: TritonHeader
    request: dict[str, Any] = pydantic.Field(default_factory=dict)
    """What the caller says about the request (a prompt, a job id...), as given."""


class TritonResponseItem(pydantic.BaseModel):
    """One model response: ``seq`` (frame) and ``index`` (response within it, from 0).

    ``final`` marks each frame's last response (it may carry no outputs); ``status``
    is the Ack status name; ``timings`` in ms, ``client_ms`` from sending the frame.
    """

    seq: int
    index: int
    final: bool
    status: str
    outputs: dict[str, NDArray] = pydantic.Field(default_factory=dict)
    timings: dict[str, float] = pydantic.Field(default_factory=dict)
    error: str | None = None


class TritonResponseFooter(pydantic.BaseModel):
    """Totals: frames, responses, failures; latencies are ``client_ms`` of the responses."""

    frames: int
    responses: int
    failed: int
    first_response_ms: float | None
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    elapsed_s: float
    responses_per_s: float


TritonResponseTypes = StreamTypes[TritonResponseItem, TritonResponseHeader, TritonResponseFooter]


def triton_response_types(codec: CodecName = "msgpack") -> TritonResponseTypes:
    """The stream type of :func:`triton_responses` (``codec="json"`` for browsers)."""
    return stream_types(
        TritonResponseItem,
        header_type=TritonResponseHeader,
        footer_type=TritonResponseFooter,
        codec=codec,
    )


def response_item_from(result: ResponseResult) -> TritonResponseItem:
    """The item for one model response (outputs that are not arrays are left out)."""
    outputs = _array_outputs(result.outputs)
    return TritonResponseItem(
        seq=result.seq,
        index=result.index,
        final=result.final,
        status=result.status,
        outputs=outputs,
        timings=result.timings,
        error=result.error,
    )


async def triton_responses(
    streamer: AsyncTritonBytesStreamer,
    model: str,
    model_version: str,
    frames: Frames,
    *,
    request: dict[str, Any] | None = None,
    types: TritonResponseTypes | None = None,
) -> AsyncIterator[FrameBytes]:
    """Stream ``frames`` to a streaming model and yield every response as writer frames.

    Header (model metadata and ``request``), one item per model response as
    ``stream_responses`` gives them, footer (counts, first-response time and
    latencies), END: hand it to ``transports.sse.sse_response`` (or
    ``transports.http.stream_response``) and a Triton token stream is an SSE endpoint.
    Closing it early (the HTTP client went away) cancels the Triton requests.

    Raises:
        ValueError: the streamer does not parse outputs to NumPy.
        TritonClientError: the stream failed as a whole.
    """
    if not streamer.parse_outputs_numpy:
        raise ValueError("triton_responses needs a streamer with parse_outputs_numpy=True")
    writer = stream_writer(types or triton_response_types())
    header = await model_header(streamer, model, model_version)
    yield writer.yield_header(TritonResponseHeader(model=header, request=request or {}))
    started = time.perf_counter()
    latencies: list[float] = []
    first_ms: float | None = None
    frames_done = responses = failed = 0
    async for result in streamer.stream_responses(model, model_version, frames):
        if first_ms is None:
            first_ms = (time.perf_counter() - started) * 1000.0
        responses += 1
        if not result.ok:
            failed += 1
        if result.final:
            frames_done += 1
        latencies.append(result.timings.get("client_ms", 0.0))
        yield writer.yield_item(response_item_from(result))
    elapsed = time.perf_counter() - started
    pct = latency_percentiles(latencies)
    yield writer.yield_footer(
        TritonResponseFooter(
            frames=frames_done,
            responses=responses,
            failed=failed,
            first_response_ms=first_ms,
            latency_p50_ms=pct["p50"],
            latency_p90_ms=pct["p90"],
            latency_p99_ms=pct["p99"],
            elapsed_s=elapsed,
            responses_per_s=responses / elapsed if elapsed > 0 else 0.0,
        )
    )
    yield writer.yield_end()
