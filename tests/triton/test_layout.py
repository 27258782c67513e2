"""The Triton package's layout: protocol / server / client, and the seed's names.

Each check runs in a fresh interpreter, so what a module imports is what it alone pulls in.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _loaded_after(statement: str) -> list[str]:
    code = (
        f"import json, sys; {statement}; "
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('transports.triton'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded: list[str] = json.loads(out)
    return loaded


@pytest.mark.parametrize(
    "statement",
    [
        "import transports.triton.proxy",
        "import transports.triton.server",
        "from transports.triton.server.backend import Backend",
    ],
)
def test_the_server_never_imports_the_clients(statement: str) -> None:
    loaded = _loaded_after(statement)
    assert [m for m in loaded if m.startswith("transports.triton.client")] == []
    assert "transports.triton.typed" not in loaded


def test_the_protocol_imports_neither_server_nor_clients() -> None:
    loaded = _loaded_after("import transports.triton.protocol")
    assert [
        m for m in loaded if m.startswith(("transports.triton.server", "transports.triton.client"))
    ] == []


def test_the_clients_never_import_the_server() -> None:
    loaded = _loaded_after(
        "from transports.triton import TritonBytesStreamer, AsyncTritonBytesStreamer"
    )
    assert [m for m in loaded if m.startswith("transports.triton.server")] == []


def test_the_seed_names_are_the_new_homes_objects() -> None:
    from transports.triton import (
        AsyncTritonBytesStreamer,
        TritonBytesStreamer,
        multimodal_pb2,
        multimodal_pb2_grpc,
    )
    from transports.triton.client import aio, sync
    from transports.triton.protocol import multimodal_pb2 as pb
    from transports.triton.protocol import multimodal_pb2_grpc as pbg

    assert TritonBytesStreamer is sync.TritonBytesStreamer
    assert AsyncTritonBytesStreamer is aio.AsyncTritonBytesStreamer
    for name in ("DataPacket", "Ack", "Control", "Tensor", "Shape", "ModelMetadataResponse"):
        assert getattr(multimodal_pb2, name) is getattr(pb, name)
    assert multimodal_pb2.DESCRIPTOR is pb.DESCRIPTOR
    assert multimodal_pb2.DT_FP32 == pb.DT_FP32
    assert multimodal_pb2.OK == pb.OK
    assert multimodal_pb2_grpc.MultimodalServiceStub is pbg.MultimodalServiceStub
    assert (
        multimodal_pb2_grpc.add_MultimodalServiceServicer_to_server
        is pbg.add_MultimodalServiceServicer_to_server
    )


@pytest.mark.parametrize("module", ["transports.triton.proxy", "transports.triton.server"])
def test_the_command_line_runs_under_both_module_names(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "--triton-url" in done.stdout
    assert "--max-inflight-mb" in done.stdout
    assert "python -m transports.triton.proxy" in done.stdout  # the documented name


def test_a_bad_command_line_is_refused_with_a_message() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "transports.triton.proxy", "--backend", "triton"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)},
    )
    assert done.returncode == 2
    assert "--triton-url" in done.stderr
