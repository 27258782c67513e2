"""Generate the Python modules for ``multimodal.proto`` (``make protos``).

Runs grpcio-tools' bundled protoc (pinned to 1.81.x in the dev extra, whose gencode
fits the protobuf<7 runtime that tritonclient allows) and then makes two fixes:

- protoc writes ``import multimodal_pb2`` into the gRPC module; it must be
  ``from transports.triton.protocol import multimodal_pb2`` to import inside the package.
- protoc writes no typing for the gRPC module, so this writes
  ``multimodal_pb2_grpc.pyi``: a stub whose constructor, given a ``grpc.aio.Channel``,
  is typed as the async stub, and a servicer base that async servicers can subclass.

``python -m transports.triton.protocol._protogen [OUT_DIR]`` writes into this package by default;
the test suite writes into a temp dir and compares the files.
"""

from __future__ import annotations

import importlib.resources
import re
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2

__all__ = ["GENERATED_FILES", "generate"]

PROTO_NAME = "multimodal.proto"
PACKAGE = "transports.triton.protocol"
GENERATED_FILES = (
    "multimodal_pb2.py",
    "multimodal_pb2.pyi",
    "multimodal_pb2_grpc.py",
    "multimodal_pb2_grpc.pyi",
)

_HEADER = '''"""Typing for multimodal_pb2_grpc.py, written by ``make protos`` (_protogen)."""

import abc
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Generic, TypeVar, overload

import grpc
import grpc.aio

from transports.triton.protocol import multimodal_pb2

_T = TypeVar("_T")

class _MaybeAsyncIterator(AsyncIterator[_T], Iterator[_T], metaclass=abc.ABCMeta): ...

_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")

class _ServicerContext(  # type: ignore[misc]
    grpc.ServicerContext, grpc.aio.ServicerContext[_Req, _Resp], Generic[_Req, _Resp]
): ...
'''


def _proto_dir() -> Path:
    return Path(__file__).resolve().parent


def _callable_kind(method: descriptor_pb2.MethodDescriptorProto) -> str:
    client = "Stream" if method.client_streaming else "Unary"
    server = "Stream" if method.server_streaming else "Unary"
    return f"{client}{server}MultiCallable"


def _short(type_name: str) -> str:
    return "multimodal_pb2." + type_name.rsplit(".", 1)[-1]


def _grpc_pyi(fd: descriptor_pb2.FileDescriptorProto) -> str:
    out = [_HEADER]
    for service in fd.service:
        name = service.name
        for flavour, mod in (("", "grpc"), ("Async", "grpc.aio")):
            out.append(f"\nclass {name}{flavour}Stub:")
            if not flavour:
                out.append("    @overload")
                out.append(
                    f"    def __new__(cls, channel: grpc.Channel) -> {name}Stub: ...",
                )
                out.append("    @overload")
                out.append(
                    f"    def __new__(cls, channel: grpc.aio.Channel) -> {name}AsyncStub: ..."
                    "  # type: ignore[misc]",
                )
            for m in service.method:
                req, resp = _short(m.input_type), _short(m.output_type)
                out.append(f"    {m.name}: {mod}.{_callable_kind(m)}[{req}, {resp}]")
        out.append(f"\nclass {name}Servicer:")
        for m in service.method:
            req, resp = _short(m.input_type), _short(m.output_type)
            arg = (
                f"request_iterator: _MaybeAsyncIterator[{req}]"
                if m.client_streaming
                else f"request: {req}"
            )
            ret = (
                f"Iterator[{resp}] | AsyncIterator[{resp}]"
                if m.server_streaming
                else f"{resp} | Awaitable[{resp}]"
            )
            out.append(
                f"    def {m.name}(self, {arg}, "
                f"context: _ServicerContext[{req}, {resp}]) -> {ret}: ...",
            )
        out.append(
            f"\ndef add_{name}Servicer_to_server("
            f"servicer: {name}Servicer, server: grpc.Server | grpc.aio.Server) -> None: ...",
        )
    return "\n".join(out) + "\n"


def generate(out_dir: Path) -> list[Path]:
    """Generate the four modules for ``multimodal.proto`` into ``out_dir``.

    Args:
        out_dir: where to write; created if missing.

    Returns:
        The paths written, in ``GENERATED_FILES`` order.

    Raises:
        RuntimeError: protoc failed.
    """
    from grpc_tools import protoc  # type: ignore[import-untyped]

    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = str(importlib.resources.files("grpc_tools") / "_proto")
    descriptor_set = out_dir / "multimodal.descriptor"
    args = [
        "grpc_tools.protoc",
        f"-I{_proto_dir()}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--descriptor_set_out={descriptor_set}",
        PROTO_NAME,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO_NAME}")
    grpc_py = out_dir / "multimodal_pb2_grpc.py"
    text = grpc_py.read_text()
    text = re.sub(
        r"^import multimodal_pb2 as multimodal__pb2$",
        f"from {PACKAGE} import multimodal_pb2 as multimodal__pb2",
        text,
        flags=re.MULTILINE,
    )
    grpc_py.write_text(text)
    # protoc's .pyi leaves Mapping bare and **kwargs (the `from` field) untyped,
    # which mypy --strict rejects in callers; spell both out.
    pyi = out_dir / "multimodal_pb2.pyi"
    stub = pyi.read_text().replace("_Mapping]", "_Mapping[str, _Any]]")
    stub = stub.replace("**kwargs)", "**kwargs: _Any)")
    stub = stub.replace(
        "from typing import ClassVar as _ClassVar",
        "from typing import Any as _Any, ClassVar as _ClassVar",
    )
    pyi.write_text(stub)
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    descriptor_set.unlink()
    (out_dir / "multimodal_pb2_grpc.pyi").write_text(_grpc_pyi(fds.file[0]))
    return [out_dir / name for name in GENERATED_FILES]


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m transports.triton.protocol._protogen [OUT_DIR]``."""
    args = sys.argv[1:] if argv is None else argv
    out_dir = Path(args[0]) if args else _proto_dir()
    for path in generate(out_dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
