"""transports.redis on a real 3-node local Redis Cluster (redis-server --cluster-enabled).

One stream's entries live in one slot (the hash tag of ``stream_key``), many streams
spread over the three nodes, and publish (a one-key Lua script), aconnect and the SSE
response run unchanged over ``redis.asyncio.RedisCluster``.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pydantic
import pytest
from live_server import live_server
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis_helpers import RedisServer, free_port, needs_redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from transports import redis as tr
from transports import sse
from truss_stream import stream_types, stream_writer

pytestmark = [
    needs_redis,
    pytest.mark.timeout(90),
    pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli not installed"),
]


class Item(pydantic.BaseModel):
    index: int


TYPES = stream_types(Item)


@contextlib.contextmanager
def cluster(nodes: int = 3) -> Iterator[list[RedisServer]]:
    with tempfile.TemporaryDirectory(prefix="truss-cluster-") as tmp:
        servers = []
        try:
            for k in range(nodes):
                directory = Path(tmp) / str(k)
                directory.mkdir()
                # The bus port defaults to port + 10000: name a free one instead.
                extra = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                         "--cluster-port", str(free_port()))  # fmt: skip
                servers.append(RedisServer(directory, extra=extra).start())
            subprocess.run(
                ["redis-cli", "--cluster", "create",
                 *[f"127.0.0.1:{s.port}" for s in servers],
                 "--cluster-replicas", "0", "--cluster-yes"],
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip
            _wait_cluster_ok(servers)
            yield servers
        finally:
            for server in servers:
                server.stop()


def _wait_cluster_ok(servers: list[RedisServer]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        states = []
        for server in servers:
            with server.client() as client:
                states.append(client.cluster("INFO").get("cluster_state"))
        if all(state in ("ok", b"ok") for state in states):
            return
        time.sleep(0.1)
    raise RuntimeError("Redis Cluster did not reach cluster_state:ok")


async def produce(n: int) -> AsyncIterator[bytes | memoryview]:
    writer = stream_writer(TYPES)
    for i in range(n):
        yield writer.yield_item(Item(index=i))
        await anyio.sleep(0)


def test_streams_spread_over_the_nodes_each_in_one_slot() -> None:
    with cluster() as servers:

        async def main() -> list[list[int]]:
            client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", servers[0].port)])
            try:
                results = []
                for sid in range(12):
                    key = tr.stream_key(f"job-{sid}")
                    assert await tr.publish(client, key, produce(50)) == 51
                    async with tr.aconnect(client, key, TYPES) as reader:
                        results.append([item.index async for item in reader.read_items()])
                return results
            finally:
                await client.aclose()

        results = anyio.run(main)
        assert results == [list(range(50))] * 12
        # Each stream is one key on one node, in the slot of its hash tag.
        holders: dict[str, int] = {}
        for server in servers:
            with server.client() as client:
                for key in client.scan_iter(match="truss:*"):
                    name = key.decode()
                    assert name not in holders, f"{name} on two nodes"
                    holders[name] = server.port
                    slot = client.execute_command("CLUSTER KEYSLOT", name)
                    assert slot == tr.hash_slot(name)
        assert len(holders) == 12
        assert len(set(holders.values())) == 3  # 12 streams landed on all three nodes

        # A web replica serving them as SSE over the cluster, resuming after an entry id.
        async def endpoint(request: Request) -> Response:
            client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", servers[1].port)])
            key = tr.stream_key(request.path_params["sid"])
            return tr.sse_response(client, key, request)

        with live_server(Starlette(routes=[Route("/s/{sid}", endpoint)])) as web:
            slot_owner = {s.port: s for s in servers}[holders["truss:{job-5}"]]
            with slot_owner.client() as owner:
                ids = [i.decode() for i, _ in owner.xrange(tr.stream_key("job-5"))]
            with httpx.Client() as http_client:
                url, headers = f"{web.url}/s/job-5", {"Last-Event-ID": ids[9]}
                with sse.connect(http_client, "GET", url, TYPES, headers=headers) as reader:
                    assert [item.index for item in reader.read_items()] == list(range(10, 50))
