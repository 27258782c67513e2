"""docs/triton-streaming.md followed as written: its code runs against the real Triton it starts.

The guide's own blocks are taken from the page and run unchanged but for the ports (fixed
in the guide, free loopback ports here): its PyTriton token streamer under PyTriton's
tritonserver, the proxy's command line, the sync and async clients, and the SSE app under
uvicorn, read back with the stream type the guide names. A guide that drifts from the code
fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from triton_helpers import REPO, free_port, triton_libdir, triton_python

GUIDE = REPO / "docs" / "triton-streaming.md"

pytestmark = pytest.mark.triton


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", GUIDE.read_text(), re.S)


def _substitute(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        assert old in text, f"the guide no longer says {old!r}: update this test with it"
        text = text.replace(old, new)
    return text


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }


def _stop(proc: subprocess.Popen[bytes], grace: float = 40.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


def _wait_line(path: Path, token: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if token in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.25)
    raise RuntimeError(f"no {token!r} within {timeout:g}s: {path.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def guide_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Section 2: the guide's ``token_server.py``, started as section 2 says."""
    python = triton_python()
    if not python.exists():
        pytest.skip(f"no PyTriton interpreter at {python}; run `make triton-venv`")
    work = tmp_path_factory.mktemp("guide")
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    server = _substitute(
        _blocks("python")[0],
        {
            "grpc_port=8001": f"grpc_port={grpc_port}",
            "http_port=8000": f"http_port={http_port}",
            "metrics_port=8002": f"metrics_port={metrics_port}",
        },
    )
    (work / "token_server.py").write_text(server)
    # Section 1's LD_LIBRARY_PATH, for an interpreter that is not the system's.
    libdir = triton_libdir(python)
    env = {
        **os.environ,
        "LD_LIBRARY_PATH": ":".join(p for p in (libdir, os.environ.get("LD_LIBRARY_PATH")) if p),
    }
    log = work / "triton.log"
    for attempt in range(2):  # a loaded 2-core machine now and then fails a model's load
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [str(python), "token_server.py"],
                cwd=work,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        try:
            _wait_line(log, "READY", proc, 180)
            break
        except RuntimeError:
            _stop(proc)
            if attempt == 1:
                raise
    try:
        yield f"127.0.0.1:{grpc_port}"
    finally:
        _stop(proc)  # the guide's SIGTERM handler stops Triton and the model processes


@pytest.fixture(scope="module")
def guide_proxy(guide_triton: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Section 3: the proxy's command line as the guide gives it."""
    (command,) = [b for b in _blocks("sh") if "-m transports.triton.proxy" in b]
    port = free_port()
    argv = _substitute(
        command.strip(),
        {"127.0.0.1:50051": f"127.0.0.1:{port}", "127.0.0.1:8001": guide_triton},
    ).split()
    assert argv[0] == ".venv/bin/python"
    log = tmp_path_factory.mktemp("guide-proxy") / "proxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *argv[1:]], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=_env()
        )
    try:
        _wait_line(log, "LISTENING", proc, 60)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc, grace=20)


def _run_block(block: str, proxy: str, tmp_path: Path, name: str) -> str:
    script = tmp_path / name
    script.write_text(_substitute(block, {"127.0.0.1:50051": proxy}))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=_env()
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_sync_client_of_section_4_prints_the_prompts_tokens(
    guide_proxy: str, tmp_path: Path
) -> None:
    sync_block = next(b for b in _blocks("python") if "TritonBytesStreamer(" in b)
    assert (
        _run_block(sync_block, guide_proxy, tmp_path, "client.py") == "the quick brown fox jumps \n"
    )


def test_the_async_client_of_section_4_streams_two_prompts_at_once(
    guide_proxy: str, tmp_path: Path
) -> None:
    async_block = next(
        b for b in _blocks("python") if "AsyncTritonBytesStreamer(" in b and "asyncio.run" in b
    )
    out = _run_block(async_block, guide_proxy, tmp_path, "aclient.py")
    tokens: dict[int, list[tuple[int, str]]] = {}
    for line in out.splitlines():
        seq, index, token = line.split()
        tokens.setdefault(int(seq), []).append((int(index), token))
    assert tokens == {
        0: [(0, "one"), (1, "two"), (2, "three")],
        1: [(0, "four"), (1, "five"), (2, "six")],
    }


def test_the_sse_app_of_section_5_serves_the_tokens_as_a_typed_stream(
    guide_proxy: str, tmp_path: Path
) -> None:
    from transports.sse import aconnect
    from transports.triton.typed import triton_response_types

    app_block = next(b for b in _blocks("python") if "Starlette(" in b)
    (tmp_path / "app.py").write_text(_substitute(app_block, {"127.0.0.1:50051": guide_proxy}))
    port = free_port()
    # The guide's last line: `uvicorn app:app --port 8080`.
    assert "# uvicorn app:app --port 8080" in app_block
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port), "--log-level", "warning"],
        cwd=tmp_path,
        env={**_env(), "PYTHONPATH": os.pathsep.join([str(tmp_path), _env()["PYTHONPATH"]])},
    )

    async def read() -> tuple[object, list[object], object]:
        url = f"http://127.0.0.1:{port}/generate"
        async with httpx.AsyncClient(timeout=60) as client:
            for _ in range(200):  # uvicorn starting
                with contextlib.suppress(httpx.TransportError):
                    await client.get(f"http://127.0.0.1:{port}/")
                    break
                await asyncio.sleep(0.1)
            types = triton_response_types()
            async with aconnect(
                client, "POST", url, types, content=b"streamed word by word"
            ) as reader:
                header = await reader.read_header()
                items = [item async for item in reader.read_items()]
                footer = await reader.read_footer()
        return header, items, footer

    try:
        header, items, footer = asyncio.run(read())
    finally:
        _stop(server, grace=10)
    assert header.request == {"prompt": "streamed word by word"}  # type: ignore[attr-defined]
    assert header.model.model == "tokens"  # type: ignore[attr-defined]
    words = [bytes(i.outputs["TOKEN"]).decode() for i in items if i.outputs]  # type: ignore[attr-defined]
    assert words == ["streamed", "word", "by", "word"]
    assert [(i.seq, i.index, i.final) for i in items] == [  # type: ignore[attr-defined]
        (0, k, k == 4) for k in range(5)
    ]
    assert (footer.frames, footer.responses, footer.failed) == (1, 5, 0)  # type: ignore[attr-defined]
