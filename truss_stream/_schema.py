"""StreamTypes: which models a stream carries, and with which codec."""

from __future__ import annotations

import dataclasses
from typing import Any, Generic, Literal, TypeVar, overload

import pydantic

from ._frames import Codec

__all__ = ["CodecName", "FooterT", "HeaderT", "ItemT", "StreamTypes", "stream_types"]

# Why the verbose typing (as in truss_chains): a stream type may leave out its header
# or footer, and type checkers must know which parts exist. ``HeaderTT``/``FooterTT``
# are either a model type or ``None``; methods that need a header bind ``HeaderT``
# (bound to BaseModel) through their ``self`` annotation, so calling ``read_header``
# on ``StreamReader[Item, None, ...]`` is an "invalid self argument" error.
ItemT = TypeVar("ItemT", bound=pydantic.BaseModel)
HeaderT = TypeVar("HeaderT", bound=pydantic.BaseModel)
FooterT = TypeVar("FooterT", bound=pydantic.BaseModel)
HeaderTT = TypeVar("HeaderTT")
FooterTT = TypeVar("FooterTT")

CodecName = Literal["msgpack", "json"]
_CODECS: dict[str, Codec] = {"msgpack": Codec.MSGPACK, "json": Codec.JSON}


@dataclasses.dataclass(frozen=True)
class StreamTypes(Generic[ItemT, HeaderTT, FooterTT]):
    """The models of one stream type: an item, an optional header and footer.

    Create it with :func:`stream_types` in a module that producer and consumer
    both import.
    """

    item_type: type[ItemT]
    header_type: type[pydantic.BaseModel] | None
    footer_type: type[pydantic.BaseModel] | None
    codec: Codec

    def __post_init__(self) -> None:
        for role, model in (
            ("item_type", self.item_type),
            ("header_type", self.header_type),
            ("footer_type", self.footer_type),
        ):
            if model is None and role != "item_type":
                continue
            if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
                raise TypeError(f"{role} must be a pydantic.BaseModel subclass, got {model!r}")


@overload
def stream_types(
    item_type: type[ItemT],
    *,
    header_type: type[HeaderT],
    footer_type: type[FooterT],
    codec: CodecName = ...,
) -> StreamTypes[ItemT, HeaderT, FooterT]: ...


@overload
def stream_types(
    item_type: type[ItemT],
    *,
    header_type: type[HeaderT],
    footer_type: None = ...,
    codec: CodecName = ...,
) -> StreamTypes[ItemT, HeaderT, None]: ...


@overload
def stream_types(
    item_type: type[ItemT],
    *,
    header_type: None = ...,
    footer_type: type[FooterT],
    codec: CodecName = ...,
) -> StreamTypes[ItemT, None, FooterT]: ...


@overload
def stream_types(
    item_type: type[ItemT],
    *,
    header_type: None = ...,
    footer_type: None = ...,
    codec: CodecName = ...,
) -> StreamTypes[ItemT, None, None]: ...


def stream_types(
    item_type: type[ItemT],
    *,
    header_type: type[pydantic.BaseModel] | None = None,
    footer_type: type[pydantic.BaseModel] | None = None,
    codec: CodecName = "msgpack",
) -> StreamTypes[ItemT, Any, Any]:
    """Declare a stream type: its item model, optional header and footer models, codec.

    Args:
        item_type: the pydantic model of each item.
        header_type: the model of the one header, sent before any item, or None.
        footer_type: the model of the one footer, sent after the items, or None.
        codec: ``"msgpack"`` (compact, NumPy arrays as raw bytes) or ``"json"``
            (byte-compatible with ``truss_chains.streaming``). Only the writer uses
            it: readers detect each frame's codec.

    Raises:
        TypeError: a model is not a pydantic model.
        ValueError: an unknown codec name.
    """
    try:
        wire_codec = _CODECS[codec]
    except KeyError:
        raise ValueError(f"codec must be 'msgpack' or 'json', got {codec!r}") from None
    return StreamTypes(item_type, header_type, footer_type, wire_codec)
