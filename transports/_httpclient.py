"""The client half shared by the SSE and chunked HTTP transports (httpx).

Both transports open a streaming request, check the status and content type,
then hand the raw body chunks to a transport-specific decoder. Lower-layer httpx
errors are translated here, at the boundary, ``raise ... from exc``:

- the connection failing before a response: :class:`transports.base.TransportError`
  (:class:`transports.base.TransportTimeoutError` when it timed out);
- an error status or a body that is not the expected stream:
  :class:`StreamResponseError` (with ``status``, ``content_type`` and ``body``);
- the connection dropping mid-body: :class:`truss_stream.StreamTruncatedError`;
- httpx's read timeout expiring mid-body (the idle limit of a sync reader):
  :class:`truss_stream.StreamTimeoutError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import httpx

from truss_stream import StreamTimeoutError, StreamTruncatedError

from .base import TransportError, TransportTimeoutError
from .observability import inject_headers

__all__ = [
    "StreamResponseError",
    "aopen_http_stream",
    "aiter_body",
    "iter_body",
    "open_http_stream",
    "sync_idle_timeout",
    "with_accept",
]

_MAX_BODY = 4096

# Errors that mean "the bytes stopped coming": the stream is truncated.
_CUT = (httpx.RemoteProtocolError, httpx.ReadError, httpx.StreamClosed)


class StreamResponseError(TransportError):
    """The server answered with something other than the expected stream.

    Either an HTTP error status, or a success status with another content type.

    Attributes:
        status: the HTTP status code.
        content_type: the response's ``Content-Type`` header.
        body: the start of the response body, decoded as text (at most 4 KiB).
    """

    def __init__(self, message: str, *, status: int, content_type: str, body: str) -> None:
        super().__init__(message, status=status, body=body)
        self.content_type = content_type


def _media_type(response: httpx.Response) -> str:
    content_type: str = response.headers.get("content-type", "")
    return content_type.split(";", 1)[0].strip().lower()


def _error(response: httpx.Response, expected: str, body: bytes) -> StreamResponseError:
    content_type = response.headers.get("content-type", "")
    text = body[:_MAX_BODY].decode("utf-8", "replace")
    if response.is_success:
        message = f"expected {expected}, got {content_type or 'no content type'}"
    else:
        message = f"HTTP {response.status_code} {response.reason_phrase}"
    return StreamResponseError(
        message, status=response.status_code, content_type=content_type, body=text
    )


def _translate(exc: httpx.TransportError, method: str, url: str) -> Exception:
    if isinstance(exc, _CUT):
        return StreamTruncatedError(f"connection lost before the stream started: {exc!r}")
    if isinstance(exc, httpx.TimeoutException):
        return TransportTimeoutError(f"{method} {url} timed out: {exc!r}")
    return TransportError(f"{method} {url} failed: {exc!r}")


@contextlib.contextmanager
def open_http_stream(
    client: httpx.Client, method: str, url: str, media_type: str, **httpx_kwargs: Any
) -> Iterator[httpx.Response]:
    """Send a streaming request and check that the response is a ``media_type`` stream.

    Raises:
        TransportError: the request failed before a response arrived.
        StreamResponseError: an error status or another content type.
    """
    with contextlib.ExitStack() as stack:
        try:
            response = stack.enter_context(client.stream(method, url, **httpx_kwargs))
            if not response.is_success or _media_type(response) != media_type:
                body = bytearray()
                for chunk in response.iter_raw():
                    body += chunk
                    if len(body) >= _MAX_BODY:
                        break
                raise _error(response, media_type, bytes(body))
        except httpx.TransportError as exc:
            raise _translate(exc, method, url) from exc
        yield response


@contextlib.asynccontextmanager
async def aopen_http_stream(
    client: httpx.AsyncClient, method: str, url: str, media_type: str, **httpx_kwargs: Any
) -> AsyncIterator[httpx.Response]:
    """The async twin of :func:`open_http_stream`."""
    async with contextlib.AsyncExitStack() as stack:
        try:
            response = await stack.enter_async_context(client.stream(method, url, **httpx_kwargs))
            if not response.is_success or _media_type(response) != media_type:
                body = bytearray()
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) >= _MAX_BODY:
                        break
                raise _error(response, media_type, bytes(body))
        except httpx.TransportError as exc:
            raise _translate(exc, method, url) from exc
        yield response


def sync_idle_timeout(
    client: httpx.Client, httpx_kwargs: dict[str, Any], reader_options: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Give a sync reader's ``idle_timeout`` to httpx as its read timeout.

    A sync reader cannot interrupt a blocking read, so the read timeout is how the
    idle limit holds (it then raises ``StreamTimeoutError``, see :func:`iter_body`).
    An explicit ``timeout=`` in ``httpx_kwargs`` wins.
    """
    idle = (reader_options or {}).get("idle_timeout")
    if idle is None or "timeout" in httpx_kwargs:
        return httpx_kwargs
    base = client.timeout
    timeout = httpx.Timeout(connect=base.connect, read=idle, write=base.write, pool=base.pool)
    return {**httpx_kwargs, "timeout": timeout}


def with_accept(kwargs: Mapping[str, Any], media_type: str) -> dict[str, Any]:
    """Copy httpx keyword arguments, adding ``Accept: media_type`` unless set.

    The current OpenTelemetry trace context (``traceparent``...) is added too, when
    there is one (docs/observability.md).
    """
    headers = httpx.Headers(kwargs.get("headers"))
    headers.setdefault("Accept", media_type)
    inject_headers(headers)
    return {**kwargs, "headers": headers}


def iter_body(response: httpx.Response) -> Iterator[bytes]:
    """Yield the raw body chunks as they arrive; a dropped connection is a truncation.

    Raises:
        StreamTruncatedError: the connection dropped before the body ended.
        StreamTimeoutError: httpx's read timeout expired between chunks.
    """
    try:
        yield from response.iter_raw()
    except _CUT as exc:
        raise StreamTruncatedError(f"connection lost mid-stream: {exc!r}") from exc
    except httpx.TimeoutException as exc:
        raise StreamTimeoutError(f"no data within httpx's read timeout: {exc!r}") from exc


async def aiter_body(response: httpx.Response) -> AsyncIterator[bytes]:
    """The async twin of :func:`iter_body`."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except _CUT as exc:
        raise StreamTruncatedError(f"connection lost mid-stream: {exc!r}") from exc
    except httpx.TimeoutException as exc:
        raise StreamTimeoutError(f"no data within httpx's read timeout: {exc!r}") from exc
