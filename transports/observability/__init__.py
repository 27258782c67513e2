"""Operability for every server of the project: Prometheus metrics, OpenTelemetry traces, logs.

- Metrics (extra ``metrics``, prometheus_client): :class:`StreamMetrics` for SSE,
  chunked-HTTP and gRPC streams, :class:`ProxyMetrics` for the Triton proxy,
  :class:`ClientMetrics` for readers wrapped with :func:`observe_reader`. Servers
  record into prometheus_client's default registry unless given ``metrics=``
  (another registry's group, or ``False``); expose them with
  ``prometheus_client.make_asgi_app()`` (the proxy: ``--metrics-listen``).
- Traces (extra ``otel``): a span per stream whose parent is the request's
  ``traceparent``; clients inject the current context. Set up by the SDK's
  ``OTEL_*`` variables (:func:`configure_tracing`); nothing happens without it.
- Logs: one access record per stream on the ``transports.access`` logger, and
  :class:`JsonFormatter` for structured output.

See docs/observability.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._client import observe_reader
from ._logging import ACCESS_LOGGER, JsonFormatter, log_access, use_json_logs
from ._streams import (
    CLIENT_GONE,
    COMPLETE,
    OUTCOMES,
    PRODUCER_ERROR,
    REJECTED,
    SHUTDOWN,
    TIMEOUT,
    ObservedStream,
    asgi_route,
    observe_asgi,
    observe_grpc,
    observe_stream,
    resolve_stream_metrics,
)
from ._tracing import (
    configure_tracing,
    current_trace_ids,
    inject_headers,
    start_span,
    trace_metadata,
    tracing_available,
)

if TYPE_CHECKING:
    from ._metrics import OTHER, ClientMetrics, LabelCap, ProxyMetrics, StreamMetrics

__all__ = [
    "ACCESS_LOGGER",
    "CLIENT_GONE",
    "COMPLETE",
    "OTHER",
    "OUTCOMES",
    "PRODUCER_ERROR",
    "REJECTED",
    "SHUTDOWN",
    "TIMEOUT",
    "ClientMetrics",
    "JsonFormatter",
    "LabelCap",
    "ObservedStream",
    "ProxyMetrics",
    "StreamMetrics",
    "asgi_route",
    "configure_tracing",
    "current_trace_ids",
    "inject_headers",
    "log_access",
    "observe_asgi",
    "observe_grpc",
    "observe_reader",
    "observe_stream",
    "resolve_stream_metrics",
    "start_span",
    "trace_metadata",
    "tracing_available",
    "use_json_logs",
]

_METRICS_NAMES = frozenset({"OTHER", "ClientMetrics", "LabelCap", "ProxyMetrics", "StreamMetrics"})


def __getattr__(name: str) -> Any:
    # The collectors need prometheus_client (extra `metrics`); everything else works
    # without it, so they are imported on first use.
    if name in _METRICS_NAMES:
        try:
            from . import _metrics
        except ImportError as exc:
            raise ImportError(
                f"transports.observability.{name} needs prometheus_client: "
                "install truss-stream[metrics]"
            ) from exc
        return getattr(_metrics, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
