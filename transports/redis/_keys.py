"""The key scheme: one stream per Redis key, hash-tagged for Redis Cluster.

``stream_key("job-42")`` is ``"truss:{job-42}"``. Redis Cluster hashes only the part of
a key between the first ``{`` and the next ``}`` (the hash tag), so every key derived from
one stream id (its entries, and any companion key an application adds, such as
``"truss:{job-42}:meta"``) lives in one slot, on one node, and a pipeline over them is
legal; different stream ids hash to different slots and spread over the nodes.
"""

from __future__ import annotations

from typing import Final

from redis.crc import key_slot

__all__ = ["DEFAULT_PREFIX", "hash_slot", "stream_key"]

DEFAULT_PREFIX: Final = "truss"


def stream_key(stream_id: str, *, prefix: str = DEFAULT_PREFIX) -> str:
    """The Redis key of the stream ``stream_id``: ``"{prefix}:{{{stream_id}}}"``.

    Raises:
        ValueError: an empty ``stream_id``, or one holding ``{`` or ``}`` (it would
            change the hash tag), or a ``prefix`` holding ``{``.
    """
    if not stream_id or "{" in stream_id or "}" in stream_id:
        raise ValueError(f"a stream id is non-empty without braces, got {stream_id!r}")
    if "{" in prefix:
        raise ValueError(f"a key prefix holds no '{{', got {prefix!r}")
    return f"{prefix}:{{{stream_id}}}"


def hash_slot(key: str | bytes) -> int:
    """The Redis Cluster slot of ``key`` (CRC16 of its hash tag, mod 16384): redis-py's own."""
    data = key.encode() if isinstance(key, str) else key
    return int(key_slot(data))
