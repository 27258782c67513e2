"""A real Triton Inference Server with small test models, served by PyTriton.

Runs under the PyTriton virtualenv (``.venv-triton/bin/python``: numpy<2, its own
tritonserver), never the project's, and imports nothing from this repository::

    LD_LIBRARY_PATH=$(.venv-triton/bin/python -c \
        'import sysconfig; print(sysconfig.get_config_var("LIBDIR"))') \
    .venv-triton/bin/python tests/triton/pytriton_server.py \
        --grpc-port 8001 --http-port 8000 --metrics-port 8002

Prints ``READY grpc=<port> token=<statistics token>`` once every model is loaded, then
serves until SIGTERM or SIGINT. Models (all with max_batch_size 64, so requests carry a
leading batch dim):

- ``add_one_fp32``: INPUT fp32 [-1] -> OUTPUT fp32 [-1] (INPUT + 1)
- ``invert_u8``: IMAGE uint8 [-1, -1, 3] -> IMAGE_OUT uint8 (255 - IMAGE)
- ``two_outputs_fp32``: INPUT fp32 [-1] -> PLUS_ONE, TIMES_TWO fp32 [-1]
- ``sleep_fp32``: SECONDS fp32 [1] -> SLEPT fp32 [1], sleeps max(SECONDS) first
- ``fail_fp32``: INPUT fp32 [-1] -> OUTPUT, always raises (a model error)
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


@batch
def _add_one(INPUT: np.ndarray) -> dict[str, np.ndarray]:
    return {"OUTPUT": (INPUT + 1).astype(np.float32)}


@batch
def _invert(IMAGE: np.ndarray) -> dict[str, np.ndarray]:
    return {"IMAGE_OUT": (255 - IMAGE).astype(np.uint8)}


@batch
def _two_outputs(INPUT: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "PLUS_ONE": (INPUT + 1).astype(np.float32),
        "TIMES_TWO": (INPUT * 2).astype(np.float32),
    }


@batch
def _sleep(SECONDS: np.ndarray) -> dict[str, np.ndarray]:
    time.sleep(float(SECONDS.max()))
    return {"SLEPT": SECONDS.astype(np.float32)}


@batch
def _fail(INPUT: np.ndarray) -> dict[str, np.ndarray]:
    raise RuntimeError("fail_fp32 always fails")


def _on_term(signum: int, frame: object) -> None:
    # PyTriton's serve() stops tritonserver and its model processes on
    # KeyboardInterrupt; the default SIGTERM action would orphan them. Only once:
    # a second signal must not interrupt that shutdown half way.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def server_arguments(description: str) -> argparse.ArgumentParser:
    """The options every test Triton script takes: its three ports and the ready file."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--ready-file", default=None, help="also write the READY line here")
    return parser


def triton_config(args: argparse.Namespace) -> TritonConfig:
    """Loopback Triton on the ports ``args`` names; SIGTERM from here on stops it cleanly."""
    signal.signal(signal.SIGTERM, _on_term)
    return TritonConfig(
        grpc_address="127.0.0.1",
        grpc_port=args.grpc_port,
        http_address="127.0.0.1",
        http_port=args.http_port,
        metrics_port=args.metrics_port,
    )


def announce_ready(triton: Triton, args: argparse.Namespace) -> None:
    """Print (and write to ``--ready-file``) the READY line the tests wait for."""
    # PyTriton guards Triton's statistics API with a per-run token; the tests read
    # inference counts, so hand it over (loopback test servers only).
    ready = f"READY grpc={args.grpc_port} token={triton.get_access_token()}"
    if args.ready_file:
        # Written whole, then renamed: readers never see half a line, and Triton's
        # log (which shares stdout's file in the tests) cannot interleave.
        tmp = f"{args.ready_file}.tmp"
        with open(tmp, "w") as f:
            f.write(ready + "\n")
        os.replace(tmp, args.ready_file)
    print(ready, flush=True)


def main() -> int:
    parser = server_arguments(__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=2, help="instances of add_one_fp32")
    args = parser.parse_args()
    config = triton_config(args)
    batching = ModelConfig(max_batch_size=64)
    fp32 = np.float32
    with Triton(config=config) as triton:
        triton.bind(
            model_name="add_one_fp32",
            infer_func=[_add_one] * args.instances,
            inputs=[Tensor(name="INPUT", dtype=fp32, shape=(-1,))],
            outputs=[Tensor(name="OUTPUT", dtype=fp32, shape=(-1,))],
            config=batching,
        )
        triton.bind(
            model_name="invert_u8",
            infer_func=_invert,
            inputs=[Tensor(name="IMAGE", dtype=np.uint8, shape=(-1, -1, 3))],
            outputs=[Tensor(name="IMAGE_OUT", dtype=np.uint8, shape=(-1, -1, 3))],
            config=batching,
        )
        triton.bind(
            model_name="two_outputs_fp32",
            infer_func=_two_outputs,
            inputs=[Tensor(name="INPUT", dtype=fp32, shape=(-1,))],
            outputs=[
                Tensor(name="PLUS_ONE", dtype=fp32, shape=(-1,)),
                Tensor(name="TIMES_TWO", dtype=fp32, shape=(-1,)),
            ],
            config=batching,
        )
        triton.bind(
            model_name="sleep_fp32",
            infer_func=[_sleep] * 2,  # two sleeping at once
            inputs=[Tensor(name="SECONDS", dtype=fp32, shape=(1,))],
            outputs=[Tensor(name="SLEPT", dtype=fp32, shape=(1,))],
            config=ModelConfig(max_batch_size=64),
        )
        triton.bind(
            model_name="fail_fp32",
            infer_func=_fail,
            inputs=[Tensor(name="INPUT", dtype=fp32, shape=(-1,))],
            outputs=[Tensor(name="OUTPUT", dtype=fp32, shape=(-1,))],
            config=batching,
        )
        triton.run()
        announce_ready(triton, args)
        triton.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
