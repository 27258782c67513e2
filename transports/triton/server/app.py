"""Build and run a proxy in an event loop: :func:`start_proxy` -> :class:`ProxyServer`.

The gRPC server takes its options from ``transports.grpc`` (one option list for every
gRPC server of the project), serves the ``MultimodalService``, gRPC health (following
the backend's readiness) and reflection, and runs the auth interceptor and the
observability hooks (metrics, traces, access log) around the servicer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer as AsyncHealthServicer
from grpc_reflection.v1alpha import reflection

from transports.grpc import GrpcOptions
from transports.triton.protocol import multimodal_pb2_grpc as pbg
from transports.triton.server.auth import DominoAuthInterceptor
from transports.triton.server.backend import Backend
from transports.triton.server.backends import load_backend
from transports.triton.server.coalesce import coalescing
from transports.triton.server.config import ProxyConfig
from transports.triton.server.observe import (
    ProxyObservability,
)
from transports.triton.server.servicer import SERVICE_NAME, MultimodalProxy

if TYPE_CHECKING:
    from transports.observability import ProxyMetrics

__all__ = ["ProxyServer", "server_options", "start_proxy"]

_log = logging.getLogger("transports.triton.proxy")
_access = logging.getLogger("transports.triton.access")


@dataclass
class ProxyServer:
    """A running proxy, from :func:`start_proxy`.

    Attributes:
        server: the ``grpc.aio`` server.
        port: the port it listens on.
        proxy: the servicer (``proxy.stats`` has its counters).
        health: the health servicer.
        auth: the auth interceptor, None when running unauthenticated.
        observability: the metrics endpoint and the health probe.
    """

    server: grpc.aio.Server
    port: int
    proxy: MultimodalProxy
    health: Any  # grpc_health's asyncio HealthServicer (untyped)
    auth: DominoAuthInterceptor | None = None
    observability: ProxyObservability | None = None
    _closed: bool = field(default=False, repr=False)

    async def stop(self, grace: float | None = 2.0) -> None:
        """Mark NOT_SERVING, let calls finish for ``grace`` seconds, close the backend."""
        if self._closed:
            return
        self._closed = True
        if self.observability is not None:
            await self.observability.stop()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.proxy.backend.close()
        if self.auth is not None:
            await self.auth.aclose()

    async def wait_for_termination(self) -> None:
        """Block until the server stops."""
        await self.server.wait_for_termination()


def server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    # transports.grpc's one option list (its server side accepts the keepalive pings
    # long-lived client streams send, every 10 s and up, instead of answering them
    # with GOAWAY "too_many_pings"), not a hand-kept third copy.
    return GrpcOptions(
        max_message_bytes=max_message_bytes,
        keepalive_time_ms=60_000,
        keepalive_timeout_ms=20_000,
        min_ping_interval_ms=5_000,
    ).server_options()


async def start_proxy(
    config: ProxyConfig,
    *,
    backend: Backend | None = None,
    metrics: ProxyMetrics | bool | None = None,
) -> ProxyServer:
    """Build, bind and start a proxy in the running event loop.

    Args:
        config: the settings.
        backend: use this backend instead of building one from ``config``; with
            ``config.coalesce`` >= 2 it is wrapped in a
            :class:`~transports.triton.server.coalesce.CoalescingBackend`, as a built
            one is (unless it is one already).
        metrics: see :class:`MultimodalProxy`.

    Returns:
        The running server; call ``await server.stop()`` to end it.

    Raises:
        ValueError: inconsistent settings (no Triton URL, half a TLS pair).
        RuntimeError: the address could not be bound.
    """
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    observability = ProxyObservability(metrics=metrics, metrics_listen=config.metrics_listen)
    if backend is None:
        backend = load_backend(
            config.backend,
            triton_url=config.triton_url,
            max_message_bytes=config.max_message_bytes,
            coalesce=config.coalesce,
            coalesce_in_flight=config.coalesce_in_flight,
            interceptors=observability.triton_interceptors(),
        )
    backend = observability.backend(
        coalescing(backend, config.coalesce, max_in_flight=config.coalesce_in_flight)
    )
    auth: DominoAuthInterceptor | None = None
    if config.auth_url:
        auth = observability.auth(
            config.auth_url, cache_ttl=config.auth_cache_ttl, timeout=config.auth_timeout
        )
    else:
        _log.warning(
            "!!! AUTHENTICATION IS OFF: no --auth-url and no DOMINO_HOST; "
            "the proxy accepts every caller !!!"
        )
    server = grpc.aio.server(
        interceptors=observability.server_interceptors(auth, prefixes=(f"/{SERVICE_NAME}/",)),
        options=server_options(config.max_message_bytes),
    )
    proxy = MultimodalProxy(
        backend,
        max_in_flight=config.max_in_flight,
        default_timeout=config.default_timeout,
        max_message_bytes=config.max_message_bytes,
        max_inflight_bytes=config.max_inflight_bytes,
        metrics=observability.metrics or False,
    )
    pbg.add_MultimodalServiceServicer_to_server(proxy, server)
    health_servicer = AsyncHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    if config.tls_cert is not None and config.tls_key is not None:
        credentials = grpc.ssl_server_credentials(
            [(Path(config.tls_key).read_bytes(), Path(config.tls_cert).read_bytes())]
        )
        port = server.add_secure_port(config.listen, credentials)
    else:
        port = server.add_insecure_port(config.listen)
    if port == 0:
        raise RuntimeError(f"could not bind {config.listen}")
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    await health_servicer.set("", serving)
    await health_servicer.set(SERVICE_NAME, serving)
    await observability.start(
        backend,
        health_servicer,
        services=("", SERVICE_NAME),
        follow=config.health_follows_triton,
        probe_interval=config.triton_probe_interval,
    )
    return ProxyServer(
        server=server,
        port=port,
        proxy=proxy,
        health=health_servicer,
        auth=auth,
        observability=observability,
    )
