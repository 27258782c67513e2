"""Element types: the protocol's ``DataType`` enum, Triton's names, sizes and NumPy."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from transports.triton.protocol import multimodal_pb2 as pb

__all__ = [
    "ITEMSIZE",
    "NUMPY_NAME",
    "TRITON_NAME",
    "from_triton",
    "triton_name",
]

# Read-only module constants (MappingProxyType): no module-level mutable state.
TRITON_NAME: Mapping[int, str] = MappingProxyType(
    {
        pb.DT_FP32: "FP32",
        pb.DT_FP16: "FP16",
        pb.DT_INT64: "INT64",
        pb.DT_INT32: "INT32",
        pb.DT_INT8: "INT8",
        pb.DT_UINT8: "UINT8",
        pb.DT_BOOL: "BOOL",
        pb.DT_FP64: "FP64",
        pb.DT_INT16: "INT16",
        pb.DT_UINT16: "UINT16",
        pb.DT_UINT32: "UINT32",
        pb.DT_UINT64: "UINT64",
        pb.DT_BF16: "BF16",
        pb.DT_BYTES: "BYTES",
    }
)
"""Protocol ``DataType`` value -> Triton's datatype string."""

_FROM_TRITON: Mapping[str, int] = MappingProxyType({name: dt for dt, name in TRITON_NAME.items()})

ITEMSIZE: Mapping[str, int] = MappingProxyType(
    {
        "FP32": 4,
        "FP16": 2,
        "INT64": 8,
        "INT32": 4,
        "INT8": 1,
        "UINT8": 1,
        "BOOL": 1,
        "FP64": 8,
        "INT16": 2,
        "UINT16": 2,
        "UINT32": 4,
        "UINT64": 8,
        "BF16": 2,
    }
)
"""Triton datatype -> bytes per element. BYTES is variable-sized and absent."""

NUMPY_NAME: Mapping[str, str] = MappingProxyType(
    {
        "FP32": "<f4",
        "FP16": "<f2",
        "INT64": "<i8",
        "INT32": "<i4",
        "INT8": "i1",
        "UINT8": "u1",
        "BOOL": "?",
        "FP64": "<f8",
        "INT16": "<i2",
        "UINT16": "<u2",
        "UINT32": "<u4",
        "UINT64": "<u8",
    }
)
"""Triton datatype -> NumPy dtype string (little-endian, as Triton's raw contents are)."""


def triton_name(dtype: int) -> str | None:
    """Triton's name of a protocol ``DataType`` value, or None for DT_UNSPECIFIED/unknown."""
    return TRITON_NAME.get(dtype)


def from_triton(name: str) -> int:
    """The protocol ``DataType`` value of a Triton datatype name (DT_UNSPECIFIED if none)."""
    return _FROM_TRITON.get(name, pb.DT_UNSPECIFIED)
