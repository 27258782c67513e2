"""What the HTTP benchmarks share: server subprocesses, CPU readings, the results table.

Used by ``bench_http``, ``bench_redis`` and ``bench_observability``: each starts its
servers with :func:`subprocess_server` (the same benchmark module with ``--serve``),
serves with :func:`run_uvicorn`, reads a process's CPU with :func:`cpu_seconds`, and
writes its results with :func:`results_table`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A free loopback TCP port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_uvicorn(app: Any, port: int) -> None:
    """Serve ``app`` on 127.0.0.1:``port`` with uvicorn[standard] (httptools, uvloop)."""
    import uvicorn

    uvicorn.run(
        app, host="127.0.0.1", port=port, http="httptools", loop="uvloop", log_level="warning"
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used."""
    import psutil  # type: ignore[import-untyped]

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def stop(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, up to 10 s, then SIGKILL."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
        return True
    return False


@contextlib.contextmanager
def subprocess_server(
    module: str,
    args: Sequence[str],
    port: int,
    *,
    name: str = "benchmark server",
    ready: Callable[[], bool] | None = None,
) -> Iterator[subprocess.Popen[Any]]:
    """``python -m module *args`` (from the repository root), once it serves; stopped after.

    ``ready`` says when it serves (default: ``port`` accepts a TCP connection).

    Raises:
        RuntimeError: it exited, or did not serve within 30 s.
    """
    serves = ready or (lambda: _accepts(port))
    process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while not serves():
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{name} did not start")
            time.sleep(0.05)
        yield process
    finally:
        stop(process)


# Results -------------------------------------------------------------------------------------


def machine_summary() -> str:
    """``"N cores (`nproc` M), arch, Python x.y.z, OS"`` for a results file's first line."""
    return (
        f"{os.cpu_count()} cores (`nproc` {len(os.sched_getaffinity(0))}), "
        f"{platform.machine()}, Python {platform.python_version()}, {platform.system()}"
    )


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, ``"1.0, 0.9, 0.8"``."""
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def results_table(
    rows: Sequence[Mapping[str, Any]],
    *,
    ratio_header: str = "ratio",
    value_format: str = ",.2f",
    ratio_format: str = ".2f",
    notes_key: str = "notes",
) -> list[str]:
    """The Markdown table of benchmark rows (benchmark, variant, value, unit, ratio...)."""
    lines = [
        f"| benchmark | variant | value | unit | {ratio_header} | goal | notes |",
        "|---|---|---:|---|---:|---|---|",
    ]
    for r in rows:
        ratio = f"{r['ratio']:{ratio_format}}x" if "ratio" in r else ""
        lines.append(
            f"| {r['benchmark']} | {r['variant']} | {r['value']:{value_format}} | {r['unit']} | "
            f"{ratio} | {r.get('goal', '')} | {r.get(notes_key, '')} |"
        )
    return lines
