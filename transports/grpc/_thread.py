"""A ``grpc.aio`` server on its own event loop thread, for sync programs and tests."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from ._server import FrameStreamService, RunningServer, start_server

__all__ = ["serve_in_thread"]


@contextlib.contextmanager
def serve_in_thread(
    service: FrameStreamService,
    address: str = "127.0.0.1:0",
    *,
    grace: float | None = 1.0,
    **kwargs: Any,
) -> Iterator[RunningServer]:
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
            running = future.result()
        except (Exception, concurrent.futures.CancelledError) as exc:
            raise RuntimeError(f"gRPC server on {address} did not start") from exc
        try:
            yield running
        finally:
            asyncio.run_coroutine_threadsafe(running.stop(grace), loop).result()
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
