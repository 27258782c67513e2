"""The Triton thin proxy's server side: servicer, settings and CLI, backends, auth.

- :mod:`.backend`: the backend plug-in API (:class:`Backend`, :class:`InferRequest`,
  :class:`OutputTensor`, :class:`ModelResponse`, :class:`ModelConfig`,
  :class:`BackendError`, :class:`BackendWrapper`); see ``docs/triton-backends.md``.
- :mod:`.backends`: the built-in backends (:class:`TritonBackend`,
  :class:`PythonBackend`, :func:`load_backend`).
- :mod:`.coalesce`: :class:`CoalescingBackend`, the coalescer around any backend.
- :mod:`.servicer`: :class:`MultimodalProxy`, the ``MultimodalService`` over a backend.
- :mod:`.config` / :mod:`.app` / :mod:`.cli`: :class:`ProxyConfig`,
  :func:`start_proxy` -> :class:`ProxyServer`, and ``python -m transports.triton.proxy``.
- :mod:`.auth`: the principal-endpoint interceptor; :mod:`.packets`: packet validation
  and Acks (sans-IO); :mod:`.observe` / :mod:`.health`: metrics, traces, health.

Importing the server never imports the clients (:mod:`transports.triton.client`).
"""

from transports.triton.server.app import ProxyServer, start_proxy
from transports.triton.server.backend import (
    Backend,
    BackendError,
    BackendWrapper,
    InferRequest,
    ModelConfig,
    ModelResponse,
    OutputTensor,
)
from transports.triton.server.backends import PythonBackend, TritonBackend, load_backend
from transports.triton.server.cli import main
from transports.triton.server.coalesce import CoalescingBackend
from transports.triton.server.config import ProxyConfig, parse_args
from transports.triton.server.servicer import (
    SERVICE_NAME,
    InflightBudget,
    MultimodalProxy,
    ProxyStats,
)

__all__ = [
    "SERVICE_NAME",
    "Backend",
    "BackendError",
    "BackendWrapper",
    "CoalescingBackend",
    "InferRequest",
    "InflightBudget",
    "ModelConfig",
    "ModelResponse",
    "MultimodalProxy",
    "OutputTensor",
    "ProxyConfig",
    "ProxyServer",
    "ProxyStats",
    "PythonBackend",
    "TritonBackend",
    "load_backend",
    "main",
    "parse_args",
    "start_proxy",
]
