"""The committed multimodal stubs match multimodal.proto and import inside the package."""

from __future__ import annotations

from pathlib import Path

from transports.triton.protocol import _protogen

PACKAGE_DIR = Path(_protogen.__file__).resolve().parent


def test_committed_stubs_match_proto(tmp_path: Path) -> None:
    for fresh in _protogen.generate(tmp_path):
        committed = PACKAGE_DIR / fresh.name
        assert committed.read_text() == fresh.read_text(), (
            f"{committed.name} is stale: run `make protos` and commit the result"
        )


def test_grpc_module_imports_pb2_from_package() -> None:
    from transports.triton.protocol import multimodal_pb2, multimodal_pb2_grpc

    assert multimodal_pb2_grpc.multimodal__pb2 is multimodal_pb2


def test_seed_names_exist() -> None:
    from transports.triton.protocol import multimodal_pb2 as pb

    spec = pb.InputSpec(name="images", shape=pb.Shape(dims=[1, 3]), dtype=pb.DT_FP32)
    setattr(spec, "from", pb.SRC_TENSOR)  # `from` is a Python keyword
    packet = pb.DataPacket(
        meta=pb.Meta(correlation_id="cam:0", note=""),
        control=pb.Control(
            model="m",
            model_version="1",
            timeout_secs=3.0,
            inputs=[spec],
            outputs=[pb.OutputSpec(name="o")],
        ),
        tensor=pb.Tensor(dtype=pb.DT_UINT8, shape=pb.Shape(dims=[1, 3]), data=b"abc"),
        event=pb.SEV_DATA,
    )
    again = pb.DataPacket.FromString(packet.SerializeToString())
    assert getattr(again.control.inputs[0], "from") == pb.SRC_TENSOR
    assert {pb.OK, pb.BAD_REQUEST, pb.INTERNAL, pb.UNSUPPORTED} == {0, 1, 2, 3}
    assert pb.Ack(correlation_id="x", status=pb.OK, message="{}").status == pb.OK
