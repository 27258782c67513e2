"""Channel and server settings that match on both ends, and the channel factories.

gRPC's defaults suit short unary calls: a 4 MiB receive limit (one tensor item is
often larger) and no keepalive, so a stream that stays quiet for minutes (a model
thinking) can be dropped by a NAT or load balancer without either side noticing.
:class:`GrpcOptions` holds one set of numbers and renders it for both ends, so the
client pings no more often than the server allows (a server that receives pings
too often answers with GOAWAY ``too_many_pings`` and kills the stream).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from transports.observability._grpc import aio_trace_interceptors, trace_channel

__all__ = ["ClientTLS", "GrpcOptions", "ServerTLS", "acreate_channel", "create_channel"]

_MiB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class GrpcOptions:
    """Settings shared by a server and its clients; give both ends the same instance.

    Attributes:
        max_message_bytes: largest message either side sends or accepts. One
            message carries one whole frame, so this bounds a frame (tag included).
        keepalive_time_ms: how often each side pings an idle connection.
        keepalive_timeout_ms: how long a ping may go unanswered before the
            connection is declared dead (and the stream fails with UNAVAILABLE).
        permit_keepalive_without_calls: ping even when no call is open.
        min_ping_interval_ms: the server accepts client pings this often, no more
            often; keep it at most ``keepalive_time_ms``.
        extra: further ``(name, value)`` channel arguments, appended on both ends.
    """

    max_message_bytes: int = 64 * _MiB
    keepalive_time_ms: int = 30_000
    keepalive_timeout_ms: int = 10_000
    permit_keepalive_without_calls: bool = True
    min_ping_interval_ms: int = 10_000
    extra: Sequence[tuple[str, Any]] = ()

    def __post_init__(self) -> None:
        if self.min_ping_interval_ms > self.keepalive_time_ms:
            raise ValueError(
                f"min_ping_interval_ms={self.min_ping_interval_ms} is above "
                f"keepalive_time_ms={self.keepalive_time_ms}: the server would reject "
                "the client's keepalive pings with GOAWAY too_many_pings"
            )

    def _common(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.keepalive_time_ms", self.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", self.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", int(self.permit_keepalive_without_calls)),
            # By default a client stops pinging after two pings with no data in
            # between, which is exactly the long quiet stream; 0 means no limit.
            ("grpc.http2.max_pings_without_data", 0),
        ]

    def channel_options(self) -> list[tuple[str, Any]]:
        """The channel arguments for a client (``grpc.insecure_channel(..., options=)``)."""
        return [*self._common(), *self.extra]

    def server_options(self) -> list[tuple[str, Any]]:
        """The channel arguments for a server (``grpc.aio.server(options=)``)."""
        return [
            *self._common(),
            ("grpc.http2.min_ping_interval_without_data_ms", self.min_ping_interval_ms),
            # Never count a well-behaved client's pings as strikes towards GOAWAY.
            ("grpc.http2.max_ping_strikes", 0),
            *self.extra,
        ]


@dataclasses.dataclass(frozen=True)
class ServerTLS:
    """A server's TLS identity (PEM bytes), optionally requiring client certificates.

    Attributes:
        private_key: the server's private key.
        certificate_chain: its certificate chain, leaf first.
        client_root_certificates: CA certificates to verify client certificates with.
        require_client_auth: refuse clients without a certificate (mutual TLS).
    """

    private_key: bytes
    certificate_chain: bytes
    client_root_certificates: bytes | None = None
    require_client_auth: bool = False

    def credentials(self) -> grpc.ServerCredentials:
        """Return the ``grpc.ssl_server_credentials`` for this identity."""
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.client_root_certificates,
            require_client_auth=self.require_client_auth,
        )


@dataclasses.dataclass(frozen=True)
class ClientTLS:
    """How a client verifies the server and, for mutual TLS, identifies itself (PEM bytes).

    Attributes:
        root_certificates: CA certificates to trust; ``None`` uses gRPC's defaults.
        private_key: the client's key, for mutual TLS.
        certificate_chain: the client's certificate chain, for mutual TLS.
        server_name: the name expected in the server's certificate, when it differs
            from the target's host (``grpc.ssl_target_name_override``).
    """

    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Return the ``grpc.ssl_channel_credentials`` for this client."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_certificates,
            private_key=self.private_key,
            certificate_chain=self.certificate_chain,
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        """Extra channel arguments this TLS setting needs."""
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def create_channel(
    target: str, *, options: GrpcOptions | None = None, tls: ClientTLS | None = None
) -> grpc.Channel:
    """Open a sync ``grpc.Channel`` with settings matching a server's.

    Args:
        target: ``host:port`` or any gRPC target URI.
        options: the settings the server uses; defaults to ``GrpcOptions()``.
        tls: verify the server with TLS; ``None`` opens a plaintext channel.

    Returns:
        The channel; the caller closes it. When an OpenTelemetry SDK is set up, the
        channel sends the current trace context (``traceparent``) with each call.
    """
    opts = (options or GrpcOptions()).channel_options()
    if tls is None:
        return trace_channel(grpc.insecure_channel(target, options=opts))
    return trace_channel(
        grpc.secure_channel(target, tls.credentials(), options=[*opts, *tls.channel_options()])
    )


def acreate_channel(
    target: str, *, options: GrpcOptions | None = None, tls: ClientTLS | None = None
) -> grpc.aio.Channel:
    """Open a ``grpc.aio.Channel``; the async twin of :func:`create_channel`.

    Call it with an event loop running; close the channel with ``await channel.close()``.
    """
    opts = (options or GrpcOptions()).channel_options()
    interceptors = aio_trace_interceptors() or None  # the trace context, when tracing is on
    if tls is None:
        return grpc.aio.insecure_channel(target, options=opts, interceptors=interceptors)
    return grpc.aio.secure_channel(
        target,
        tls.credentials(),
        options=[*opts, *tls.channel_options()],
        interceptors=interceptors,
    )
