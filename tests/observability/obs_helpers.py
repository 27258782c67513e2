"""Shared pieces of the observability tests: a stream type, producers, scrapes."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pydantic

from truss_stream import stream_types, stream_writer

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class Header(pydantic.BaseModel):
    name: str


class Item(pydantic.BaseModel):
    index: int
    text: str = ""


TYPES = stream_types(Item, header_type=Header)


async def produce(n: int, *, fail_after: int | None = None) -> AsyncIterator[bytes]:
    """A header and ``n`` items; raises after ``fail_after`` items if set."""
    writer = stream_writer(TYPES)
    yield writer.yield_header(Header(name="h"))
    for i in range(n):
        if fail_after is not None and i == fail_after:
            raise RuntimeError("model exploded")
        yield writer.yield_item(Item(index=i, text="x" * 10))
    yield writer.yield_end()


async def produce_forever(*, delay: float, text: str = "") -> AsyncIterator[bytes]:
    """A header, then items (each holding ``text``) every ``delay`` seconds until stopped."""
    writer = stream_writer(TYPES)
    yield writer.yield_header(Header(name="h"))
    i = 0
    while True:
        yield writer.yield_item(Item(index=i, text=text))
        i += 1
        await anyio.sleep(delay)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, parsed by prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def scrape_url(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    response.raise_for_status()
    return parse(response.text)


def scrape_registry(registry: CollectorRegistry) -> Samples:
    from prometheus_client import generate_latest

    return parse(generate_latest(registry).decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when absent (a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(check: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll ``check`` until it returns something truthy (server-side ends are async)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.02)
