"""A ``grpc.aio`` server on its own event loop thread, for sync programs and tests."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import grpc.aio

from ._server import FrameStreamService, RunningServer, start_server

__all__ = ["ServerThread", "serve_in_thread"]


class ServerThread:
    """A :class:`RunningServer` whose event loop runs on a background thread.

    Attributes:
        running: the server, living on the thread's loop.
    """

    def __init__(self, running: RunningServer, loop: asyncio.AbstractEventLoop) -> None:
        self.running = running
        self._loop = loop

    @property
    def server(self) -> grpc.aio.Server:
        """The ``grpc.aio.Server`` (call its methods on the thread's loop only)."""
        return self.running.server

    @property
    def port(self) -> int:
        """The bound port."""
        return self.running.port

    @property
    def target(self) -> str:
        """``host:port`` for a client channel."""
        return self.running.target

    def stop(self, grace: float | None = 1.0, *, drain: float = 0.0) -> None:
        """Stop the server from any thread; see :meth:`RunningServer.stop`."""
        future = asyncio.run_coroutine_threadsafe(self.running.stop(grace, drain=drain), self._loop)
        future.result()

    def kill(self) -> None:
        """Stop at once from any thread; see :meth:`RunningServer.kill`."""
        asyncio.run_coroutine_threadsafe(self.running.kill(), self._loop).result()


@contextlib.contextmanager
def serve_in_thread(
    service: FrameStreamService,
    address: str = "127.0.0.1:0",
    *,
    grace: float | None = 1.0,
    **kwargs: Any,
) -> Iterator[ServerThread]:
    """Run :func:`start_server` on a background thread's event loop for a ``with`` block.

    The producers run on that loop. Takes the arguments of :func:`start_server`.

    Raises:
        RuntimeError: the server did not start (the cause is chained).
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="grpc-aio-server", daemon=True)
    thread.start()
    try:
        future = asyncio.run_coroutine_threadsafe(start_server(service, address, **kwargs), loop)
        try:
            handle = ServerThread(future.result(), loop)
        except (Exception, concurrent.futures.CancelledError) as exc:
            raise RuntimeError(f"gRPC server on {address} did not start") from exc
        try:
            yield handle
        finally:
            handle.stop(grace)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
