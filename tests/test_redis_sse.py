"""Streams stored in Redis served by web replicas: SSE resume on any replica, statuses,
the chunked twin, fan-out, and a client surviving its replica being SIGKILLed."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import httpx
import pydantic
import pytest
import redis.asyncio
from live_server import LiveServer, live_server
from redis_helpers import RedisServer, needs_redis, redis_server
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from examples.envoy_lb import envoy_binary
from transports import http, sse
from transports import redis as tr
from truss_stream import RemoteStreamError, stream_types, stream_writer

pytestmark = [needs_redis, pytest.mark.timeout(90)]


class Item(pydantic.BaseModel):
    index: int
    text: str


class Footer(pydantic.BaseModel):
    count: int


TYPES = {
    codec: stream_types(Item, footer_type=Footer, codec=codec) for codec in ("msgpack", "json")
}
FAST = tr.ReadOptions(idle_limit=1.0, outage_limit=1.0, block_seconds=0.2)


async def produce(n: int, codec: str = "msgpack", end: bool = True) -> AsyncIterator[bytes]:
    writer = stream_writer(TYPES[codec])
    for i in range(n):
        # U+2028 and a newline inside strings: the SSE encoding must keep framing.
        yield bytes(writer.yield_item(Item(index=i, text=f"item {i}\u2028\n")))
    yield bytes(writer.yield_footer(Footer(count=n)))
    if end:
        yield bytes(writer.yield_end())


def replica_app(client_url: str, **serve: Any) -> Starlette:
    """A web replica: its own Redis client, serving any stream by id."""
    state: dict[str, redis.asyncio.Redis] = {}

    async def stream(request: Request) -> Response:
        if "client" not in state:
            state["client"] = redis.asyncio.Redis.from_url(client_url)
        key = tr.stream_key(request.path_params["sid"])
        if request.query_params.get("chunked"):
            return tr.stream_response(state["client"], key, request, options=FAST, **serve)
        return tr.sse_response(state["client"], key, request, options=FAST, **serve)

    async def direct(request: Request) -> Response:
        return sse.sse_response(produce(20, request.query_params["codec"]))

    return Starlette(routes=[Route("/s/{sid}", stream), Route("/direct", direct)])


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


@pytest.fixture(scope="module")
def replicas(server: RedisServer) -> Iterator[tuple[LiveServer, LiveServer]]:
    with live_server(replica_app(server.url)) as a, live_server(replica_app(server.url)) as b:
        yield a, b


def publish(server: RedisServer, sid: str, frames: Any) -> list[str]:
    async def main() -> None:
        async with redis.asyncio.Redis(port=server.port) as client:
            await tr.publish(client, tr.stream_key(sid), frames)

    anyio.run(main)
    with server.client() as client:
        return [entry_id.decode() for entry_id, _ in client.xrange(tr.stream_key(sid))]


def events(body: str) -> list[dict[str, str]]:
    out = []
    for block in body.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            if name in ("event", "id"):
                fields[name] = value
            elif name == "data":
                fields["data"] = fields.get("data", "") + value
        if fields:
            out.append(fields)
    return out


@pytest.mark.parametrize("codec", ["msgpack", "json"])
def test_event_ids_are_entry_ids_and_the_encoding_is_the_direct_one(
    server: RedisServer, replicas: tuple[LiveServer, LiveServer], codec: str
) -> None:
    ids = publish(server, f"enc-{codec}", produce(20, codec))
    a, _ = replicas
    redis_body = httpx.get(f"{a.url}/s/enc-{codec}").text
    direct_body = httpx.get(f"{a.url}/direct", params={"codec": codec}).text
    assert [e["id"] for e in events(redis_body)] == ids
    # Same events as a direct sse_response, but for the ids.
    strip = re.compile(r"^id: .*\n", re.MULTILINE)
    assert strip.sub("", redis_body) == strip.sub("", direct_body)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_last_event_id_resumes_exactly_on_another_replica(
    server: RedisServer, replicas: tuple[LiveServer, LiveServer], mode: str
) -> None:
    ids = publish(server, f"resume-{mode}", produce(30))
    a, b = replicas
    first = events(httpx.get(f"{a.url}/s/resume-{mode}").text)
    # Replica B, told the client has everything up to event 11, sends exactly the rest.
    rest = events(httpx.get(f"{b.url}/s/resume-{mode}", headers={"Last-Event-ID": ids[11]}).text)
    assert rest == first[12:]
    # The resume-integrity headers (docs/transports.md): where this response starts, and
    # the stream's identity, the same on both replicas.
    with server.client() as client:
        identity = client.xrange(tr.stream_key(f"resume-{mode}"), count=1)[0][1][b"s"].decode()
    whole = httpx.get(f"{a.url}/s/resume-{mode}")
    resumed = httpx.get(f"{b.url}/s/resume-{mode}", headers={"Last-Event-ID": ids[11]})
    assert whole.headers["Truss-Stream-Position"] == "0"
    assert resumed.headers["Truss-Stream-Position"] == "12"
    assert whole.headers["Truss-Stream-Id"] == resumed.headers["Truss-Stream-Id"] == identity


def test_statuses_before_the_first_event(
    server: RedisServer, replicas: tuple[LiveServer, LiveServer]
) -> None:
    ids = publish(server, "statuses", produce(300))
    with server.client() as client:
        client.xtrim(tr.stream_key("statuses"), maxlen=50, approximate=False)
    a, _ = replicas
    trimmed = httpx.get(f"{a.url}/s/statuses", headers={"Last-Event-ID": ids[3]})
    assert trimmed.status_code == 410
    assert "trimmed" in trimmed.text
    assert httpx.get(f"{a.url}/s/statuses").status_code == 410  # from 0: gone too
    assert httpx.get(f"{a.url}/s/never-written").status_code == 404
    bad = httpx.get(f"{a.url}/s/statuses", headers={"Last-Event-ID": "7; DROP"})
    assert bad.status_code == 400
    foreign = httpx.get(f"{a.url}/s/statuses", headers={"Last-Event-ID": "99999999999999-0"})
    assert foreign.status_code == 400


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_typed_clients_read_redis_served_streams(
    server: RedisServer, replicas: tuple[LiveServer, LiveServer], mode: str
) -> None:
    publish(server, f"typed-{mode}", produce(25, "json"))
    a, _ = replicas
    url = f"{a.url}/s/typed-{mode}"
    if mode == "sync":
        with httpx.Client() as client, sse.connect(client, "GET", url, TYPES["json"]) as reader:
            items = [item.index for item in reader.read_items()]
            footer = reader.read_footer()
        with (
            httpx.Client() as client,
            http.connect(client, "GET", url, TYPES["json"], params={"chunked": 1}) as reader,
        ):
            assert [item.index for item in reader.read_items()] == items
    else:

        async def main() -> Any:
            async with (
                httpx.AsyncClient() as client,
                sse.aconnect(client, "GET", url, TYPES["json"]) as reader,
            ):
                got = [item.index async for item in reader.read_items()]
                return got, await reader.read_footer()

        items, footer = anyio.run(main)
    assert items == list(range(25))
    assert footer.count == 25


def test_a_producer_gone_is_an_error_event(
    server: RedisServer, replicas: tuple[LiveServer, LiveServer]
) -> None:
    publish(server, "gone", produce(5, end=False))  # publish adds END: remove it
    with server.client() as client:
        last_id = client.xrevrange(tr.stream_key("gone"), count=1)[0][0]
        client.xdel(tr.stream_key("gone"), last_id)
    a, _ = replicas
    with (
        httpx.Client() as client,
        sse.connect(client, "GET", f"{a.url}/s/gone", TYPES["msgpack"]) as reader,
    ):
        assert [item.index for item in reader.read_items()] == list(range(5))
        with pytest.raises(RemoteStreamError) as info:
            reader.read_footer()  # the footer, then the replica's ERROR event
    assert info.value.remote_type == "ProducerGoneError"


def test_a_hundred_sse_consumers_get_identical_streams(
    server: RedisServer, replicas: tuple[LiveServer, LiveServer]
) -> None:
    a, b = replicas

    async def consume(client: httpx.AsyncClient, url: str) -> list[Any]:
        async with sse.aconnect(client, "GET", url, TYPES["msgpack"]) as reader:
            got = [item.model_dump() async for item in reader.read_items()]
            await reader.read_footer()
            return got

    async def main() -> list[list[Any]]:
        results: list[list[Any]] = [[] for _ in range(100)]
        limits = httpx.Limits(max_connections=200)
        async with (
            httpx.AsyncClient(limits=limits, timeout=30) as client,
            redis.asyncio.Redis(port=server.port) as rclient,
        ):

            async def one(k: int) -> None:
                results[k] = await consume(client, f"{(a, b)[k % 2].url}/s/fan")

            async with anyio.create_task_group() as tg:
                for k in range(100):
                    tg.start_soon(one, k)
                await anyio.sleep(0.3)
                await tr.publish(rclient, tr.stream_key("fan"), produce(50))
        return results

    results = anyio.run(main)
    expected = [Item(index=i, text=f"item {i}\u2028\n").model_dump() for i in range(50)]
    assert all(result == expected for result in results)


@pytest.mark.envoy
@pytest.mark.skipif(envoy_binary() is None, reason="no envoy binary")
def test_client_survives_its_replica_being_killed() -> None:
    """Worker process -> Redis -> two uvicorn replicas behind Envoy -> SSE client; the
    replica serving the client is SIGKILLed after item 10."""
    from examples.scale_out import read_through, scale_out

    with scale_out(replicas=2) as cluster:
        worker = cluster.worker("handover", frames=40, delay_ms=30)
        killed: list[int] = []

        def kill() -> None:
            port = cluster.serving_replica()
            assert port is not None
            cluster.kill_replica(port)
            killed.append(port)

        indexes, total = anyio.run(
            lambda: read_through(f"{cluster.url}/streams/handover", kill_after=10, on_kill=kill)
        )
        assert worker.wait(30) == 0
        assert cluster.envoy is not None
        served = cluster.envoy.requests_per_host()
    assert killed
    assert indexes == list(range(40))  # every item exactly once, in order
    assert total == 40
    assert sorted(served.values()) == [1, 1]  # the first request, then the resumed one


def test_a_redis_restart_mid_stream_is_invisible_to_sse_clients() -> None:
    """AOF on: Redis SIGKILLed and restarted while a replica serves a live stream; the
    replica's reader retries within outage_limit and the client gets the whole stream."""
    with redis_server(aof=True) as running:
        options = tr.ReadOptions(outage_limit=10, block_seconds=0.2)

        async def endpoint(request: Request) -> Response:
            client = redis.asyncio.Redis(port=running.port)
            return tr.sse_response(client, tr.stream_key("restart"), request, options=options)

        app = Starlette(routes=[Route("/s", endpoint)])

        def crash() -> None:
            time.sleep(0.5)
            running.restart(signal.SIGKILL, down_for=0.5)

        async def main() -> list[int]:
            async with (
                redis.asyncio.Redis(port=running.port) as pub,
                httpx.AsyncClient(timeout=30) as client,
            ):
                async with anyio.create_task_group() as tg:
                    frames = _slow(produce(150), 0.01)
                    tg.start_soon(
                        lambda: tr.publish(pub, tr.stream_key("restart"), frames, outage_limit=10)
                    )
                    async with sse.aconnect(
                        client, "GET", f"{server.url}/s", TYPES["msgpack"]
                    ) as r:
                        items = [item.index async for item in r.read_items()]
                        assert (await r.read_footer()).count == 150
                return items

        with live_server(app) as server:
            thread = threading.Thread(target=crash)
            thread.start()
            try:
                items = anyio.run(main)
            finally:
                thread.join()
        assert items == list(range(150))


async def _slow(frames: AsyncIterator[bytes], delay: float) -> AsyncIterator[bytes]:
    async for frame in frames:
        yield frame
        await anyio.sleep(delay)
