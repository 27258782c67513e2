"""Transport modules name the extra to install when a dependency of theirs is missing.

Without this, ``import transports.sse`` on a bare install fails deep inside with
``No module named 'anyio'``, which says nothing about ``pip install 'truss-stream[sse]'``.
Each transport module calls :func:`require_extra` before its other imports.
"""

from __future__ import annotations

import importlib
from typing import Final

__all__ = ["require_extra"]

#: Module -> (its extra, the modules of that extra it imports). One table for all.
EXTRAS: Final[tuple[tuple[str, str, tuple[str, ...]], ...]] = (
    ("transports.sse", "sse", ("anyio", "httpx", "starlette")),
    ("transports.http", "http", ("anyio", "httpx", "starlette")),
    (
        "transports.grpc",
        "grpc",
        ("anyio", "grpc", "google.protobuf", "grpc_health.v1", "grpc_reflection"),
    ),
    ("transports.triton", "triton", ("grpc", "google.protobuf", "grpc_health.v1")),
)


def require_extra(module: str) -> None:
    """Import ``module``'s extra dependencies; name the extra if one is missing.

    Raises:
        ImportError: a dependency is missing; the message says which module and
            which ``pip install 'truss-stream[extra]'`` provides it.
    """
    for name, extra, dependencies in EXTRAS:
        if name != module:
            continue
        for dependency in dependencies:
            try:
                importlib.import_module(dependency)
            except ImportError as exc:
                missing = exc.name or dependency
                raise ImportError(
                    f"{module} needs the {extra!r} extra (missing module {missing!r}): "
                    f"pip install 'truss-stream[{extra}]'",
                    name=missing,
                ) from exc
