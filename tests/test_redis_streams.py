"""transports.redis against a real redis-server: publish, read, retention, failures."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pydantic
import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis_helpers import RedisServer, needs_redis, redis_server

from transports import redis as tr
from truss_stream import (
    RemoteStreamError,
    StreamError,
    StreamTruncatedError,
    stream_types,
    stream_writer,
)

pytestmark = [needs_redis, pytest.mark.timeout(60)]


class Header(pydantic.BaseModel):
    name: str


class Item(pydantic.BaseModel):
    index: int
    text: str = ""


class Footer(pydantic.BaseModel):
    count: int


TYPES = {
    codec: stream_types(Item, header_type=Header, footer_type=Footer, codec=codec)
    for codec in ("msgpack", "json")
}


async def produce(
    n: int, *, codec: str = "msgpack", delay: float = 0.0, fail_at: int | None = None,
    end: bool = True,
) -> AsyncIterator[bytes | memoryview]:  # fmt: skip
    writer = stream_writer(TYPES[codec])
    yield writer.yield_header(Header(name="h"))
    for i in range(n):
        if delay:
            await anyio.sleep(delay)
        if i == fail_at:
            raise RuntimeError(f"model failed at {i}")
        yield writer.yield_item(Item(index=i, text="x" * (i % 7)))
    yield writer.yield_footer(Footer(count=n))
    if end:
        yield writer.yield_end()


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


def aclient(server: RedisServer, **kwargs: Any) -> redis.asyncio.Redis:
    return redis.asyncio.Redis(port=server.port, socket_connect_timeout=1, **kwargs)


def publish(server: RedisServer, key: str, frames: Any, **kwargs: Any) -> int:
    async def main() -> int:
        async with aclient(server) as client:
            return await tr.publish(client, key, frames, **kwargs)

    return anyio.run(main)


def read_sync(server: RedisServer, key: str, codec: str = "msgpack", **kwargs: Any) -> Any:
    with (
        redis.Redis(port=server.port, socket_timeout=5) as client,
        tr.connect(client, key, TYPES[codec], **kwargs) as reader,
    ):
        header = reader.read_header()
        items = [item.index for item in reader.read_items()]
        return header.name, items, reader.read_footer().count


def read_async(server: RedisServer, key: str, codec: str = "msgpack", **kwargs: Any) -> Any:
    async def main() -> Any:
        async with (
            aclient(server) as client,
            tr.aconnect(client, key, TYPES[codec], **kwargs) as reader,
        ):
            header = await reader.read_header()
            items = [item.index async for item in reader.read_items()]
            return header.name, items, (await reader.read_footer()).count

    return anyio.run(main)


READERS = {"sync": read_sync, "async": read_async}
FAST = tr.ReadOptions(idle_limit=1.0, outage_limit=1.0, block_seconds=0.2)


@pytest.mark.parametrize("codec", ["msgpack", "json"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_published_stream_reads_back_whole(server: RedisServer, codec: str, mode: str) -> None:
    key = tr.stream_key(f"whole-{codec}-{mode}")
    assert publish(server, key, produce(50, codec=codec)) == 53  # header, 50, footer, END
    assert READERS[mode](server, key, codec) == ("h", list(range(50)), 50)
    with server.client() as client:
        entries = client.xrange(key)
    assert [int(fields[b"n"]) for _, fields in entries] == list(range(53))
    assert len({fields[b"s"] for _, fields in entries}) == 1


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    sizes=st.lists(
        st.one_of(st.integers(0, 64), st.integers(4070, 4120), st.integers(0, 20_000)),
        max_size=1200,
    )
)
def test_every_frame_is_stored_as_its_own_entry_byte_for_byte(
    server: RedisServer, sizes: list[int]
) -> None:
    # The publisher packs runs of small frames into one script argument and the script
    # splits them again by their tags: each entry must still hold exactly one frame,
    # in order, whatever the mix of sizes around the packing limit (and over batches).
    writer = stream_writer(TYPES["json"])
    frames = [writer.yield_header(Header(name="h"))]
    frames += [writer.yield_item(Item(index=i, text="x" * size)) for i, size in enumerate(sizes)]
    frames.append(writer.yield_end())
    key = tr.stream_key(f"sizes-{time.monotonic_ns()}")
    assert publish(server, key, list(frames)) == len(frames)
    with server.client() as client:
        entries = client.xrange(key)
        client.delete(key)
    assert [fields[b"f"] for _, fields in entries] == [bytes(f) for f in frames]
    assert [int(fields[b"n"]) for _, fields in entries] == list(range(len(frames)))


def test_a_stream_s_first_frame_costs_one_script_call_on_a_new_redis() -> None:
    # A fresh Redis has no scripts cached. The first frame of a stream must not wait
    # for EVALSHA -> NOSCRIPT -> SCRIPT LOAD -> EVALSHA (four round trips before a
    # reader sees anything, each a process wake-up on a loaded machine: the redis-sse
    # idle-timeout flake): one EVAL carrying the script, then EVALSHA.
    with redis_server() as fresh:
        with fresh.client() as client:
            client.config_resetstat()
        key = tr.stream_key("first-call")
        assert publish(fresh, key, produce(3, delay=0.05)) == 6
        with fresh.client() as client:
            stats = client.info("commandstats")
            assert client.xlen(key) == 6
    assert "cmdstat_script|load" not in stats, stats
    assert stats["cmdstat_eval"]["calls"] == 1, stats
    assert stats.get("cmdstat_evalsha", {}).get("failed_calls", 0) == 0, stats
    # The frames were yielded 50 ms apart: each left in its own call.
    assert stats["cmdstat_eval"]["calls"] + stats["cmdstat_evalsha"]["calls"] >= 4, stats


def test_a_script_cache_flushed_mid_stream_is_reloaded(server: RedisServer) -> None:
    key = tr.stream_key("flushed")

    def flush_soon() -> None:
        time.sleep(0.15)
        with server.client() as client:
            client.script_flush()

    thread = threading.Thread(target=flush_soon)
    thread.start()
    try:
        assert publish(server, key, produce(10, delay=0.03)) == 13
    finally:
        thread.join()
    assert read_sync(server, key) == ("h", list(range(10)), 10)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_reader_follows_a_stream_being_written(server: RedisServer, mode: str) -> None:
    key = tr.stream_key(f"live-{mode}")
    thread = threading.Thread(target=publish, args=(server, key, produce(20, delay=0.02)))
    thread.start()
    try:
        assert READERS[mode](server, key) == ("h", list(range(20)), 20)
    finally:
        thread.join()


def test_end_is_appended_and_a_failure_becomes_an_error_frame(server: RedisServer) -> None:
    key = tr.stream_key("no-end")
    assert publish(server, key, produce(3, end=False)) == 6
    assert read_async(server, key) == ("h", [0, 1, 2], 3)
    key = tr.stream_key("fails")
    publish(server, key, produce(5, fail_at=2))
    with pytest.raises(RemoteStreamError, match="model failed at 2"):
        read_sync(server, key)


def test_failure_before_the_first_frame_is_still_published(server: RedisServer) -> None:
    async def broken() -> AsyncIterator[bytes]:
        raise RuntimeError("no model")
        yield b""

    key = tr.stream_key("broken")
    assert publish(server, key, broken()) == 1
    with pytest.raises(RemoteStreamError, match="no model"):
        read_async(server, key)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_reading_after_an_entry_resumes_exactly(server: RedisServer, mode: str) -> None:
    key = tr.stream_key(f"after-{mode}")
    publish(server, key, produce(10))
    with server.client() as client:
        ids = [entry_id.decode() for entry_id, _ in client.xrange(key)]
    # After the header and items 0..3 (entry ids[4]): exactly the frames of ids[5:].
    with server.client() as client:
        expected = [fields[b"f"] for _, fields in client.xrange(key)][5:]
    if mode == "sync":
        with server.client() as client:
            transport = tr.RedisTransport(client, key, after=ids[4])
            with transport.open_stream() as frames:
                rest = list(frames)
    else:

        async def main() -> tuple[list[bytes], tr.AsyncRedisTransport]:
            async with aclient(server) as client:
                transport = tr.AsyncRedisTransport(client, key, after=ids[4])
                async with transport.open_stream() as frames:
                    return [frame async for frame in frames], transport

        rest, transport = anyio.run(main)
    assert rest == expected
    assert transport.last_id == ids[-1]  # where a later read would resume


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_trimmed_start_raises_never_a_gap(server: RedisServer, mode: str) -> None:
    key = tr.stream_key(f"trimmed-{mode}")
    publish(server, key, produce(300))
    with server.client() as client:
        first_ids = [entry_id.decode() for entry_id, _ in client.xrange(key, count=3)]
        client.xtrim(key, maxlen=100, approximate=False)
    with pytest.raises(tr.StreamTrimmedError, match="trimmed"):
        READERS[mode](server, key)  # from the start: frames 0..201 are gone
    with pytest.raises(tr.StreamTrimmedError, match="trimmed"):
        READERS[mode](server, key, after=first_ids[1])


def test_maxlen_keeps_about_maxlen_entries_and_readers_see_the_trim(server: RedisServer) -> None:
    key = tr.stream_key("maxlen")
    publish(server, key, produce(1000), maxlen=100)
    with server.client() as client:
        length = client.xlen(key)
    assert 100 <= length < 300  # approximate trimming removes whole nodes only
    with pytest.raises(tr.StreamTrimmedError):
        read_sync(server, key)


def test_reader_falling_behind_retention_raises(server: RedisServer) -> None:
    key = tr.stream_key("behind")
    publish(server, key, produce(10))
    with server.client() as client:
        ids = [entry_id.decode() for entry_id, _ in client.xrange(key)]
        options = tr.ReadOptions(batch=1)  # one entry per XREAD
        transport = tr.RedisTransport(client, key, after=ids[1], options=options)
        with transport.open_stream() as frames:
            next(frames)  # position 2
            client.xtrim(key, minid=ids[6], approximate=False)  # positions 3..5 go while we read
            with pytest.raises(tr.StreamTrimmedError, match=r"3\.\.5"):
                list(frames)


def test_ttl_expires_the_stream(server: RedisServer) -> None:
    key = tr.stream_key("ttl")
    publish(server, key, produce(3), ttl=1)
    with server.client() as client:
        assert 0 < client.ttl(key) <= 1
    time.sleep(1.6)
    with pytest.raises(tr.StreamNotFoundError):
        read_sync(server, key, after="1-0")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_producer_gone_without_end_is_truncated_after_idle_limit(
    server: RedisServer, mode: str
) -> None:
    key = tr.stream_key(f"gone-{mode}")
    frames = list(anyio.run(_collect, produce(5)))[:4]  # header + 3 items, no END
    with server.client() as client:
        for n, frame in enumerate(frames):
            client.xadd(key, {"f": frame, "n": n, "s": "0123456789abcdef"})
    t0 = time.monotonic()
    with pytest.raises(tr.ProducerGoneError, match="idle_limit") as info:
        READERS[mode](server, key, options=FAST)
    assert isinstance(info.value, StreamTruncatedError)
    assert time.monotonic() - t0 < 10


async def _collect(frames: AsyncIterator[bytes | memoryview]) -> list[bytes]:
    return [bytes(frame) async for frame in frames]


def test_missing_key_is_not_found_after_idle_limit(server: RedisServer) -> None:
    with pytest.raises(tr.StreamNotFoundError):
        read_async(server, tr.stream_key("never-written"), options=FAST)


def test_positions_are_checked(server: RedisServer) -> None:
    key = tr.stream_key("repeated")
    frames = anyio.run(_collect, produce(2))
    with server.client() as client:
        for n in (0, 1, 1):  # a frame written twice
            client.xadd(key, {"f": frames[n], "n": n, "s": "aaaaaaaaaaaaaaaa"})
    with pytest.raises(StreamError, match="repeats position 1"):
        read_sync(server, key, options=FAST)
    with pytest.raises(tr.StreamPositionError):
        read_sync(server, key, after="99999999999999-0")  # past its last entry
    with pytest.raises(tr.StreamPositionError):
        read_sync(server, key, after="not-an-id")


def test_identity_mismatch_raises(server: RedisServer) -> None:
    key = tr.stream_key("identity")
    frames = anyio.run(_collect, produce(2))
    with server.client() as client:
        client.xadd(key, {"f": frames[0], "n": 0, "s": "aaaaaaaaaaaaaaaa"})
        client.xadd(key, {"f": frames[1], "n": 1, "s": "bbbbbbbbbbbbbbbb"})
    with pytest.raises(tr.StreamIdentityError):
        read_sync(server, key, options=FAST)


def test_decoded_clients_are_refused(server: RedisServer) -> None:
    with (
        redis.Redis(port=server.port, decode_responses=True) as client,
        pytest.raises(ValueError, match="decode_responses"),
        tr.connect(client, "k", TYPES["msgpack"]) as reader,
    ):
        reader.read_header()


def test_key_scheme_keeps_a_stream_in_one_slot_and_spreads_streams() -> None:
    key = tr.stream_key("job-42")
    assert key == "truss:{job-42}"
    assert tr.hash_slot(key) == tr.hash_slot("truss:{job-42}:meta") == tr.hash_slot("job-42")
    assert tr.hash_slot(key) == redis.crc.key_slot(b"job-42")
    slots = {tr.hash_slot(tr.stream_key(f"job-{i}")) for i in range(1000)}
    assert len(slots) > 900  # 1000 streams over 16384 slots: few collisions
    for bad in ("", "a{b", "a}b"):
        with pytest.raises(ValueError, match="stream id"):
            tr.stream_key(bad)


def test_a_hundred_concurrent_consumers_receive_identical_streams(server: RedisServer) -> None:
    key = tr.stream_key("fanout")
    n_items = 200

    async def consume(client: redis.asyncio.Redis) -> list[Any]:
        async with tr.aconnect(client, key, TYPES["msgpack"]) as reader:
            await reader.read_header()
            items = [item.model_dump() async for item in reader.read_items()]
            await reader.read_footer()
            return items

    async def main() -> list[list[Any]]:
        results: list[list[Any]] = [[] for _ in range(100)]
        async with aclient(server, max_connections=200) as client:

            async def one(k: int) -> None:
                results[k] = await consume(client)

            async with anyio.create_task_group() as tg:
                for k in range(100):
                    tg.start_soon(one, k)
                await anyio.sleep(0.2)  # every consumer is waiting, live
                tg.start_soon(tr.publish, client, key, produce(n_items, delay=0.001))
        return results

    results = anyio.run(main)
    expected = [Item(index=i, text="x" * (i % 7)).model_dump() for i in range(n_items)]
    assert all(result == expected for result in results)


def test_redis_down_fails_promptly_and_recovers() -> None:
    """The same clients fail with RedisUnavailableError while Redis is down, and work again
    once it is back (redis-py reconnects). Clients without redis-py's own retries, so the
    failure takes outage_limit (docs/scale-out.md has the default client's figures)."""
    no_retry = {"retry": Retry(NoBackoff(), 0), "socket_connect_timeout": 0.5}
    with redis_server() as running:
        key = tr.stream_key("down")
        publish(running, key, produce(3))

        async def main() -> None:
            async with redis.asyncio.Redis(port=running.port, **no_retry) as client:
                running.stop()
                with pytest.raises(tr.RedisUnavailableError) as read_error:
                    async with tr.aconnect(client, key, TYPES["msgpack"], options=FAST) as r:
                        await r.read_header()
                assert isinstance(read_error.value, StreamError)
                with pytest.raises(tr.RedisUnavailableError):
                    await tr.publish(client, tr.stream_key("down-2"), produce(3), outage_limit=1)
                running.start()  # empty: no persistence
                assert await tr.publish(client, key, produce(3)) == 6
                async with tr.aconnect(client, key, TYPES["msgpack"]) as reader:
                    await reader.read_header()
                    assert [item.index async for item in reader.read_items()] == [0, 1, 2]

        anyio.run(main)
        with redis.Redis(port=running.port, **no_retry) as sync_client:  # type: ignore[arg-type]
            running.stop()
            with pytest.raises(tr.RedisUnavailableError), tr.connect(
                sync_client, key, TYPES["msgpack"], options=FAST
            ) as reader:  # fmt: skip
                reader.read_header()
            running.start()
            publish(running, key, produce(2))
            with tr.connect(sync_client, key, TYPES["msgpack"]) as reader:
                reader.read_header()
                assert [item.index for item in reader.read_items()] == [0, 1]


def test_with_aof_nothing_acknowledged_is_lost_across_a_restart() -> None:
    """appendfsync always: SIGKILL mid-stream, restart; publisher and reader carry on."""
    with redis_server(aof=True) as running:
        key = tr.stream_key("aof")
        n_items = 300
        restarted = threading.Event()

        def crash() -> None:
            time.sleep(0.4)
            running.restart(signal.SIGKILL, down_for=0.5)
            restarted.set()

        async def main() -> tuple[int, Any]:
            async with aclient(running) as pub, aclient(running) as sub:
                counts: list[int] = []

                async def pub_task() -> None:
                    counts.append(
                        await tr.publish(pub, key, produce(n_items, delay=0.003), outage_limit=8)
                    )

                async with anyio.create_task_group() as tg:
                    tg.start_soon(pub_task)
                    options = tr.ReadOptions(outage_limit=8, block_seconds=0.2)
                    async with tr.aconnect(sub, key, TYPES["msgpack"], options=options) as r:
                        await r.read_header()
                        items = [item.index async for item in r.read_items()]
                        footer = (await r.read_footer()).count
                return counts[0], (items, footer)

        thread = threading.Thread(target=crash)
        thread.start()
        try:
            count, (items, footer) = anyio.run(main)
        finally:
            thread.join()
        assert restarted.is_set()
        assert count == n_items + 3
        assert items == list(range(n_items))
        assert footer == n_items
        with running.client() as client:
            positions = [int(fields[b"n"]) for _, fields in client.xrange(key)]
        assert positions == list(range(n_items + 3))  # each frame exactly once


def test_without_persistence_a_restart_loses_the_stream_loudly() -> None:
    with redis_server() as running:
        key = tr.stream_key("volatile")

        def crash() -> None:
            time.sleep(0.3)
            running.restart(signal.SIGKILL, down_for=0.3)

        thread = threading.Thread(target=crash)
        thread.start()
        try:
            with pytest.raises(tr.StreamLostError, match="acknowledged"):
                publish(running, key, produce(400, delay=0.003), outage_limit=8)
        finally:
            thread.join()
