"""Domino-style authentication for the proxy: a ``grpc.aio`` server interceptor.

Each call must carry ``x-domino-api-key: <key>`` and/or ``authorization: Bearer
<token>``. The interceptor forwards those headers, unchanged, in a GET to the
principal endpoint (``$DOMINO_HOST/v4/auth/principal``) and decides by its status:

=====================================  ===========================
200                                    the call goes ahead
401, 403 (any other 4xx)               ``UNAUTHENTICATED``
5xx, unreachable, timed out            ``UNAVAILABLE``
no credentials in the call             ``UNAUTHENTICATED``
=====================================  ===========================

Positive answers are cached for ``cache_ttl`` seconds (30 by default), keyed by a
SHA-256 of the credentials, so a stream of calls costs one principal lookup; negative
answers are never cached, so a fixed key works at once. Credentials are never logged
or echoed in error details. The health service is exempt so probes need no key.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
import httpx

__all__ = ["API_KEY_HEADER", "AUTHORIZATION_HEADER", "DominoAuthInterceptor", "principal_url"]

API_KEY_HEADER = "x-domino-api-key"
AUTHORIZATION_HEADER = "authorization"

if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # generic in the stubs only
    _ServerInterceptor = grpc.aio.ServerInterceptor

_log = logging.getLogger("transports.triton.auth")
_CACHE_MAX = 10_000


def principal_url(domino_host: str) -> str:
    """The principal endpoint of a Domino host: ``<host>/v4/auth/principal``."""
    return domino_host.rstrip("/") + "/v4/auth/principal"


def _credentials(metadata: Sequence[tuple[str, Any]] | None) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in metadata or ():
        name = key.lower()
        if name in (API_KEY_HEADER, AUTHORIZATION_HEADER) and isinstance(value, str) and value:
            found[name] = value
    return found


def _fingerprint(headers: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(headers):
        digest.update(name.encode() + b"\0" + headers[name].encode() + b"\0")
    return digest.hexdigest()


def _denying_handler(
    handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, details: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same kind as ``handler`` that fails the call with ``code``."""

    async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(code, details)

    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny, **kwargs)
    return grpc.unary_unary_rpc_method_handler(deny, **kwargs)


class DominoAuthInterceptor(_ServerInterceptor):
    """Checks each call's credentials against a principal endpoint.

    Args:
        auth_url: the principal endpoint, e.g. ``principal_url(os.environ["DOMINO_HOST"])``.
        cache_ttl: seconds a positive answer stays valid; 0 disables the cache.
        timeout: seconds for one principal lookup.
        exempt_prefixes: method paths that need no credentials (the health service).
        client: an ``httpx.AsyncClient`` to use (made and owned here if None).
    """

    def __init__(
        self,
        auth_url: str,
        *,
        cache_ttl: float = 30.0,
        timeout: float = 5.0,
        exempt_prefixes: Sequence[str] = ("/grpc.health.v1.Health/",),
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.auth_url = auth_url
        self._cache_ttl = cache_ttl
        self._timeout = timeout
        self._exempt = tuple(exempt_prefixes)
        self._client = client
        self._owns_client = client is None
        self._allowed_until: dict[str, float] = {}

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout, follow_redirects=False)
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client if this interceptor made it."""
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None

    def _remember(self, key: str, now: float) -> None:
        if self._cache_ttl <= 0:
            return
        if len(self._allowed_until) >= _CACHE_MAX:
            self._allowed_until = {k: t for k, t in self._allowed_until.items() if t > now}
            if len(self._allowed_until) >= _CACHE_MAX:
                self._allowed_until.clear()
        self._allowed_until[key] = now + self._cache_ttl

    async def check(self, headers: dict[str, str]) -> tuple[grpc.StatusCode | None, str]:
        """Decide on a set of credential headers.

        Returns:
            ``(None, "")`` to allow, else the gRPC status and details to fail with.
        """
        if not headers:
            return grpc.StatusCode.UNAUTHENTICATED, (
                f"missing credentials: send {API_KEY_HEADER} or {AUTHORIZATION_HEADER}: Bearer"
            )
        key = _fingerprint(headers)
        now = time.monotonic()
        if self._allowed_until.get(key, 0.0) > now:
            return None, ""
        tag = key[:8]  # enough to correlate log lines, useless to an attacker
        try:
            response = await self._http().get(self.auth_url, headers=headers)
        except httpx.HTTPError as exc:
            _log.warning("auth %s: principal endpoint unreachable: %s", tag, type(exc).__name__)
            return grpc.StatusCode.UNAVAILABLE, "authentication service unavailable"
        status = response.status_code
        if status == 200:
            self._remember(key, time.monotonic())
            _log.debug("auth %s: allowed", tag)
            return None, ""
        if status >= 500:
            _log.warning("auth %s: principal endpoint answered %d", tag, status)
            return grpc.StatusCode.UNAVAILABLE, f"authentication service answered {status}"
        _log.info("auth %s: rejected (%d)", tag, status)
        return grpc.StatusCode.UNAUTHENTICATED, f"credentials rejected ({status})"

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Let the call through, or replace its handler by one that fails it."""
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(self._exempt):
            return handler
        headers = _credentials(handler_call_details.invocation_metadata)
        code, details = await self.check(headers)
        if code is None:
            return handler
        return _denying_handler(handler, code, details)
