"""Real redis-server processes on free loopback ports, each with its own directory.

Persistence is off (``--save "" --appendonly no``) unless a test asks for AOF.
``RedisServer.restart()`` stops the process (SIGKILL, as a crash, or SIGTERM) and starts
it again on the same port and directory, so AOF files are replayed.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server")

needs_redis = pytest.mark.skipif(
    REDIS_SERVER is None, reason="redis-server not installed (make redis installs it)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server on 127.0.0.1."""

    def __init__(self, directory: Path, *, aof: bool = False, extra: tuple[str, ...] = ()) -> None:
        self.dir = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._aof = aof
        self._extra = extra
        self._proc: subprocess.Popen[bytes] | None = None

    def _args(self) -> list[str]:
        assert REDIS_SERVER is not None
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"]
            if self._aof
            else ["--appendonly", "no"]
        )
        return [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--save", "",
            *persistence,
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
            *self._extra,
        ]  # fmt: skip

    def start(self) -> RedisServer:
        self._proc = subprocess.Popen(self._args(), stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            while True:
                try:
                    if client.ping():
                        return self
                except (redis.ConnectionError, redis.TimeoutError):
                    pass
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server did not start:\n{log}")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGKILL) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(10)
        self._proc = None

    def restart(self, sig: int = signal.SIGKILL, down_for: float = 0.0) -> None:
        self.stop(sig)
        time.sleep(down_for)
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=5)


@contextlib.contextmanager
def redis_server(*, aof: bool = False, extra: tuple[str, ...] = ()) -> Iterator[RedisServer]:
    """A running redis-server for the ``with`` block, its directory removed after."""
    with tempfile.TemporaryDirectory(prefix="truss-redis-") as tmp:
        server = RedisServer(Path(tmp), aof=aof, extra=extra).start()
        try:
            yield server
        finally:
            server.stop()
