"""The reliability suite on the conformance harness registry (tests/conformance).

Every transport test here is parametrized over ``HARNESSES``: a new transport that
registers a harness is covered by the reliability suite too. The harnesses serve
:func:`reliability_helpers.produce` with each request's parameters and open streams
with the transport's own ``connect`` / ``aconnect``, as users call them; what
differs between transports (their errors, their own knobs) stays in the tests
that are about that difference.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from conformance.harness import (
    HARNESSES,
    ClientSettings,
    ServedApp,
    StreamCall,
    TransportHarness,
)
from reliability_helpers import TYPES, Tracker, params_of, produce

from truss_stream import StreamError

__all__ = [
    "HARNESSES",
    "MODES",
    "ClientSettings",
    "StreamCall",
    "SHARED_SERVER_HARNESSES",
    "each_harness",
    "each_shared_harness",
    "read_stream",
    "served",
]

MODES = ["sync", "async"]

#: ``@each_harness``: run the test once per registered transport (``harness`` argument).
each_harness = pytest.mark.parametrize("harness", HARNESSES, ids=[h.name for h in HARNESSES])
#: The harnesses the shared reliability server serves (``address_in`` works).
SHARED_SERVER_HARNESSES = [h for h in HARNESSES if h.in_shared_server]
#: ``@each_shared_harness``: once per transport the shared reliability server serves.
each_shared_harness = pytest.mark.parametrize(
    "harness", SHARED_SERVER_HARNESSES, ids=[h.name for h in SHARED_SERVER_HARNESSES]
)


@contextlib.contextmanager
def served(
    harness: TransportHarness, tracker: Tracker | None = None, **response_options: Any
) -> Iterator[ServedApp]:
    """A real server for ``harness`` serving :func:`produce` with each request's parameters."""

    def producer(params: Mapping[str, Any]) -> Any:
        return produce(**params_of(params), tracker=tracker)

    with harness.serve_params(producer, **response_options) as app:
        yield app


def read_stream(
    harness: TransportHarness,
    mode: str,
    address: str,
    params: Mapping[str, Any],
    settings: ClientSettings | None = None,
    *,
    codec: str = "msgpack",
) -> tuple[BaseException | None, float, int]:
    """Read a whole stream (header, items, footer); return (error, seconds, items read)."""
    call = StreamCall(address, TYPES[codec], params, settings or ClientSettings())
    count = 0
    started = time.monotonic()

    async def aread() -> None:
        nonlocal count
        async with harness.aconnect(call) as r:
            await r.read_header()
            async for _ in r.read_items():
                count += 1
            await r.read_footer()

    def sread() -> None:
        nonlocal count
        with harness.connect(call) as r:
            r.read_header()
            for _ in r.read_items():
                count += 1
            r.read_footer()

    try:
        if mode == "sync":
            sread()
        else:
            asyncio.run(aread())
    except StreamError as exc:
        return exc, time.monotonic() - started, count
    return None, time.monotonic() - started, count
