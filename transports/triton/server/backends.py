"""The built-in backends: Triton over gRPC, or an embedded Python callable; ``load_backend``.

Both implement the plug-in API of :mod:`transports.triton.server.backend` (take a
validated :class:`~transports.triton.server.backend.InferRequest`, return output tensors
by name or raise :class:`~transports.triton.server.backend.BackendError`); the proxy does
everything else (validation, Acks, concurrency), so every backend answers the same way.
:func:`load_backend` builds one from a ``--backend`` value, wrapped in the coalescer
(:class:`~transports.triton.server.coalesce.CoalescingBackend`) when asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import inspect
import sys
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
import grpc.aio
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from transports.grpc import GrpcOptions
from transports.triton.protocol import dtypes as _dtypes
from transports.triton.protocol import multimodal_pb2 as pb
from transports.triton.server.backend import (
    Backend,
    BackendError,
    InferRequest,
    ModelConfig,
    ModelResponse,
    OutputTensor,
)
from transports.triton.server.coalesce import coalescing

__all__ = [
    "Backend",
    "ModelFunction",
    "PythonBackend",
    "TritonBackend",
    "load_backend",
]

ModelFunction = Callable[
    [str, Mapping[str, np.ndarray]],
    Mapping[str, Any]
    | Awaitable[Mapping[str, Any]]
    | Iterator[Mapping[str, Any]]
    | AsyncIterator[Mapping[str, Any]],
]
"""An embedded model: ``fn(model_name, {input_name: array}) -> {output_name: array}``,
plain or ``async``; plain functions run in a worker thread. A generator or async
generator (one ``yield`` of ``{output_name: array}`` per response) is a streaming
(decoupled) model: each yield becomes one Ack, and its end an empty final Ack."""

_OUTPUT_NAMES_TTL = 60.0
_OUTPUT_NAMES_MAX = 1024


@dataclass(frozen=True)
class _ModelInfo:
    outputs: frozenset[str]
    max_batch_size: int  # 0 when unknown or not batching
    decoupled: bool = False


def _varint(value: int) -> bytes:
    """``value`` (>= 0) as a protobuf varint."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_T = TypeVar("_T")


async def _until(deadline: float, awaitable: Awaitable[_T]) -> _T:
    """``await awaitable`` in this task, failing with TimeoutError at loop time ``deadline``.

    Not ``asyncio.wait_for``: before Python 3.12 it runs the awaitable in a task of its
    own and, when that finishes just as the caller is cancelled, returns the result and
    drops the cancellation (python/cpython#86296). A model generator that yields without
    awaiting finishes every step at once, so a cancelled Chat call's packet could go on
    pulling responses forever, blocked on its full Ack queue.
    """
    if sys.version_info >= (3, 11):
        async with asyncio.timeout_at(deadline):
            return await awaitable
    left = max(deadline - asyncio.get_running_loop().time(), 0.0)  # pragma: no cover - 3.10
    return await asyncio.wait_for(awaitable, left)  # pragma: no cover - 3.10


def _triton_error(exc: grpc.aio.AioRpcError, what: str, timeout: float | None) -> BackendError:
    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"triton {what} timed out after {timeout:g}s"
    else:
        message = f"triton {what} failed: {code.name}: {exc.details()}"
    # UNAVAILABLE is gRPC's word for "no connection" (Triton down, restarting, shutting
    # down; Triton answers an unknown model with NOT_FOUND): the packet never reached a
    # model, so it is worth retrying, unlike the model's own failures.
    status = pb.UNAVAILABLE if code == grpc.StatusCode.UNAVAILABLE else pb.INTERNAL
    return BackendError(message, status=status, code=code)


class TritonBackend(Backend):
    """Forwards to Triton's ``GRPCInferenceService`` with raw tensor bytes.

    The input's bytes go into ``raw_input_contents`` and the outputs come back from
    ``raw_output_contents`` untouched: no NumPy, no copies beyond protobuf's own.

    Args:
        target: a gRPC target: ``host:port``, or several replicas as
            ``ipv4:10.0.0.1:8001,10.0.0.2:8001`` (or a ``dns:`` name with several
            addresses): the channel balances them with gRPC's ``round_robin`` policy.
        max_message_bytes: largest message either way.
        credentials: TLS credentials for Triton, or None for plaintext.
        interceptors: ``grpc.aio`` client interceptors for the channel to Triton
            (the proxy passes the trace-context one when tracing is set up).
    """

    name = "triton"

    def __init__(
        self,
        target: str,
        *,
        max_message_bytes: int = 64 * 1024 * 1024,
        credentials: grpc.ChannelCredentials | None = None,
        interceptors: Sequence[Any] = (),
    ) -> None:
        options = GrpcOptions(
            max_message_bytes=max_message_bytes,
            # Triton enforces gRPC core's server defaults: pings closer than 5 minutes
            # apart while no data flows are strikes, and two strikes end the connection
            # (GOAWAY "too_many_pings", seen with 30 s pings in bench_triton), failing
            # every call on it. Ping no more often than Triton accepts.
            keepalive_time_ms=300_000,
            keepalive_timeout_ms=20_000,
            extra=(
                ("grpc.lb_policy_name", "round_robin"),
                # Reconnect quickly after a Triton restart; the default backoff grows
                # to two minutes, during which every packet would fail.
                ("grpc.initial_reconnect_backoff_ms", 250),
                ("grpc.min_reconnect_backoff_ms", 250),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ),
        ).channel_options()
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(
                target, options=options, interceptors=interceptors or None
            )
        else:
            self._channel = grpc.aio.secure_channel(
                target, credentials, options=options, interceptors=interceptors or None
            )
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        # ModelInfer with the request already serialized (see infer_request_bytes).
        self._model_infer = self._channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=None,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        self._prefixes: dict[tuple[Any, ...], bytes] = {}
        self.target = target
        # (model, version) -> (expiry on the monotonic clock, what we know of the model)
        self._models: dict[tuple[str, str], tuple[float, _ModelInfo]] = {}

    async def _fetch_model_info(self, model: str, version: str, timeout: float) -> _ModelInfo:
        meta = await self._stub.ModelMetadata(
            service_pb2.ModelMetadataRequest(name=model, version=version), timeout=timeout
        )
        config = await self._stub.ModelConfig(
            service_pb2.ModelConfigRequest(name=model, version=version), timeout=timeout
        )
        info = _ModelInfo(
            frozenset(o.name for o in meta.outputs),
            int(config.config.max_batch_size),
            bool(config.config.model_transaction_policy.decoupled),
        )
        if len(self._models) >= _OUTPUT_NAMES_MAX:
            self._models.clear()
        self._models[(model, version)] = (time.monotonic() + _OUTPUT_NAMES_TTL, info)
        return info

    async def _model_info(self, request: InferRequest) -> _ModelInfo | None:
        cached = self._models.get((request.model, request.model_version))
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        try:
            return await self._fetch_model_info(
                request.model, request.model_version, min(request.timeout, 5.0)
            )
        except grpc.aio.AioRpcError:
            return None  # the inference call reports what is wrong

    async def decoupled(self, request: InferRequest) -> bool:
        """The model config's ``model_transaction_policy.decoupled`` (cached as the outputs)."""
        cached = self._models.get((request.model, request.model_version))
        if cached is not None and cached[0] > time.monotonic():
            return cached[1].decoupled  # the common case, without a coroutine
        info = await self._model_info(request)
        return info is not None and info.decoupled

    def _wanted(self, request: InferRequest, info: _ModelInfo | None) -> tuple[str, ...]:
        # Ask only for outputs the model has: Triton fails the whole request on an
        # unknown name, while the seed's protocol marks it {"error": "missing"}.
        return tuple(n for n in request.outputs if info is None or n in info.outputs)

    async def infer(self, request: InferRequest) -> Mapping[str, OutputTensor]:
        """Send one ModelInfer to Triton; see :meth:`Backend.infer`."""
        cached = self._models.get((request.model, request.model_version))
        info: _ModelInfo | None
        if cached is not None and cached[0] > time.monotonic():
            info = cached[1]  # the common case, without a coroutine
        else:
            info = await self._model_info(request)
        return await self._infer_one(request, self._wanted(request, info))

    async def stream_infer(self, request: InferRequest) -> AsyncGenerator[ModelResponse, None]:
        """Send one request over Triton's ``ModelStreamInfer``; yield its responses.

        The request asks for ``triton_enable_empty_final_response``, so Triton flags the
        request's last response ``triton_final_response`` (an empty one when the model
        has no more outputs). One stream call per request: closing this iterator
        cancels that call, which Triton turns into a cancellation of the request.
        The stream is read only as fast as the caller pulls, so gRPC's flow control
        holds Triton back for a slow reader.
        """
        cached = self._models.get((request.model, request.model_version))
        if cached is not None and cached[0] > time.monotonic():
            info: _ModelInfo | None = cached[1]  # the common case, without a coroutine
        else:
            info = await self._model_info(request)
        message = self._infer_message(request, self._wanted(request, info))
        message.parameters["triton_enable_empty_final_response"].bool_param = True
        # The request is written on the call directly (no request iterator, so no task
        # of grpc's to drain one), and the stream stays open until the final response.
        call = self._stub.ModelStreamInfer(timeout=request.timeout)
        try:
            with contextlib.suppress(asyncio.InvalidStateError):  # ended already: read() says how
                await call.write(message)
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:  # type: ignore[attr-defined]  # (not in grpc-stubs)
                    break
                if response.error_message:
                    raise BackendError(f"triton inference failed: {response.error_message}")
                infer = response.infer_response
                final_param = infer.parameters.get("triton_final_response")
                final = bool(final_param.bool_param) if final_param is not None else False
                outputs = {
                    out.name: OutputTensor(out.name, out.datatype, tuple(out.shape), raw)
                    for out, raw in zip(infer.outputs, infer.raw_output_contents, strict=True)
                }
                yield ModelResponse(outputs, final=final)
                if final:
                    return
            raise BackendError("triton ended the stream before the request's final response")
        except grpc.aio.AioRpcError as exc:
            raise _triton_error(exc, "inference", request.timeout) from exc
        finally:
            call.cancel()

    def _infer_message(
        self, request: InferRequest, wanted: Sequence[str], *, per_packet: bool = True
    ) -> service_pb2.ModelInferRequest:
        """``request`` as a ``ModelInferRequest``; without ``per_packet``, without its id
        and tensor bytes (the part :meth:`infer_request_bytes` caches)."""
        return service_pb2.ModelInferRequest(
            model_name=request.model,
            model_version=request.model_version,
            id=request.cid if per_packet else "",
            inputs=[
                service_pb2.ModelInferRequest.InferInputTensor(
                    name=request.input_name, datatype=request.datatype, shape=request.shape
                )
            ],
            outputs=[
                service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in wanted
            ],
            raw_input_contents=[request.data] if per_packet else [],
        )

    def infer_request_bytes(self, request: InferRequest, wanted: Sequence[str]) -> bytes:
        """``request`` as a serialized ``ModelInferRequest``, the same message
        :meth:`_infer_message` builds, without building it.

        Everything but the id and the tensor bytes is the same for every frame of a
        stream, so it is serialized once per (model, version, input, datatype, shape,
        outputs) and cached; per packet the id and ``raw_input_contents`` fields are
        appended (protobuf parsers take fields in any order). The tensor's bytes are
        copied once, into the message, instead of into a protobuf message and again
        into its serialization.
        """
        wanted = tuple(wanted)
        key = (
            request.model,
            request.model_version,
            request.input_name,
            request.datatype,
            request.shape,
            wanted,
        )
        prefix = self._prefixes.get(key)
        if prefix is None:
            prefix = self._infer_message(request, wanted, per_packet=False).SerializeToString()
            if len(self._prefixes) >= _OUTPUT_NAMES_MAX:
                self._prefixes.clear()
            self._prefixes[key] = prefix
        cid = request.cid.encode("utf-8")
        data = request.data
        if not cid:
            return b"".join((prefix, b":", _varint(len(data)), data))
        return b"".join((prefix, b"\x1a", _varint(len(cid)), cid, b":", _varint(len(data)), data))

    async def _infer_one(
        self, request: InferRequest, wanted: Sequence[str]
    ) -> Mapping[str, OutputTensor]:
        message = self.infer_request_bytes(request, wanted)
        try:
            response = await self._model_infer(message, timeout=request.timeout)
        except grpc.aio.AioRpcError as exc:
            raise _triton_error(exc, "inference", request.timeout) from exc
        return {
            out.name: OutputTensor(out.name, out.datatype, tuple(out.shape), raw)
            for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
        }

    async def model_config(self, model: str, version: str) -> ModelConfig:
        """Triton's model config: ``max_batch_size``, ``decoupled``, the output names.

        Cached as the inference path's copy (a minute).

        Raises:
            BackendError: Triton could not answer (unreachable, unknown model).
        """
        cached = self._models.get((model, version))
        if cached is not None and cached[0] > time.monotonic():
            info = cached[1]
        else:
            try:
                info = await self._fetch_model_info(model, version, 5.0)
            except grpc.aio.AioRpcError as exc:
                raise _triton_error(exc, "model config", 5.0) from exc
        return ModelConfig(
            max_batch_size=info.max_batch_size, decoupled=info.decoupled, outputs=info.outputs
        )

    async def model_metadata(self, model: str, version: str) -> pb.ModelMetadataResponse:
        """Triton's model metadata and config, translated; see :meth:`Backend.model_metadata`."""
        try:
            meta = await self._stub.ModelMetadata(
                service_pb2.ModelMetadataRequest(name=model, version=version), timeout=10.0
            )
            config = await self._stub.ModelConfig(
                service_pb2.ModelConfigRequest(name=model, version=version), timeout=10.0
            )
        except grpc.aio.AioRpcError as exc:
            raise _triton_error(exc, "model metadata", 10.0) from exc
        ready, _ = await self.model_ready(model, version)

        def tensors(items: Any) -> list[pb.TensorMetadata]:
            return [
                pb.TensorMetadata(
                    name=t.name,
                    dtype=_dtypes.from_triton(t.datatype),  # type: ignore[arg-type]
                    triton_dtype=t.datatype,
                    shape=pb.Shape(dims=list(t.shape)),
                )
                for t in items
            ]

        return pb.ModelMetadataResponse(
            model=meta.name,
            versions=list(meta.versions),
            platform=meta.platform,
            inputs=tensors(meta.inputs),
            outputs=tensors(meta.outputs),
            ready=ready,
            max_batch_size=config.config.max_batch_size,
            decoupled=config.config.model_transaction_policy.decoupled,
        )

    async def server_ready(self) -> tuple[bool, str]:
        """Triton's ServerReady; unreachable counts as not ready."""
        try:
            response = await self._stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=5.0)
        except grpc.aio.AioRpcError as exc:
            return False, str(_triton_error(exc, "server ready", 5.0))
        return bool(response.ready), "" if response.ready else "triton is not ready"

    async def model_ready(self, model: str, version: str) -> tuple[bool, str]:
        """Triton's ModelReady; unreachable or unknown counts as not ready."""
        try:
            response = await self._stub.ModelReady(
                service_pb2.ModelReadyRequest(name=model, version=version), timeout=5.0
            )
        except grpc.aio.AioRpcError as exc:
            return False, str(_triton_error(exc, "model ready", 5.0))
        return bool(response.ready), "" if response.ready else f"model {model!r} is not ready"

    async def close(self) -> None:
        """Close the channel to Triton."""
        await self._channel.close(None)


def _to_output(name: str, value: Any) -> OutputTensor:
    array = np.ascontiguousarray(value)
    datatype = next(
        (t for t, np_name in _dtypes.NUMPY_NAME.items() if np.dtype(np_name) == array.dtype),
        None,
    )
    if datatype is None:
        # Non-native byte order or an exotic dtype: normalise to little-endian if we can.
        swapped = array.dtype.newbyteorder("<")
        datatype = next(
            (t for t, np_name in _dtypes.NUMPY_NAME.items() if np.dtype(np_name) == swapped),
            None,
        )
        if datatype is None:
            raise BackendError(f"output {name!r} has unsupported dtype {array.dtype}")
        array = array.astype(swapped)
    return OutputTensor(name, datatype, tuple(int(d) for d in array.shape), array.tobytes())


class PythonBackend(Backend):
    """Runs an embedded Python model in the proxy process (no Triton needed).

    Args:
        fn: the model, see :data:`ModelFunction`.
        name: shown as ``"backend"`` in Acks.
        metadata: model name -> ``ModelMetadataResponse`` for discovery, if known.
    """

    def __init__(
        self,
        fn: ModelFunction,
        *,
        name: str = "python",
        metadata: Mapping[str, pb.ModelMetadataResponse] | None = None,
    ) -> None:
        self._fn = fn
        # Async callables: coroutine functions and objects with an async __call__.
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - the method, not callability
        )
        # Streaming models: generator functions, or objects with a generator __call__.
        call = getattr(fn, "__call__", None)  # noqa: B004 - the method, not callability
        self._streams = any(
            inspect.isgeneratorfunction(f) or inspect.isasyncgenfunction(f) for f in (fn, call)
        )
        self._metadata = dict(metadata or {})
        self.name = name

    def _inputs(self, request: InferRequest) -> dict[str, np.ndarray]:
        np_name = _dtypes.NUMPY_NAME.get(request.datatype)
        if np_name is None:
            raise BackendError(
                f"the python backend does not take {request.datatype} inputs",
                status=pb.UNSUPPORTED,
            )
        array = np.frombuffer(request.data, dtype=np_name).reshape(request.shape)
        return {request.input_name: array}

    async def decoupled(self, request: InferRequest) -> bool:
        """A generator function streams; else the model's metadata says (``decoupled``)."""
        if self._streams:
            return True
        meta = self._metadata.get(request.model)
        return meta is not None and meta.decoupled

    def _failure(self, exc: Exception, request: InferRequest) -> BackendError:
        if isinstance(exc, BackendError):
            return exc
        if isinstance(exc, asyncio.TimeoutError):
            return BackendError(f"{self.name} inference timed out after {request.timeout:g}s")
        return BackendError(f"{self.name} inference failed: {type(exc).__name__}: {exc}")

    def _outputs(self, result: Any) -> dict[str, OutputTensor]:
        if not isinstance(result, Mapping):
            raise BackendError(f"{self.name} model returned {type(result).__name__}, not a mapping")
        return {str(k): _to_output(str(k), v) for k, v in result.items()}

    async def stream_infer(self, request: InferRequest) -> AsyncGenerator[ModelResponse, None]:
        """Iterate the model's generator: one response per ``yield``, then an empty final one.

        A plain (non-generator) result is one final response. ``request.timeout``
        bounds the whole stream. Closing this iterator closes the generator (its
        ``finally`` blocks run): that is how an embedded model sees cancellation.
        """
        inputs = self._inputs(request)
        deadline = asyncio.get_running_loop().time() + request.timeout
        try:
            if (
                self._is_async
                or inspect.isasyncgenfunction(
                    getattr(self._fn, "__call__", self._fn)  # noqa: B004
                )
                or inspect.isasyncgenfunction(self._fn)
            ):
                result: Any = self._fn(request.model, inputs)
                if inspect.isawaitable(result):
                    result = await _until(deadline, result)
            else:
                result = await _until(deadline, asyncio.to_thread(self._fn, request.model, inputs))
            if isinstance(result, Mapping):
                yield ModelResponse(self._outputs(result), final=True)
                return
            if hasattr(result, "__anext__"):
                agen = cast(AsyncIterator[Mapping[str, Any]], result)
                try:
                    while True:
                        try:
                            item = await _until(deadline, agen.__anext__())
                        except StopAsyncIteration:
                            break
                        yield ModelResponse(self._outputs(item))
                finally:
                    aclose = getattr(agen, "aclose", None)
                    if aclose is not None:
                        await aclose()
            elif hasattr(result, "__next__"):
                gen = cast(Iterator[Mapping[str, Any]], result)
                done: Any = object()

                def step() -> Any:
                    return next(gen, done)

                try:
                    while True:
                        item = await _until(deadline, asyncio.to_thread(step))
                        if item is done:
                            break
                        yield ModelResponse(self._outputs(item))
                finally:
                    close = getattr(gen, "close", None)
                    if close is not None:
                        with contextlib.suppress(ValueError):  # still running in its thread
                            close()
            else:
                self._outputs(result)  # raises: not a mapping
        except Exception as exc:
            raise self._failure(exc, request) from exc
        yield ModelResponse({}, final=True)

    async def infer(self, request: InferRequest) -> Mapping[str, OutputTensor]:
        """Call the function with NumPy views of the input; see :meth:`Backend.infer`."""
        inputs = self._inputs(request)
        deadline = asyncio.get_running_loop().time() + request.timeout
        try:
            if self._is_async:
                pending = self._fn(request.model, inputs)
                assert inspect.isawaitable(pending)
                result = await _until(deadline, pending)
            else:
                sync_fn = cast(
                    Callable[[str, Mapping[str, np.ndarray]], Mapping[str, Any]], self._fn
                )
                result = await _until(deadline, asyncio.to_thread(sync_fn, request.model, inputs))
        except Exception as exc:
            raise self._failure(exc, request) from exc
        return self._outputs(result)

    async def model_config(self, model: str, version: str) -> ModelConfig:
        """From the metadata given at construction (see :meth:`Backend.model_config`).

        A generator function streams, so every model of it is ``decoupled``.
        """
        config = await super().model_config(model, version)
        return dataclasses.replace(config, decoupled=True) if self._streams else config

    async def model_metadata(self, model: str, version: str) -> pb.ModelMetadataResponse:
        """The metadata given at construction; NOT_FOUND otherwise."""
        meta = self._metadata.get(model)
        if meta is None:
            raise BackendError(
                f"no metadata for model {model!r} in the {self.name} backend",
                code=grpc.StatusCode.NOT_FOUND,
            )
        return meta

    async def server_ready(self) -> tuple[bool, str]:
        """Always ready: the model lives in this process."""
        return True, ""

    async def model_ready(self, model: str, version: str) -> tuple[bool, str]:
        """Ready if the model has metadata, or if none was given at all."""
        if not self._metadata or model in self._metadata:
            return True, ""
        return False, f"unknown model {model!r}"


def load_backend(
    spec: str,
    *,
    triton_url: str | None,
    max_message_bytes: int,
    coalesce: int = 0,
    coalesce_in_flight: int = 0,
    interceptors: Sequence[Any] = (),
) -> Backend:
    """Build the backend a ``--backend`` value names.

    Args:
        spec: ``"triton"`` (forward to ``triton_url``), ``"demo"`` (built-in models,
            see :mod:`transports.triton.server.demo`) or ``"python:module:name"``: a
            :data:`ModelFunction` imported from ``module`` (run by a
            :class:`PythonBackend`), or a :class:`Backend` subclass (built with no
            arguments).
        triton_url: the Triton target, needed by ``"triton"``.
        max_message_bytes: largest message to and from Triton.
        coalesce: if >= 2, the backend is wrapped in a
            :class:`~transports.triton.server.coalesce.CoalescingBackend` of
            ``max_rows=coalesce``; 0 or 1: not.
        coalesce_in_flight: the coalescer's ``max_in_flight``.
        interceptors: see :class:`TritonBackend`.

    Raises:
        ValueError: the spec is malformed, ``triton`` has no URL or ``coalesce`` < 0.
        ImportError, AttributeError: the python callable cannot be imported.
    """
    if spec == "triton":
        if not triton_url:
            raise ValueError("--backend triton needs --triton-url (or TRITON_URL)")
        triton = TritonBackend(
            triton_url, max_message_bytes=max_message_bytes, interceptors=interceptors
        )
        return coalescing(triton, coalesce, max_in_flight=coalesce_in_flight)
    if spec == "demo":
        from transports.triton.server import demo as _demo

        demo = PythonBackend(_demo.demo_model, name="demo", metadata=_demo.demo_metadata())
        return coalescing(demo, coalesce, max_in_flight=coalesce_in_flight)
    kind, _, ref = spec.partition(":")
    module_name, _, attr = ref.partition(":")
    if kind != "python" or not module_name or not attr:
        raise ValueError(f"--backend must be triton, demo or python:module:callable, got {spec!r}")
    fn = getattr(importlib.import_module(module_name), attr)
    if isinstance(fn, type) and issubclass(fn, Backend):
        # A backend class of one's own (docs/triton-backends.md), built with no arguments.
        return coalescing(fn(), coalesce, max_in_flight=coalesce_in_flight)
    if not callable(fn):
        raise ValueError(f"{spec!r} is not callable")
    return coalescing(PythonBackend(fn, name="python"), coalesce, max_in_flight=coalesce_in_flight)
