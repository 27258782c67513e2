"""Opt-in streaming compression of response bodies, flushed per batch of frames.

Sans-IO: a :class:`StreamCompressor` turns each batch the server is about to send
into compressed bytes that end on a flush point (zlib ``Z_SYNC_FLUSH``, zstd
``FLUSH_BLOCK``), so the client can decode every frame of the batch as soon as it
arrives: streaming stays streaming. :func:`negotiate` picks the coding from the
request's ``Accept-Encoding``; a client that does not accept it gets identity.
"""

from __future__ import annotations

import zlib
from typing import Any, Final, Literal

__all__ = ["CODINGS", "Compression", "StreamCompressor", "negotiate"]

#: What ``compression=`` accepts: one coding, or ``"auto"`` (zstd when the
#: ``zstandard`` package is installed and the client accepts it, else gzip).
Compression = Literal["gzip", "zstd", "auto"]
#: Codings this module can produce, in ``"auto"``'s order of preference.
CODINGS: Final = ("zstd", "gzip")
_DEFAULT_LEVELS: Final = {"gzip": 1, "zstd": 3}


def _zstandard() -> Any:
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


def _accepted(accept_encoding: str) -> dict[str, float]:
    accepted: dict[str, float] = {}
    for part in accept_encoding.split(","):
        name, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if name:
            accepted[name.strip().lower()] = q
    return accepted


def negotiate(requested: Compression | None, accept_encoding: str) -> str | None:
    """The coding to use for a response, or None for identity.

    Args:
        requested: the server's choice (``compression=``); None: never compress.
        accept_encoding: the request's ``Accept-Encoding`` header ("" if absent).

    Raises:
        ValueError: ``requested`` is not a known coding, or ``"zstd"`` without the
            ``zstandard`` package (``pip install 'truss-stream[zstd]'``).
    """
    if requested is None:
        return None
    if requested not in ("gzip", "zstd", "auto"):
        raise ValueError(f"compression must be 'gzip', 'zstd', 'auto' or None, got {requested!r}")
    if requested == "zstd" and _zstandard() is None:
        raise ValueError("compression='zstd' needs zstandard: pip install 'truss-stream[zstd]'")
    accepted = _accepted(accept_encoding)
    wildcard = accepted.get("*", 0.0)
    candidates = CODINGS if requested == "auto" else (requested,)
    for coding in candidates:
        if coding == "zstd" and _zstandard() is None:
            continue
        if accepted.get(coding, wildcard) > 0:
            return coding
    return None


class StreamCompressor:
    """Compress a response body batch by batch, each batch ending on a flush point.

    Args:
        coding: ``"gzip"`` or ``"zstd"``.
        level: the compression level; default 1 for gzip, 3 for zstd (fast levels:
            the point is to save bandwidth without costing the stream its latency).
    """

    def __init__(self, coding: str, level: int | None = None) -> None:
        self.coding = coding
        lvl = _DEFAULT_LEVELS[coding] if level is None else level
        if coding == "gzip":
            self._zlib = zlib.compressobj(lvl, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            self._zstd: Any = None
        elif coding == "zstd":
            zstandard = _zstandard()
            if zstandard is None:
                raise ValueError("zstd needs zstandard: pip install 'truss-stream[zstd]'")
            self._zstd = zstandard.ZstdCompressor(level=lvl).compressobj()
            self._flush_block = zstandard.COMPRESSOBJ_FLUSH_BLOCK
        else:
            raise ValueError(f"unknown coding {coding!r}")

    def compress(self, data: bytes | memoryview) -> bytes:
        """Compressed bytes for ``data``, flushed: the client can decode all of it."""
        if self._zstd is not None:
            return bytes(self._zstd.compress(data)) + bytes(self._zstd.flush(self._flush_block))
        return self._zlib.compress(data) + self._zlib.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        """The bytes that end the compressed body (gzip trailer, zstd frame end)."""
        if self._zstd is not None:
            return bytes(self._zstd.flush())
        return self._zlib.flush(zlib.Z_FINISH)
