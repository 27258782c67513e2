"""The transport conformance harness: one suite (test_conformance.py), every transport.

A :class:`TransportHarness` serves a producer from a real server on loopback and
gives sync and async client transports (:mod:`transports.base`) to read it. To
add a transport, write a module here defining harness classes and name it in
``_HARNESS_MODULES``; each module exposes ``harnesses() -> list[TransportHarness]``
(it may raise ``return ``[]`` when its optional dependencies are missing).
"""

from __future__ import annotations

import abc
import contextlib
import importlib
from collections.abc import AsyncIterator, Callable

from transports.base import AsyncBaseTransport, BaseTransport

#: Called once per request on the server; returns the writer's frames.
ProducerFactory = Callable[[], AsyncIterator[bytes | memoryview]]

#: Modules (in this package) that define harnesses; append yours.
_HARNESS_MODULES = ["http_harness", "grpc_harness", "redis_harness"]


class ServedStream(abc.ABC):
    """A running server, as ``TransportHarness.serve`` gives it."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Cut every open connection abruptly and stop serving, like a crashed server."""


class TransportHarness(abc.ABC):
    """Serves producers over one transport and opens client transports to them."""

    name: str

    @abc.abstractmethod
    def serve(
        self, producer_factory: ProducerFactory
    ) -> contextlib.AbstractContextManager[ServedStream]:
        """Start a real server on loopback serving ``producer_factory()`` per request."""

    @abc.abstractmethod
    def sync_transport(self) -> BaseTransport:
        """A sync client transport to the server started by :meth:`serve` (inside it)."""

    @abc.abstractmethod
    def async_transport(self) -> AsyncBaseTransport:
        """An async client transport to the server started by :meth:`serve` (inside it)."""


def load_harnesses() -> list[TransportHarness]:
    """The harnesses of every module in ``_HARNESS_MODULES`` that exists."""
    found: list[TransportHarness] = []
    for name in _HARNESS_MODULES:
        qualified = f"{__package__}.{name}"
        try:
            module = importlib.import_module(qualified)
        except ModuleNotFoundError as exc:
            if exc.name == qualified:
                continue  # not written (yet)
            raise
        found.extend(module.harnesses())
    return found


#: The registry the suite is parametrized over.
HARNESSES: list[TransportHarness] = load_harnesses()
