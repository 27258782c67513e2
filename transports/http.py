"""Binary chunked HTTP: the frames as they are, in one streaming response body.

The response body is the stream's frames back to back (docs/wire-format.md), with
media type ``application/vnd.truss-stream`` and chunked transfer encoding; each
frame is sent (and flushed) as soon as the producer yields it. The client feeds
httpx's body chunks straight into the reader, whose decoder assembles frames with
one copy, so a 4 MiB frame arriving in many small chunks is never re-copied.
"""
# ruff: noqa: E402 - the extra is checked before the imports that need it

from __future__ import annotations

from transports._extras import require_extra

require_extra(__name__)

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final

import httpx

from truss_stream import AsyncStreamReader, Codec, StreamReader, StreamTypes
from truss_stream._schema import FooterTT, HeaderTT, ItemT

from ._asgi import Frames, FrameStreamResponse
from ._compression import Compression
from ._httpclient import (
    ClientT,
    ClientTransport,
    FrameClock,
    FrameCounter,
    StreamResponseError,
    aiter_timed,
    aopen_http_stream,
    iter_timed,
    open_http_stream,
    wide_reads,
)
from .base import AsyncBaseTransport, BaseTransport, TransportError, aopen_reader, open_reader
from .shutdown import GracefulShutdown

if TYPE_CHECKING:
    from .observability import StreamMetrics

__all__ = [
    "MEDIA_TYPE",
    "TRUSS_CHAINS_MEDIA_TYPE",
    "AsyncHTTPTransport",
    "HTTPOptions",
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
    expose_errors: bool = True,
    shutdown: GracefulShutdown | None = None,
    compression: Compression | None = None,
    compression_level: int | None = None,
    metrics: StreamMetrics | bool | None = None,
) -> FrameStreamResponse:
    """Serve a producer's frames as one binary chunked HTTP response.

    The producer is guarded (:func:`transports.base.guard_frames`): END is added if
    it finishes without one, and an exception after its first frame becomes an
    ERROR frame. An exception *before* its first frame gives HTTP 500 with a short
    text body (or the status and detail of a Starlette ``HTTPException``).

    Args:
        frames: the writer's frames, an async iterable, or a plain iterable (run in
            a worker thread, so it may block).
        send_timeout: seconds a send may block on a client that stops reading
            before the stream is aborted and the producer closed; None: wait forever.
        headers: extra response headers.
        default_codec: codec of the END/ERROR frames added for a producer that
            sent no frame of its own.
        expose_errors, shutdown, compression, compression_level: as for
            :func:`transports.sse.sse_response` (redaction, graceful shutdown,
            per-batch streaming compression).
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
        expose_errors=expose_errors,
        shutdown=shutdown,
        compression=compression,
        compression_level=compression_level,
        metrics=metrics,
    )


#: The media type truss_chains' streaming endpoints answer with (frames without END).
TRUSS_CHAINS_MEDIA_TYPE: Final = "application/octet-stream"


@dataclasses.dataclass(frozen=True)
class HTTPOptions:
    """How a chunked-HTTP client reads one stream.

    Attributes:
        media_type: the content type to ask for (``Accept``) and require; use
            :data:`TRUSS_CHAINS_MEDIA_TYPE` for truss_chains endpoints.
        idle_timeout: most seconds to wait for the next whole frame (partial
            frames do not reset it); None: no limit.
        total_timeout: most seconds for the whole stream; None: no limit.
    """

    media_type: str = MEDIA_TYPE
    idle_timeout: float | None = None
    total_timeout: float | None = None


class _HTTPClient(ClientTransport[ClientT, HTTPOptions]):
    def _default_options(self) -> HTTPOptions:
        return HTTPOptions()

    def _prepare(self) -> tuple[FrameClock, tuple[str, str, str, dict[str, Any]]]:
        opts = self._options
        clock = FrameClock(opts.idle_timeout, opts.total_timeout)
        return clock, self._stream_args(opts.media_type, clock)


class HTTPTransport(_HTTPClient[httpx.Client], BaseTransport):
    """Sync chunked-HTTP client transport: one request over an ``httpx.Client``.

    Args:
        client: the httpx client.
        method: HTTP method.
        url: the endpoint.
        options: media type and time limits (:class:`HTTPOptions`).
        **httpx_kwargs: passed to ``client.stream``.
    """

    @contextlib.contextmanager
    def open_stream(self) -> Iterator[Iterator[bytes]]:
        """Open the stream; see :meth:`transports.base.BaseTransport.open_stream`."""
        clock, (method, url, media_type, kwargs) = self._prepare()
        with contextlib.ExitStack() as stack:
            response = stack.enter_context(
                open_http_stream(self._client, method, url, media_type, **kwargs)
            )
            stack.enter_context(wide_reads(response))
            yield iter_timed(response, clock, stack, FrameCounter())


class AsyncHTTPTransport(_HTTPClient[httpx.AsyncClient], AsyncBaseTransport):
    """Async chunked-HTTP client transport (``httpx.AsyncClient``); see :class:`HTTPTransport`."""

    @contextlib.asynccontextmanager
    async def open_stream(self) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open the stream; see :meth:`transports.base.AsyncBaseTransport.open_stream`."""
        clock, (method, url, media_type, kwargs) = self._prepare()
        async with aopen_http_stream(self._client, method, url, media_type, **kwargs) as response:
            with wide_reads(response):
                yield aiter_timed(response, clock, FrameCounter())


def _options(
    reader_options: Mapping[str, Any] | None, media_type: str
) -> tuple[HTTPOptions, dict[str, Any]]:
    reader = dict(reader_options or {})
    # The transport holds the time limits: it sees every read, and can cut a sync one.
    options = HTTPOptions(
        media_type=media_type,
        idle_timeout=reader.pop("idle_timeout", None),
        total_timeout=reader.pop("total_timeout", None),
    )
    return options, reader


@contextlib.asynccontextmanager
async def aconnect(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    types: StreamTypes[ItemT, HeaderTT, FooterTT],
    *,
    reader_options: Mapping[str, Any] | None = None,
    media_type: str = MEDIA_TYPE,
    **httpx_kwargs: Any,
) -> AsyncIterator[AsyncStreamReader[ItemT, HeaderTT, FooterTT]]:
    """Open a chunked binary stream and give its typed async reader.

    Args:
        client: the httpx client that sends the request.
        method: HTTP method (``"GET"``, ``"POST"``...).
        url: the endpoint serving :func:`stream_response`.
        types: the stream type both sides share.
        reader_options: keyword arguments for :func:`truss_stream.stream_reader`
            (``max_frame_bytes``, ``copy_arrays``, ``require_end``...).
            ``idle_timeout`` (no whole frame; partial frames do not count) and
            ``total_timeout`` (the whole stream) are held by the transport.
        media_type: the content type to require. A truss_chains endpoint:
            ``media_type=TRUSS_CHAINS_MEDIA_TYPE`` with
            ``reader_options={"require_end": False}`` (it never writes END).
        **httpx_kwargs: passed to ``client.stream`` (``json=``, ``params=``, ``headers=``...).

    Returns:
        An async context manager giving the reader; leaving it closes the response.

    Raises:
        StreamResponseError: an HTTP error status, another content type, or a
            content coding this client did not ask for.
        TransportError: the request failed before a response arrived.
        StreamTruncatedError: (while reading) the connection dropped before END.
        StreamTimeoutError: (while reading) ``idle_timeout`` or ``total_timeout`` expired.
    """
    options, reader = _options(reader_options, media_type)
    transport = AsyncHTTPTransport(client, method, url, options=options, **httpx_kwargs)
    async with aopen_reader(transport, types, **reader) as stream:
        yield stream


@contextlib.contextmanager
def connect(
    client: httpx.Client,
    method: str,
    url: str,
    types: StreamTypes[ItemT, HeaderTT, FooterTT],
    *,
    reader_options: Mapping[str, Any] | None = None,
    media_type: str = MEDIA_TYPE,
    **httpx_kwargs: Any,
) -> Iterator[StreamReader[ItemT, HeaderTT, FooterTT]]:
    """Open a chunked binary stream and give its typed sync reader; see :func:`aconnect`."""
    options, reader = _options(reader_options, media_type)
    transport = HTTPTransport(client, method, url, options=options, **httpx_kwargs)
    with open_reader(transport, types, **reader) as stream:
        yield stream
