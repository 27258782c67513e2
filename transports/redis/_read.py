"""Reading a stream straight from Redis: thin sync and async drivers over :mod:`._core`.

The drivers only run commands and sleep; every decision is :func:`._core.read_steps`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Final, Generic, TypeVar

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
    "aiter_batches",
    "aiter_entries",
    "connect",
    "iter_entries",
]

#: redis-py's errors that mean "Redis is not reachable right now" (BusyLoadingError,
#: Redis replaying its AOF after a restart, is a ConnectionError).
OUTAGE_ERRORS: Final = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
_Client = TypeVar("_Client", redis.Redis, redis.asyncio.Redis)


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


class _Run:
    """:func:`read_steps` as the drivers use it: iterate the steps, report each outcome.

    What both drivers share lives here once: the client check, the command a step
    stands for, decoding its reply, and sending the reply (or throwing the connection
    error) back in for the next step. The drivers only sleep, run (or await) the
    command, and hand entries on.
    """

    def __init__(self, client: Any, key: str, after: str, options: ReadOptions) -> None:
        _check_client(client)
        self._client, self._key = client, key
        self._steps = read_steps(key, after, options)
        self._reply: Any = None
        self._error: Exception | None = None

    def __iter__(self) -> Iterator[Step]:
        return self

    def __next__(self) -> Step:
        reply, error = self._reply, self._error
        self._reply, self._error = None, None
        if error is not None:
            return self._steps.throw(error)
        return self._steps.send(reply)  # the first send(None) starts the generator

    def call(self, step: XRange | XRead | Exists) -> Any:
        """Start the command of ``step`` (a reply, or an awaitable for an asyncio client)."""
        return _call(self._client, self._key, step)

    def replied(self, step: XRange | XRead | Exists, reply: Any) -> None:
        self._reply = _reply(step, reply)

    def failed(self, exc: Exception) -> None:
        self._error = exc

    def close(self) -> None:
        self._steps.close()


def iter_entries(
    client: redis.Redis, key: str, after: str, options: ReadOptions
) -> Iterator[Entry]:
    """Run :func:`read_steps` on a sync client: the stream's entries, in order."""
    run = _Run(client, key, after, options)
    with contextlib.closing(run):
        for step in run:
            if isinstance(step, Deliver):
                yield from step.entries
            elif isinstance(step, Sleep):
                time.sleep(step.seconds)
            else:
                try:
                    run.replied(step, run.call(step))
                except OUTAGE_ERRORS as exc:
                    run.failed(exc)


async def aiter_batches(
    client: redis.asyncio.Redis, key: str, after: str, options: ReadOptions
) -> AsyncIterator[list[Entry]]:
    """Run :func:`read_steps` on an asyncio client: the entries, one XREAD reply at a time.

    What :func:`aiter_entries` and the SSE response iterate: one await per reply, not
    one per entry.
    """
    run = _Run(client, key, after, options)
    with contextlib.closing(run):
        for step in run:
            if isinstance(step, Deliver):
                yield step.entries
            elif isinstance(step, Sleep):
                await anyio.sleep(step.seconds)
            else:
                try:
                    run.replied(step, await run.call(step))
                except OUTAGE_ERRORS as exc:
                    run.failed(exc)


async def aiter_entries(
    client: redis.asyncio.Redis, key: str, after: str, options: ReadOptions
) -> AsyncIterator[Entry]:
    """Run :func:`read_steps` on an asyncio client; see :func:`iter_entries`."""
    batches = aiter_batches(client, key, after, options)
    try:
        async for entries in batches:
            for entry in entries:
                yield entry
    finally:
        await batches.aclose()  # type: ignore[attr-defined]


class _Following(Generic[_Client]):
    """What both transports keep: the stream to read, and the last entry id handed on."""

    def __init__(
        self,
        client: _Client,
        key: str,
        *,
        after: str = "0",
        options: ReadOptions | None = None,
    ) -> None:
        self._client: _Client = client
        self._key, self._options = key, options or ReadOptions()
        self.last_id = after

    def _hand_on(self, entry: Entry) -> bytes:
        self.last_id = entry.id.decode()
        return entry.frame


class RedisTransport(_Following[redis.Redis], BaseTransport):
    """Sync client transport reading the stream at ``key`` from Redis.

    ``RedisTransport(client, key, *, after="0", options=None)``.

    Attributes:
        last_id: the entry id of the last frame handed on (a later
            ``connect(..., after=last_id)`` resumes exactly there).
    """

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
            yield self._hand_on(entry)


class AsyncRedisTransport(_Following[redis.asyncio.Redis], AsyncBaseTransport):
    """Async client transport reading the stream at ``key``; see :class:`RedisTransport`."""

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
            yield self._hand_on(entry)


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
