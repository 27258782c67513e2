"""Prometheus collectors: one group per registry, found again in that registry.

Each group (:class:`StreamMetrics`, :class:`ProxyMetrics`, :class:`ClientMetrics`)
is a single prometheus_client ``Collector`` registered once per registry; its
metrics are built unregistered and collected through it. ``for_registry`` finds
the group already registered in a registry, so servers that are handed no metrics
object all record into the same collectors of the default registry, and nothing
here keeps module-level state: the registry is the cache.

Label sets are bounded: transports and outcomes are fixed sets, routes are route
templates or method names (capped by :class:`LabelCap`), models are names that
succeeded at least once (capped too); never a stream id, correlation id or key.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = [
    "ClientMetrics",
    "LabelCap",
    "OTHER",
    "ProxyMetrics",
    "StreamMetrics",
]

#: The label value that stands for everything past a :class:`LabelCap`.
OTHER = "other"

#: Seconds: from a few ms (tokens) to many minutes (long generations).
_TTFF_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
)
_PACKET_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
)  # fmt: skip

_G = TypeVar("_G", bound="_Group")


class LabelCap:
    """A bounded set of label values: the first ``limit`` admitted, then :data:`OTHER`.

    Thread-safe; admitting is the only write and it stops at ``limit``.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self._values: set[str] = set()
        self._lock = threading.Lock()

    def __contains__(self, value: object) -> bool:
        return value in self._values

    def label(self, value: str, *, admit: bool = True) -> str:
        """``value`` if known (or admitted now, while there is room), else :data:`OTHER`."""
        if value in self._values:
            return value
        if not admit or not value:
            return OTHER
        with self._lock:
            if len(self._values) < self.limit:
                self._values.add(value)
                return value
        return OTHER


class _Group(Collector):
    """A set of metrics registered in one registry as one collector."""

    #: A metric family name only this group registers: how it is found again.
    _marker: ClassVar[str]

    def __init__(self) -> None:
        self._metrics: list[Any] = []
        #: The registry the group is registered in (set by :meth:`for_registry`).
        self.registry: CollectorRegistry | None = None

    def _add(self, metric: Any) -> Any:
        self._metrics.append(metric)
        return metric

    def collect(self) -> Iterable[Metric]:
        for metric in self._metrics:
            yield from metric.collect()

    def describe(self) -> Iterable[Metric]:
        for metric in self._metrics:
            yield from metric.describe()

    @classmethod
    def for_registry(
        cls: type[_G], registry: CollectorRegistry | None = None, **options: Any
    ) -> _G:
        """The group registered in ``registry`` (default: prometheus_client's), made once.

        ``options`` go to the constructor when the group is made here; a group found
        already registered keeps its own.

        Raises:
            ValueError: another collector already uses one of the group's names.
        """
        registry = REGISTRY if registry is None else registry
        found = _registered(registry, cls._marker)
        if isinstance(found, cls):
            return found
        group = cls(**options)
        group.registry = registry
        try:
            registry.register(group)
        except ValueError:
            found = _registered(registry, cls._marker)  # registered meanwhile by a thread
            if isinstance(found, cls):
                return found
            raise
        return group


def _registered(registry: CollectorRegistry, name: str) -> object:
    # prometheus_client has no public "which collector owns this name"; its registry
    # keeps that map under this attribute (stable since 0.4). Without it, a second
    # registration fails loudly in register() instead of being reused.
    names: dict[str, object] = getattr(registry, "_names_to_collectors", {})
    return names.get(name)


class StreamMetrics(_Group):
    """Server-side stream metrics (SSE, chunked HTTP, gRPC), labelled by transport and route.

    Build with :meth:`for_registry`; pass it as ``metrics=`` to ``sse_response``,
    ``stream_response`` or ``FrameStreamService``. See docs/observability.md.

    Args:
        route_limit: distinct route labels kept; later routes count as ``"other"``.
        stall_seconds: a send that holds the producer back at least this long is a stall.
    """

    _marker = "truss_stream_streams_started"

    def __init__(self, *, route_limit: int = 100, stall_seconds: float = 0.1) -> None:
        super().__init__()
        labels = ("transport", "route")
        self.routes = LabelCap(route_limit)
        self.stall_seconds = stall_seconds
        self.started = self._add(
            Counter("truss_stream_streams_started", "Streams started.", labels, registry=None)
        )
        self.active = self._add(
            Gauge("truss_stream_streams_active", "Streams in progress.", labels, registry=None)
        )
        self.ended = self._add(
            Counter(
                "truss_stream_streams_ended",
                "Streams ended, by outcome: complete, client_gone, producer_error, timeout, "
                "shutdown, rejected.",
                (*labels, "outcome"),
                registry=None,
            )
        )
        self.frames = self._add(
            Counter(
                "truss_stream_frames_sent",
                "Frames handed to the transport, by kind (header, item, footer, end, error).",
                (*labels, "kind"),
                registry=None,
            )
        )
        self.bytes = self._add(
            Counter(
                "truss_stream_sent_bytes",
                "Frame bytes (tag and payload, before transport encoding), by kind.",
                (*labels, "kind"),
                registry=None,
            )
        )
        self.first_frame = self._add(
            Histogram(
                "truss_stream_time_to_first_frame_seconds",
                "From the stream's start to its first frame.",
                labels,
                buckets=_TTFF_BUCKETS,
                registry=None,
            )
        )
        self.duration = self._add(
            Histogram(
                "truss_stream_stream_duration_seconds",
                "From the stream's start to its end, whatever the outcome.",
                labels,
                buckets=_DURATION_BUCKETS,
                registry=None,
            )
        )
        self.stalls = self._add(
            Counter(
                "truss_stream_send_stalls",
                "Sends that held the producer back for stall_seconds or more (backpressure).",
                labels,
                registry=None,
            )
        )
        self.stall_time = self._add(
            Counter(
                "truss_stream_send_stall_seconds",
                "Time producers were held back in those stalls.",
                labels,
                registry=None,
            )
        )


class ProxyMetrics(_Group):
    """Metrics of the Triton proxy. See docs/observability.md.

    Args:
        model_limit: distinct model labels kept. A model is admitted when one of its
            packets succeeded (so it exists on Triton); anything else is ``"other"``.
    """

    _marker = "truss_stream_proxy_packets"

    def __init__(self, *, model_limit: int = 64) -> None:
        super().__init__()
        self.models = LabelCap(model_limit)
        self.packets = self._add(
            Counter(
                "truss_stream_proxy_packets",
                "Packets answered, by model and Ack status (OK, BAD_REQUEST, INTERNAL, "
                "UNSUPPORTED, ...).",
                ("model", "status"),
                registry=None,
            )
        )
        self.packet_duration = self._add(
            Histogram(
                "truss_stream_proxy_packet_duration_seconds",
                "From receiving a packet to its Ack.",
                ("model",),
                buckets=_PACKET_BUCKETS,
                registry=None,
            )
        )
        self.backend_calls = self._add(
            Counter(
                "truss_stream_proxy_backend_calls",
                "Calls to the backend (Triton, or an embedded one), by method, model and "
                "gRPC status code.",
                ("backend", "method", "model", "code"),
                registry=None,
            )
        )
        self.backend_duration = self._add(
            Histogram(
                "truss_stream_proxy_backend_duration_seconds",
                "Duration of calls to the backend (Triton's latency as the proxy sees it).",
                ("backend", "method", "model"),
                buckets=_PACKET_BUCKETS,
                registry=None,
            )
        )
        # Updated per packet as plain ints (no lock), read when scraped.
        self.packets_in_flight = 0
        self.bytes_in_flight = 0
        in_flight_packets = Gauge(
            "truss_stream_proxy_in_flight_packets",
            "Packets received and not yet answered.",
            registry=None,
        )
        in_flight_packets.set_function(lambda: self.packets_in_flight)
        self._add(in_flight_packets)
        in_flight_bytes = Gauge(
            "truss_stream_proxy_in_flight_bytes",
            "Tensor bytes of the packets in flight.",
            registry=None,
        )
        in_flight_bytes.set_function(lambda: self.bytes_in_flight)
        self._add(in_flight_bytes)
        # (model label, Ack status) -> (packets counter, latency histogram) children;
        # bounded by the model cap times the statuses.
        self._packet_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._backend_children: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}
        self.calls = self._add(
            Counter(
                "truss_stream_proxy_calls",
                "gRPC calls to the proxy, by method and final status code.",
                ("method", "code"),
                registry=None,
            )
        )
        self.calls_active = self._add(
            Gauge(
                "truss_stream_proxy_calls_active",
                "gRPC calls to the proxy in progress, by method.",
                ("method",),
                registry=None,
            )
        )
        self.auth = self._add(
            Counter(
                "truss_stream_proxy_auth_decisions",
                "Authentication decisions: allowed, denied, unavailable.",
                ("outcome",),
                registry=None,
            )
        )
        self.upstream_up = self._add(
            Gauge(
                "truss_stream_proxy_upstream_up",
                "1 while the last probe of Triton's ServerReady succeeded, else 0.",
                registry=None,
            )
        )
        self.upstream_probes = self._add(
            Counter(
                "truss_stream_proxy_upstream_probes",
                "Probes of Triton's ServerReady, by result (ready, not_ready).",
                ("result",),
                registry=None,
            )
        )

    def packet_answered(self, model: str, status: int, status_name: str, seconds: float) -> None:
        """Count one Ack and its latency (the per-packet path: cached children)."""
        label = self.models.label(model, admit=status == 0)
        children = self._packet_children.get((label, status))
        if children is None:
            children = (
                self.packets.labels(label, status_name),
                self.packet_duration.labels(label),
            )
            self._packet_children[(label, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def backend_call(
        self, backend: str, method: str, model: str, code: str, seconds: float
    ) -> None:
        """Count one backend call and its duration."""
        label = self.models.label(model, admit=code == "OK")
        key = (backend, method, label, code)
        children = self._backend_children.get(key)
        if children is None:
            children = (
                self.backend_calls.labels(backend, method, label, code),
                self.backend_duration.labels(backend, method, label),
            )
            self._backend_children[key] = children
        children[0].inc()
        children[1].observe(seconds)


class ClientMetrics(_Group):
    """Client-side counters, for readers wrapped with ``observe_reader``."""

    _marker = "truss_stream_client_streams"

    def __init__(self) -> None:
        super().__init__()
        self.streams = self._add(
            Counter(
                "truss_stream_client_streams",
                "Streams opened for reading.",
                ("transport",),
                registry=None,
            )
        )
        self.frames = self._add(
            Counter(
                "truss_stream_client_frames",
                "Frames read, by kind (header, item, footer).",
                ("transport", "kind"),
                registry=None,
            )
        )
        self.truncations = self._add(
            Counter(
                "truss_stream_client_truncations",
                "Streams that ended before their END frame.",
                ("transport",),
                registry=None,
            )
        )
        self.remote_errors = self._add(
            Counter(
                "truss_stream_client_remote_errors",
                "Streams that ended with the producer's ERROR frame.",
                ("transport",),
                registry=None,
            )
        )


def iter_names(group: _Group) -> Iterator[str]:
    """The metric family names of a group (for docs and tests)."""
    for metric in group.describe():
        yield metric.name
