"""Client-side counters: a wrapper around a typed reader.

``reader = observe_reader(reader, transport="sse")`` counts the stream, the
header, items and footer read, and a truncation or remote error when the reader
raises one. The wrapper has the reader's methods and attributes and its static
type (``isinstance(wrapped, StreamReader)`` is false: it is a proxy).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from truss_stream import AsyncStreamReader, RemoteStreamError, StreamReader, StreamTruncatedError

if TYPE_CHECKING:
    from ._metrics import ClientMetrics

__all__ = ["observe_reader"]

R = TypeVar("R", bound="StreamReader[Any, Any, Any] | AsyncStreamReader[Any, Any, Any]")
_T = TypeVar("_T")
_BATCH: Final = 1024


class _Tally:
    """Frames of one kind read, added to the counter in batches (a frame costs an addition)."""

    def __init__(self, observed: _Observed, kind: str) -> None:
        self._observed = observed
        self._kind = kind
        self._pending = 0

    def seen(self, value: _T) -> _T:
        """Count one frame read (``value``, handed back)."""
        self._pending += 1
        if self._pending >= _BATCH:
            self.flush()
        return value

    def flush(self) -> None:
        self._observed._count(self._kind, self._pending)
        self._pending = 0


class _Observed:
    """What both drivers share: the counters, and :meth:`_counting` around each read."""

    def __init__(self, reader: Any, metrics: ClientMetrics, transport: str) -> None:
        self._reader = reader
        self._transport = transport
        self._metrics = metrics
        self._failed = False
        metrics.streams.labels(transport).inc()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def _count(self, kind: str, n: int = 1) -> None:
        if n:
            self._metrics.frames.labels(self._transport, kind).inc(n)

    def _fail(self, exc: BaseException) -> None:
        if self._failed:
            return
        if isinstance(exc, StreamTruncatedError):
            self._metrics.truncations.labels(self._transport).inc()
        elif isinstance(exc, RemoteStreamError):
            self._metrics.remote_errors.labels(self._transport).inc()
        else:
            return
        self._failed = True

    @contextlib.contextmanager
    def _counting(self, kind: str) -> Iterator[Callable[[_T], _T]]:
        """Count the ``kind`` frames passed to the yielded ``seen``, and what the block raises.

        A truncation or remote error is counted once per stream; the frames seen are
        counted whether the block ends, fails or is closed early.
        """
        tally = _Tally(self, kind)
        try:
            yield tally.seen
        except Exception as exc:
            self._fail(exc)
            raise
        finally:
            tally.flush()


# The two drivers only call the reader (and await it); the counting is _counting's.


class _SyncObserved(_Observed):
    def read_header(self) -> Any:
        with self._counting("header") as seen:
            return seen(self._reader.read_header())

    def read_items(self) -> Iterator[Any]:
        with self._counting("item") as seen:
            for item in self._reader.read_items():
                yield seen(item)

    def read_footer(self) -> Any:
        with self._counting("footer") as seen:
            return seen(self._reader.read_footer())


class _AsyncObserved(_Observed):
    async def read_header(self) -> Any:
        with self._counting("header") as seen:
            return seen(await self._reader.read_header())

    async def read_items(self) -> AsyncIterator[Any]:
        with self._counting("item") as seen:
            async for item in self._reader.read_items():
                yield seen(item)

    async def read_footer(self) -> Any:
        with self._counting("footer") as seen:
            return seen(await self._reader.read_footer())


def observe_reader(reader: R, *, transport: str, metrics: ClientMetrics | None = None) -> R:
    """Count what ``reader`` reads in ``metrics`` (default: the default registry's).

    Args:
        reader: a sync or async typed reader (from ``connect``/``aconnect``...).
        transport: the ``transport`` label (``"sse"``, ``"http"``, ``"grpc"``...).
        metrics: a :class:`ClientMetrics` group (e.g. for another registry).

    Returns:
        A proxy of ``reader`` with the same methods (and static type).

    Raises:
        ImportError: prometheus_client is not installed.
    """
    if metrics is None:
        from ._metrics import ClientMetrics

        metrics = ClientMetrics.for_registry()
    if isinstance(reader, AsyncStreamReader):
        return cast(R, _AsyncObserved(reader, metrics, transport))
    return cast(R, _SyncObserved(reader, metrics, transport))
