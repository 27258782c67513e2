"""Serving a stream stored in Redis over SSE (or chunked HTTP) from any web replica.

The SSE events are the project's encoding (:func:`transports.sse.encode_event`, the
same bytes a direct ``sse_response`` sends), except that each event's ``id:`` is the
Redis entry id of its frame. A client that reconnects with ``Last-Event-ID``, to this
replica or any other, is served from the entry after it: the replica looks that entry
up, takes its position and stream identity, and checks every following entry against
them (:mod:`._core`), so the resumed stream is the same stream, contiguous, or an
error.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator, Mapping
from typing import Any, Final

import redis.asyncio
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.requests import Request

from truss_stream import StreamError

from .._asgi import FrameStreamResponse
from .._sse_client import POSITION_HEADER, STREAM_ID_HEADER
from ..http import stream_response as _http_stream_response
from ..sse import encode_event
from ..sse import sse_response as _sse_response
from ._core import ReadOptions, parse_entry_id
from ._errors import (
    StreamNotFoundError,
    StreamPositionError,
    StreamTrimmedError,
)
from ._read import aiter_batches

__all__ = ["sse_response", "stream_response"]

#: The id line ``encode_event(0, ...)`` writes; dropped for frames that are not entries.
_SEQ_LINE: Final = b"\nid: 0\n"
#: HTTP statuses for a stream that cannot be served from the position asked for.
_STATUS: Final[Mapping[type[StreamError], int]] = {
    StreamTrimmedError: 410,
    StreamNotFoundError: 404,
    StreamPositionError: 400,
}


def _start(request: Request | None, after: str | None) -> str:
    if after is not None:
        return after
    last = request.headers.get("last-event-id") if request is not None else None
    if not last:
        return "0"
    try:
        parse_entry_id(last)
    except StreamPositionError as exc:
        raise HTTPException(
            400, f"Last-Event-ID must be a Redis entry id, got {last[:45]!r}"
        ) from exc
    return last


async def _frames(
    client: redis.asyncio.Redis,
    key: str,
    after: str,
    options: ReadOptions,
    ids: collections.deque[bytes] | None,
    headers: list[MutableHeaders] | None = None,
) -> AsyncIterator[bytes]:
    first = True
    batches = aiter_batches(client, key, after, options)
    try:
        async for entries in batches:
            if ids is not None:
                ids.extend([entry.id for entry in entries])
            if first and headers:
                # Pulled before the response starts (FrameStreamResponse), so these
                # headers still go out: where this response starts, and which stream.
                headers[0][POSITION_HEADER] = str(entries[0].position)
                headers[0][STREAM_ID_HEADER] = entries[0].stream.decode("ascii", "replace")
            first = False
            for entry in entries:
                yield entry.frame
    except StreamError as exc:
        status = _STATUS.get(type(exc))
        if first and status is not None:  # before the response starts: a status, not a 200
            raise HTTPException(status, str(exc)) from exc
        raise
    finally:
        await batches.aclose()  # type: ignore[attr-defined]


def _event_encoder(ids: collections.deque[bytes]) -> Any:
    def encode(seq: int, frame: bytes | memoryview) -> bytes:
        if ids:
            return encode_event(ids.popleft(), frame)
        # An ERROR frame of this replica's own (Redis failed, producer gone): no entry,
        # so no id (a client's Last-Event-ID stays the last frame's).
        event = encode_event(0, frame)
        cut = event.index(_SEQ_LINE)
        return event[:cut] + event[cut + len(_SEQ_LINE) - 1 :]

    return encode


def sse_response(
    client: redis.asyncio.Redis,
    key: str,
    request: Request | None = None,
    *,
    after: str | None = None,
    options: ReadOptions | None = None,
    **sse_options: Any,
) -> FrameStreamResponse:
    """Serve the stream stored at ``key`` as server-sent events, following it live.

    Args:
        client: a ``redis.asyncio.Redis`` (or ``RedisCluster``), ``decode_responses=False``.
        key: the stream's key.
        request: the request; its ``Last-Event-ID`` (a Redis entry id) is where a
            reconnecting client resumes, on any replica.
        after: start after this entry id instead of ``Last-Event-ID`` ("0": from the start).
        options: idle and outage limits (:class:`ReadOptions`).
        **sse_options: passed to :func:`transports.sse.sse_response` (``ping_interval``,
            ``send_timeout``, ``headers``).

    Returns:
        A Starlette response. Before any event: 404 for no stream at ``key``, 410 for
        a ``Last-Event-ID`` trimmed by retention, 400 for one that is not an entry of
        this stream. Afterwards, a failure (the producer gone without END for
        ``idle_limit``, Redis down for ``outage_limit``, frames trimmed before they
        were read) is an ERROR event naming the error class, without an ``id:``.
    """
    ids: collections.deque[bytes] = collections.deque()
    headers: list[MutableHeaders] = []  # the response's, once it exists
    frames = _frames(client, key, _start(request, after), options or ReadOptions(), ids, headers)
    response = _sse_response(frames, **sse_options)
    # sse_response numbers events by position; here each event's id is its entry id.
    # (sse_response does not take an encoder; FrameStreamResponse keeps it here.)
    response._encode = _event_encoder(ids)
    headers.append(response.headers)
    return response


def stream_response(
    client: redis.asyncio.Redis,
    key: str,
    request: Request | None = None,
    *,
    after: str | None = None,
    options: ReadOptions | None = None,
    **http_options: Any,
) -> FrameStreamResponse:
    """Serve the stream stored at ``key`` as one binary chunked HTTP response.

    The chunked twin of :func:`sse_response` (read it with ``transports.http.connect``);
    ``Last-Event-ID`` or ``after`` set where it starts, the statuses are the same.
    """
    frames = _frames(client, key, _start(request, after), options or ReadOptions(), None)
    return _http_stream_response(frames, **http_options)
