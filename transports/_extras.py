"""Transport modules name the extra to install when a dependency of theirs is missing.

Without this, ``import transports.sse`` on a bare install fails deep inside with
``No module named 'anyio'``, which says nothing about ``pip install 'truss-stream[sse]'``.
"""

from __future__ import annotations

__all__ = ["missing_extra"]


def missing_extra(module: str, extra: str, exc: ImportError) -> ImportError:
    """The error to raise (``from exc``) when importing ``module`` failed with ``exc``.

    A missing third-party module becomes an ImportError naming ``extra``; a failure
    inside this package itself is returned unchanged.
    """
    missing = exc.name or ""
    if not missing or missing.split(".")[0] in ("transports", "truss_stream"):
        return exc
    return ImportError(
        f"{module} needs the {extra!r} extra (missing module {missing!r}): "
        f"pip install 'truss-stream[{extra}]'",
        name=missing,
    )
