"""Errors of :mod:`transports.redis`; every one is a :class:`truss_stream.StreamError`::

StreamError
├── StreamTrimmedError          the position asked for (or the next one) was removed
│                               by retention (maxlen, ttl, DEL): frames are missing
├── StreamNotFoundError         no stream at the key (never written, expired, deleted)
├── StreamPositionError         an ``after`` / ``Last-Event-ID`` that is not an entry
│                               of this stream (another stream's id, or garbage)
├── StreamLostError             (publish) entries Redis had acknowledged are gone
│                               (a restart without persistence): a gap, not resumable
├── StreamIdentityError         the entries at the key belong to another stream than
│                               the one being read (the key was reused)
├── StreamTruncatedError
│   └── ProducerGoneError       no new entry for ``idle_limit`` seconds and no END:
│                               the producer died (or stalled) mid-stream
└── TransportError
    └── RedisUnavailableError   Redis unreachable (down, restarting, timing out)
                                for longer than ``outage_limit``
"""

from __future__ import annotations

from truss_stream import StreamError, StreamTruncatedError

from ..base import TransportError

__all__ = [
    "ProducerGoneError",
    "RedisUnavailableError",
    "StreamIdentityError",
    "StreamLostError",
    "StreamNotFoundError",
    "StreamPositionError",
    "StreamTrimmedError",
]


class StreamTrimmedError(StreamError):
    """Frames the reader needs were removed by retention; resuming would leave a gap."""


class StreamNotFoundError(StreamError, LookupError):
    """No stream at the key: never written, expired (``ttl``) or deleted."""


class StreamPositionError(StreamError):
    """A start position that is not an entry id of this stream."""


class StreamLostError(StreamError):
    """Redis lost entries it had acknowledged to the publisher (restart without AOF)."""


class StreamIdentityError(StreamError):
    """The key now holds entries of another stream than the one being read."""


class ProducerGoneError(StreamTruncatedError):
    """The stream stopped without END: no new entry within ``idle_limit`` seconds."""


class RedisUnavailableError(TransportError):
    """Redis could not be reached (or timed out) for longer than ``outage_limit``."""
