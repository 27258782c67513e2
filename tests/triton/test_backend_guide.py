"""docs/triton-backends.md's example, run exactly as the guide shows it.

The guide's ``my_backend.py`` and ``my_client.py`` blocks are written out as files and run
as the guide says: the backend with ``python my_backend.py`` (``start_proxy(config,
backend=...)``) and through the command line (``--backend python:my_backend:NumpyBackend``),
the client against each; its output must be what the guide says it prints. The code
passes ``mypy --strict``. The example's backend is then used in process, wrapped by the
coalescer, to check what reaches it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from triton_helpers import REPO, ProxyProcess

from transports.triton.server import CoalescingBackend, InferRequest, ModelConfig

GUIDE = REPO / "docs" / "triton-backends.md"


def _blocks() -> dict[str, str]:
    text = GUIDE.read_text()
    return dict(re.findall(r"<!-- example: (\S+) -->\n```python\n(.*?)```\n", text, re.S))


def _printed() -> str:
    """The guide's "It prints:" block."""
    match = re.search(r"It prints:\n\n```\n(.*?)```\n", GUIDE.read_text(), re.S)
    assert match is not None, "the guide lost its 'It prints:' block"
    return match.group(1)


@pytest.fixture
def example(tmp_path: Path) -> Path:
    blocks = _blocks()
    assert set(blocks) == {"my_backend.py", "my_client.py"}
    for name, code in blocks.items():
        (tmp_path / name).write_text(code)
    return tmp_path


def _env(example: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(example), str(REPO)])}


def _run_client(example: Path, target: str) -> str:
    done = subprocess.run(
        [sys.executable, "my_client.py", target],
        cwd=example,
        env=_env(example),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_the_example_runs_as_the_guide_says(example: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "my_backend.py", "127.0.0.1:0"],
        cwd=example,
        env=_env(example),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("LISTENING 127.0.0.1:"), line
        target = line.split()[1]
        assert _run_client(example, target) == _printed()
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_the_example_backend_from_the_command_line(example: Path) -> None:
    proxy = ProxyProcess(
        [
            "--backend",
            "python:my_backend:NumpyBackend",
            "--coalesce",
            "16",
            "--coalesce-in-flight",
            "2",
        ],
        env={"PYTHONPATH": os.pathsep.join([str(example), str(REPO)])},
    )
    try:
        assert _run_client(example, proxy.target) == _printed()
    finally:
        proxy.stop()


def test_the_example_type_checks_against_the_api(example: Path) -> None:
    """The API is typed: the guide's code passes mypy --strict as it stands."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(example / ".mypy_cache"),
            "my_backend.py",
            "my_client.py",
        ],
        cwd=example,
        env=_env(example),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _module(example: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("guide_backend", example / "my_backend.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.anyio
async def test_the_example_backend_is_coalesced_by_its_metadata(example: Path) -> None:
    module = _module(example)
    seen: list[tuple[int, ...]] = []

    class Recording(module.NumpyBackend):  # type: ignore[name-defined,misc]
        async def infer(self, request: InferRequest) -> object:
            seen.append(request.shape)
            return await super().infer(request)

    inner = Recording(factor=3.0)
    # The guide's backend says nothing of model_config: the default reads its metadata.
    assert await inner.model_config("scale", "1") == ModelConfig(64, False, frozenset({"Y"}))
    assert (await inner.model_config("countdown", "1")).decoupled
    backend = CoalescingBackend(inner, max_rows=16)
    rows = [np.full((1, 4), i, dtype=np.float32) for i in range(5)]

    def request(i: int) -> InferRequest:
        return InferRequest(
            cid=f"s:{i}",
            model="scale",
            model_version="1",
            input_name="X",
            datatype="FP32",
            shape=(1, 4),
            data=rows[i].tobytes(),
            outputs=("Y",),
            timeout=10.0,
        )

    results = await asyncio.gather(*(backend.infer(request(i)) for i in range(5)))
    assert seen == [(5, 4)]
    for i, outputs in enumerate(results):
        y = outputs["Y"]
        assert y.shape == (1, 4)
        np.testing.assert_array_equal(np.frombuffer(y.data, np.float32), rows[i].ravel() * 3)
