"""Models for ``--backend python:embedded_model:...`` in the proxy tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping

import numpy as np


def double(model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every model doubles its input into OUTPUT."""
    (array,) = inputs.values()
    return {"OUTPUT": array * 2}


async def slow_echo(model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Echo after 50 ms, so several packets are in flight at once."""
    await asyncio.sleep(0.05)
    (array,) = inputs.values()
    return {"OUTPUT": array}


async def held_echo(model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Echo after holding the input for a while, so packets pile up in flight (the
    proxy's memory tests): model ``held:S`` holds it S seconds, any other name 1 s."""
    _, _, seconds = model.partition(":")
    await asyncio.sleep(float(seconds or 1.0))
    (array,) = inputs.values()
    return {"OUTPUT": array}


class Gathered:
    """Echo once N packets are held at once (model ``gather:N``), or after 60 s.

    The proxy's memory yardstick: every packet of the load is in flight together,
    however slowly a loaded machine reads them (a fixed hold lets the first packets
    go before the last arrive). One instance per proxy process.
    """

    def __init__(self) -> None:
        self._held: dict[str, int] = {}
        self._all_in: dict[str, asyncio.Event] = {}

    async def __call__(self, model: str, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        _, _, count = model.partition(":")
        held = self._held[model] = self._held.get(model, 0) + 1
        all_in = self._all_in.setdefault(model, asyncio.Event())
        if held >= int(count or 1):
            all_in.set()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(all_in.wait(), 60.0)
        (array,) = inputs.values()
        return {"OUTPUT": array}


gathered = Gathered()


def count_tokens(model: str, inputs: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """A streaming model (a plain generator): COUNT responses, as the demo's stream_count."""
    (array,) = inputs.values()
    for i in range(int(array.reshape(-1)[0])):
        yield {
            "INDEX": np.array([i], dtype=np.int32),
            "TOKEN": np.frombuffer(f"tok{i} ".encode(), dtype=np.uint8).copy(),
        }
