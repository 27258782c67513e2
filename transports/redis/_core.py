"""The sans-IO reading core: which Redis command comes next, and what the replies mean.

:func:`read_steps` is a generator of :data:`Step` values. A driver (sync or async,
:mod:`transports.redis._read`) runs each command step on its Redis client and sends
the reply back in, throws a Redis connection error back in, and hands each
:class:`Deliver` step's entries on. All the decisions live here, once:

- where to start: ``after="0"`` is the stream's first frame (position 0); any other
  ``after`` is looked up (``XRANGE after after``) and reading continues at its
  position + 1, with its stream identity;
- every entry carries ``n`` (its frame's position, from 0) and ``s`` (the stream's
  identity, random per :func:`~transports.redis.publish`): an entry whose position is
  not the next one means retention trimmed frames away (:class:`StreamTrimmedError`),
  another identity means the key was reused (:class:`StreamIdentityError`), so a read
  never leaves a silent gap nor mixes two streams;
- following live: ``XREAD BLOCK`` until END or ERROR; no new entry for ``idle_limit``
  seconds is :class:`ProducerGoneError` (or :class:`StreamNotFoundError` when the key
  does not exist);
- Redis unreachable (the driver throws its connection errors in): retried with
  backoff for ``outage_limit`` seconds, then :class:`RedisUnavailableError`; the
  retry resumes after the last entry delivered.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from truss_stream import TAG_SIZE, FrameKind, MalformedFrameError
from truss_stream._frames import TAG_TABLE

from ._errors import (
    ProducerGoneError,
    RedisUnavailableError,
    StreamIdentityError,
    StreamNotFoundError,
    StreamPositionError,
    StreamTrimmedError,
)

__all__ = [
    "FIELD_FRAME",
    "FIELD_POSITION",
    "FIELD_STREAM",
    "Deliver",
    "Entry",
    "ReadOptions",
    "Sleep",
    "Step",
    "XRange",
    "XRead",
    "parse_entry_id",
    "read_steps",
]

#: Field names of one stream entry (one frame).
FIELD_FRAME: Final = b"f"
FIELD_POSITION: Final = b"n"
FIELD_STREAM: Final = b"s"

_ENDS: Final = (FrameKind.END, FrameKind.ERROR)
#: About how many bytes one XREAD reply should carry (its COUNT follows the frame size).
_REPLY_BYTES: Final = 16 << 20


@dataclass(frozen=True)
class ReadOptions:
    """How a reader follows a stream.

    Attributes:
        idle_limit: seconds without a new entry (and without END) after which a
            stream counts as abandoned by its producer (:class:`ProducerGoneError`).
        outage_limit: seconds Redis may stay unreachable before the read fails
            with :class:`RedisUnavailableError`; 0: fail at the first error.
        block_seconds: longest single ``XREAD BLOCK`` (keep it below the client's
            ``socket_timeout``).
        batch: most entries one ``XREAD`` returns (fewer for large frames: a reply
            carries about 16 MiB).
    """

    idle_limit: float = 60.0
    outage_limit: float = 5.0
    block_seconds: float = 1.0
    batch: int = 256


@dataclass(frozen=True)
class XRange:
    """``XRANGE key start end COUNT count``; reply: a list of entries."""

    start: bytes
    end: bytes
    count: int


@dataclass(frozen=True)
class XRead:
    """``XREAD COUNT count BLOCK block_ms STREAMS key after``; reply: entries (maybe none)."""

    after: bytes
    count: int
    block_ms: int


@dataclass(frozen=True)
class Exists:
    """``EXISTS key``; reply: an int."""


@dataclass(frozen=True)
class Sleep:
    """Wait ``seconds`` (backoff while Redis is unreachable); reply: None."""

    seconds: float


@dataclass(frozen=True)
class Deliver:
    """Entries for the consumer, in order; reply: None."""

    entries: list[Entry]


class Entry(NamedTuple):
    """One stream entry: its Redis id, its frame's position, the frame, the stream's identity."""

    id: bytes
    position: int
    frame: bytes
    stream: bytes


Step = XRange | XRead | Exists | Sleep | Deliver
#: A raw entry as redis-py returns it: (id, {field: value}).
RawEntry = tuple[bytes, Mapping[bytes, bytes]]


def parse_entry_id(value: str | bytes) -> tuple[int, int]:
    """``"ms-seq"`` (or ``"ms"``) as a pair of ints, for comparing stream ids.

    Raises:
        StreamPositionError: not a Redis stream entry id.
    """
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    if not text.isascii() or not ms.isdigit() or not (seq == "" or seq.isdigit()) or len(text) > 41:
        raise StreamPositionError(f"not a Redis stream entry id: {text[:45]!r}")
    return int(ms), int(seq or 0)


def _decode(raw: RawEntry) -> Entry:
    entry_id, fields = raw
    try:
        frame = fields[FIELD_FRAME]
        position = int(fields[FIELD_POSITION])
        stream = fields[FIELD_STREAM]
    except (KeyError, ValueError, TypeError) as exc:
        raise MalformedFrameError(
            f"stream entry {entry_id!r} is not a truss_stream frame (fields f, n, s)"
        ) from exc
    if not isinstance(frame, bytes):
        raise MalformedFrameError("stream entries came back decoded: use decode_responses=False")
    return Entry(entry_id, position, frame, stream)


#: Tag bytes of END and ERROR frames.
_LAST_TAGS: Final = frozenset(
    byte for byte, info in enumerate(TAG_TABLE) if info is not None and info[0] in _ENDS
)


def _is_last(frame: bytes) -> bool:
    return len(frame) >= TAG_SIZE and frame[0] in _LAST_TAGS


class _Outage:
    """Backoff bookkeeping while Redis is unreachable."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.since: float | None = None
        self.failures = 0

    def next_delay(self, exc: Exception) -> float:
        now = time.monotonic()
        if self.since is None:
            self.since = now
        self.failures += 1
        if now - self.since >= self.limit:
            raise RedisUnavailableError(
                f"Redis unreachable for {now - self.since:.1f}s (outage_limit={self.limit}s): "
                f"{exc!r}"
            ) from exc
        delay: float = min(0.05 * 2**self.failures, 1.0, max(self.limit - (now - self.since), 0.0))
        return delay

    def ok(self) -> None:
        self.since = None
        self.failures = 0


def read_steps(key: str, after: str | bytes, options: ReadOptions) -> Generator[Step, Any, None]:
    """The steps of reading the stream at ``key`` from after ``after`` to its END or ERROR.

    Send each command step's reply in; throw a connection error in when the command
    failed (the generator retries or raises :class:`RedisUnavailableError`).

    Raises:
        StreamTrimmedError, StreamNotFoundError, StreamPositionError,
        StreamIdentityError, ProducerGoneError, RedisUnavailableError, MalformedFrameError.
    """
    outage = _Outage(options.outage_limit)
    after_b = after.encode() if isinstance(after, str) else after
    start = parse_entry_id(after_b)

    def command(step: Step) -> Generator[Step, Any, Any]:
        while True:
            try:
                reply = yield step
            except Exception as exc:  # the driver throws in only connection failures
                yield Sleep(outage.next_delay(exc))
                continue
            outage.ok()
            return reply

    expected = 0
    stream: bytes | None = None
    last_id = after_b
    if start != (0, 0):
        found: Sequence[RawEntry] = yield from command(XRange(after_b, after_b, 1))
        if not found:
            first: Sequence[RawEntry] = yield from command(XRange(b"-", b"+", 1))
            if not first:
                raise StreamNotFoundError(
                    f"no stream at {key!r} (never written, expired or deleted)"
                )
            if parse_entry_id(first[0][0]) > start:
                raise StreamTrimmedError(
                    f"{key!r}: entry {after_b.decode()} was trimmed by retention "
                    f"(the stream now starts at {first[0][0].decode()})"
                )
            raise StreamPositionError(f"{after_b.decode()} is not an entry id of {key!r}")
        entry = _decode(found[0])
        stream = entry.stream
        expected = entry.position + 1
        if _is_last(entry.frame):
            return
    idle_since = time.monotonic()
    block_ms = max(int(options.block_seconds * 1000), 1)
    count = options.batch
    while True:
        raw: Sequence[RawEntry] = yield from command(XRead(last_id, count, block_ms))
        if not raw:
            waited = time.monotonic() - idle_since
            if waited < options.idle_limit:
                continue
            exists = yield from command(Exists())
            if not exists:
                raise StreamNotFoundError(
                    f"no stream at {key!r} after {waited:.1f}s (never written, expired or deleted)"
                )
            raise ProducerGoneError(
                f"{key!r}: no new entry for {waited:.1f}s (idle_limit={options.idle_limit}s) "
                f"and no END after position {expected - 1}: the producer stopped mid-stream"
            )
        idle_since = time.monotonic()
        entries: list[Entry] = []
        done = False
        size = 0
        for item in raw:
            entry = _decode(item)
            if stream is None:
                stream = entry.stream
            elif entry.stream != stream:
                raise StreamIdentityError(
                    f"{key!r}: entry {entry.id.decode()} belongs to another stream "
                    "(the key was reused)"
                )
            if entry.position != expected:
                if entry.position > expected:
                    raise StreamTrimmedError(
                        f"{key!r}: frames {expected}..{entry.position - 1} were trimmed by "
                        f"retention before they were read (next entry {entry.id.decode()})"
                    )
                raise MalformedFrameError(
                    f"{key!r}: entry {entry.id.decode()} repeats position {entry.position}"
                )
            expected += 1
            entries.append(entry)
            frame = entry.frame
            size += len(frame)
            if len(frame) >= TAG_SIZE and frame[0] in _LAST_TAGS:  # _is_last, inlined
                done = True
                break
        last_id = entries[-1].id
        # Keep one reply near _REPLY_BYTES: many small frames, or a few large ones.
        count = max(1, min(options.batch, _REPLY_BYTES // max(size // len(entries), 1)))
        yield Deliver(entries)
        if done:
            return
