"""Fixtures for the Triton proxy tests: real Triton servers, a principal endpoint, the proxy.

One session-scoped Triton serves most tests; a second one (``spare_triton``) is
started only for the tests that stop it or need two replicas. PyTriton starts in
10-30 s here, so start-up timeouts are generous while each test stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from triton_helpers import (
    PrincipalEndpoint,
    ProxyProcess,
    TritonProcess,
    triton_python,
)


def _require_triton_venv() -> None:
    if not triton_python().exists():
        pytest.skip(f"no PyTriton interpreter at {triton_python()}; run `make triton-venv`")


@pytest.fixture(scope="session")
def triton_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("triton-logs")


@pytest.fixture(scope="session")
def triton(triton_logs: Path) -> Iterator[TritonProcess]:
    """A real Triton with the test models, for the whole session."""
    _require_triton_venv()
    server = TritonProcess(triton_logs, "triton-main").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def spare_triton(triton_logs: Path) -> Iterator[TritonProcess]:
    """A second real Triton: a replica, and the one the restart test stops."""
    _require_triton_venv()
    server = TritonProcess(triton_logs, "triton-spare").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def principal() -> Iterator[PrincipalEndpoint]:
    """A real principal endpoint on loopback (see PrincipalEndpoint)."""
    endpoint = PrincipalEndpoint().start()
    yield endpoint
    endpoint.stop()


@pytest.fixture(scope="session")
def proxy_cli(triton: TritonProcess, principal: PrincipalEndpoint) -> Iterator[ProxyProcess]:
    """The proxy through its real command line, in front of ``triton``, with auth on.

    Uses the environment fallbacks (TRITON_URL, DOMINO_HOST) rather than flags.
    """
    proxy = ProxyProcess(
        ["--max-in-flight", "16"],
        env={"TRITON_URL": triton.url, "DOMINO_HOST": f"http://127.0.0.1:{principal.port}"},
    )
    yield proxy
    proxy.stop()
