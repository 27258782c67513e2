"""The Triton thin proxy: ``python -m transports.triton.proxy``.

The seed's module path of the proxy, kept for its command line and its imports; the
proxy itself lives in :mod:`transports.triton.server` (servicer, settings and CLI,
backends, auth). See ``docs/triton-proxy.md``.
"""

import sys

from transports.triton.server import (
    SERVICE_NAME,
    Backend,
    InflightBudget,
    MultimodalProxy,
    ProxyConfig,
    ProxyServer,
    ProxyStats,
    PythonBackend,
    TritonBackend,
    main,
    start_proxy,
)

__all__ = [
    "SERVICE_NAME",
    "Backend",
    "InflightBudget",
    "MultimodalProxy",
    "ProxyConfig",
    "ProxyServer",
    "ProxyStats",
    "PythonBackend",
    "TritonBackend",
    "main",
    "start_proxy",
]

if __name__ == "__main__":
    sys.exit(main())
