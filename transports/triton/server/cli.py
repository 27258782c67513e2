"""The proxy's command line: ``python -m transports.triton.proxy`` (also
``python -m transports.triton.server``). See :mod:`.config` for the flags and
``docs/triton-proxy.md`` for the protocol, scale-out and where the time goes.

Tracing is configured by OpenTelemetry's standard OTEL_* variables
(``OTEL_TRACES_EXPORTER``...); ``docs/observability.md`` has metrics, traces, logs and
health probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from transports.observability import configure_tracing
from transports.triton.server.app import start_proxy
from transports.triton.server.config import ProxyConfig, parse_args

__all__ = ["main"]

_log = logging.getLogger("transports.triton.proxy")


async def _serve(config: ProxyConfig) -> None:
    running = await start_proxy(config)
    host = config.listen.rsplit(":", 1)[0]
    where = config.triton_url if config.backend == "triton" else config.backend
    # One machine-readable line on stdout: scripts and tests wait for it.
    metrics = ""
    if running.observability is not None and running.observability.metrics_port is not None:
        metrics_host = (config.metrics_listen or "").rsplit(":", 1)[0]
        metrics = f" metrics={metrics_host}:{running.observability.metrics_port}"
    print(f"LISTENING {host}:{running.port} backend={where}{metrics}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    _log.info("shutting down")
    await running.stop(grace=5.0)
    budget, stats = running.proxy.budget, running.proxy.stats
    # What the --max-inflight-mb budget held at most (its guarantee, as measured by
    # the proxy itself; the tests read this line) and how often packets waited for it.
    _log.info(
        "in-flight budget: peak %d of %d bytes, %d packets waited",
        budget.peak,
        budget.limit,
        stats.budget_waits,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the proxy until SIGINT or SIGTERM.

    Args:
        argv: command-line arguments (default ``sys.argv[1:]``).

    Returns:
        The process exit status.
    """
    config = parse_args(argv)
    configure_tracing()  # from OTEL_* (OTEL_TRACES_EXPORTER...), when the SDK is installed
    try:
        asyncio.run(_serve(config))
    except (ValueError, RuntimeError, ImportError, AttributeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
