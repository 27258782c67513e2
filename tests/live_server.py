"""A real uvicorn server on loopback, in a background thread, for streaming tests.

Never ASGITransport for streaming: it buffers whole bodies. ``LiveServer.kill()``
cuts every open connection abruptly (as a crashed server would) and stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


class LiveServer:
    """uvicorn[standard] (httptools, uvloop when available) serving ``app`` on 127.0.0.1."""

    def __init__(self, app: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            http="httptools",
            loop="auto",
            lifespan="off",
            ws="none",
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            await self._server.serve(sockets=[self._sock])

        factory = self._server.config.get_loop_factory()
        loop = factory() if factory is not None else asyncio.new_event_loop()
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    def start(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.005)
        return self

    def kill(self) -> None:
        """Abort every connection (RST-like) and stop accepting: a crashed server."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        done = threading.Event()

        def abort() -> None:
            for conn in list(self._server.server_state.connections):
                transport = getattr(conn, "transport", None)
                if transport is not None:
                    transport.abort()
            for server in getattr(self._server, "servers", []):
                server.close()
            done.set()

        loop.call_soon_threadsafe(abort)
        done.wait(5)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(5)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(5)


@contextlib.contextmanager
def live_server(app: Any) -> Iterator[LiveServer]:
    """Serve ``app`` for the duration of the ``with`` block."""
    server = LiveServer(app).start()
    try:
        yield server
    finally:
        server.kill()
        server.stop()
