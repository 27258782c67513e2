"""Domino-style authentication for the proxy: a ``grpc.aio`` server interceptor.

Each call must carry ``x-domino-api-key: <key>`` and/or ``authorization: Bearer
<token>``. Malformed credentials are refused at once (see :mod:`._credentials`);
well-formed ones are forwarded, unchanged, in a GET to the principal endpoint
(``$DOMINO_HOST/v4/auth/principal``), which decides:

===============================================  ===========================
200, body a JSON object with ``isAnonymous``     the call goes ahead
exactly ``false``
any other 200 body (HTML, not JSON, not an       ``UNAUTHENTICATED``
object, anonymous, no ``isAnonymous``, > 64 KiB)
any other status below 500 (401, 403, 302, ...)  ``UNAUTHENTICATED``
5xx, unreachable, not done within the deadline   ``UNAVAILABLE``
no credentials, or malformed ones                ``UNAUTHENTICATED``, without asking
===============================================  ===========================

``timeout`` (5 s) is a total deadline for one lookup: connecting, waiting for a
connection of the pool, the headers and the whole body. Positive answers are cached for
``cache_ttl`` seconds (30 by default; at most ``max_cache_entries`` credentials, the
oldest dropped first); negative answers never are. Concurrent lookups of one credential
share one request. A call whose responses stream (``Chat``) is re-checked when its cache
entry runs out, off the packet path, sharing that one lookup with every other call on the
credential; a refusal ends the call with the refusal's status (``UNAUTHENTICATED``, or
``UNAVAILABLE`` if the re-check got no answer). Credentials are never logged or echoed;
log lines name a credential by a salted hash prefix that changes with every process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import httpx

from ._credentials import (
    API_KEY_HEADER,
    AUTHORIZATION_HEADER,
    MAX_PRINCIPAL_BYTES,
    Credentials,
    Verdict,
    judge_principal,
    parse_credentials,
    transport_failure,
)
from ._interceptors import MethodInterceptor, same_kind

__all__ = [
    "API_KEY_HEADER",
    "AUTHORIZATION_HEADER",
    "DominoAuthInterceptor",
    "Verdict",
    "principal_url",
]

_log = logging.getLogger("transports.triton.auth")

MAX_CONCURRENT_LOOKUPS = 64
"""Principal requests in flight at once; more wait for a connection within their deadline."""

_RECHECK_WITHOUT_CACHE_S = 1.0
"""With the cache off (``cache_ttl=0``), how often an open call is re-checked."""


def principal_url(domino_host: str) -> str:
    """The principal endpoint of a Domino host: ``<host>/v4/auth/principal``."""
    return domino_host.rstrip("/") + "/v4/auth/principal"


@dataclass(frozen=True)
class _Decision:
    verdict: Verdict
    valid_until: float  # monotonic time after which an allowed call must be re-checked


class _OpenCall:
    """A streaming call under watch: where its task is, and why it must end."""

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task
        self.inside = False  # the task is suspended inside the servicer's generator
        self.refusal: Verdict | None = None
        self.interrupted = False

    def refuse(self, verdict: Verdict) -> None:
        self.refusal = verdict
        # Interrupt only a task waiting inside the servicer (its cleanup runs on the
        # CancelledError); one that is sending an Ack notices the refusal right after.
        if self.inside and self.task is not None:
            self.interrupted = True
            self.task.cancel()


def _uncancel(task: asyncio.Task[Any] | None) -> None:
    uncancel = getattr(task, "uncancel", None)  # Python 3.11+
    if uncancel is not None:
        uncancel()


def _outcome(verdict: Verdict) -> str:
    """A verdict for a log line: reason and HTTP status, never a credential."""
    status = f", HTTP {verdict.status}" if verdict.status is not None else ""
    return f"{verdict.reason}{status}"


def _log_decision(tag: str, method: str, verdict: Verdict) -> None:
    if verdict.allowed:
        _log.debug("auth %s: %s allowed (%s)", tag, method, _outcome(verdict))
    elif verdict.code is grpc.StatusCode.UNAVAILABLE:
        _log.warning("auth %s: %s unavailable (%s)", tag, method, _outcome(verdict))
    else:
        _log.info("auth %s: %s denied (%s)", tag, method, _outcome(verdict))


_DENY_DRAIN_S = 0.5
_DENY_DRAIN_MESSAGES = 64


async def _drain(requests: Any, most: int = _DENY_DRAIN_MESSAGES) -> None:
    drained = 0
    async for _ in requests:
        drained += 1
        if drained >= most:
            return


def _denying_handler(
    handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, details: str
) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler of the same kind as ``handler`` that fails the call with ``code``."""

    async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if handler.request_streaming:
            # Ending a call while the client still writes its requests races in the
            # client's grpc.aio: its failed write ("Failed execute_batch
            # SendMessageOperation") can replace our status with INTERNAL. Read (and
            # drop) what the client sends until it half-closes, bounded in messages and
            # time, so a well-behaved client has stopped writing when the status goes.
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(_drain(request), _DENY_DRAIN_S)
        await context.abort(code, details)

    return same_kind(handler, deny)


class DominoAuthInterceptor(MethodInterceptor):
    """Checks each call's credentials against a principal endpoint.

    Args:
        auth_url: the principal endpoint, e.g. ``principal_url(os.environ["DOMINO_HOST"])``.
        cache_ttl: seconds a positive answer stays valid, and how often open streaming
            calls are re-checked; 0 disables the cache (open calls: every second).
        timeout: total deadline in seconds of one principal lookup (connect, headers, body).
        exempt_prefixes: method paths that need no credentials (the health service).
        client: an ``httpx.AsyncClient`` to use (made and owned here if None).
        max_cache_entries: credentials remembered at most; the oldest go first.
    """

    def __init__(
        self,
        auth_url: str,
        *,
        cache_ttl: float = 30.0,
        timeout: float = 5.0,
        exempt_prefixes: Sequence[str] = ("/grpc.health.v1.Health/",),
        client: httpx.AsyncClient | None = None,
        max_cache_entries: int = 10_000,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        if max_cache_entries < 1:
            raise ValueError("max_cache_entries must be >= 1")
        self.auth_url = auth_url
        self._cache_ttl = max(cache_ttl, 0.0)
        self._timeout = timeout
        self._exempt = tuple(exempt_prefixes)
        self._owns_client = client is None
        # Made now, not at the first lookup: an AsyncClient loads its CA bundle when built
        # (0.2-0.4 s on a loaded machine), which counted against the first lookup's deadline.
        self._client: httpx.AsyncClient | None = (
            client if client is not None else self._new_client()
        )
        self._max_cache = max_cache_entries
        self._allowed_until: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._lookups: dict[str, asyncio.Task[_Decision]] = {}
        self._salt = os.urandom(16)  # log tags cannot be matched across processes

    @property
    def cached_credentials(self) -> int:
        """How many credentials the positive cache holds now."""
        return len(self._allowed_until)

    @property
    def lookups_in_flight(self) -> int:
        """How many principal lookups are under way now."""
        return len(self._lookups)

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=self._timeout,  # a backstop; the deadline is enforced around it
            follow_redirects=False,
            limits=httpx.Limits(
                max_connections=MAX_CONCURRENT_LOOKUPS, max_keepalive_connections=16
            ),
        )

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:  # closed by aclose() and used again
            self._client = self._new_client()
        return self._client

    async def aclose(self) -> None:
        """Stop lookups in flight and close the HTTP client if this interceptor made it."""
        for task in list(self._lookups.values()):
            task.cancel()
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None

    # Decisions ------------------------------------------------------------------------

    def _key(self, credentials: Credentials) -> str:
        digest = hmac.new(self._salt, digestmod=hashlib.sha256)
        for name, value in credentials.headers:
            digest.update(name.encode() + b"\0" + value.encode() + b"\0")
        return digest.hexdigest()

    def _recheck_period(self) -> float:
        return self._cache_ttl if self._cache_ttl > 0 else _RECHECK_WITHOUT_CACHE_S

    def _remember(self, key: str, until: float) -> None:
        if self._cache_ttl <= 0:
            return
        cache = self._allowed_until
        cache[key] = until
        cache.move_to_end(key)
        while len(cache) > self._max_cache:
            cache.popitem(last=False)

    def _cached(self, key: str, now: float) -> float | None:
        until = self._allowed_until.get(key)
        if until is None:
            return None
        if until > now:
            return until
        del self._allowed_until[key]
        return None

    async def _decide(self, credentials: Credentials, key: str) -> _Decision:
        until = self._cached(key, time.monotonic())
        if until is not None:
            return _Decision(Verdict(None, "principal"), until)
        task = self._lookups.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._lookup(credentials, key))
            self._lookups[key] = task
            task.add_done_callback(lambda done: self._forget_lookup(key, done))
        # Shielded: a caller that goes away does not cancel the lookup others wait for.
        return await asyncio.shield(task)

    def _forget_lookup(self, key: str, task: asyncio.Task[_Decision]) -> None:
        if self._lookups.get(key) is task:
            del self._lookups[key]

    async def _lookup(self, credentials: Credentials, key: str) -> _Decision:
        tag = key[:8]
        try:
            verdict = await asyncio.wait_for(self._ask(credentials), self._timeout)
        except asyncio.TimeoutError:
            verdict = transport_failure("deadline")
        except httpx.HTTPError as exc:
            _log.debug("auth %s: %s", tag, type(exc).__name__)
            verdict = transport_failure("unreachable")
        except Exception as exc:  # a bug must never allow, nor leak a credential
            _log.error("auth %s: lookup failed: %s", tag, type(exc).__name__)
            verdict = transport_failure("unreachable")
        until = time.monotonic() + self._recheck_period()
        if verdict.allowed:
            self._remember(key, until)
        _log.debug("auth %s: principal lookup: %s", tag, _outcome(verdict))
        return _Decision(verdict, until)

    async def _ask(self, credentials: Credentials) -> Verdict:
        headers = dict(credentials.headers)
        headers["accept"] = "application/json"
        headers["accept-encoding"] = "identity"  # a body is capped as it arrives, not inflated
        async with self._http().stream("GET", self.auth_url, headers=headers) as response:
            if response.status_code != 200:
                return judge_principal(response.status_code, None)
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_PRINCIPAL_BYTES:
                return judge_principal(200, None)
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > MAX_PRINCIPAL_BYTES:
                    return judge_principal(200, None)
            return judge_principal(200, bytes(body))

    async def check(self, headers: dict[str, str]) -> tuple[grpc.StatusCode | None, str]:
        """Decide on a set of credential headers.

        Returns:
            ``(None, "")`` to allow, else the gRPC status and details to fail with.
        """
        parsed = parse_credentials(headers.items())
        if isinstance(parsed, Verdict):
            self.record(parsed)
            return parsed.code, parsed.details
        verdict = (await self._decide(parsed, self._key(parsed))).verdict
        self.record(verdict)
        return verdict.code, verdict.details

    def record(self, verdict: Verdict) -> None:
        """Called once per decision on a new call (allowed or not); a hook for metrics.

        Every admission path (:meth:`check` and :meth:`intercept_service`) calls it,
        so a subclass that counts decisions sees all of them. The default does nothing.
        """

    # Open calls -----------------------------------------------------------------------

    async def _watch(
        self, credentials: Credentials, key: str, method: str, until: float, call: _OpenCall
    ) -> None:
        while True:
            await asyncio.sleep(max(until - time.monotonic(), 0.0) + 0.001)
            decision = await self._decide(credentials, key)
            verdict = decision.verdict
            if not verdict.allowed:
                _log_decision(key[:8], f"{method} (open call, re-checked)", verdict)
                call.refuse(verdict)
                return
            until = decision.valid_until

    def _watched(
        self,
        handler: grpc.RpcMethodHandler[Any, Any],
        credentials: Credentials,
        key: str,
        method: str,
        until: float,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """``handler``, with streaming responses re-checked while the call is open."""
        behavior: Any = handler.stream_stream or handler.unary_stream
        if behavior is None or not inspect.isasyncgenfunction(behavior):
            return handler  # unary calls are short: checked once, at their start

        # The watcher interrupts the call by cancelling its task while the task waits for
        # the servicer's next response, rather than racing each read against a "refused"
        # future: that would cost a task per response on the packet path. The servicer
        # cleans up on the CancelledError (cancelling its backend calls); responses it had
        # not handed over are covered by the call's final status.
        async def guarded(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            call = _OpenCall(asyncio.current_task())
            watcher = asyncio.get_running_loop().create_task(
                self._watch(credentials, key, method, until, call)
            )
            responses = behavior(request, context)
            try:
                while call.refusal is None:
                    call.inside = True
                    try:
                        response = await responses.__anext__()
                    except StopAsyncIteration:
                        return
                    except asyncio.CancelledError:
                        if not call.interrupted:
                            raise
                        _uncancel(call.task)
                        break
                    finally:
                        call.inside = False
                    yield response
                refusal = call.refusal
                await responses.aclose()
                if refusal is not None:
                    code = refusal.code or grpc.StatusCode.UNAUTHENTICATED
                    if handler.request_streaming:
                        # The race _denying_handler explains: end the call just after a
                        # request has arrived (or the client half-closed), when a client
                        # that paces its writes is least likely to be writing.
                        with contextlib.suppress(Exception, asyncio.TimeoutError):
                            await asyncio.wait_for(_drain(request, 1), _DENY_DRAIN_S)
                    await context.abort(code, refusal.details)
            finally:
                watcher.cancel()
                await responses.aclose()

        return same_kind(handler, guarded)

    def applies_to(self, method: str) -> bool:
        """Every method but the exempt ones (``exempt_prefixes``)."""
        return not method.startswith(self._exempt)

    async def intercept(
        self,
        handler: grpc.RpcMethodHandler[Any, Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """Let the call through (watched if it streams), or fail it."""
        method = handler_call_details.method
        parsed = parse_credentials(handler_call_details.invocation_metadata)
        if isinstance(parsed, Verdict):
            _log_decision("-", method, parsed)  # nothing usable to name it by
            self.record(parsed)
            code = parsed.code or grpc.StatusCode.UNAUTHENTICATED
            return _denying_handler(handler, code, parsed.details)
        key = self._key(parsed)
        decision = await self._decide(parsed, key)
        verdict = decision.verdict
        _log_decision(key[:8], method, verdict)
        self.record(verdict)
        if verdict.code is not None:
            return _denying_handler(handler, verdict.code, verdict.details)
        return self._watched(handler, parsed, key, method, decision.valid_until)
