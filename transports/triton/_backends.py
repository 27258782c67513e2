"""Backends behind the proxy: Triton over gRPC, or an embedded Python callable.

A backend takes a validated :class:`~transports.triton._packets.InferRequest` and
returns output tensors by name, or raises
:class:`~transports.triton._packets.BackendError`. The proxy does everything else
(validation, Acks, concurrency), so every backend answers the same way.
"""

from __future__ import annotations

import abc
import asyncio
import importlib
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import grpc
import grpc.aio
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from transports.triton import _dtypes
from transports.triton import multimodal_pb2 as pb
from transports.triton._packets import BackendError, InferRequest, OutputTensor

__all__ = [
    "Backend",
    "ModelFunction",
    "PythonBackend",
    "TritonBackend",
    "load_backend",
]

ModelFunction = Callable[
    [str, Mapping[str, np.ndarray]],
    Mapping[str, Any] | Awaitable[Mapping[str, Any]],
]
"""An embedded model: ``fn(model_name, {input_name: array}) -> {output_name: array}``,
plain or ``async``. Plain functions run in a worker thread."""

_OUTPUT_NAMES_TTL = 60.0
_OUTPUT_NAMES_MAX = 1024


class Backend(abc.ABC):
    """What the proxy forwards validated requests to."""

    name: str = "backend"
    """Shown as ``"backend"`` in every Ack's JSON."""

    @abc.abstractmethod
    async def infer(self, request: InferRequest) -> Mapping[str, OutputTensor]:
        """Run one inference.

        Returns:
            The output tensors the backend produced, by name. Requested names that are
            absent become ``{"error": "missing"}`` in the Ack.

        Raises:
            BackendError: the call failed or timed out.
        """

    @abc.abstractmethod
    async def model_metadata(self, model: str, version: str) -> pb.ModelMetadataResponse:
        """A model's inputs and outputs. Raises :class:`BackendError` with a gRPC code."""

    @abc.abstractmethod
    async def server_ready(self) -> tuple[bool, str]:
        """Whether the backend takes requests, and why not."""

    @abc.abstractmethod
    async def model_ready(self, model: str, version: str) -> tuple[bool, str]:
        """Whether one model takes requests, and why not."""

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to close by default
        """Release connections."""


def _triton_error(exc: grpc.aio.AioRpcError, what: str, timeout: float | None) -> BackendError:
    code = exc.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = f"triton {what} timed out after {timeout:g}s"
    else:
        message = f"triton {what} failed: {code.name}: {exc.details()}"
    return BackendError(message, code=code)


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
    """

    name = "triton"

    def __init__(
        self,
        target: str,
        *,
        max_message_bytes: int = 64 * 1024 * 1024,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        options: Sequence[tuple[str, Any]] = [
            ("grpc.lb_policy_name", "round_robin"),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # Reconnect quickly after a Triton restart; the default backoff grows
            # to two minutes, during which every packet would fail.
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
        ]
        if credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        self.target = target
        # (model, version) -> (expiry on the monotonic clock, output names)
        self._output_names: dict[tuple[str, str], tuple[float, frozenset[str]]] = {}

    async def _known_outputs(self, model: str, version: str, timeout: float) -> frozenset[str]:
        key = (model, version)
        now = time.monotonic()
        cached = self._output_names.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        request = service_pb2.ModelMetadataRequest(name=model, version=version)
        response = await self._stub.ModelMetadata(request, timeout=timeout)
        names = frozenset(o.name for o in response.outputs)
        if len(self._output_names) >= _OUTPUT_NAMES_MAX:
            self._output_names.clear()
        self._output_names[key] = (now + _OUTPUT_NAMES_TTL, names)
        return names

    async def infer(self, request: InferRequest) -> Mapping[str, OutputTensor]:
        """Send one ModelInfer to Triton; see :meth:`Backend.infer`."""
        cached = self._output_names.get((request.model, request.model_version))
        known: frozenset[str] | None
        if cached is not None and cached[0] > time.monotonic():
            known = cached[1]  # the common case, without a coroutine
        else:
            try:
                known = await self._known_outputs(
                    request.model, request.model_version, min(request.timeout, 5.0)
                )
            except grpc.aio.AioRpcError:
                known = None  # ModelInfer below reports what is wrong
        # Ask only for outputs the model has: Triton fails the whole request on an
        # unknown name, while the seed's protocol marks it {"error": "missing"}.
        wanted = [n for n in request.outputs if known is None or n in known]
        message = service_pb2.ModelInferRequest(
            model_name=request.model,
            model_version=request.model_version,
            id=request.cid,
            inputs=[
                service_pb2.ModelInferRequest.InferInputTensor(
                    name=request.input_name, datatype=request.datatype, shape=request.shape
                )
            ],
            outputs=[
                service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in wanted
            ],
            raw_input_contents=[request.data],
        )
        try:
            response = await self._stub.ModelInfer(message, timeout=request.timeout)
        except grpc.aio.AioRpcError as exc:
            raise _triton_error(exc, "inference", request.timeout) from exc
        return {
            out.name: OutputTensor(out.name, out.datatype, tuple(out.shape), raw)
            for out, raw in zip(response.outputs, response.raw_output_contents, strict=True)
        }

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
        self._metadata = dict(metadata or {})
        self.name = name

    async def infer(self, request: InferRequest) -> Mapping[str, OutputTensor]:
        """Call the function with NumPy views of the input; see :meth:`Backend.infer`."""
        np_name = _dtypes.NUMPY_NAME.get(request.datatype)
        if np_name is None:
            raise BackendError(
                f"the python backend does not take {request.datatype} inputs",
                status=pb.UNSUPPORTED,
            )
        array = np.frombuffer(request.data, dtype=np_name).reshape(request.shape)
        inputs = {request.input_name: array}
        try:
            if self._is_async:
                pending = self._fn(request.model, inputs)
                assert inspect.isawaitable(pending)
                result = await asyncio.wait_for(pending, request.timeout)
            else:
                sync_fn = cast(
                    Callable[[str, Mapping[str, np.ndarray]], Mapping[str, Any]], self._fn
                )
                result = await asyncio.wait_for(
                    asyncio.to_thread(sync_fn, request.model, inputs), request.timeout
                )
        except asyncio.TimeoutError as exc:
            raise BackendError(
                f"{self.name} inference timed out after {request.timeout:g}s"
            ) from exc
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(
                f"{self.name} inference failed: {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(result, Mapping):
            raise BackendError(f"{self.name} model returned {type(result).__name__}, not a mapping")
        return {str(k): _to_output(str(k), v) for k, v in result.items()}

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


def load_backend(spec: str, *, triton_url: str | None, max_message_bytes: int) -> Backend:
    """Build the backend a ``--backend`` value names.

    Args:
        spec: ``"triton"`` (forward to ``triton_url``), ``"demo"`` (built-in models,
            see :mod:`transports.triton._demo`) or ``"python:module:callable"`` (a
            :data:`ModelFunction` imported from ``module``).
        triton_url: the Triton target, needed by ``"triton"``.
        max_message_bytes: largest message to and from Triton.

    Raises:
        ValueError: the spec is malformed or ``triton`` has no URL.
        ImportError, AttributeError: the python callable cannot be imported.
    """
    if spec == "triton":
        if not triton_url:
            raise ValueError("--backend triton needs --triton-url (or TRITON_URL)")
        return TritonBackend(triton_url, max_message_bytes=max_message_bytes)
    if spec == "demo":
        from transports.triton import _demo

        return PythonBackend(_demo.demo_model, name="demo", metadata=_demo.demo_metadata())
    kind, _, ref = spec.partition(":")
    module_name, _, attr = ref.partition(":")
    if kind != "python" or not module_name or not attr:
        raise ValueError(f"--backend must be triton, demo or python:module:callable, got {spec!r}")
    fn = getattr(importlib.import_module(module_name), attr)
    if not callable(fn):
        raise ValueError(f"{spec!r} is not callable")
    return PythonBackend(fn, name="python")
