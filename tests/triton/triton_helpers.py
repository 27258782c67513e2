"""Helpers for the Triton proxy tests: real processes, a principal endpoint, packets."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from transports.triton.protocol import multimodal_pb2 as pb
from transports.triton.server import ProxyConfig, ProxyServer, start_proxy

REPO = Path(__file__).resolve().parents[2]
SERVER_SCRIPT = Path(__file__).resolve().parent / "pytriton_server.py"
API_KEY = "test-api-key-123"
TOKEN = "test-jwt-token-456"
READY_LINE = re.compile(r"READY grpc=\d+ token=([A-Za-z0-9_\-]+)")
MODELS = ("add_one_fp32", "invert_u8", "two_outputs_fp32", "sleep_fp32", "fail_fp32")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def triton_python() -> Path:
    """The PyTriton virtualenv's interpreter ($TRUSS_STREAM_TRITON_PYTHON or .venv-triton)."""
    env = os.environ.get("TRUSS_STREAM_TRITON_PYTHON")
    return Path(env) if env else REPO / ".venv-triton" / "bin" / "python"


def triton_libdir(python: Path) -> str:
    """The directory of ``python``'s libpython, for LD_LIBRARY_PATH: the python backend's
    stub links the system libpython3.11 (see DESIGN.md, docs/triton-streaming.md)."""
    return subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


class TritonProcess:
    """A real tritonserver with the test models (tests/triton/pytriton_server.py)."""

    def __init__(self, log_dir: Path, name: str = "triton") -> None:
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.metrics_port = free_port()
        self.log_path = log_dir / f"{name}.log"
        self.ready_path = log_dir / f"{name}.ready"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 180.0, attempts: int = 3) -> TritonProcess:
        """Start and wait until every model is ready; retries, since on a loaded
        2-core machine PyTriton now and then fails a model's handshake at load."""
        for attempt in range(attempts):
            try:
                self._start_once(timeout)
                return self
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> None:
        python = triton_python()
        libdir = triton_libdir(python)
        self.ready_path.unlink(missing_ok=True)
        env = dict(os.environ)
        # The python backend stub links the system libpython3.11 (see DESIGN.md).
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (libdir, env.get("LD_LIBRARY_PATH")) if p)
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    str(python),
                    str(SERVER_SCRIPT),
                    f"--grpc-port={self.grpc_port}",
                    f"--http-port={self.http_port}",
                    f"--metrics-port={self.metrics_port}",
                    f"--ready-file={self.ready_path}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: tritonserver dies with it
            )
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        import tritonclient.grpc as triton_grpc

        deadline = time.monotonic() + timeout
        client = triton_grpc.InferenceServerClient(self.url)
        try:
            while time.monotonic() < deadline:
                if self._proc is not None and self._proc.poll() is not None:
                    self.stop()  # reap what is left of its process group
                    raise RuntimeError(f"pytriton exited early; see {self.log_path}")
                with contextlib.suppress(Exception):
                    if (
                        self._ready_token() is not None
                        and client.is_server_ready()
                        and all(client.is_model_ready(m) for m in MODELS)
                    ):
                        return
                time.sleep(0.25)
        finally:
            client.close()
        self.stop()
        raise TimeoutError(f"Triton not ready after {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(40)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)

    def _ready_token(self) -> str | None:
        try:
            match = READY_LINE.search(self.ready_path.read_text())
        except FileNotFoundError:
            return None
        return match.group(1) if match else None

    def _token(self) -> str:
        token = self._ready_token()
        assert token is not None, "Triton is not running"
        return token

    def inference_count(self, model: str) -> int:
        """Successful inference requests of ``model`` so far, from Triton's statistics."""
        return self.counts(model)[0]

    def counts(self, model: str) -> tuple[int, int]:
        """(successful requests, inferred batch rows) of ``model`` so far."""
        import tritonclient.grpc as triton_grpc

        client = triton_grpc.InferenceServerClient(self.url)
        try:
            stats = client.get_inference_statistics(
                model,
                headers={"triton-grpc-protocol-triton-access-token": self._token()},
                as_json=True,
            )
        finally:
            client.close()
        requests = sum(
            int(s["inference_stats"]["success"].get("count", 0)) for s in stats["model_stats"]
        )
        rows = sum(int(s.get("inference_count", 0)) for s in stats["model_stats"])
        return requests, rows


class PrincipalEndpoint:
    """A real principal endpoint (Starlette under uvicorn) on a loopback port.

    ``/v4/auth/principal`` answers 200 to ``x-domino-api-key: API_KEY`` or
    ``authorization: Bearer TOKEN``, 401 otherwise; ``/down/v4/auth/principal``
    always answers 503. ``requests`` counts the lookups.
    """

    def __init__(self) -> None:
        self.requests = 0
        self.seen_headers: list[dict[str, str]] = []

        async def principal(request: Request) -> JSONResponse:
            self.requests += 1
            self.seen_headers.append(dict(request.headers))
            key = request.headers.get("x-domino-api-key")
            auth = request.headers.get("authorization")
            if key == API_KEY or auth == f"Bearer {TOKEN}":
                return JSONResponse({"canonicalName": "tester", "isAnonymous": False})
            return JSONResponse({"error": "unauthorized"}, status_code=401)

        async def down(request: Request) -> JSONResponse:
            self.requests += 1
            return JSONResponse({"error": "maintenance"}, status_code=503)

        app = Starlette(
            routes=[
                Route("/v4/auth/principal", principal),
                Route("/down/v4/auth/principal", down),
            ]
        )
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/v4/auth/principal"
        self.down_url = f"http://127.0.0.1:{self.port}/down/v4/auth/principal"
        config = uvicorn.Config(app, lifespan="off", ws="none", log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: self._server.run(sockets=[self._sock]), daemon=True
        )

    def start(self) -> PrincipalEndpoint:
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("principal endpoint did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


class ProxyProcess:
    """``python -m transports.triton.proxy`` as a subprocess, through the real CLI."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "transports.triton.proxy", "--listen", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().decode()
        if not line.startswith("LISTENING "):
            self._proc.kill()
            _, err = self._proc.communicate(timeout=10)
            raise RuntimeError(f"proxy did not start: {line!r} {err.decode()[-2000:]}")
        self.port = int(line.split()[1].rsplit(":", 1)[1])
        self.target = f"127.0.0.1:{self.port}"
        # Drain stderr as it comes: the access log writes a line per call, and a full
        # pipe would block the proxy.
        self._stderr: list[bytes] = []
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self._stderr.append(line)

    def stderr(self) -> str:
        """What the proxy wrote to stderr so far."""
        return b"".join(list(self._stderr)).decode(errors="replace")

    @property
    def pid(self) -> int:
        return self._proc.pid

    def stop(self) -> str:
        """Stop with SIGTERM; returns what it wrote to stderr."""
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._drain.join(10)
        return self.stderr()


@contextlib.asynccontextmanager
async def running_proxy(**kwargs: Any) -> AsyncIterator[ProxyServer]:
    """An in-process proxy on a free loopback port for the test's event loop."""
    backend = kwargs.pop("backend_object", None)
    config = ProxyConfig(listen="127.0.0.1:0", **kwargs)
    server = await start_proxy(config, backend=backend)
    try:
        yield server
    finally:
        await server.stop(grace=None)


def packet(
    cid: str,
    array: np.ndarray,
    *,
    model: str = "add_one_fp32",
    version: str = "1",
    input_name: str = "INPUT",
    outputs: Sequence[str] = ("OUTPUT",),
    timeout: float = 10.0,
    binary: bool = False,
    source: int = pb.SRC_TENSOR,
) -> pb.DataPacket:
    """A packet built the way the seed's client builds it."""
    dtype = {
        np.dtype(np.float32): pb.DT_FP32,
        np.dtype(np.uint8): pb.DT_UINT8,
        np.dtype(np.int64): pb.DT_INT64,
    }[array.dtype]
    spec = pb.InputSpec(name=input_name, shape=pb.Shape(dims=list(array.shape)), dtype=dtype)
    setattr(spec, "from", source)  # `from` is a Python keyword
    control = pb.Control(
        model=model,
        model_version=version,
        timeout_secs=timeout,
        inputs=[spec],
        outputs=[pb.OutputSpec(name=o) for o in outputs],
        binary_outputs=binary,
    )
    tensor = pb.Tensor(dtype=dtype, shape=pb.Shape(dims=list(array.shape)), data=array.tobytes())
    return pb.DataPacket(
        meta=pb.Meta(correlation_id=cid), control=control, tensor=tensor, event=pb.SEV_DATA
    )


def ack_json(ack: pb.Ack) -> dict[str, Any]:
    return dict(json.loads(ack.message))


def decode_output(entry: dict[str, Any]) -> np.ndarray:
    """An output of the Ack's JSON ({"dtype", "shape", "b64"}) as an array."""
    dtype = {"FP32": np.float32, "UINT8": np.uint8}[entry["dtype"]]
    return np.frombuffer(base64.b64decode(entry["b64"]), dtype=dtype).reshape(entry["shape"])


def auth_metadata(kind: str = "key") -> tuple[tuple[str, str], ...]:
    if kind == "key":
        return (("x-domino-api-key", API_KEY),)
    if kind == "bearer":
        return (("authorization", f"Bearer {TOKEN}"),)
    return ()


def iter_packets(packets: Sequence[pb.DataPacket]) -> Iterator[pb.DataPacket]:
    yield from packets
