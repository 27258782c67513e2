"""The proxy's backend plug-in API: :class:`Backend` and what it takes and gives.

The proxy does everything around a backend: authentication, packet validation
(:mod:`.packets`), concurrency, budgets, Acks, metrics and cancellation. A backend only
runs inferences: it takes a validated :class:`InferRequest` and returns output tensors
by name (:class:`OutputTensor`), or, for a streaming (decoupled) model, yields
:class:`ModelResponse` objects; on failure it raises :class:`BackendError`, whose
``status`` becomes the Ack's. Every backend, built in or yours, answers the same way.

Built in: :class:`~transports.triton.server.backends.TritonBackend` (Triton over
gRPC), :class:`~transports.triton.server.backends.PythonBackend` (an embedded Python
callable); :class:`~transports.triton.server.coalesce.CoalescingBackend` wraps any
backend. Pass your own to :func:`~transports.triton.server.start_proxy` as ``backend=``.
See ``docs/triton-backends.md``.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass

import grpc

from transports.triton.protocol import multimodal_pb2 as pb

__all__ = ["Backend", "BackendError", "InferRequest", "ModelResponse", "OutputTensor"]


@dataclass(frozen=True)
class InferRequest:
    """One validated inference: a single input tensor and the output names wanted.

    Attributes:
        cid: the packet's correlation id.
        model: model name.
        model_version: model version.
        input_name: the input tensor's name.
        datatype: Triton's datatype name, e.g. "FP32".
        shape: the input's shape, every dim >= 0.
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


class BackendError(RuntimeError):
    """A backend call failed (unreachable, timed out, model error).

    Attributes:
        status: the ``AckStatus`` to answer with: UNAVAILABLE when the backend could
            not be reached (the packet may be retried), else INTERNAL unless the
            backend knows better.
        code: the gRPC status for RPCs that answer with one (model metadata, readiness).
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

    async def decoupled(self, request: InferRequest) -> bool:
        """Whether ``request``'s model streams (any number of responses per request).

        True sends the request through :meth:`stream_infer`, False through
        :meth:`infer`. The default: False (every model answers once).
        """
        return False

    async def stream_infer(self, request: InferRequest) -> AsyncGenerator[ModelResponse, None]:
        """Run one inference of a streaming model: its responses, in order.

        The last one has ``final`` set. Closing the iterator early (the client went
        away) must cancel the model's work. The default: one final response from
        :meth:`infer`.

        Raises:
            BackendError: the call failed, before or between responses.
        """
        yield ModelResponse(await self.infer(request), final=True)

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
