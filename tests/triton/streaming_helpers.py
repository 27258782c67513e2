"""Real Tritons with decoupled (streaming) models, for tests and benchmarks.

Two servers, each a context manager that yields a :class:`StreamingServer` (the gRPC
target and the model names) and stops every process it started:

- :func:`streaming_triton`: PyTriton with ``tests/triton/streaming_models.py``
  (generator models: ``stream_count``, ``stream_tokens``, ``stream_none``,
  ``stream_fail``, ``stream_slow``, and the ordinary ``count_unary``).
- :func:`python_backend_triton`: the ``tritonserver`` binary that PyTriton ships,
  serving ``tests/triton/model_repository`` (``cancel_watch``, a python-backend model
  that checks ``request.is_cancelled()`` and records what it saw) with the python
  backend PyTriton ships too.

Both run under the PyTriton virtualenv (``$TRUSS_STREAM_TRITON_PYTHON`` or
``.venv-triton``) on free loopback ports, with ``LD_LIBRARY_PATH`` naming that
interpreter's LIBDIR (the python-backend stub links the system libpython3.11; see
DESIGN.md "Facts measured"). Tests using them carry the ``triton`` marker.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from triton_helpers import free_port, triton_libdir, triton_python

HERE = Path(__file__).resolve().parent
STREAMING_SCRIPT = HERE / "streaming_models.py"
MODEL_REPOSITORY = HERE / "model_repository"
STREAMING_MODELS = (
    "stream_count",
    "stream_tokens",
    "stream_none",
    "stream_fail",
    "stream_slow",
    "count_unary",
)
DECOUPLED_MODELS = STREAMING_MODELS[:-1]
PYTHON_BACKEND_MODELS = ("cancel_watch",)
READY_LINE = re.compile(r"READY grpc=\d+ token=([A-Za-z0-9_\-]+)")


@dataclass(frozen=True)
class StreamingServer:
    """A running Triton: its gRPC target, its models, and where it records things.

    ``slow_record`` (PyTriton) is the prefix of ``stream_slow``'s progress files;
    ``record_dir`` (python backend) is where ``cancel_watch`` writes one JSON record
    per finished request.
    """

    url: str
    models: tuple[str, ...]
    log_path: Path
    slow_record: Path | None = None
    record_dir: Path | None = None
    pid: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def slow_responses(self) -> int:
        """Responses ``stream_slow``'s generators have produced since start (all instances)."""
        assert self.slow_record is not None, "not the PyTriton streaming server"
        total = 0
        for path in self.slow_record.parent.glob(f"{self.slow_record.name}.*"):
            if path.suffix == ".tmp":
                continue
            with contextlib.suppress(FileNotFoundError, ValueError):
                total += int(path.read_text().strip() or 0)
        return total

    def records(self) -> list[dict[str, Any]]:
        """``cancel_watch``'s records of finished requests (python-backend server)."""
        assert self.record_dir is not None, "not the python-backend server"
        out = []
        for path in sorted(self.record_dir.glob("*.json")):
            with contextlib.suppress(FileNotFoundError, ValueError):
                out.append(json.loads(path.read_text()))
        return out

    def wait_record(self, request_id: str, timeout: float = 20.0) -> dict[str, Any]:
        """The record of ``cancel_watch`` request ``request_id``, once it is written."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in self.records():
                if record.get("request_id") == request_id:
                    return record
            time.sleep(0.05)
        raise TimeoutError(f"no cancel_watch record for {request_id!r} after {timeout}s")


def _triton_env() -> tuple[Path, dict[str, str]]:
    python = triton_python()
    if not python.exists():
        raise FileNotFoundError(f"no PyTriton interpreter at {python}; run `make triton-venv`")
    libdir = triton_libdir(python)
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
    # As PyTriton does: the python-backend stub finds its interpreter's packages
    # (numpy) through the virtualenv's bin on PATH.
    env["PATH"] = ":".join(p for p in (str(python.parent), env.get("PATH")) if p)
    return python, env


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(40)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of its process group is left
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def _wait_models(
    proc: subprocess.Popen[bytes],
    url: str,
    models: tuple[str, ...],
    log_path: Path,
    timeout: float,
    ready_file: Path | None = None,
) -> None:
    import tritonclient.grpc as triton_grpc

    deadline = time.monotonic() + timeout
    client = triton_grpc.InferenceServerClient(url)
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"Triton exited early ({proc.returncode}); see {log_path}")
            with contextlib.suppress(Exception):
                if (
                    (ready_file is None or ready_file.exists())
                    and client.is_server_ready()
                    and all(client.is_model_ready(m) for m in models)
                ):
                    return
            time.sleep(0.25)
    finally:
        client.close()
    raise TimeoutError(f"Triton not ready after {timeout}s; see {log_path}")


@contextlib.contextmanager
def streaming_triton(
    work_dir: Path,
    *,
    slow_delay: float = 0.01,
    timeout: float = 180.0,
    attempts: int = 3,
) -> Iterator[StreamingServer]:
    """PyTriton with the decoupled test models (``streaming_models.py``) on free ports.

    Args:
        work_dir: where the log, the ready file and ``stream_slow``'s record go.
        slow_delay: ``stream_slow``'s sleep before each response, in seconds.
        timeout: seconds to wait for every model to be ready, per attempt.
        attempts: start-ups to try (PyTriton now and then fails a model's handshake at
            load on a busy 2-core machine; a fresh start on fresh ports succeeds).
    """
    python, env = _triton_env()
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / "streaming-triton.log"
    slow_record = work_dir / "stream_slow"
    for attempt in range(attempts):
        grpc_port = free_port()
        ready = work_dir / f"streaming-triton.ready.{attempt}"
        with log_path.open("ab") as log:
            proc = subprocess.Popen(
                [
                    str(python),
                    str(STREAMING_SCRIPT),
                    f"--grpc-port={grpc_port}",
                    f"--http-port={free_port()}",
                    f"--metrics-port={free_port()}",
                    f"--ready-file={ready}",
                    f"--slow-delay={slow_delay}",
                    f"--slow-record={slow_record}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: tritonserver dies with it
            )
        url = f"127.0.0.1:{grpc_port}"
        try:
            _wait_models(proc, url, STREAMING_MODELS, log_path, timeout, ready)
        except (RuntimeError, TimeoutError):
            _stop(proc)
            if attempt == attempts - 1:
                raise
            continue
        token = READY_LINE.search(ready.read_text())
        try:
            yield StreamingServer(
                url=url,
                models=STREAMING_MODELS,
                log_path=log_path,
                slow_record=slow_record,
                pid=proc.pid,
                extra={"token": token.group(1) if token else None},
            )
        finally:
            _stop(proc)
        return


def _python_backend_dir(python: Path, work_dir: Path) -> Path:
    """A ``--backend-directory`` holding PyTriton's python backend and its 3.x stub.

    PyTriton ships ``tritonserver/backends/python`` without the stub; the stubs for
    each Python version sit in ``tritonserver/python_backend_stubs/<X.Y>/``, and the
    backend expects ``triton_python_backend_stub`` next to ``libtriton_python.so``
    (PyTriton itself copies them together the same way at start-up).
    """
    version, site = subprocess.run(
        [
            str(python),
            "-c",
            "import sys, pytriton, pathlib; "
            "print(f'{sys.version_info[0]}.{sys.version_info[1]}'); "
            "print(pathlib.Path(pytriton.__file__).parent / 'tritonserver')",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    dist = Path(site)
    backends = work_dir / "backends"
    target = backends / "python"
    target.mkdir(parents=True, exist_ok=True)
    sources = [
        dist / "backends" / "python" / "libtriton_python.so",
        dist / "backends" / "python" / "triton_python_backend_utils.py",
        dist / "python_backend_stubs" / version / "triton_python_backend_stub",
    ]
    for source in sources:
        link = target / source.name
        if not link.exists():
            link.symlink_to(source)
    return backends


def tritonserver_binary(python: Path | None = None) -> Path:
    """The ``tritonserver`` executable inside PyTriton's package."""
    python = python or triton_python()
    out = subprocess.run(
        [
            str(python),
            "-c",
            "import pytriton, pathlib; print(pathlib.Path(pytriton.__file__).parent)",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return Path(out) / "tritonserver" / "bin" / "tritonserver"


@contextlib.contextmanager
def python_backend_triton(
    work_dir: Path,
    *,
    delay: float = 0.01,
    timeout: float = 120.0,
) -> Iterator[StreamingServer]:
    """PyTriton's ``tritonserver`` serving ``tests/triton/model_repository`` on free ports.

    Args:
        work_dir: where the log, the backend directory and ``cancel_watch``'s records go.
        delay: ``cancel_watch``'s sleep before each response (env ``CANCEL_WATCH_DELAY``).
        timeout: seconds to wait for the models to be ready.
    """
    python, env = _triton_env()
    work_dir.mkdir(parents=True, exist_ok=True)
    record_dir = work_dir / "cancel_watch"
    record_dir.mkdir(exist_ok=True)
    log_path = work_dir / "python-backend-triton.log"
    env["CANCEL_WATCH_RECORD"] = str(record_dir)
    env["CANCEL_WATCH_DELAY"] = str(delay)
    grpc_port = free_port()
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                str(tritonserver_binary(python)),
                f"--model-repository={MODEL_REPOSITORY}",
                f"--backend-directory={_python_backend_dir(python, work_dir)}",
                "--grpc-address=127.0.0.1",
                f"--grpc-port={grpc_port}",
                "--http-address=127.0.0.1",
                f"--http-port={free_port()}",
                "--allow-metrics=false",
                "--exit-timeout-secs=5",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    url = f"127.0.0.1:{grpc_port}"
    try:
        _wait_models(proc, url, PYTHON_BACKEND_MODELS, log_path, timeout)
        yield StreamingServer(
            url=url,
            models=PYTHON_BACKEND_MODELS,
            log_path=log_path,
            record_dir=record_dir,
            pid=proc.pid,
        )
    finally:
        _stop(proc)
