"""A real nginx reverse proxy on loopback, started by the tests with their own config.

Debian's nginx (``make nginx`` installs it), run in the foreground as a subprocess with
its own prefix directory: pid file, error log and temp paths in a tmp dir, a free port.
The config is what a user writes in front of a streaming API: ``gzip on`` for our two
media types and nginx's default proxy buffering (the responses' ``X-Accel-Buffering:
no`` header is what turns it off for a stream).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CONFIG = """
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    gzip on;
    gzip_types text/event-stream application/vnd.truss-stream;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.1;
        }}
    }}
}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def nginx_binary() -> str:
    found = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )
    if found is None:
        pytest.fail("nginx is not installed: run `make nginx` (Debian's nginx)")
    return found


@contextlib.contextmanager
def nginx_proxy(upstream_port: int) -> Iterator[str]:
    """Run nginx proxying to ``127.0.0.1:upstream_port``; yield its base URL."""
    with tempfile.TemporaryDirectory(prefix="truss-nginx-") as tmp:
        port = _free_port()
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(CONFIG.format(tmp=tmp, port=port, upstream=upstream_port))
        proc = subprocess.Popen(
            [nginx_binary(), "-p", tmp, "-e", f"{tmp}/error.log", "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                if proc.poll() is not None:
                    _, err = proc.communicate()
                    raise RuntimeError(f"nginx exited: {err.decode(errors='replace')}")
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", port), timeout=0.2),
                ):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start listening")
                time.sleep(0.02)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()  # nginx's fast shutdown
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
