"""Typed streams over gRPC: one frame per message of a server-streaming call.

Server::

    service = FrameStreamService({"Generate": produce})  # produce(body, context) -> frames
    async with serve(service, "127.0.0.1:50051") as running:
        await running.server.wait_for_termination()

Client::

    async with aconnect("127.0.0.1:50051", "Generate", types, request=b"...") as reader:
        header = await reader.read_header()
        async for item in reader.read_items(): ...

``connect`` is the sync twin over ``grpc``. See docs/grpc.md.
"""
# ruff: noqa: E402 - the extra is checked before the imports that need it

from transports._extras import require_extra

require_extra(__name__)

from ._client import (
    AsyncGrpcTransport,
    GrpcCallKwargs,
    GrpcClientOptions,
    GrpcConnectKwargs,
    GrpcStatusError,
    GrpcStreamTruncatedError,
    GrpcTransport,
    aconnect,
    connect,
)
from ._options import ClientTLS, GrpcOptions, ServerTLS, acreate_channel, create_channel
from ._server import (
    FrameStreamService,
    Producer,
    RunningServer,
    add_stream_method,
    serve,
    start_server,
)
from ._thread import ServerThread, serve_in_thread
from ._wire import DEFAULT_SERVICE_NAME, RAW_WIRE, WIRE_METADATA_KEY, method_path

__all__ = [
    "DEFAULT_SERVICE_NAME",
    "RAW_WIRE",
    "WIRE_METADATA_KEY",
    "AsyncGrpcTransport",
    "ClientTLS",
    "FrameStreamService",
    "GrpcCallKwargs",
    "GrpcClientOptions",
    "GrpcConnectKwargs",
    "GrpcOptions",
    "GrpcStatusError",
    "GrpcStreamTruncatedError",
    "GrpcTransport",
    "Producer",
    "RunningServer",
    "ServerTLS",
    "ServerThread",
    "aconnect",
    "acreate_channel",
    "add_stream_method",
    "connect",
    "method_path",
    "create_channel",
    "serve",
    "serve_in_thread",
    "start_server",
]
