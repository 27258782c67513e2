"""One facade over both Triton proxy clients, so one test body checks both.

``ClientFactory("sync" | "async")(addr, **kwargs)`` builds a
:class:`~transports.triton.TritonBytesStreamer` or an
:class:`~transports.triton.AsyncTritonBytesStreamer` with the same arguments and
wraps it in :class:`UniformStreamer`, whose methods are plain calls either way: the
async client runs on a private event loop, its async iterators are stepped one
result at a time (so a test can break out, close the client or kill the proxy
between results), and frames reach it as an async iterable (``sync_frames=True``:
the sync iterable as is). As ``tests/core_helpers.ReaderFactory`` does for readers.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterable, Iterator
from types import TracebackType
from typing import Any

from transports.triton import AsyncTritonBytesStreamer, TritonBytesStreamer


async def _aiter(frames: Iterable[bytes]) -> AsyncIterator[bytes]:
    for frame in frames:
        yield frame


class UniformStreamer:
    """The clients' call shapes, sync, over either client."""

    def __init__(
        self, client: Any, loop: asyncio.AbstractEventLoop | None, *, sync_frames: bool = False
    ) -> None:
        self.client = client
        self.kind = "sync" if loop is None else "async"
        self._loop = loop
        self._sync_frames = sync_frames

    # Plumbing ---------------------------------------------------------------------------

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.client, name)(*args, **kwargs)
        if self._loop is None:
            return result
        return self._loop.run_until_complete(result)

    def _iterate(
        self, name: str, model: str, version: str, frames: Iterable[bytes]
    ) -> Iterator[Any]:
        if self._loop is None:
            with contextlib.closing(getattr(self.client, name)(model, version, frames)) as it:
                yield from it
            return
        loop = self._loop
        source = frames if self._sync_frames else _aiter(frames)
        results = getattr(self.client, name)(model, version, source)
        try:
            while True:
                try:
                    item = loop.run_until_complete(results.__anext__())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            loop.run_until_complete(results.aclose())

    # The clients' methods ---------------------------------------------------------------

    def stream_bytes(self, model: str, version: str, frames: Iterable[bytes]) -> Iterator[Any]:
        return self._iterate("stream_bytes", model, version, frames)

    def stream_results(self, model: str, version: str, frames: Iterable[bytes]) -> Iterator[Any]:
        return self._iterate("stream_results", model, version, frames)

    def stream_responses(self, model: str, version: str, frames: Iterable[bytes]) -> Iterator[Any]:
        return self._iterate("stream_responses", model, version, frames)

    def send_unary(self, model: str, version: str, data: bytes, *, seq: int = 0) -> Any:
        return self._call("send_unary", model, version, data, seq=seq)

    def model_metadata(self, model: str, model_version: str = "") -> Any:
        return self._call("model_metadata", model, model_version)

    def prepare(self, model: str, model_version: str = "") -> Any:
        return self._call("prepare", model, model_version)

    def packet_spec(self, model: str, model_version: str) -> Any:
        return self._call("packet_spec", model, model_version)

    def wait_for_ready(
        self, model: str | None = None, timeout_s: float = 30.0, model_version: str = ""
    ) -> None:
        self._call("wait_for_ready", model, timeout_s, model_version)

    def close(self) -> None:
        self._call("close")

    @property
    def closed(self) -> bool:
        return bool(self.client.closed)

    def close_later(self, seconds: float) -> None:
        """Close the client from elsewhere while a call runs: a thread, or a task."""
        if self._loop is None:
            threading.Timer(seconds, self.client.close).start()
            return
        loop = self._loop
        loop.call_later(seconds, lambda: loop.create_task(self.client.close()))

    def __enter__(self) -> UniformStreamer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ClientFactory:
    """Builds :class:`UniformStreamer` over the sync or the async client."""

    def __init__(self, kind: str) -> None:
        assert kind in ("sync", "async")
        self.kind = kind
        self._made: list[UniformStreamer] = []

    @property
    def cls(self) -> type[Any]:
        return TritonBytesStreamer if self.kind == "sync" else AsyncTritonBytesStreamer

    def __call__(self, *args: Any, sync_frames: bool = False, **kwargs: Any) -> UniformStreamer:
        loop = None if self.kind == "sync" else asyncio.new_event_loop()
        made = UniformStreamer(self.cls(*args, **kwargs), loop, sync_frames=sync_frames)
        self._made.append(made)
        return made

    def close(self) -> None:
        for made in self._made:
            with contextlib.suppress(Exception):
                made.close()
            loop = made._loop
            if loop is not None:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
        self._made.clear()
