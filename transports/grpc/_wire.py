"""How frames ride on gRPC: method paths, the two message shapes, the descriptors.

Each response message carries exactly one frame. By default it is a protobuf
``Frame { bytes data = 1; }`` (see ``frames.proto``) so any gRPC client can read it;
our clients ask for the raw wire with the ``truss-stream-wire: frames`` metadata and
get the frame bytes as the message itself, which saves a copy of every tensor.

Both message shapes have a single ``bytes`` field numbered 1, so their encoding is
one key byte, a varint length and the bytes; this module writes it directly rather
than through protobuf objects, which would copy the payload twice.

Reflection needs descriptors for the service, whose methods are the producers'
names, known only at run time: :func:`build_descriptor_pool` builds them into a
private pool per service, never into protobuf's global default pool.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = [
    "DEFAULT_SERVICE_NAME",
    "FRAMES_PROTO_NAME",
    "RAW_WIRE",
    "WIRE_METADATA_KEY",
    "build_descriptor_pool",
    "encode_frame_message",
    "encode_request",
    "frames_pool",
    "message_class",
    "method_path",
]

DEFAULT_SERVICE_NAME: Final = "truss_stream.FrameStream"
#: Metadata a client sends to receive bare frame bytes instead of ``Frame`` messages.
WIRE_METADATA_KEY: Final = "truss-stream-wire"
RAW_WIRE: Final = "frames"
FRAMES_PROTO_NAME: Final = "truss_stream/frames.proto"
_PACKAGE: Final = "truss_stream"

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_KEY_FIELD_1_BYTES: Final = b"\x0a"  # field 1, wire type 2 (length-delimited)


def check_method_name(name: str) -> str:
    """Return ``name`` if it is a valid protobuf method name, else raise ValueError."""
    if not _IDENTIFIER.match(name):
        raise ValueError(f"gRPC method name {name!r} must match [A-Za-z_][A-Za-z0-9_]*")
    return name


def check_service_name(name: str) -> str:
    """Return ``name`` if it is a valid, package-qualified protobuf service name."""
    parts = name.split(".")
    if len(parts) < 2 or not all(_IDENTIFIER.match(p) for p in parts):
        raise ValueError(f"gRPC service name {name!r} must look like 'package.Service'")
    return name


def method_path(method: str, service: str = DEFAULT_SERVICE_NAME) -> str:
    """The full method path, ``/<service>/<method>``; a path starting with ``/`` is kept."""
    if method.startswith("/"):
        return method
    return f"/{check_service_name(service)}/{check_method_name(method)}"


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _bytes_field_1(data: bytes | memoryview) -> bytes:
    # proto3 omits an empty bytes field, so the empty message is b"".
    if not len(data):
        return b""
    return b"".join((_KEY_FIELD_1_BYTES, _varint(len(data)), data))


def encode_request(body: bytes) -> bytes:
    """Serialize ``StreamRequest(body=body)``."""
    return _bytes_field_1(body)


def encode_frame_message(frame: bytes | memoryview) -> bytes:
    """Serialize ``Frame(data=frame)``: one copy of the frame."""
    return _bytes_field_1(frame)


def _frames_file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(
        name=FRAMES_PROTO_NAME, package=_PACKAGE, syntax="proto3"
    )
    for message, field in (("StreamRequest", "body"), ("Frame", "data")):
        msg = file.message_type.add(name=message)
        msg.field.add(
            name=field,
            number=1,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
            json_name=field,
        )
    return file


def _service_file(service: str, methods: Iterable[str]) -> descriptor_pb2.FileDescriptorProto:
    package, _, name = service.rpartition(".")
    file = descriptor_pb2.FileDescriptorProto(
        name=f"{service.replace('.', '/')}_service.proto",
        package=package,
        syntax="proto3",
        dependency=[FRAMES_PROTO_NAME],
    )
    svc = file.service.add(name=name)
    for method in methods:
        svc.method.add(
            name=method,
            input_type=f".{_PACKAGE}.StreamRequest",
            output_type=f".{_PACKAGE}.Frame",
            server_streaming=True,
        )
    return file


def build_descriptor_pool(
    service: str, methods: Iterable[str], *, extra_files: Iterable[bytes] = ()
) -> descriptor_pool.DescriptorPool:
    """A private descriptor pool holding the messages and the service with ``methods``.

    Args:
        service: the package-qualified service name.
        methods: the method names, each a producer.
        extra_files: serialized ``FileDescriptorProto`` values to add first (health,
            reflection), so reflection can describe every service the server lists.
    """
    pool = descriptor_pool.DescriptorPool()
    for serialized in extra_files:
        pool.AddSerializedFile(serialized)
    pool.AddSerializedFile(_frames_file().SerializeToString())
    pool.AddSerializedFile(_service_file(service, methods).SerializeToString())
    return pool


def frames_pool() -> descriptor_pool.DescriptorPool:
    """A private descriptor pool holding only ``StreamRequest`` and ``Frame``."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(_frames_file().SerializeToString())
    return pool


def message_class(pool: descriptor_pool.DescriptorPool, name: str) -> Any:
    """The class of message ``truss_stream.<name>`` (``StreamRequest``, ``Frame``) in ``pool``."""
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}"))
