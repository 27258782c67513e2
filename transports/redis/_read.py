"""Reading a stream straight from Redis: thin sync and async drivers over :mod:`._core`.

The drivers only run commands and sleep; every decision is :func:`._core.read_steps`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Final

import anyio
import redis
import redis.asyncio

from truss_stream import AsyncStreamReader, StreamReader, StreamTypes
from truss_stream._schema import FooterTT, HeaderTT, ItemT

from ..base import AsyncBaseTransport, BaseTransport, aopen_reader, open_reader
from ._core import (
    Deliver,
    Entry,
    Exists,
    RawEntry,
    ReadOptions,
    Sleep,
    Step,
    XRange,
    XRead,
    read_steps,
)

__all__ = [
    "OUTAGE_ERRORS",
    "AsyncRedisTransport",
    "RedisTransport",
    "aconnect",
    "aiter_entries",
    "connect",
    "iter_entries",
]

#: redis-py's errors that mean "Redis is not reachable right now" (BusyLoadingError,
#: Redis replaying its AOF after a restart, is a ConnectionError).
OUTAGE_ERRORS: Final = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def _call(client: Any, key: str, step: XRange | XRead | Exists) -> Any:
    """Start the command of ``step`` (a reply, or an awaitable for an asyncio client)."""
    if isinstance(step, XRead):
        return client.xread({key: step.after}, count=step.count, block=step.block_ms)
    if isinstance(step, XRange):
        return client.xrange(key, step.start, step.end, count=step.count)
    return client.exists(key)


def _reply(step: XRange | XRead | Exists, reply: Any) -> Any:
    if isinstance(step, XRead):
        return _xread_entries(reply)
    return reply


def _xread_entries(reply: Any) -> list[RawEntry]:
    # RESP2: [[key, [(id, fields), ...]]]; RESP3: {key: [[(id, fields), ...]]}.
    if not reply:
        return []
    if isinstance(reply, Mapping):
        (value,) = reply.values()
        return list(value[0]) if value and isinstance(value[0], list) else list(value)
    return list(reply[0][1])


def _check_client(client: Any) -> None:
    kwargs = client.get_connection_kwargs() if hasattr(client, "get_connection_kwargs") else {}
    if kwargs.get("decode_responses"):
        raise ValueError("transports.redis needs a client with decode_responses=False (frames)")


def iter_entries(
    client: redis.Redis, key: str, after: str, options: ReadOptions
) -> Iterator[Entry]:
    """Run :func:`read_steps` on a sync client: the stream's entries, in order."""
    _check_client(client)
    steps = read_steps(key, after, options)
    with contextlib.closing(steps):
        step: Step = next(steps)
        while True:
            try:
                if isinstance(step, Deliver):
                    yield from step.entries
                    step = steps.send(None)
                elif isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = steps.send(None)
                else:
                    try:
                        reply = _reply(step, _call(client, key, step))
                    except OUTAGE_ERRORS as exc:
                        step = steps.throw(exc)
                    else:
                        step = steps.send(reply)
            except StopIteration:
                return


async def aiter_entries(
    client: redis.asyncio.Redis, key: str, after: str, options: ReadOptions
) -> AsyncIterator[Entry]:
    """Run :func:`read_steps` on an asyncio client; see :func:`iter_entries`."""
    _check_client(client)
    steps = read_steps(key, after, options)
    with contextlib.closing(steps):
        step: Step = next(steps)
        while True:
            try:
                if isinstance(step, Deliver):
                    for entry in step.entries:
                        yield entry
                    step = steps.send(None)
                elif isinstance(step, Sleep):
                    await anyio.sleep(step.seconds)
                    step = steps.send(None)
                else:
                    try:
                        reply = _reply(step, await _call(client, key, step))
                    except OUTAGE_ERRORS as exc:
                        step = steps.throw(exc)
                    else:
                        step = steps.send(reply)
            except StopIteration:
                return


class RedisTransport(BaseTransport):
    """Sync client transport reading the stream at ``key`` from Redis.

    Attributes:
        last_id: the entry id of the last frame handed on (a later
            ``connect(..., after=last_id)`` resumes exactly there).
    """

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        *,
        after: str = "0",
        options: ReadOptions | None = None,
    ) -> None:
        self._client, self._key, self._options = client, key, options or ReadOptions()
        self.last_id = after

    @contextlib.contextmanager
    def open_stream(self) -> Iterator[Iterator[bytes]]:
        """Open the stream; see :meth:`transports.base.BaseTransport.open_stream`."""
        entries = iter_entries(self._client, self._key, self.last_id, self._options)
        try:
            yield self._frames(entries)
        finally:
            entries.close()  # type: ignore[attr-defined]

    def _frames(self, entries: Iterator[Entry]) -> Iterator[bytes]:
        for entry in entries:
            self.last_id = entry.id.decode()
            yield entry.frame


class AsyncRedisTransport(AsyncBaseTransport):
    """Async client transport reading the stream at ``key``; see :class:`RedisTransport`."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        key: str,
        *,
        after: str = "0",
        options: ReadOptions | None = None,
    ) -> None:
        self._client, self._key, self._options = client, key, options or ReadOptions()
        self.last_id = after

    @contextlib.asynccontextmanager
    async def open_stream(self) -> AsyncIterator[AsyncIterator[bytes]]:
        """Open the stream; see :meth:`transports.base.AsyncBaseTransport.open_stream`."""
        entries = aiter_entries(self._client, self._key, self.last_id, self._options)
        try:
            yield self._frames(entries)
        finally:
            await entries.aclose()  # type: ignore[attr-defined]

    async def _frames(self, entries: AsyncIterator[Entry]) -> AsyncIterator[bytes]:
        async for entry in entries:
            self.last_id = entry.id.decode()
            yield entry.frame


@contextlib.asynccontextmanager
async def aconnect(
    client: redis.asyncio.Redis,
    key: str,
    types: StreamTypes[ItemT, HeaderTT, FooterTT],
    *,
    after: str = "0",
    options: ReadOptions | None = None,
    reader_options: Mapping[str, Any] | None = None,
) -> AsyncIterator[AsyncStreamReader[ItemT, HeaderTT, FooterTT]]:
    """Read the stream stored at ``key`` straight from Redis, as a typed async reader.

    Follows a stream still being written (``XREAD BLOCK``) until its END or ERROR.

    Args:
        client: a ``redis.asyncio.Redis`` (or ``RedisCluster``) with
            ``decode_responses=False``.
        key: the stream's key (see :func:`transports.redis.stream_key`).
        types: the stream type both sides share.
        after: the entry id after which to start; ``"0"``: the whole stream.
        options: idle and outage limits (:class:`ReadOptions`).
        reader_options: keyword arguments for :func:`truss_stream.stream_reader`.

    Returns:
        An async context manager giving the reader.

    Raises:
        (while reading) StreamTrimmedError, StreamNotFoundError, StreamPositionError,
        StreamIdentityError, ProducerGoneError, RedisUnavailableError (see
        :mod:`transports.redis`), and the reader's own errors.
    """
    transport = AsyncRedisTransport(client, key, after=after, options=options)
    async with aopen_reader(transport, types, **(reader_options or {})) as reader:
        yield reader


@contextlib.contextmanager
def connect(
    client: redis.Redis,
    key: str,
    types: StreamTypes[ItemT, HeaderTT, FooterTT],
    *,
    after: str = "0",
    options: ReadOptions | None = None,
    reader_options: Mapping[str, Any] | None = None,
) -> Iterator[StreamReader[ItemT, HeaderTT, FooterTT]]:
    """Read the stream stored at ``key`` as a typed sync reader; see :func:`aconnect`."""
    transport = RedisTransport(client, key, after=after, options=options)
    with open_reader(transport, types, **(reader_options or {})) as reader:
        yield reader
