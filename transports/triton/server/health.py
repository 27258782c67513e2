"""The proxy's gRPC health follows Triton: a background probe of Triton's ServerReady.

Readiness vs liveness (Kubernetes gRPC probes, docs/observability.md):

- ``""`` and ``inference.MultimodalService`` (readiness) report SERVING only while
  the last probe found Triton ready, so a load balancer or a readiness probe
  takes the proxy out while Triton is unreachable and puts it back when Triton
  returns. With ``follow=False`` they stay SERVING whatever Triton does.
- ``liveness`` reports SERVING for as long as the process serves at all; use it
  for liveness probes, so Kubernetes does not restart a healthy proxy because
  Triton is down.

Every service turns NOT_SERVING for good when the proxy shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from grpc_health.v1 import health_pb2

if TYPE_CHECKING:
    from transports.observability import ProxyMetrics
    from transports.triton.server.backend import Backend

__all__ = ["LIVENESS_SERVICE", "TritonHealthProbe"]

#: The health service name that reports liveness only (never follows Triton).
LIVENESS_SERVICE: Final = "liveness"

_log = logging.getLogger("transports.triton.health")
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class TritonHealthProbe:
    """Probes the backend's ``server_ready`` every ``interval`` seconds.

    Args:
        backend: the proxy's backend (Triton's ServerReady for ``TritonBackend``).
        health: the proxy's asyncio ``HealthServicer``.
        services: the health service names that follow Triton (readiness).
        interval: seconds between probes (each probe may take up to this long too).
        follow: set ``services`` NOT_SERVING while Triton is not ready.
        metrics: records ``truss_stream_proxy_upstream_up`` and probe results.
    """

    def __init__(
        self,
        backend: Backend,
        health: Any,
        *,
        services: Sequence[str],
        interval: float = 5.0,
        follow: bool = True,
        metrics: ProxyMetrics | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self._backend = backend
        self._health = health
        self._services = tuple(services)
        self._interval = interval
        self._follow = follow
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self.ready: bool | None = None

    async def start(self) -> None:
        """Probe once (so the first status is real), then keep probing in the background."""
        await self._health.set(LIVENESS_SERVICE, _SERVING)
        await self.probe()
        self._task = asyncio.create_task(self._run(), name="triton-health-probe")

    async def probe(self) -> bool:
        """Ask the backend once and update health and metrics; returns readiness."""
        try:
            ready, why = await asyncio.wait_for(self._backend.server_ready(), self._interval)
        except asyncio.TimeoutError:
            ready, why = False, f"no answer within {self._interval:g}s"
        except Exception as exc:  # a probe must never kill the loop
            ready, why = False, f"{type(exc).__name__}: {exc}"
        if self._metrics is not None:
            self._metrics.upstream_up.set(1 if ready else 0)
            self._metrics.upstream_probes.labels("ready" if ready else "not_ready").inc()
        if ready != self.ready:
            if ready:
                _log.info("triton is ready", extra={"event": "upstream", "ready": True})
            else:
                _log.warning(
                    "triton is not ready: %s",
                    why,
                    extra={"event": "upstream", "ready": False, "reason": why},
                )
            self.ready = ready
            status = _SERVING if ready or not self._follow else _NOT_SERVING
            for name in self._services:
                await self._health.set(name, status)
        return ready

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.probe()

    async def stop(self) -> None:
        """Stop probing."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
