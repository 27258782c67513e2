"""Binary chunked HTTP: the frames as they are, in one streaming response body.

The response body is the stream's frames back to back (docs/wire-format.md), with
media type ``application/vnd.truss-stream`` and chunked transfer encoding; each
frame is sent (and flushed) as soon as the producer yields it. The client feeds
httpx's body chunks straight into the reader, whose decoder assembles frames with
one copy, so a 4 MiB frame arriving in many small chunks is never re-copied.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import httpx

from truss_stream import AsyncStreamReader, Codec, StreamReader, StreamTypes
from truss_stream._schema import FooterTT, HeaderTT, ItemT

from ._asgi import Frames, FrameStreamResponse
from ._httpclient import (
    StreamResponseError,
    aiter_body,
    aopen_http_stream,
    iter_body,
    open_http_stream,
    sync_idle_timeout,
    with_accept,
)
from .base import AsyncBaseTransport, BaseTransport, TransportError, aopen_reader, open_reader

if TYPE_CHECKING:
    from .observability import StreamMetrics

__all__ = [
    "MEDIA_TYPE",
    "AsyncHTTPTransport",
    "HTTPTransport",
    "StreamResponseError",
    "TransportError",
    "aconnect",
    "connect",
    "stream_response",
]

#: The media type of a binary truss_stream body.
MEDIA_TYPE: Final = "application/vnd.truss-stream"


def _as_is(seq: int, frame: bytes | memoryview) -> bytes | memoryview:
    return frame


def stream_response(
    frames: Frames,
    *,
    send_timeout: float | None = 30.0,
    headers: Mapping[str, str] | None = None,
    default_codec: Codec = Codec.MSGPACK,
    metrics: StreamMetrics | bool | None = None,
) -> FrameStreamResponse:
    """Serve a producer's frames as one binary chunked HTTP response.

    The producer is guarded (:func:`transports.base.guard_frames`): END is added if
    it finishes without one, and an exception after its first frame becomes an
    ERROR frame. An exception *before* its first frame gives HTTP 500 with a short
    text body (or the status and detail of a Starlette ``HTTPException``).

    Args:
        frames: the writer's frames, an async iterable (or a plain iterable).
        send_timeout: seconds a send may block on a client that stops reading
            before the stream is aborted and the producer closed; None: wait forever.
        headers: extra response headers.
        default_codec: codec of the END/ERROR frames added for a producer that
            sent no frame of its own.
        metrics: where to record metrics (docs/observability.md): None, the default
            registry's when prometheus_client is installed; False, nowhere; or a
            :class:`transports.observability.StreamMetrics`.

    Returns:
        A Starlette response (usable from Starlette and FastAPI routes).
    """
    all_headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    all_headers.update(headers or {})
    return FrameStreamResponse(
        frames,
        encode=_as_is,
        media_type=MEDIA_TYPE,
        headers=all_headers,
        send_timeout=send_timeout,
        default_codec=default_codec,
        metrics=metrics,
    )


class HTTPTransport(BaseTransport):
    """Sync chunked-HTTP client transport: one request over an ``httpx.Client``."""

    def __init__(self, client: httpx.Client, method: str, url: str, **httpx_kwargs: Any) -> None:
        self._client, self._method, self._url, self._kwargs = client, method, url, httpx_kwargs

    @contextlib.contextmanager
    def open_stream(self) -> Iterator[Iterator[bytes]]:
        """Open the stream; see :meth:`transports.base.BaseTransport.open_stream`."""
        kwargs = with_accept(self._kwargs, MEDIA_TYPE)
        with open_http_stream(self._client, self._method, self._url, MEDIA_TYPE, **kwargs) as r:
            yield iter_body(r)


class AsyncHTTPTransport(AsyncBaseTransport):
    """Async chunked-HTTP client transport over an ``httpx.AsyncClient``."""

    def __init__(
        self, client: httpx.AsyncClient, method: str, url: str, **httpx_kwargs: Any
    ) -> None:
        self._client, self._method, self._url, self._kwargs = client, method, url, httpx_kwargs

    @contextlib.asynccontextmanager
    async def open_stream(self) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open the stream; see :meth:`transports.base.AsyncBaseTransport.open_stream`."""
        kwargs = with_accept(self._kwargs, MEDIA_TYPE)
        async with aopen_http_stream(
            self._client, self._method, self._url, MEDIA_TYPE, **kwargs
        ) as r:
            yield aiter_body(r)


@contextlib.asynccontextmanager
async def aconnect(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    types: StreamTypes[ItemT, HeaderTT, FooterTT],
    *,
    reader_options: Mapping[str, Any] | None = None,
    **httpx_kwargs: Any,
) -> AsyncIterator[AsyncStreamReader[ItemT, HeaderTT, FooterTT]]:
    """Open a chunked binary stream and give its typed async reader.

    Args:
        client: the httpx client that sends the request.
        method: HTTP method (``"GET"``, ``"POST"``...).
        url: the endpoint serving :func:`stream_response`.
        types: the stream type both sides share.
        reader_options: keyword arguments for :func:`truss_stream.stream_reader`
            (``max_frame_bytes``, ``copy_arrays``...).
        **httpx_kwargs: passed to ``client.stream`` (``json=``, ``params=``, ``headers=``...).

    Returns:
        An async context manager giving the reader; leaving it closes the response.

    Raises:
        StreamResponseError: an HTTP error status or another content type.
        TransportError: the request failed before a response arrived.
        StreamTruncatedError: (while reading) the connection dropped before END.
    """
    transport = AsyncHTTPTransport(client, method, url, **httpx_kwargs)
    async with aopen_reader(transport, types, **(reader_options or {})) as reader:
        yield reader


@contextlib.contextmanager
def connect(
    client: httpx.Client,
    method: str,
    url: str,
    types: StreamTypes[ItemT, HeaderTT, FooterTT],
    *,
    reader_options: Mapping[str, Any] | None = None,
    **httpx_kwargs: Any,
) -> Iterator[StreamReader[ItemT, HeaderTT, FooterTT]]:
    """Open a chunked binary stream and give its typed sync reader; see :func:`aconnect`.

    ``reader_options["idle_timeout"]`` becomes httpx's read timeout unless ``timeout=``
    is given: a sync read cannot be interrupted otherwise.
    """
    transport = HTTPTransport(
        client, method, url, **sync_idle_timeout(client, httpx_kwargs, reader_options)
    )
    with open_reader(transport, types, **(reader_options or {})) as reader:
        yield reader
