"""Importing a transport without its extra names the extra to install.

Each case runs in a fresh interpreter whose ``sys.meta_path`` refuses the extra's
dependency, as on an install without that extra (nothing is uninstalled).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == {blocked!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Block())
    try:
        import {module}
    except ImportError as exc:
        print(type(exc).__name__, exc)
    else:
        print("imported")
    """
)


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("transports.sse", "anyio", "sse"),
        ("transports.sse", "httpx", "sse"),
        ("transports.http", "anyio", "http"),
        ("transports.http", "starlette", "http"),
        ("transports.grpc", "grpc", "grpc"),
        ("transports.triton", "grpc", "triton"),
        ("transports.triton", "google", "triton"),
    ],
)
def test_missing_dependency_names_the_extra(module: str, blocked: str, extra: str) -> None:
    code = BLOCKER.format(module=module, blocked=blocked)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    assert out.startswith("ImportError"), out
    assert f"pip install 'truss-stream[{extra}]'" in out
    assert repr(blocked) in out  # and which module was missing
