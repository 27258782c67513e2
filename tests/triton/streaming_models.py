"""A real Triton with decoupled (streaming) test models, served by PyTriton.

Runs under the PyTriton virtualenv (``.venv-triton/bin/python``: numpy<2, its own
tritonserver), never the project's, and imports nothing from this repository::

    LD_LIBRARY_PATH=$(.venv-triton/bin/python -c \
        'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))') \
    .venv-triton/bin/python tests/triton/streaming_models.py \
        --grpc-port 8001 --http-port 8000 --metrics-port 8002

Prints ``READY grpc=<port> token=<statistics token>`` once every model is loaded, then
serves until SIGTERM or SIGINT. No batching (``max_batch_size`` 0): shapes are as
written. Every decoupled model is a generator; PyTriton sends one Triton response
per ``yield``, and its end as a separate empty response flagged
``triton_final_response`` (only when the request asks for empty final responses).

- ``stream_count`` (decoupled): COUNT int32 [1] -> COUNT responses, response i:
  INDEX int32 [1] = i, TOKEN uint8 [-1] = the bytes of ``f"tok{i} "``.
- ``stream_tokens`` (decoupled): PROMPT uint8 [-1] (UTF-8 text) -> one response per
  whitespace-separated word: INDEX int32 [1], TOKEN uint8 [-1] (the word's bytes).
- ``stream_none`` (decoupled): COUNT int32 [1] (ignored) -> no response at all.
- ``stream_fail`` (decoupled): COUNT int32 [1] -> COUNT responses as ``stream_count``,
  then raises ``RuntimeError("stream_fail after COUNT responses")``.
- ``stream_slow`` (decoupled): COUNT int32 [1] -> as ``stream_count``, sleeping
  ``--slow-delay`` seconds (default 0.01) before each response; two instances.
  Every response is counted in ``--slow-record``.<instance> (files holding the number
  of responses each instance has produced since start; PyTriton runs the generator in
  its own process and is not told of cancellation, so this shows how far it ran).
- ``count_unary`` (not decoupled): COUNT int32 [1] -> INDEX int32 [1] = COUNT - 1,
  TOKEN uint8 [-1] (one response, as an ordinary model).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton

# Run as a script from tests/triton: its sibling holds what every test Triton shares.
from pytriton_server import announce_ready, server_arguments, triton_config

Requests = list[dict[str, np.ndarray]]
Responses = Iterator[list[dict[str, np.ndarray]]]

DECOUPLED_MODELS = ("stream_count", "stream_tokens", "stream_none", "stream_fail", "stream_slow")
MODELS = (*DECOUPLED_MODELS, "count_unary")


def _token(i: int) -> dict[str, np.ndarray]:
    return {
        "INDEX": np.array([i], dtype=np.int32),
        "TOKEN": np.frombuffer(f"tok{i} ".encode(), dtype=np.uint8).copy(),
    }


def _one(requests: Requests) -> dict[str, np.ndarray]:
    # No batching and the default scheduler: Triton hands each instance one request.
    if len(requests) != 1:
        raise RuntimeError(f"expected one request per call, got {len(requests)}")
    return requests[0]


def _count(requests: Requests) -> int:
    return int(_one(requests)["COUNT"].reshape(-1)[0])


def stream_count(requests: Requests) -> Responses:
    for i in range(_count(requests)):
        yield [_token(i)]


def stream_tokens(requests: Requests) -> Responses:
    text = _one(requests)["PROMPT"].astype(np.uint8).tobytes().decode("utf-8", "replace")
    for i, word in enumerate(text.split()):
        yield [
            {
                "INDEX": np.array([i], dtype=np.int32),
                "TOKEN": np.frombuffer(word.encode(), dtype=np.uint8).copy(),
            }
        ]


def stream_none(requests: Requests) -> Responses:
    _one(requests)
    yield from ()


def stream_fail(requests: Requests) -> Responses:
    n = _count(requests)
    for i in range(n):
        yield [_token(i)]
    raise RuntimeError(f"stream_fail after {n} responses")


class SlowStreamer:
    """``stream_slow``: a delay before each response, and a record of how far it ran."""

    def __init__(self, delay: float, record: str | None, instance: int) -> None:
        self._delay = delay
        # PyTriton runs the instances as threads of one process: one file each.
        self._record = f"{record}.{instance}" if record else None
        self._lock = threading.Lock()
        self._produced = 0

    def __call__(self, requests: Requests) -> Responses:
        for i in range(_count(requests)):
            time.sleep(self._delay)
            with self._lock:
                self._produced += 1
                if self._record:
                    tmp = f"{self._record}.tmp"
                    with open(tmp, "w") as f:
                        f.write(f"{self._produced}\n")
                    os.replace(tmp, self._record)
            yield [_token(i)]


def count_unary(requests: Requests) -> list[dict[str, np.ndarray]]:
    return [_token(_count(requests) - 1)]


def main() -> int:
    parser = server_arguments(__doc__.splitlines()[0])
    parser.add_argument("--slow-delay", type=float, default=0.01)
    parser.add_argument("--slow-record", default=None, help="stream_slow's progress file prefix")
    args = parser.parse_args()
    config = triton_config(args)
    count_in = [Tensor(name="COUNT", dtype=np.int32, shape=(1,))]
    token_out = [
        Tensor(name="INDEX", dtype=np.int32, shape=(1,)),
        Tensor(name="TOKEN", dtype=np.uint8, shape=(-1,)),
    ]
    decoupled = ModelConfig(batching=False, decoupled=True)
    binds: list[tuple[str, Any, list[Tensor]]] = [
        ("stream_count", [stream_count] * 2, count_in),
        ("stream_tokens", stream_tokens, [Tensor(name="PROMPT", dtype=np.uint8, shape=(-1,))]),
        ("stream_none", stream_none, count_in),
        ("stream_fail", stream_fail, count_in),
        (
            "stream_slow",
            [SlowStreamer(args.slow_delay, args.slow_record, i) for i in range(2)],
            count_in,
        ),
    ]
    with Triton(config=config) as triton:
        for name, func, inputs in binds:
            triton.bind(
                model_name=name,
                infer_func=func,
                inputs=inputs,
                outputs=token_out,
                config=decoupled,
            )
        triton.bind(
            model_name="count_unary",
            infer_func=count_unary,
            inputs=count_in,
            outputs=token_out,
            config=ModelConfig(batching=False),
        )
        triton.run()
        announce_ready(triton, args)
        triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
