"""Graceful shutdown for servers with open, possibly endless, streams.

A :class:`GracefulShutdown` is an object the application creates and passes to
every response that should take part (``sse_response(..., shutdown=drain)``,
``stream_response(..., shutdown=drain)``, ``FrameStreamService(..., shutdown=drain)``).
Nothing is global: two apps in one process have two objects. Once
:meth:`GracefulShutdown.begin` is called:

- new streams are refused (HTTP 503 with ``Retry-After``; gRPC UNAVAILABLE);
- open streams may go on for the grace period; then each one's producer is closed
  and the stream ends with a final ERROR frame carrying
  :class:`truss_stream.ServerGoingAwayError`, which readers raise and clients may
  retry or resume;
- the response then completes normally, so the server sees no error and logs no
  traceback.

Who calls ``begin``: uvicorn waits for open connections before it runs the
lifespan shutdown (and, without ``timeout_graceful_shutdown``, waits forever), so
a lifespan hook comes too late. :meth:`GracefulShutdown.uvicorn_server` builds a
``uvicorn.Server`` subclass whose ``shutdown`` calls ``begin`` first; the gRPC
helpers' ``stop(grace)`` call it themselves. See docs/transports.md for the recipes.

``begin`` must be called on the event loop thread that runs the streams (uvicorn's
``shutdown`` and ``RunningServer.stop`` are).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    import uvicorn

__all__ = ["GracefulShutdown"]


class GracefulShutdown:
    """Ends open streams with a going-away ERROR frame when the server stops.

    Args:
        grace: seconds open streams may keep running after :meth:`begin` before
            they are ended with the going-away frame (0: end them at once).
        retry_after: seconds sent in the ``Retry-After`` header of the 503 that
            refuses new streams.
    """

    def __init__(self, grace: float = 5.0, *, retry_after: int = 1) -> None:
        if grace < 0 or not math.isfinite(grace):
            raise ValueError(f"grace must be a finite number >= 0, got {grace}")
        self.grace = grace
        self.retry_after = retry_after
        self._deadline: float | None = None
        self._waiters: set[anyio.Event] = set()
        self._open = 0
        self._idle: set[anyio.Event] = set()

    @property
    def shutting_down(self) -> bool:
        """True once :meth:`begin` was called: new streams are refused."""
        return self._deadline is not None

    @property
    def open_streams(self) -> int:
        """How many streams are being served right now."""
        return self._open

    def begin(self, grace: float | None = None) -> None:
        """Refuse new streams and end open ones after ``grace`` (default: the object's).

        Calling it again changes nothing. Call it on the streams' event loop thread.
        """
        if self._deadline is not None:
            return
        self._deadline = time.monotonic() + (self.grace if grace is None else max(grace, 0.0))
        for event in list(self._waiters):
            event.set()

    async def wait_until_due(self) -> None:
        """Return when open streams must end: the grace period after :meth:`begin`."""
        if self._deadline is None:
            await _wait_on(self._waiters)
        assert self._deadline is not None
        await anyio.sleep(max(self._deadline - time.monotonic(), 0.0))

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        """Count one open stream for the duration of the ``with`` block."""
        self._open += 1
        try:
            yield
        finally:
            self._open -= 1
            if not self._open:
                for event in list(self._idle):
                    event.set()

    async def wait_idle(self) -> None:
        """Return once no stream is open."""
        while self._open:
            await _wait_on(self._idle)

    def uvicorn_server(self, config: uvicorn.Config) -> uvicorn.Server:
        """A ``uvicorn.Server`` that calls :meth:`begin` as its shutdown starts.

        uvicorn's own signal handling stays as it is (SIGINT / SIGTERM set
        ``should_exit``); only its public ``shutdown`` method is extended, in a
        subclass. Run it with ``server.run()`` or ``await server.serve()``.
        """
        import uvicorn

        drain = self

        class _DrainingServer(uvicorn.Server):
            async def shutdown(self, sockets: Any = None) -> None:
                drain.begin()
                await super().shutdown(sockets)

        return _DrainingServer(config)


async def _wait_on(waiters: set[anyio.Event]) -> None:
    """Wait until someone sets the events in ``waiters`` (one is added for this wait)."""
    event = anyio.Event()
    waiters.add(event)
    try:
        await event.wait()
    finally:
        waiters.discard(event)
