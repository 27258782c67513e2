"""The proxy's backend plug-in API: :class:`Backend` and what it takes and gives.

The proxy does everything around a backend: authentication, packet validation
(:mod:`.packets`), concurrency, budgets, Acks, metrics and cancellation. A backend only
runs inferences: it takes a validated :class:`InferRequest` and returns output tensors
by name (:class:`OutputTensor`), or, for a streaming (decoupled) model, yields
:class:`ModelResponse` objects; on failure it raises :class:`BackendError`, whose
``status`` becomes the Ack's. Every backend, built in or yours, answers the same way.
:meth:`Backend.model_config` tells wrappers (:class:`BackendWrapper` subclasses) what
they need to know about a model (:class:`ModelConfig`).

Built in: :class:`~transports.triton.server.backends.TritonBackend` (Triton over
gRPC), :class:`~transports.triton.server.backends.PythonBackend` (an embedded Python
callable); :class:`~transports.triton.server.coalesce.CoalescingBackend` wraps any
backend. Pass your own to :func:`~transports.triton.server.start_proxy` as ``backend=``.
See ``docs/triton-backends.md``.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass

import grpc

from transports.triton.protocol import multimodal_pb2 as pb

__all__ = [
    "Backend",
    "BackendError",
    "BackendWrapper",
    "InferRequest",
    "ModelConfig",
    "ModelResponse",
    "OutputTensor",
]


@dataclass(frozen=True)
class InferRequest:
    """One validated inference: a single input tensor and the output names wanted.

    Attributes:
        cid: the packet's correlation id.
        model: model name.
        model_version: model version.
        input_name: the input tensor's name.
        datatype: Triton's datatype name, e.g. "FP32".
        shape: the input's shape: at least one dim, every dim >= 0.
        data: the input's raw bytes (C order, little-endian), passed through untouched.
        outputs: the output names the client asked for, in its order.
        timeout: seconds the backend call may take.
        binary_outputs: the client wants raw output bytes in ``Ack.outputs``.
    """

    cid: str
    model: str
    model_version: str
    input_name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes
    outputs: tuple[str, ...]
    timeout: float
    binary_outputs: bool = False


@dataclass(frozen=True)
class OutputTensor:
    """One output tensor from a backend: Triton datatype name, shape and raw bytes."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class ModelResponse:
    """One response of a streaming (decoupled) model to one request.

    Attributes:
        outputs: the response's output tensors by name (empty for an empty final
            response, as Triton sends with ``enable_empty_final_response``).
        final: the request's last response.
    """

    outputs: Mapping[str, OutputTensor]
    final: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """What a wrapper backend needs to know about one model (Triton's model config, in short).

    Attributes:
        max_batch_size: the most rows the model takes along its first (batch) dimension
            in one request; 0 when it does not batch or it is unknown (the coalescer
            then leaves its packets alone).
        decoupled: the model streams (any number of responses per request).
        outputs: the model's output names, or None when unknown.
    """

    max_batch_size: int = 0
    decoupled: bool = False
    outputs: frozenset[str] | None = None


class BackendError(RuntimeError):
    """A backend call failed (unreachable, timed out, model error).

    Attributes:
        status: the ``AckStatus`` of the packet's Ack: ``pb.UNAVAILABLE`` when the
            backend could not be reached (the packet never reached a model; the client
            may retry it), ``pb.BAD_REQUEST`` / ``pb.UNSUPPORTED`` when the packet itself
            is wrong for the model, else ``pb.INTERNAL`` (the default).
        code: the gRPC status of RPCs that answer with one (``model_metadata``:
            ``NOT_FOUND`` for an unknown model); ignored for packets.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = pb.INTERNAL,
        code: grpc.StatusCode = grpc.StatusCode.INTERNAL,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Backend(abc.ABC):
    """What the proxy forwards validated requests to: subclass it to serve any model runtime.

    Implement :meth:`infer`, :meth:`model_metadata`, :meth:`server_ready` and
    :meth:`model_ready`; override :meth:`decoupled` and :meth:`stream_infer` if a model
    streams, :meth:`model_config` to let wrappers (the coalescer) batch, :meth:`close`
    to release connections.

    The rules every backend follows:

    - **Async, on the proxy's event loop.** Every method is a coroutine the proxy awaits
      on its one event loop; never block it. Run blocking model code with
      ``await asyncio.to_thread(...)`` (or in a process pool).
    - **Concurrent.** :meth:`infer` and :meth:`stream_infer` are called concurrently:
      up to ``--max-in-flight`` packets per Chat call, for every open call at once.
    - **Deadline.** ``request.timeout`` is the call's deadline in seconds; the backend
      enforces it and raises :class:`BackendError` when it passes (the proxy sets no
      timer of its own around a backend call).
    - **Cancellation.** When a client cancels, disconnects or its call ends, the proxy
      cancels the task awaiting :meth:`infer` (``asyncio.CancelledError`` at the
      ``await``: let it propagate, clean up in ``finally``) and closes the iterator of
      :meth:`stream_infer` (``GeneratorExit`` at its ``yield``): stop the model's work.
    - **Errors.** A :class:`BackendError` becomes an Ack with its ``status`` and the
      message as the Ack's ``"error"``; any other exception becomes an ``INTERNAL`` Ack
      (``"TypeName: message"``) and is logged as a bug. ``model_metadata`` failures
      answer the ModelMetadata RPC with the error's gRPC ``code``.
    """

    name: str = "backend"
    """Shown as ``"backend"`` in every Ack's JSON."""

    @abc.abstractmethod
    async def infer(self, request: InferRequest) -> Mapping[str, OutputTensor]:
        """Run one inference of a model that answers once.

        Args:
            request: the validated packet; ``request.data`` holds ``request.shape`` of
                ``request.datatype`` in C order, little-endian.

        Returns:
            The output tensors by name. Each requested name found here goes into the Ack
            in the order asked; a requested name that is absent becomes
            ``{"error": "missing"}``; names not asked for are left out.

        Raises:
            BackendError: the call failed or ``request.timeout`` passed.
        """

    async def decoupled(self, request: InferRequest) -> bool:
        """Whether ``request``'s model streams (any number of responses per request).

        Called for every packet, so answer from memory. True sends the request through
        :meth:`stream_infer`, False through :meth:`infer`. The default: False (every
        model answers once).
        """
        return False

    async def stream_infer(self, request: InferRequest) -> AsyncGenerator[ModelResponse, None]:
        """Run one inference of a streaming model: its responses, in order.

        Each response becomes one Ack, in order; the last one has ``final`` set (if the
        iterator ends without one, the proxy sends an empty final Ack). The iterator is
        pulled only as fast as the client reads. Closing it early (the client went away)
        must cancel the model's work. The default: one final response from :meth:`infer`.

        Raises:
            BackendError: the call failed, before or between responses (between: the
                proxy sends an error Ack, then the packet's final Ack).
        """
        yield ModelResponse(await self.infer(request), final=True)

    async def model_config(self, model: str, version: str) -> ModelConfig:
        """What wrappers need to know about a model: batch size, streaming, output names.

        Wrappers call it once per model and version and keep the answer for a while
        (the coalescer: a minute), so it may be slow. The default reads
        :meth:`model_metadata` (``max_batch_size``, ``decoupled``, the output names) and
        answers ``ModelConfig()`` (no batching) when that fails.

        Raises:
            BackendError: the backend cannot answer now (a wrapper then leaves the
                model's packets as they are and asks again later).
        """
        try:
            meta = await self.model_metadata(model, version)
        except BackendError:
            return ModelConfig()
        return ModelConfig(
            max_batch_size=max(int(meta.max_batch_size), 0),
            decoupled=bool(meta.decoupled),
            outputs=frozenset(o.name for o in meta.outputs) or None,
        )

    @abc.abstractmethod
    async def model_metadata(self, model: str, version: str) -> pb.ModelMetadataResponse:
        """A model's inputs and outputs, served by the proxy's ModelMetadata RPC.

        ``version`` is "" for the latest. Fill ``max_batch_size`` and ``decoupled``:
        clients and the default :meth:`model_config` read them.

        Raises:
            BackendError: with ``code=grpc.StatusCode.NOT_FOUND`` for an unknown model
                (UNAVAILABLE when the runtime cannot be reached); the RPC fails with it.
        """

    @abc.abstractmethod
    async def server_ready(self) -> tuple[bool, str]:
        """Whether the backend takes requests, and why not (``(True, "")`` when ready).

        Serves the ServerReady RPC and the health probe (every ``--triton-probe-secs``
        seconds; the probe counts an exception or a hang past the interval as not
        ready). Answer quickly and do not raise.
        """

    @abc.abstractmethod
    async def model_ready(self, model: str, version: str) -> tuple[bool, str]:
        """Whether one model takes requests, and why not; serves the ModelReady RPC.

        An unknown model is ``(False, "why")``, not an exception.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to close by default
        """Release connections and workers; called once when the proxy stops."""


class BackendWrapper(Backend):
    """A backend that forwards every call to ``inner``: subclass it and override what changes.

    The proxy's own wrappers are built this way
    (:class:`~transports.triton.server.coalesce.CoalescingBackend`); ``name`` is the
    inner backend's, so Acks still say which runtime answered.

    Args:
        inner: the backend to wrap (any :class:`Backend`, wrapped or not).
    """

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name

    async def infer(self, request: InferRequest) -> Mapping[str, OutputTensor]:
        """``inner.infer``."""
        return await self.inner.infer(request)

    async def decoupled(self, request: InferRequest) -> bool:
        """``inner.decoupled``."""
        return await self.inner.decoupled(request)

    async def stream_infer(self, request: InferRequest) -> AsyncGenerator[ModelResponse, None]:
        """``inner.stream_infer``, closed when this iterator is."""
        async with contextlib.aclosing(self.inner.stream_infer(request)) as responses:
            async for response in responses:
                yield response

    async def model_config(self, model: str, version: str) -> ModelConfig:
        """``inner.model_config``."""
        return await self.inner.model_config(model, version)

    async def model_metadata(self, model: str, version: str) -> pb.ModelMetadataResponse:
        """``inner.model_metadata``."""
        return await self.inner.model_metadata(model, version)

    async def server_ready(self) -> tuple[bool, str]:
        """``inner.server_ready``."""
        return await self.inner.server_ready()

    async def model_ready(self, model: str, version: str) -> tuple[bool, str]:
        """``inner.model_ready``."""
        return await self.inner.model_ready(model, version)

    async def close(self) -> None:
        """``inner.close``."""
        await self.inner.close()
