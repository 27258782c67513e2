"""Sync and async readers: thin loops moving bytes from a source into a ReaderCore.

All decisions (framing, order, decoding, truncation) live in ``_protocol.py``;
each method here only asks the core for a step and, on NEED_DATA, pulls one more
chunk from its source.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
)
from typing import Any, Generic, TypeVar, cast, overload

import pydantic

from ._codec import MsgpackLimits
from ._errors import StreamTimeoutError
from ._frames import DEFAULT_MAX_FRAME_BYTES
from ._protocol import BATCH, DONE, NEED_DATA, NOT_TAKEN, ReaderCore
from ._schema import FooterTT, HeaderTT, ItemT, StreamTypes

__all__ = ["AsyncStreamReader", "StreamReader", "stream_reader"]

_EXHAUSTED = object()


class _Items(itertools.chain[Any]):
    """What ``StreamReader.read_items`` returns: the chain of its item runs, closable.

    ``close()`` ends it as it ends a generator (read_items was one): the runs'
    generator is closed and, as a chain's current run cannot be stopped from
    outside, the object becomes a :class:`_ClosedItems`, which yields nothing, so
    not one more chunk is pulled from the source.
    """

    __slots__ = ("_runs",)
    _runs: Generator[Any, None, None]

    def close(self) -> None:
        """Stop: no more items, nothing more read from the source."""
        self.__class__ = _ClosedItems
        self._runs.close()


class _ClosedItems(_Items):
    __slots__ = ()

    def __next__(self) -> Any:
        raise StopIteration


# Why covariant header/footer parameters: mypy does not check a TypeVar's bound when
# it binds it through a ``self`` annotation, so ``self: StreamReader[I, HeaderT, F]``
# let ``read_header`` through on ``StreamReader[I, None, F]`` (returning None). With
# covariant parameters, ``self: StreamReader[Any, BaseModel, Any]`` accepts any model
# and rejects None ("invalid self argument"), and the method returns the bound model.
HeaderCo = TypeVar("HeaderCo", covariant=True)
FooterCo = TypeVar("FooterCo", covariant=True)
_WithHeader = pydantic.BaseModel
_WithFooter = pydantic.BaseModel


class _Timer:
    """Idle and total time limits of one reader; shared by both drivers."""

    __slots__ = ("_total_binds", "deadline", "idle", "total")

    def __init__(self, idle: float | None, total: float | None) -> None:
        for name, value in (("idle_timeout", idle), ("total_timeout", total)):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0 or None")
        self.idle = idle
        self.total = total
        self.deadline = None if total is None else time.monotonic() + total
        self._total_binds = idle is None

    def budget(self) -> float | None:
        """Seconds the next chunk may take, or None for no limit."""
        if self.deadline is None:
            return self.idle
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.expired(total=True)
        # Remember which limit this budget is, for expired(): a timer may fire a
        # hair before the deadline, so "now >= deadline" can name the wrong one.
        self._total_binds = self.idle is None or left <= self.idle
        return left if self.idle is None else min(left, self.idle)

    def expired(self, *, total: bool | None = None) -> StreamTimeoutError:
        if total is None:
            total = self._total_binds
        if total:
            return StreamTimeoutError(f"the stream took longer than total_timeout={self.total}s")
        return StreamTimeoutError(f"no data for idle_timeout={self.idle}s")


class _ReaderBase(Generic[ItemT, HeaderCo, FooterCo]):
    __slots__ = ("_core", "_timer", "_types")

    def __init__(
        self, types: StreamTypes[ItemT, HeaderCo, FooterCo], core: ReaderCore, timer: _Timer
    ) -> None:
        self._types = types
        self._core = core
        self._timer = timer

    @property
    def types(self) -> StreamTypes[ItemT, HeaderCo, FooterCo]:
        """The stream type this reader validates against."""
        return self._types

    @property
    def ended(self) -> bool:
        """True once the stream's END frame was read."""
        return self._core.ended


class StreamReader(_ReaderBase[ItemT, HeaderCo, FooterCo]):
    """Reads a stream from a sync iterable of byte chunks: header, items, footer.

    Every method raises :class:`StreamError` subclasses for bad, misordered,
    truncated or remotely failed streams, and ``pydantic.ValidationError`` for
    payloads that do not fit the models. A misordered call consumes nothing.
    """

    __slots__ = ("_source",)

    def __init__(
        self,
        types: StreamTypes[ItemT, HeaderCo, FooterCo],
        source: Iterable[bytes | bytearray | memoryview],
        core: ReaderCore,
        timer: _Timer,
    ) -> None:
        super().__init__(types, core, timer)
        self._source = iter(source)

    def _pull(self) -> None:
        # A blocking iterator cannot be interrupted from here: the total deadline is
        # checked between chunks, and transports map their read timeouts (the idle
        # limit) onto StreamTimeoutError.
        if self._timer.deadline is not None:
            self._timer.budget()
        chunk = next(self._source, _EXHAUSTED)
        if chunk is _EXHAUSTED:
            self._core.receive_eof()
        else:
            self._core.receive_data(cast("bytes", chunk))

    def _chunks(self) -> Iterator[bytes | bytearray | memoryview]:
        """The source, checking the total deadline before each chunk if there is one."""
        if self._timer.deadline is None:
            return self._source
        return self._timed_chunks()

    def _timed_chunks(self) -> Iterator[bytes | bytearray | memoryview]:
        budget = self._timer.budget
        source = self._source
        while True:
            budget()
            chunk = next(source, _EXHAUSTED)
            if chunk is _EXHAUSTED:
                return
            yield cast("bytes", chunk)

    def _run(self, step: Callable[[], Any]) -> Any:
        while (result := step()) is NEED_DATA:
            self._pull()
        return result

    def read_header(self: StreamReader[Any, _WithHeader, Any]) -> HeaderCo:
        """Read the header; it must be the stream's first frame.

        Raises:
            StreamOrderError: the next frame is not the header (nothing is consumed).
            StreamConsumedError: the header was already read.
        """
        return cast("HeaderCo", self._run(self._core.read_header))

    def read_items(self) -> Iterator[ItemT]:
        """Yield the items, until the footer or END. Call once per stream.

        Raises:
            StreamOrderError: the header is unread.
            StreamConsumedError: called a second time.
            StreamTruncatedError: the source ended before END.
        """
        # The items come in runs (see _item_runs), chained in C: while chunks are
        # one whole small item frame each (SSE, gRPC), no line of Python of this
        # driver runs per item, only the core's taker.
        runs = self._item_runs()
        items = cast("_Items", _Items.from_iterable(runs))
        items._runs = runs
        return items

    def _item_runs(self) -> Generator[Iterable[ItemT], None, None]:
        """The runs of items read_items chains: what the core holds, or a taker run."""
        core = self._core
        core.start_items()
        next_item = core.next_item
        next_item_after = core.next_item_after
        after_batch = core.next_item_after_batch
        batch = core.batch
        pending = core.pending_chunk
        item_run = core.item_run
        take_item = core.item_taker
        chunks = iter(self._chunks())
        need_data, done, batched, not_taken = NEED_DATA, DONE, BATCH, NOT_TAKEN
        item = next_item()
        while True:
            # What the core holds already (several frames in one chunk, the header's),
            # or a BATCH: the items of a chunk of many frames, decoded in one loop.
            while item is not need_data:
                if item is done:
                    return
                if item is batched:
                    yield batch  # consumed by the chain before after_batch refills it
                    item = after_batch()
                    continue
                yield (item,)
                item = next_item()
            # Nothing buffered: the next chunk, to the taker first. Once it takes one
            # (a stream of one small item frame per chunk), a run of the taker over
            # the chunks after it (the chain pulls them through it in C), while it
            # takes them; then the chunk it stopped at goes to the core as it is.
            chunk: Any = next(chunks, _EXHAUSTED)
            if chunk is not _EXHAUSTED:
                item = take_item(chunk)
                if item is not_taken:
                    item = next_item_after(chunk)
                    continue
                yield (item,)
                run = item_run(chunks)
                if run is None:
                    item = next_item()
                    continue
                pending[0] = None
                yield run
                chunk = pending[0]
                pending[0] = None
                if chunk is None:
                    chunk = _EXHAUSTED
            if chunk is _EXHAUSTED:
                core.receive_eof()
                item = next_item()
            else:
                item = next_item_after(chunk)

    def read_footer(self: StreamReader[Any, Any, _WithFooter]) -> FooterCo:
        """Read the footer, after all items, and the END frame that follows it.

        Raises:
            StreamOrderError: items or the header are unread, or there is no footer.
        """
        footer = self._run(self._core.read_footer)
        self._run(self._core.read_end)
        return cast("FooterCo", footer)


class AsyncStreamReader(_ReaderBase[ItemT, HeaderCo, FooterCo]):
    """The async twin of :class:`StreamReader`, over an async iterable of chunks."""

    __slots__ = ("_source",)

    def __init__(
        self,
        types: StreamTypes[ItemT, HeaderCo, FooterCo],
        source: AsyncIterable[bytes | bytearray | memoryview],
        core: ReaderCore,
        timer: _Timer,
    ) -> None:
        super().__init__(types, core, timer)
        self._source = source.__aiter__()

    async def _next_chunk(self) -> Any:
        """The next chunk, or _EXHAUSTED, within the time limits."""
        budget = self._timer.budget()
        try:
            if budget is None:
                return await self._source.__anext__()
            return await asyncio.wait_for(self._source.__anext__(), budget)
        except asyncio.TimeoutError:
            raise self._timer.expired() from None
        except StopAsyncIteration:
            return _EXHAUSTED

    async def _pull(self) -> None:
        chunk = await self._next_chunk()
        if chunk is _EXHAUSTED:
            self._core.receive_eof()
        else:
            self._core.receive_data(chunk)

    def _chunks(self) -> AsyncIterator[bytes | bytearray | memoryview]:
        """The source, within the time limits if there are any."""
        # (An iterator that lacks __aiter__ works with __anext__ alone, as before.)
        if (
            self._timer.deadline is None
            and self._timer.idle is None
            and hasattr(self._source, "__aiter__")
        ):
            return self._source
        return self._timed_chunks()

    async def _timed_chunks(self) -> AsyncIterator[bytes | bytearray | memoryview]:
        while (chunk := await self._next_chunk()) is not _EXHAUSTED:
            yield chunk

    async def _run(self, step: Callable[[], Any]) -> Any:
        while (result := step()) is NEED_DATA:
            await self._pull()
        return result

    async def read_header(self: AsyncStreamReader[Any, _WithHeader, Any]) -> HeaderCo:
        """Read the header; see :meth:`StreamReader.read_header`."""
        return cast("HeaderCo", await self._run(self._core.read_header))

    async def read_items(self) -> AsyncIterator[ItemT]:
        """Yield the items; see :meth:`StreamReader.read_items`."""
        core = self._core
        core.start_items()
        next_item = core.next_item
        next_item_after = core.next_item_after
        take_item = core.item_taker
        after_batch = core.next_item_after_batch
        batch = core.batch
        chunks = self._chunks()
        need_data, done, not_taken, batched = NEED_DATA, DONE, NOT_TAKEN, BATCH
        item = next_item()
        while True:
            # The same loop as StreamReader.read_items, with `async for`.
            while item is not need_data:
                if item is done:
                    return
                if item is batched:
                    for item in batch:
                        yield item
                    item = after_batch()
                    continue
                yield item
                item = next_item()
            async for chunk in chunks:
                item = take_item(chunk)
                if item is not_taken:
                    item = next_item_after(chunk)
                    break
                yield item
            else:
                core.receive_eof()
                item = next_item()

    async def read_footer(self: AsyncStreamReader[Any, Any, _WithFooter]) -> FooterCo:
        """Read the footer and the END after it; see :meth:`StreamReader.read_footer`."""
        footer = await self._run(self._core.read_footer)
        await self._run(self._core.read_end)
        return cast("FooterCo", footer)


@overload
def stream_reader(
    types: StreamTypes[ItemT, HeaderTT, FooterTT],
    source: AsyncIterable[bytes | bytearray | memoryview],
    *,
    require_end: bool = ...,
    max_frame_bytes: int = ...,
    copy_arrays: bool = ...,
    msgpack_limits: MsgpackLimits | None = ...,
    idle_timeout: float | None = ...,
    total_timeout: float | None = ...,
) -> AsyncStreamReader[ItemT, HeaderTT, FooterTT]: ...


@overload
def stream_reader(
    types: StreamTypes[ItemT, HeaderTT, FooterTT],
    source: Iterable[bytes | bytearray | memoryview],
    *,
    require_end: bool = ...,
    max_frame_bytes: int = ...,
    copy_arrays: bool = ...,
    msgpack_limits: MsgpackLimits | None = ...,
    idle_timeout: float | None = ...,
    total_timeout: float | None = ...,
) -> StreamReader[ItemT, HeaderTT, FooterTT]: ...


def stream_reader(
    types: StreamTypes[ItemT, HeaderTT, FooterTT],
    source: Any,
    *,
    require_end: bool = True,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    copy_arrays: bool = False,
    msgpack_limits: MsgpackLimits | None = None,
    idle_timeout: float | None = None,
    total_timeout: float | None = None,
) -> StreamReader[ItemT, HeaderTT, FooterTT] | AsyncStreamReader[ItemT, HeaderTT, FooterTT]:
    """Create a reader over ``source``: async for an async iterable, sync otherwise.

    Args:
        types: the stream type (from :func:`stream_types`).
        source: the stream's bytes in chunks of any size (``bytes``, ``bytearray``
            or ``memoryview``).
        require_end: raise :class:`StreamTruncatedError` if the source ends before
            an END frame. Set False only for streams written by
            ``truss_chains.streaming``, which never sends END.
        max_frame_bytes: largest frame payload accepted (default 256 MiB), checked
            against each frame's declared length before it is buffered.
        copy_arrays: give writable NumPy arrays (copies). By default arrays are
            read-only views of the received bytes.
        msgpack_limits: limits on msgpack containers and strings.
        idle_timeout: most seconds to wait for the next chunk (async reader; the
            sync reader relies on its transport's read timeout).
        total_timeout: most seconds for the whole stream, counted from here
            (async: enforced while waiting; sync: checked between chunks).

    Raises (from the read methods):
        StreamTimeoutError: a timeout above expired.
    """
    core = ReaderCore(
        types,
        require_end=require_end,
        max_frame_bytes=max_frame_bytes,
        copy_arrays=copy_arrays,
        msgpack_limits=msgpack_limits,
    )
    timer = _Timer(idle_timeout, total_timeout)
    if isinstance(source, AsyncIterable):
        return AsyncStreamReader(types, source, core, timer)
    if isinstance(source, (bytes, bytearray, memoryview, str)):
        raise TypeError("source must be an iterable of byte chunks, not a bytes object")
    if isinstance(source, Iterable):
        return StreamReader(types, source, core, timer)
    raise TypeError(f"source must be an Iterable or AsyncIterable of bytes, got {type(source)}")
