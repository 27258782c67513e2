"""The proxy's settings (:class:`ProxyConfig`) and its command line (:func:`parse_args`).

Flags win over the environment::

    python -m transports.triton.proxy --listen HOST:PORT --triton-url TARGET
        [--auth-url URL] [--backend triton|demo|python:module:callable]
        [--max-in-flight N] [--max-inflight-mb N] [--default-timeout S]
        [--max-message-mb N] [--tls-cert PEM --tls-key PEM]
        [--coalesce N [--coalesce-in-flight N]]
        [--auth-cache-secs S] [--auth-timeout-secs S]
        [--metrics-listen HOST:PORT] [--log-format text|json]
        [--triton-probe-secs S] [--no-health-follows-triton]

    TRITON_URL   default of --triton-url
    DOMINO_HOST  default of --auth-url, as $DOMINO_HOST/v4/auth/principal
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from transports.observability import use_json_logs
from transports.triton.server.auth import principal_url

if TYPE_CHECKING:
    pass

__all__ = ["ProxyConfig", "parse_args"]

_log = logging.getLogger("transports.triton.proxy")
_access = logging.getLogger("transports.triton.access")


@dataclass(frozen=True)
class ProxyConfig:
    """Everything the command line sets. See :func:`main` for the flags.

    Attributes:
        listen: ``host:port`` to bind; port 0 picks a free one.
        backend: ``"triton"``, ``"demo"`` or ``"python:module:name"`` (see ``load_backend``).
        triton_url: Triton's gRPC target (several replicas: ``ipv4:h1:p1,h2:p2``).
        auth_url: the principal endpoint; None runs without authentication.
        max_in_flight: packets worked on at once per Chat call.
        max_inflight_bytes: packet bytes read and not yet answered across all calls
            (see :class:`InflightBudget`); 0 turns the budget off.
        default_timeout: backend deadline when a packet gives none.
        max_message_bytes: largest gRPC message, both to clients and to Triton.
        tls_cert, tls_key: PEM files to serve TLS; both or neither.
        auth_cache_ttl: seconds a positive auth answer is reused (and open calls re-checked).
        auth_timeout: total deadline in seconds of one principal lookup.
        coalesce: if > 1, send packets that arrive together as one backend request of
            up to this many batch rows (the backend is wrapped in a
            ``CoalescingBackend``); 0 is off.
        coalesce_in_flight: with ``coalesce``: at most this many coalesced requests of
            one group run at once; packets arriving meanwhile wait and go together
            (``CoalescingBackend(max_in_flight=)``); 0: only packets of one event-loop
            turn coalesce.
        metrics_listen: ``HOST:PORT`` to serve Prometheus ``/metrics`` on; None: not served.
        triton_probe_interval: seconds between probes of the backend's readiness; 0: none.
        health_follows_triton: health reports NOT_SERVING while the probe fails.
    """

    listen: str = "[::]:50051"
    backend: str = "triton"
    triton_url: str | None = None
    auth_url: str | None = None
    max_in_flight: int = 32
    default_timeout: float = 30.0
    max_message_bytes: int = 64 * 1024 * 1024
    max_inflight_bytes: int = 256 * 1024 * 1024
    tls_cert: str | None = None
    tls_key: str | None = None
    auth_cache_ttl: float = 30.0
    coalesce: int = 0
    coalesce_in_flight: int = 0
    auth_timeout: float = 5.0
    metrics_listen: str | None = None
    triton_probe_interval: float = 5.0
    health_follows_triton: bool = True


def parse_args(argv: Sequence[str] | None = None) -> ProxyConfig:
    """Parse the command line (and configure logging) into a :class:`ProxyConfig`."""
    env = os.environ
    parser = argparse.ArgumentParser(
        prog="python -m transports.triton.proxy",
        description="gRPC thin proxy in front of NVIDIA Triton Inference Server.",
    )
    parser.add_argument("--listen", default="[::]:50051", help="HOST:PORT (default [::]:50051)")
    parser.add_argument(
        "--triton-url",
        default=env.get("TRITON_URL"),
        help="Triton gRPC target, e.g. triton:8001 or ipv4:10.0.0.1:8001,10.0.0.2:8001 "
        "(default $TRITON_URL)",
    )
    domino_host = env.get("DOMINO_HOST")
    parser.add_argument(
        "--auth-url",
        default=principal_url(domino_host) if domino_host else None,
        help="principal endpoint (default $DOMINO_HOST/v4/auth/principal); "
        "without it the proxy runs unauthenticated",
    )
    parser.add_argument(
        "--backend",
        default=None,
        help="triton (default when a Triton URL is set), demo, or python:module:name "
        "(a model function, or a Backend subclass built with no arguments)",
    )
    parser.add_argument("--max-in-flight", type=int, default=32, help="per Chat call (32)")
    parser.add_argument(
        "--max-inflight-mb",
        type=float,
        default=256,
        help="MiB of packets read and not yet answered, across all calls; past it the "
        "proxy stops reading until Acks go out (256; 0: no limit)",
    )
    parser.add_argument(
        "--default-timeout", type=float, default=30.0, help="seconds, when a packet sets none"
    )
    parser.add_argument("--max-message-mb", type=int, default=64, help="largest message (64)")
    parser.add_argument("--tls-cert", default=None, help="PEM certificate chain to serve TLS")
    parser.add_argument("--tls-key", default=None, help="PEM private key to serve TLS")
    parser.add_argument(
        "--auth-cache-secs",
        type=float,
        default=30.0,
        help="seconds a positive auth answer is reused; open calls are re-checked as often (30)",
    )
    parser.add_argument(
        "--auth-timeout-secs",
        type=float,
        default=5.0,
        help="total deadline of one principal lookup: connect, headers and body (5)",
    )
    parser.add_argument(
        "--coalesce",
        type=int,
        default=0,
        help="send packets arriving together as one backend request of up to N batch rows "
        "(models with max_batch_size > 1; default 0: off)",
    )
    parser.add_argument(
        "--coalesce-in-flight",
        type=int,
        default=0,
        help="with --coalesce: at most N coalesced requests of one model/input run at once; "
        "packets arriving meanwhile wait and go together (default 0: only packets of one "
        "event-loop turn coalesce, which packets of one Chat call never are)",
    )
    parser.add_argument("--log-level", default=env.get("LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=env.get("LOG_FORMAT", "text"),
        help="text (default) or json: one JSON object per line with every record's fields",
    )
    parser.add_argument(
        "--metrics-listen",
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (default: off)",
    )
    parser.add_argument(
        "--triton-probe-secs",
        type=float,
        default=5.0,
        help="seconds between probes of Triton's ServerReady (default 5; 0: no probe)",
    )
    parser.add_argument(
        "--no-health-follows-triton",
        dest="health_follows_triton",
        action="store_false",
        help="keep gRPC health SERVING while Triton is unreachable",
    )
    args = parser.parse_args(argv)
    if args.log_format == "json":
        use_json_logs(args.log_level.upper())
    else:
        logging.basicConfig(
            level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    backend = args.backend or "triton"
    if backend == "triton" and not args.triton_url:
        parser.error("set --triton-url (or TRITON_URL), or use --backend demo")
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    return ProxyConfig(
        listen=args.listen,
        backend=backend,
        triton_url=args.triton_url,
        auth_url=args.auth_url,
        max_in_flight=args.max_in_flight,
        max_inflight_bytes=int(args.max_inflight_mb * 1024 * 1024),
        default_timeout=args.default_timeout,
        max_message_bytes=args.max_message_mb * 1024 * 1024,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        auth_cache_ttl=args.auth_cache_secs,
        coalesce=args.coalesce,
        coalesce_in_flight=args.coalesce_in_flight,
        auth_timeout=args.auth_timeout_secs,
        metrics_listen=args.metrics_listen,
        triton_probe_interval=args.triton_probe_secs,
        health_follows_triton=args.health_follows_triton,
    )
