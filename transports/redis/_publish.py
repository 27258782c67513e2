"""Publishing a producer's frames into a Redis stream: one entry per frame, pipelined.

Frames are sent as they come, without waiting for a batch to fill: while one batch
is in flight, the frames the producer yields meanwhile queue up and leave together
in the next one. A slow producer's frame is written one round trip after it was
yielded; a fast producer's frames travel hundreds per round trip. The queue is
bounded, so a producer faster than Redis waits.

Each batch is one call of a small Lua script (:data:`_APPEND`), atomic on the
server: it reads the stream's last entry, and appends only the frames whose
positions follow it. So a batch sent again after a connection error (by redis-py's
own retries or by this publisher's) is written exactly once, and a Redis that lost
acknowledged entries (restarted without persistence) is noticed at the next batch:
:class:`StreamLostError`, never a silent gap. The script touches one key, so it runs
on Redis Cluster too.

Runs of small frames travel packed: one script argument holds many whole frames back
to back and the script splits them again by their tags (:func:`_packed`), so
redis-py packs one argument per few hundred frames instead of one per frame. Each
frame is still its own entry; large frames go alone, uncopied.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Sequence
from typing import Any, Final

import anyio
import anyio.lowlevel
import redis.asyncio

from truss_stream import Codec, error_frame

from .._asgi import Frames
from ..base import guard_frames
from ._core import FIELD_FRAME, FIELD_POSITION, FIELD_STREAM
from ._errors import RedisUnavailableError, StreamIdentityError, StreamLostError
from ._read import OUTAGE_ERRORS, _check_client

__all__ = ["publish"]

logger = logging.getLogger("transports.redis")

#: Most entries, and bytes, in one pipeline; most bytes queued before the producer waits.
_BATCH_ENTRIES: Final = 512
_BATCH_BYTES: Final = 1 << 20
_QUEUE_BYTES: Final = 16 << 20
#: Frames up to this size travel packed together in one script argument (the script
#: splits them again by their tags); larger ones go alone, as they are, without a copy.
_PACK_BYTES: Final = 4096

#: KEYS[1] the stream; ARGV: stream identity, first position, maxlen ("" none),
#: ttl seconds ("" none), then the frames: each argument one or more whole frames
#: back to back (a frame's 5-byte tag gives its length). Returns how many frames the
#: stream held before (so the caller can tell what it wrote); errors start with TRUSS_.
_APPEND: Final = """
local key, sid, first = KEYS[1], ARGV[1], tonumber(ARGV[2])
local maxlen, ttl = ARGV[3], ARGV[4]
local stored = 0
local last = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
if #last > 0 then
  local fields, n, s = last[1][2], nil, nil
  for i = 1, #fields, 2 do
    if fields[i] == 'n' then n = tonumber(fields[i + 1])
    elseif fields[i] == 's' then s = fields[i + 1] end
  end
  if s ~= sid then
    return redis.error_reply('TRUSS_IDENTITY the key holds another stream')
  end
  stored = n + 1
end
if stored < first then
  return redis.error_reply('TRUSS_LOST ' .. stored)
end
local pos = first
for a = 5, #ARGV do
  local packed = ARGV[a]
  local size, at = #packed, 1
  while at <= size do
    local b1, b2, b3, b4 = string.byte(packed, at + 1, at + 4)
    if b4 == nil then return redis.error_reply('TRUSS_FRAMING a cut tag') end
    local after = at + 5 + ((b1 * 256 + b2) * 256 + b3) * 256 + b4
    if after > size + 1 then return redis.error_reply('TRUSS_FRAMING a cut frame') end
    if pos >= stored then
      local frame = packed  -- a large frame travels alone: no copy
      if at > 1 or after <= size then frame = string.sub(packed, at, after - 1) end
      if maxlen ~= '' then
        redis.call('XADD', key, 'MAXLEN', '~', maxlen, '*', 'f', frame, 'n', pos, 's', sid)
      else
        redis.call('XADD', key, '*', 'f', frame, 'n', pos, 's', sid)
      end
    end
    pos = pos + 1
    at = after
  end
end
if ttl ~= '' then redis.call('EXPIRE', key, ttl) end
return stored
"""
_APPEND_SHA: Final = hashlib.sha1(_APPEND.encode()).hexdigest()
# The script spells the entry fields out; keep them in step with the reader's.
assert (FIELD_FRAME, FIELD_POSITION, FIELD_STREAM) == (b"f", b"n", b"s")


class _Publisher:
    def __init__(
        self,
        client: redis.asyncio.Redis,
        key: str,
        *,
        maxlen: int | None,
        ttl: float | None,
        outage_limit: float,
    ) -> None:
        self._client, self._key = client, key
        self._maxlen, self._ttl, self._outage_limit = maxlen, ttl, outage_limit
        self.stream = secrets.token_hex(8).encode()
        self.acked = 0
        self._queue: list[bytes | memoryview] = []
        self._queued_bytes = 0
        self._more = anyio.Event()
        self._room = anyio.Event()
        self._closed = False
        # The first batch sends the script itself (EVAL), later ones its digest
        # (EVALSHA): a stream's first frame costs one round trip, not three on a
        # Redis that has not seen the script yet (EVALSHA, NOSCRIPT, SCRIPT LOAD,
        # EVALSHA: redis-py's Script), as after a restart or on a new node.
        self._script_loaded = False

    def put(self, frame: bytes | memoryview) -> bool:
        """Queue ``frame``; True when a batch is queued: time to let the sender run
        (see :meth:`wait_for_room`)."""
        queue = self._queue
        queue.append(frame)
        self._queued_bytes += len(frame)
        if not self._more.is_set():
            self._more.set()
        return len(queue) % _BATCH_ENTRIES == 0 or self._queued_bytes >= _BATCH_BYTES

    async def wait_for_room(self) -> None:
        """Let the sender run; wait while the queue is full.

        Called once a batch is queued: a producer that never awaits would otherwise
        queue its whole stream before the first batch leaves.
        """
        await anyio.lowlevel.checkpoint()
        while self._queued_bytes >= _QUEUE_BYTES:
            self._room = anyio.Event()
            await self._room.wait()

    def close(self) -> None:
        self._closed = True
        self._more.set()

    async def run(self) -> None:
        """Send queued frames until the queue is closed and empty."""
        while True:
            await self._more.wait()
            self._more = anyio.Event()
            while self._queue:
                batch = self._take()
                await self._send_recovering(batch)
                del self._queue[: len(batch)]
                self._queued_bytes -= sum(map(len, batch))
                self._room.set()
            if self._closed:
                return

    def _take(self) -> list[bytes | memoryview]:
        size = 0
        for n, frame in enumerate(self._queue[:_BATCH_ENTRIES]):
            size += len(frame)
            if size > _BATCH_BYTES and n:
                return self._queue[:n]
        return self._queue[:_BATCH_ENTRIES]

    async def _send(self, batch: Sequence[bytes | memoryview]) -> None:
        args: list[Any] = [
            self.stream,
            self.acked,
            "" if self._maxlen is None else self._maxlen,
            "" if self._ttl is None else max(int(self._ttl), 1),
            *_packed(batch),
        ]
        try:
            if self._script_loaded:
                try:
                    await self._client.evalsha(_APPEND_SHA, 1, self._key, *args)
                    return
                except redis.exceptions.NoScriptError:  # Redis restarted or flushed
                    self._script_loaded = False  # nothing ran: send the script
            await self._client.eval(_APPEND, 1, self._key, *args)
            self._script_loaded = True
        except redis.exceptions.ResponseError as exc:
            message = str(exc)
            if message.startswith("TRUSS_LOST"):
                stored = message.split()[-1]
                raise StreamLostError(
                    f"Redis lost acknowledged entries of {self._key!r}: it holds {stored} of "
                    f"{self.acked} (restarted without persistence?)"
                ) from exc
            if message.startswith("TRUSS_IDENTITY"):
                raise StreamIdentityError(
                    f"{self._key!r} holds another stream's entries: publish each stream "
                    "to a new key (or delete the old one first)"
                ) from exc
            raise

    async def _send_recovering(self, batch: Sequence[bytes | memoryview]) -> None:
        """Send ``batch``; after a connection error, send it again (it is idempotent)."""
        delay = 0.05
        failed_at: float | None = None
        while True:
            try:
                await self._send(batch)
                break
            except OUTAGE_ERRORS as exc:
                now = anyio.current_time()
                failed_at = now if failed_at is None else failed_at
                if now - failed_at >= self._outage_limit:
                    raise RedisUnavailableError(
                        f"Redis unreachable for {now - failed_at:.1f}s while publishing "
                        f"{self._key!r} ({self.acked} entries written, "
                        f"outage_limit={self._outage_limit}s): {exc!r}"
                    ) from exc
                await anyio.sleep(min(delay, self._outage_limit - (now - failed_at)))
                delay = min(delay * 2, 1.0)
        self.acked += len(batch)


def _packed(batch: Sequence[bytes | memoryview]) -> list[bytes | memoryview]:
    """The batch as script arguments: runs of small frames joined, large frames alone.

    One argument per frame costs redis-py's command packing about a microsecond per
    frame; one joined argument for hundreds of small frames costs one copy.
    """
    args: list[bytes | memoryview] = []
    run: list[bytes | memoryview] = []
    for frame in batch:
        if len(frame) <= _PACK_BYTES:
            run.append(frame)
            continue
        if run:
            args.append(b"".join(run))
            run = []
        args.append(frame)
    if run:
        args.append(run[0] if len(run) == 1 else b"".join(run))
    return args


async def publish(
    client: redis.asyncio.Redis,
    key: str,
    frames: Frames,
    *,
    maxlen: int | None = None,
    ttl: float | None = None,
    outage_limit: float = 5.0,
    default_codec: Codec = Codec.MSGPACK,
) -> int:
    """Append every frame of a producer to the Redis stream ``key``, one entry per frame.

    The producer is guarded as on every transport (:func:`transports.base.guard_frames`):
    END is appended when it finishes without one, and an exception (even before its
    first frame) becomes an ERROR frame, so readers always see the stream end.

    Args:
        client: a ``redis.asyncio.Redis`` (or ``RedisCluster``), ``decode_responses=False``.
        key: the stream's key (see :func:`transports.redis.stream_key`); it must not
            hold another stream still being read.
        frames: the writer's frames, an async iterable (or a plain iterable).
        maxlen: keep about this many entries (``XADD MAXLEN ~``: whole nodes of
            about 100 entries are trimmed, so slightly more stay); None: all.
        ttl: seconds the key lives after the last write (``EXPIRE``, refreshed by
            every pipeline); None: forever.
        outage_limit: seconds Redis may stay unreachable mid-stream before
            :class:`RedisUnavailableError`; the retry writes each frame exactly once.
        default_codec: codec of the END/ERROR frames of a producer that sent none.

    Returns:
        The number of entries written.

    Raises:
        RedisUnavailableError: Redis unreachable for longer than ``outage_limit``
            (the producer is closed; readers see no END and report the stream truncated).
        StreamLostError: Redis lost entries it had acknowledged (restart without AOF).
        StreamIdentityError: another publisher wrote to ``key`` meanwhile.
        ValueError: a client with ``decode_responses=True``.
    """
    _check_client(client)
    publisher = _Publisher(client, key, maxlen=maxlen, ttl=ttl, outage_limit=outage_limit)

    async def pump() -> None:
        try:
            async for frame in guard_frames(frames, default_codec=default_codec):
                if publisher.put(frame):
                    await publisher.wait_for_room()
        except Exception as exc:  # before the first frame: readers still get the error
            logger.warning("stream producer for %r failed before its first frame", key)
            publisher.put(error_frame(exc, default_codec))
        finally:
            publisher.close()

    failure: list[BaseException] = []

    async def send(scope: anyio.CancelScope) -> None:
        try:
            await publisher.run()
        except Exception as exc:  # re-raised below, not wrapped in an exception group
            failure.append(exc)
            scope.cancel()  # closes the producer (guard_frames' finally)

    async with anyio.create_task_group() as tg:
        tg.start_soon(send, tg.cancel_scope)
        await pump()
    if failure:
        raise failure[0]
    return publisher.acked
