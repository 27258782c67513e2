"""The proxy's metrics, traces and metrics endpoint, wired in through a few seams.

- :func:`packet_received` / :func:`packet_done`: the servicer calls them around every
  packet when it has metrics (in-flight packets and bytes, packets by model and final
  Ack status, the receive-to-Ack latency); without metrics it calls nothing.
- :class:`CallInterceptor` (server side, first in the chain): a SERVER span per call
  whose parent is the caller's ``traceparent`` metadata, current while the call
  runs (so Triton calls nest under it), and calls by method and status code.
- :class:`ObservedBackend` (around the backend): backend calls and latency by
  method and model, and a CLIENT span per call when tracing is set up; with
  tracing, the channel to Triton also carries an interceptor that sends the span's
  ``traceparent`` along (none otherwise: a grpc.aio interceptor costs tens of
  microseconds per call).
- :class:`ObservedAuthInterceptor`: auth decisions by outcome.
- :class:`ProxyObservability` bundles them, the health probe and ``--metrics-listen``.

Model labels are bounded by ``ProxyMetrics.models``: a model name becomes a label
once a packet or a Triton call for it succeeded (Triton knows it), up to a cap;
anything else is ``"other"``.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import grpc.aio

from transports.observability import _tracing
from transports.observability._grpc import aio_trace_interceptors
from transports.observability._streams import resolve_metrics
from transports.triton.protocol import multimodal_pb2 as pb
from transports.triton.server._credentials import Verdict
from transports.triton.server._interceptors import MethodInterceptor, same_kind
from transports.triton.server.auth import DominoAuthInterceptor
from transports.triton.server.backend import (
    Backend,
    BackendError,
    InferRequest,
    ModelConfig,
    ModelResponse,
    OutputTensor,
)
from transports.triton.server.health import TritonHealthProbe

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from transports.observability import ProxyMetrics

__all__ = [
    "CallInterceptor",
    "ObservedAuthInterceptor",
    "ProxyObservability",
    "ObservedBackend",
    "packet_done",
    "packet_received",
    "resolve_proxy_metrics",
]

_T = TypeVar("_T")
_Context = grpc.aio.ServicerContext[Any, Any]


def _default_proxy_metrics() -> ProxyMetrics:
    from transports.observability._metrics import ProxyMetrics

    return ProxyMetrics.for_registry()


def resolve_proxy_metrics(metrics: ProxyMetrics | bool | None) -> ProxyMetrics | None:
    """None: the default registry's group when prometheus_client is installed; False: none."""
    return resolve_metrics(
        metrics,
        _default_proxy_metrics,
        "proxy metrics need prometheus_client: install truss-stream[metrics]",
    )


_STATUS_NAMES: dict[int, str] = {v: k for k, v in pb.AckStatus.items()}


def _status_name(status: int) -> str:
    try:
        return pb.AckStatus.Name(status)
    except ValueError:
        return str(status)


def packet_received(metrics: ProxyMetrics, size: int) -> int:
    """Count a packet of ``size`` bytes (``packets.packet_bytes``) in flight; returns
    ``size`` (give it to :func:`packet_done`).

    The servicer calls this (and :func:`packet_done`) only when it has metrics, so a
    proxy without them pays one ``is None`` test per packet.
    """
    metrics.packets_in_flight += 1
    metrics.bytes_in_flight += size
    return size


def packet_done(
    metrics: ProxyMetrics,
    packet: pb.DataPacket,
    size: int,
    final: pb.Ack | None,
    received: float,
) -> None:
    """The packet is no longer in flight: answered with its ``final`` Ack, or abandoned (None).

    Counts the packet by model and final status with its receive-to-Ack latency.
    """
    metrics.packets_in_flight -= 1
    metrics.bytes_in_flight -= size
    if final is None:
        return
    status = final.status
    name = _STATUS_NAMES.get(status) or _status_name(status)
    metrics.packet_answered(packet.control.model, status, name, time.perf_counter() - received)


def _code_of(exc: BaseException, context: _Context) -> grpc.StatusCode:
    if isinstance(exc, grpc.aio.AbortError):
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    if isinstance(exc, BaseException) and not isinstance(exc, Exception):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


class CallInterceptor(MethodInterceptor):
    """A SERVER span and call counters for every call under ``prefixes``.

    Put it first in the server's interceptors so it also sees calls that auth denies.
    """

    def __init__(self, metrics: ProxyMetrics | None, *, prefixes: Sequence[str]) -> None:
        self._metrics = metrics
        self._prefixes = tuple(prefixes)

    def applies_to(self, method: str) -> bool:
        """The methods under ``prefixes``."""
        return method.startswith(self._prefixes)

    async def intercept(
        self,
        handler: grpc.RpcMethodHandler[Any, Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Wrap unary-unary and stream-stream handlers of the proxy's service."""
        method = handler_call_details.method
        metadata = tuple(handler_call_details.invocation_metadata or ())
        if handler.request_streaming and handler.response_streaming:
            stream_behavior: Any = handler.stream_stream

            async def stream(requests: Any, context: _Context) -> AsyncIterator[Any]:
                with _Call(self._metrics, method, metadata, context) as call:
                    result = stream_behavior(requests, context)
                    if inspect.isawaitable(result):  # a handler writing with context.write
                        await result
                    else:
                        async for response in result:
                            call.pause()
                            yield response
                            call.resume()

            return same_kind(handler, stream)
        if not handler.request_streaming and not handler.response_streaming:
            unary_behavior: Any = handler.unary_unary

            async def unary(request: Any, context: _Context) -> Any:
                with _Call(self._metrics, method, metadata, context):
                    return await unary_behavior(request, context)

            return same_kind(handler, unary)
        return handler


class _Call:
    """One call's span (current while the call's code runs) and counters.

    A context manager around the call's code: an exception out of it sets the call's
    status, and its end records the call.
    """

    __slots__ = ("_code", "_context", "_method", "_metrics", "_span", "_token")

    def __init__(
        self,
        metrics: ProxyMetrics | None,
        method: str,
        metadata: Sequence[tuple[str, Any]],
        context: _Context,
    ) -> None:
        self._metrics = metrics
        self._context = context
        self._method = method
        self._code: grpc.StatusCode | None = None
        service, _, name = method.lstrip("/").partition("/")
        self._span = _tracing.start_span(
            method.lstrip("/"),
            carrier=metadata,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )
        self._token: object | None = None
        self.resume()
        if metrics is not None:
            metrics.calls_active.labels(method).inc()

    def resume(self) -> None:
        if self._span is not None and self._token is None:
            self._token = _tracing.attach(_tracing.span_context(self._span))

    def pause(self) -> None:
        # Detach before yielding: the generator may be resumed, or closed, elsewhere.
        if self._token is not None:
            _tracing.detach(self._token)
            self._token = None

    def __enter__(self) -> _Call:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None:
            self._code = _code_of(exc, self._context)
        self._end()

    def _end(self) -> None:
        self.pause()
        code = self._code
        if code is None:
            set_code = self._context.code()
            code = set_code if isinstance(set_code, grpc.StatusCode) else grpc.StatusCode.OK
        if self._metrics is not None:
            self._metrics.calls_active.labels(self._method).dec()
            self._metrics.calls.labels(self._method, code.name).inc()
        if self._span is not None:
            error = None if code is grpc.StatusCode.OK else code.name
            _tracing.end_span(self._span, {"rpc.grpc.status_code": code.value[0]}, error)


class ObservedBackend(Backend):
    """A backend whose calls are timed and counted, and traced (a CLIENT span each).

    Delegates everything to ``inner``; its span is current during the call, so the
    Triton channel's trace interceptor sends its ``traceparent`` on to Triton.
    """

    def __init__(self, inner: Backend, metrics: ProxyMetrics | None) -> None:
        self.inner = inner
        self.name = inner.name
        self._metrics = metrics
        self._traced = _tracing.tracing_configured()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @contextlib.contextmanager
    def _observed(self, method: str, model: str, *, attach: bool = True) -> Iterator[Any]:
        """Time, count and trace what runs inside; ``attach`` makes its span current.

        Yields the span (None when not tracing).
        """
        span = None
        token = None
        if self._traced:
            span = _tracing.start_span(
                f"{self.name} {method}",
                server=False,
                attributes={
                    "rpc.system": "grpc",
                    "rpc.method": method,
                    "truss_stream.backend": self.name,
                    "truss_stream.model": model,
                },
            )
            if span is not None and attach:
                token = _tracing.attach(_tracing.span_context(span))
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            yield span
        except BackendError as exc:
            code = exc.code
            raise
        except Exception:
            code = grpc.StatusCode.UNKNOWN
            raise
        except BaseException:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            if token is not None:
                _tracing.detach(token)
            metrics = self._metrics
            if metrics is not None:
                metrics.backend_call(
                    self.name, method, model, code.name, time.perf_counter() - started
                )
            if span is not None:
                error = None if code is grpc.StatusCode.OK else code.name
                _tracing.end_span(span, {"rpc.grpc.status_code": code.value[0]}, error)

    async def _call(self, method: str, model: str, call: Awaitable[_T]) -> _T:
        with self._observed(method, model):
            return await call

    async def infer(self, request: InferRequest) -> Mapping[str, OutputTensor]:
        """The inner backend's ``infer``, observed as ``ModelInfer``."""
        metrics = self._metrics
        if self._traced or metrics is None:
            return await self._call("ModelInfer", request.model, self.inner.infer(request))
        # The per-packet path without tracing: no span, cached children.
        started = time.perf_counter()
        code = "OK"
        try:
            return await self.inner.infer(request)
        except BackendError as exc:
            code = exc.code.name
            raise
        except Exception:
            code = "UNKNOWN"
            raise
        except BaseException:
            code = "CANCELLED"
            raise
        finally:
            metrics.backend_call(
                self.name, "ModelInfer", request.model, code, time.perf_counter() - started
            )

    async def decoupled(self, request: InferRequest) -> bool:
        """The inner backend's answer (not observed: a cache lookup)."""
        return await self.inner.decoupled(request)

    async def stream_infer(self, request: InferRequest) -> AsyncGenerator[ModelResponse, None]:
        """The inner backend's ``stream_infer``, observed as ``ModelStreamInfer``.

        The span is current only while the first response is pulled, which is when the
        inner backend opens Triton's stream call (so the channel's trace interceptor
        sends its ``traceparent``); a context left attached across a ``yield`` would
        leak into whoever iterates this generator.
        """
        with self._observed("ModelStreamInfer", request.model, attach=False) as span:
            async with contextlib.aclosing(self.inner.stream_infer(request)) as responses:
                token = None if span is None else _tracing.attach(_tracing.span_context(span))
                try:
                    first = await responses.__anext__()
                except StopAsyncIteration:
                    return
                finally:
                    if token is not None:
                        _tracing.detach(token)
                yield first
                async for response in responses:
                    yield response

    async def model_config(self, model: str, version: str) -> ModelConfig:
        """The inner backend's answer (not observed: wrappers ask once per model)."""
        return await self.inner.model_config(model, version)

    async def model_metadata(self, model: str, version: str) -> pb.ModelMetadataResponse:
        """The inner backend's ``model_metadata``, observed as ``ModelMetadata``."""
        return await self._call("ModelMetadata", model, self.inner.model_metadata(model, version))

    async def server_ready(self) -> tuple[bool, str]:
        """The inner backend's ``server_ready`` (the health probe's calls), observed."""
        return await self._call("ServerReady", "", self.inner.server_ready())

    async def model_ready(self, model: str, version: str) -> tuple[bool, str]:
        """The inner backend's ``model_ready``, observed as ``ModelReady``."""
        return await self._call("ModelReady", model, self.inner.model_ready(model, version))

    async def close(self) -> None:
        """Close the inner backend."""
        await self.inner.close()


class ObservedAuthInterceptor(DominoAuthInterceptor):
    """:class:`DominoAuthInterceptor` that counts its decisions (allowed, denied, unavailable)."""

    def __init__(self, *args: Any, metrics: ProxyMetrics | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics = metrics

    def record(self, verdict: Verdict) -> None:
        """Count one admission decision (the base class calls this for every call)."""
        if self._metrics is None:
            return
        if verdict.code is None:
            outcome = "allowed"
        elif verdict.code is grpc.StatusCode.UNAVAILABLE:
            outcome = "unavailable"
        else:
            outcome = "denied"
        self._metrics.auth.labels(outcome).inc()


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--metrics-listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


class ProxyObservability:
    """Everything the proxy adds for operators, started and stopped with it.

    Args:
        metrics: see :func:`resolve_proxy_metrics`.
        metrics_listen: ``HOST:PORT`` to serve ``/metrics`` on (port 0: a free one).
    """

    def __init__(
        self, *, metrics: ProxyMetrics | bool | None = None, metrics_listen: str | None = None
    ) -> None:
        self.metrics = resolve_proxy_metrics(metrics)
        if metrics_listen is not None and self.metrics is None:
            raise ValueError(
                "--metrics-listen needs prometheus_client: install truss-stream[metrics]"
            )
        self._listen = metrics_listen
        self._http: WSGIServer | None = None
        self.probe: TritonHealthProbe | None = None

    @property
    def metrics_port(self) -> int | None:
        """The port ``/metrics`` is served on, once started."""
        return None if self._http is None else int(self._http.server_port)

    @property
    def _active(self) -> bool:
        # Without metrics and without a tracing SDK the interceptors would record
        # nothing: leave them out, so such a proxy costs what it did before.
        return self.metrics is not None or _tracing.tracing_configured()

    def server_interceptors(self, *after: Any, prefixes: Sequence[str]) -> list[Any]:
        """The server's interceptors: the call interceptor first, then ``after`` (auth)."""
        mine = [CallInterceptor(self.metrics, prefixes=prefixes)] if self._active else []
        return [*mine, *(i for i in after if i)]

    def triton_interceptors(self) -> list[Any]:
        """Interceptors for the channel to Triton: the trace context, when tracing is on."""
        return aio_trace_interceptors()

    def backend(self, backend: Backend) -> Backend:
        """``backend``, observed (unchanged when there is nothing to record)."""
        return ObservedBackend(backend, self.metrics) if self._active else backend

    def auth(self, auth_url: str, **kwargs: Any) -> DominoAuthInterceptor:
        """The auth interceptor, counting its decisions."""
        return ObservedAuthInterceptor(auth_url, metrics=self.metrics, **kwargs)

    async def start(
        self,
        backend: Backend,
        health: Any,
        *,
        services: Sequence[str],
        follow: bool = True,
        probe_interval: float = 5.0,
    ) -> None:
        """Start the metrics endpoint and the health probe (``probe_interval`` 0: no probe)."""
        if self._listen is not None and self.metrics is not None:
            from prometheus_client import REGISTRY, start_http_server

            host, port = _split_listen(self._listen)
            # The registry the proxy's metrics live in, with whatever else it holds.
            registry = self.metrics.registry or REGISTRY
            self._http, _ = start_http_server(port, host, registry=registry)
        if probe_interval > 0:
            self.probe = TritonHealthProbe(
                backend,
                health,
                services=services,
                interval=probe_interval,
                follow=follow,
                metrics=self.metrics,
            )
            await self.probe.start()

    async def stop(self) -> None:
        """Stop the probe and the metrics endpoint."""
        if self.probe is not None:
            await self.probe.stop()
        http, self._http = self._http, None
        if http is not None:
            http.shutdown()
            http.server_close()
