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

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
import pydantic

from truss_stream import FrameBytes, NDArray, StreamTypes, stream_types, stream_writer
from truss_stream._schema import CodecName

from .client._chat import ResultT
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


ModelT = TypeVar("ModelT", bound=pydantic.BaseModel)


def _item(cls: type[ModelT], result: FrameResult | ResponseResult, **fields: Any) -> ModelT:
    """What every item takes from its result (outputs that are not arrays are left out)."""
    outputs = _array_outputs(result.outputs)
    return cls(
        seq=result.seq,
        status=result.status,
        outputs=outputs,
        timings=result.timings,
        error=result.error,
        **fields,
    )


def item_from(result: FrameResult) -> TritonItem:
    """The item for one frame's result (outputs that are not arrays are left out)."""
    return _item(TritonItem, result, correlation_id=result.correlation_id)


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
    _needs_numpy(streamer, "triton_frames")
    header = await model_header(streamer, model, model_version)

    def footer(tally: _Tally) -> TritonFooter:
        ok = tally.count - tally.failed
        return TritonFooter(
            count=tally.count,
            ok=ok,
            failed=tally.failed,
            frames_per_s=tally.rate(),
            **tally.times(),
        )

    writer = stream_writer(types or triton_stream_types())
    results = streamer.stream_results(model, model_version, frames)
    async for frame in _serve(writer, header, results, item_from, footer):
        yield frame


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
    return _item(TritonResponseItem, result, index=result.index, final=result.final)


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
    _needs_numpy(streamer, "triton_responses")
    header = TritonResponseHeader(
        model=await model_header(streamer, model, model_version), request=request or {}
    )

    def footer(tally: _Tally) -> TritonResponseFooter:
        return TritonResponseFooter(
            frames=tally.finals,
            responses=tally.count,
            failed=tally.failed,
            first_response_ms=tally.first_ms,
            responses_per_s=tally.rate(),
            **tally.times(),
        )

    writer = stream_writer(types or triton_response_types())
    results = streamer.stream_responses(model, model_version, frames)
    async for frame in _serve(writer, header, results, response_item_from, footer):
        yield frame


# Shared by both typed streams -----------------------------------------------------------


def _needs_numpy(streamer: AsyncTritonBytesStreamer, what: str) -> None:
    if not streamer.parse_outputs_numpy:
        raise ValueError(f"{what} needs a streamer with parse_outputs_numpy=True")


class _Tally:
    """What a footer sums up: results, failures, frames done, latencies, time."""

    def __init__(self) -> None:
        self._started = time.perf_counter()
        self.count = self.failed = self.finals = 0
        self.first_ms: float | None = None
        self._latencies: list[float] = []
        self._elapsed = 0.0

    def add(self, result: FrameResult | ResponseResult) -> None:
        if self.first_ms is None:
            self.first_ms = (time.perf_counter() - self._started) * 1000.0
        self.count += 1
        self.failed += not result.ok
        self.finals += getattr(result, "final", True)
        self._latencies.append(result.timings.get("client_ms", 0.0))

    def times(self) -> dict[str, float]:
        """``latency_p50_ms`` / ``p90`` / ``p99`` and ``elapsed_s``, as both footers name them."""
        pct = latency_percentiles(self._latencies)
        self._elapsed = time.perf_counter() - self._started
        return {f"latency_{q}_ms": pct[q] for q in ("p50", "p90", "p99")} | {
            "elapsed_s": self._elapsed
        }

    def rate(self) -> float:
        """Results per second over the same elapsed time as :meth:`times`."""
        elapsed = self._elapsed or time.perf_counter() - self._started
        return self.count / elapsed if elapsed > 0 else 0.0


async def _serve(
    writer: Any,
    header: pydantic.BaseModel,
    results: AsyncGenerator[ResultT, None],
    item: Callable[[ResultT], pydantic.BaseModel],
    footer: Callable[[_Tally], pydantic.BaseModel],
) -> AsyncIterator[FrameBytes]:
    """Header, one item per result, footer, END; closing it early closes the call."""
    yield writer.yield_header(header)
    tally = _Tally()
    async with contextlib.aclosing(results):
        async for result in results:
            tally.add(result)
            yield writer.yield_item(item(result))
    yield writer.yield_footer(footer(tally))
    yield writer.yield_end()
