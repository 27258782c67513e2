"""Client-side counters: a wrapper around a typed reader.

``reader = observe_reader(reader, transport="sse")`` counts the stream, the
header, items and footer read, and a truncation or remote error when the reader
raises one. The wrapper has the reader's methods and attributes and its static
type (``isinstance(wrapped, StreamReader)`` is false: it is a proxy).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from truss_stream import AsyncStreamReader, RemoteStreamError, StreamReader, StreamTruncatedError

if TYPE_CHECKING:
    from ._metrics import ClientMetrics

__all__ = ["observe_reader"]

R = TypeVar("R", bound="StreamReader[Any, Any, Any] | AsyncStreamReader[Any, Any, Any]")
_BATCH: Final = 1024


class _Observed:
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


class _SyncObserved(_Observed):
    def read_header(self) -> Any:
        try:
            header = self._reader.read_header()
        except Exception as exc:
            self._fail(exc)
            raise
        self._count("header")
        return header

    def read_items(self) -> Iterator[Any]:
        pending = 0
        try:
            for item in self._reader.read_items():
                pending += 1
                if pending >= _BATCH:
                    self._count("item", pending)
                    pending = 0
                yield item
        except Exception as exc:
            self._fail(exc)
            raise
        finally:
            self._count("item", pending)

    def read_footer(self) -> Any:
        try:
            footer = self._reader.read_footer()
        except Exception as exc:
            self._fail(exc)
            raise
        self._count("footer")
        return footer


class _AsyncObserved(_Observed):
    async def read_header(self) -> Any:
        try:
            header = await self._reader.read_header()
        except Exception as exc:
            self._fail(exc)
            raise
        self._count("header")
        return header

    async def read_items(self) -> AsyncIterator[Any]:
        pending = 0
        try:
            async for item in self._reader.read_items():
                pending += 1
                if pending >= _BATCH:
                    self._count("item", pending)
                    pending = 0
                yield item
        except Exception as exc:
            self._fail(exc)
            raise
        finally:
            self._count("item", pending)

    async def read_footer(self) -> Any:
        try:
            footer = await self._reader.read_footer()
        except Exception as exc:
            self._fail(exc)
            raise
        self._count("footer")
        return footer


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
