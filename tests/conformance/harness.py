"""The transport conformance harness: one suite (test_conformance.py), every transport.

A :class:`TransportHarness` serves a producer from a real server on loopback and
gives sync and async client transports (:mod:`transports.base`) to read it. To
add a transport, write a module here defining harness classes and name it in
``_HARNESS_MODULES``; each module exposes ``harnesses() -> list[TransportHarness]``
(it may ``return []`` when its optional dependencies are missing).

The reliability suite (tests/reliability) runs over the same registry. It needs a
little more from a harness: a server whose producer gets the request's parameters
(:meth:`TransportHarness.serve_params`), and the transport's own ``connect`` /
``aconnect``, called as users call them (:meth:`TransportHarness.connect`), with the
client's limits given in transport-neutral terms (:class:`ClientSettings`).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import importlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from transports.base import AsyncBaseTransport, BaseTransport

#: Called once per request on the server; returns the writer's frames.
ProducerFactory = Callable[[], AsyncIterator[bytes | memoryview]]

#: Called once per request with the request's parameters (SSE/HTTP: the query
#: string; gRPC: the JSON request body); returns the writer's frames.
ParamProducer = Callable[[Mapping[str, Any]], AsyncIterator[bytes | memoryview]]

#: Modules (in this package) that define harnesses; append yours.
_HARNESS_MODULES = ["http_harness", "grpc_harness", "redis_harness"]


class ServedStream(abc.ABC):
    """A running server, as ``TransportHarness.serve`` gives it."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Cut every open connection abruptly and stop serving, like a crashed server."""


class ServedApp(ServedStream):
    """A running server from :meth:`TransportHarness.serve_params`."""

    #: What :meth:`TransportHarness.connect` takes to reach the producer.
    address: str
    #: The TCP port the server listens on (to put a proxy in front of it).
    port: int


@dataclasses.dataclass(frozen=True)
class ClientSettings:
    """A client's limits, in terms every transport maps onto its own settings.

    Attributes:
        reader: ``truss_stream.stream_reader`` keywords (``idle_timeout``,
            ``total_timeout``, ``max_frame_bytes``...), as users pass them.
        timeout: the overall budget of the request (httpx's timeout; gRPC's deadline);
            None: no limit.
        connect_timeout: how long to wait for a connection (httpx connect timeout;
            gRPC: a deadline with ``wait_for_ready=True``, else gRPC fails fast).
        read_timeout: how long to wait for the server to answer (httpx read timeout;
            gRPC: the deadline).
        private_connection: gRPC only: a channel that shares no connection with
            others to the same target (grpc-core pools them otherwise).
    """

    reader: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    timeout: float | None = 30.0
    connect_timeout: float | None = None
    read_timeout: float | None = None
    private_connection: bool = False


@dataclasses.dataclass(frozen=True)
class StreamCall:
    """One stream to open: where, its stream type, the producer's parameters, the limits."""

    address: str
    types: Any
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    settings: ClientSettings = dataclasses.field(default_factory=ClientSettings)


class TransportHarness(abc.ABC):
    """Serves producers over one transport and opens client transports to them."""

    name: str
    #: Whether the shared reliability server (``tests/reliability/reliability_server.py``)
    #: serves this transport, so :meth:`address_in` works. Transports that need a
    #: service of their own beside it (a redis-server) say False.
    in_shared_server: bool = True

    # The reliability suite's part --------------------------------------------------

    @abc.abstractmethod
    def serve_params(
        self, producer: ParamProducer, **response_options: Any
    ) -> contextlib.AbstractContextManager[ServedApp]:
        """Start a real server whose producer gets each request's parameters.

        ``response_options`` go to the transport's server side (``send_timeout``...).
        """

    @abc.abstractmethod
    def address_in(self, *, http_url: str, grpc_target: str) -> str:
        """This transport's address on a server serving every transport's endpoint
        the way :meth:`serve_params` does (``/sse``, ``/http``, gRPC ``Stream``)."""

    @abc.abstractmethod
    def address_at(self, port: int) -> str:
        """The address of the same endpoint on ``127.0.0.1:port`` (a proxy, a black hole)."""

    @abc.abstractmethod
    def connect(self, call: StreamCall) -> contextlib.AbstractContextManager[Any]:
        """The transport's sync ``connect``, as a user calls it: gives the reader."""

    @abc.abstractmethod
    def aconnect(
        self, call: StreamCall, *, client: Any = None
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        """The transport's ``aconnect``, as a user calls it: gives the async reader.

        ``client``: one from :meth:`async_client`, shared by many streams (else each
        stream has its own).
        """

    @abc.abstractmethod
    def async_client(
        self, address: str, *, max_streams: int
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        """A client many concurrent :meth:`aconnect` calls share, as a loaded user's
        would (``httpx.AsyncClient`` with room for ``max_streams`` connections, one
        ``grpc.aio`` channel)."""

    # The conformance suite's part --------------------------------------------------

    @property
    @abc.abstractmethod
    def address(self) -> str:
        """The address of the stream :meth:`serve` serves (inside it), for :meth:`connect`."""

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


#: The registry the suites are parametrized over.
HARNESSES: list[TransportHarness] = load_harnesses()


def harness_named(name: str) -> TransportHarness:
    """The registered harness called ``name`` (``"sse"``, ``"http"``, ``"grpc"``)."""
    for harness in HARNESSES:
        if harness.name == name:
            return harness
    raise LookupError(f"no harness {name!r} registered")
