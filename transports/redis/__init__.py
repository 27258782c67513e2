"""Durable, resumable, fan-out streams on Redis Streams (extra ``redis``: redis-py).

A worker publishes a producer's frames into a Redis stream, one entry per frame
(:func:`publish`); any number of web replicas serve it (:func:`sse_response`, whose
event ids are the Redis entry ids, so a client that reconnects to *any* replica
resumes exactly; :func:`stream_response`, its chunked twin), and any number of
consumers read it straight from Redis (:func:`aconnect`, :func:`connect`). Every read
checks each entry's position and stream identity: a gap left by retention, or a key
reused by another stream, is an error, never silent. docs/scale-out.md has the key
scheme (:func:`stream_key`), the persistence settings and what was measured.

Each entry has three fields: ``f`` (the frame, as the writer made it), ``n`` (its
position in the stream, from 0) and ``s`` (the stream's identity, 16 hex digits,
random per :func:`publish`).
"""

from __future__ import annotations

from ._core import ReadOptions
from ._errors import (
    ProducerGoneError,
    RedisUnavailableError,
    StreamIdentityError,
    StreamLostError,
    StreamNotFoundError,
    StreamPositionError,
    StreamTrimmedError,
)
from ._keys import hash_slot, stream_key
from ._publish import publish
from ._read import AsyncRedisTransport, RedisTransport, aconnect, connect
from ._serve import sse_response, stream_response

__all__ = [
    "AsyncRedisTransport",
    "ProducerGoneError",
    "ReadOptions",
    "RedisTransport",
    "RedisUnavailableError",
    "StreamIdentityError",
    "StreamLostError",
    "StreamNotFoundError",
    "StreamPositionError",
    "StreamTrimmedError",
    "aconnect",
    "connect",
    "hash_slot",
    "publish",
    "sse_response",
    "stream_key",
    "stream_response",
]
