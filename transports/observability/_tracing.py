"""OpenTelemetry helpers that do nothing when OpenTelemetry is not installed.

Only the OpenTelemetry *API* is used here; spans are recorded when an SDK is set
up, by the application, by ``opentelemetry-instrument``, or by
:func:`configure_tracing` from the SDK's standard ``OTEL_*`` environment
variables. W3C trace context (``traceparent``, ``tracestate``, and whatever
``OTEL_PROPAGATORS`` names) travels in HTTP headers and gRPC metadata through the
globally configured propagator.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any

try:
    from opentelemetry import context as _context
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
    from opentelemetry.propagators.textmap import Getter as _Getter
except ImportError:  # the extra `otel` is not installed: every helper is a no-op
    _trace = None  # type: ignore[assignment]
    _Getter = object  # type: ignore[assignment,misc]

__all__ = [
    "SpanHandle",
    "configure_tracing",
    "current_trace_ids",
    "inject_headers",
    "start_span",
    "trace_metadata",
    "tracing_available",
    "tracing_configured",
]

_log = logging.getLogger("transports.observability")
_TRACER_NAME = "transports"

#: A started span (``opentelemetry.trace.Span``), or None when tracing is off.
SpanHandle = Any


def tracing_available() -> bool:
    """True when the OpenTelemetry API can be imported."""
    return _trace is not None


def tracing_configured() -> bool:
    """True when an OpenTelemetry SDK (a real tracer provider) is set up globally."""
    return _trace is not None and not isinstance(
        _trace.get_tracer_provider(), _trace.ProxyTracerProvider
    )


class _PairsGetter(_Getter):  # type: ignore[type-arg]
    """Reads ASGI headers (``(bytes, bytes)`` pairs) and gRPC metadata (``(str, str)``)."""

    def get(self, carrier: Sequence[tuple[Any, Any]], key: str) -> list[str] | None:
        found: list[str] = []
        for name, value in carrier:
            text = name.decode("latin-1") if isinstance(name, bytes) else str(name)
            if text.lower() == key:
                found.append(value.decode("latin-1") if isinstance(value, bytes) else str(value))
        return found or None

    def keys(self, carrier: Sequence[tuple[Any, Any]]) -> list[str]:
        return [n.decode("latin-1") if isinstance(n, bytes) else str(n) for n, _ in carrier]


_PAIRS = _PairsGetter() if _trace is not None else None


def start_span(
    name: str,
    *,
    carrier: Iterable[tuple[Any, Any]] | None = None,
    server: bool = True,
    attributes: Mapping[str, Any] | None = None,
) -> SpanHandle:
    """Start a span that is not made current; None when tracing is off.

    The parent is the current span if there is one (an instrumented ASGI or gRPC
    server already made it), else the context extracted from ``carrier``
    (``traceparent`` in request headers or call metadata).

    Args:
        name: the span name.
        carrier: header or metadata pairs of the incoming request.
        server: SpanKind.SERVER, else SpanKind.CLIENT.
        attributes: initial attributes.
    """
    if _trace is None:
        return None
    parent = None
    if carrier is not None and not _trace.get_current_span().get_span_context().is_valid:
        parent = _propagate.extract(list(carrier), getter=_PAIRS)
    kind = _trace.SpanKind.SERVER if server else _trace.SpanKind.CLIENT
    span = _trace.get_tracer(_TRACER_NAME).start_span(
        name, context=parent, kind=kind, attributes=dict(attributes or {})
    )
    return span if span.is_recording() else None


def span_context(span: SpanHandle) -> Any:
    """A context whose current span is ``span`` (for ``attach``)."""
    return _trace.set_span_in_context(span)


def attach(ctx: Any) -> object:
    """Make ``ctx`` current; returns the token for :func:`detach`."""
    return _context.attach(ctx)


def detach(token: object) -> None:
    """Undo :func:`attach`."""
    _context.detach(token)  # type: ignore[arg-type]


def end_span(span: SpanHandle, attributes: Mapping[str, Any], error: str | None) -> None:
    """Set final attributes, an error status if ``error``, and end the span."""
    span.set_attributes(dict(attributes))
    if error is not None:
        span.set_status(_trace.Status(_trace.StatusCode.ERROR, error))
    span.end()


def span_ids(span: SpanHandle) -> tuple[str, str]:
    """(trace id, span id) of ``span`` in hex, as logs show them."""
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def current_trace_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span, or None."""
    if _trace is None:
        return None
    ctx = _trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def inject_headers(headers: MutableMapping[str, str]) -> None:
    """Add the current trace context (``traceparent``...) to outgoing HTTP headers."""
    if _trace is not None and _trace.get_current_span().get_span_context().is_valid:
        _propagate.inject(headers)


def trace_metadata(span: SpanHandle = None) -> list[tuple[str, str]]:
    """The trace context of ``span`` (default: the current one) as gRPC metadata pairs."""
    if _trace is None:
        return []
    ctx = _trace.set_span_in_context(span) if span is not None else None
    if ctx is None and not _trace.get_current_span().get_span_context().is_valid:
        return []
    carrier: dict[str, str] = {}
    _propagate.inject(carrier, context=ctx)
    return list(carrier.items())


def configure_tracing(environ: Mapping[str, str] | None = None) -> bool:
    """Set up the OpenTelemetry SDK from its standard ``OTEL_*`` environment variables.

    Does nothing (and returns False) unless ``OTEL_TRACES_EXPORTER`` names an
    exporter (``console``, ``otlp``...), when ``OTEL_SDK_DISABLED=true``, when a
    tracer provider is already set (``opentelemetry-instrument`` did it, or the
    application), or when the SDK is not installed. Every other setting
    (``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``,
    ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_BSP_*``...) is read by the SDK itself.

    Returns:
        True if this call set the SDK up.
    """
    env = os.environ if environ is None else environ
    if _trace is None or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if not exporters or exporters.lower() == "none":
        return False
    if not isinstance(_trace.get_tracer_provider(), _trace.ProxyTracerProvider):
        return False
    try:
        # The SDK's own environment-driven set-up (what opentelemetry-distro's
        # configurator runs): exporters, sampler, resource, processors.
        from opentelemetry.sdk._configuration import _OTelSDKConfigurator
    except ImportError:
        _log.warning(
            "OTEL_TRACES_EXPORTER=%s but opentelemetry-sdk is not installed: no traces "
            "(install truss-stream[otel])",
            exporters,
        )
        return False
    _OTelSDKConfigurator().configure()  # type: ignore[no-untyped-call]
    return True
