"""Models for ``--backend python:embedded_model:...`` in the proxy tests."""

from __future__ import annotations

import asyncio
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


def count_tokens(model: str, inputs: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """A streaming model (a plain generator): COUNT responses, as the demo's stream_count."""
    (array,) = inputs.values()
    for i in range(int(array.reshape(-1)[0])):
        yield {
            "INDEX": np.array([i], dtype=np.int32),
            "TOKEN": np.frombuffer(f"tok{i} ".encode(), dtype=np.uint8).copy(),
        }
