"""Shared fixtures. ``read`` runs a test over both the sync and the async reader."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from core_helpers import ReaderFactory


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["sync", "async"])
def read(request: pytest.FixtureRequest) -> Iterator[ReaderFactory]:
    """``read(types, chunks, **kwargs)``: a reader with sync methods over either driver."""
    factory = ReaderFactory(request.param)
    yield factory
    factory.close()
