"""Property and fuzz tests: random models with arrays round-trip under any chunking; random
or mutated bytes raise only StreamError subclasses or pydantic.ValidationError, never hang.

Example counts stay modest by default; ``TRUSS_STREAM_FUZZ_EXAMPLES`` raises them
(``make fuzz``).
"""

from __future__ import annotations

import os
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import pydantic
import pytest
from core_helpers import ReaderFactory, assert_array_equal, read_all, rechunk, sample_frames
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import truss_stream as ts

FUZZ_EXAMPLES = int(os.environ.get("TRUSS_STREAM_FUZZ_EXAMPLES", "0"))


def examples(default: int) -> Any:
    return settings(
        max_examples=FUZZ_EXAMPLES or default,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


READERS = pytest.mark.parametrize("kind", ["sync", "async"])
# Big enough to hang a buggy reader, small enough that a lying tag allocates little.
MAX_FRAME = 1 << 22


class Meta(pydantic.BaseModel):
    name: str
    scores: dict[str, float]


class Record(pydantic.BaseModel):
    index: int
    value: float
    text: str
    tags: list[str]
    arrays: list[ts.NDArray]
    meta: Meta | None = None


class Summary(pydantic.BaseModel):
    count: int
    last: ts.NDArray | None = None


TYPES = {
    codec: ts.stream_types(Record, header_type=Meta, footer_type=Summary, codec=codec)  # type: ignore[call-overload]
    for codec in ("msgpack", "json")
}

texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
floats = st.floats(allow_nan=False, allow_infinity=False)
dtypes = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="?"),
    hnp.unsigned_integer_dtypes(endianness="?"),
    hnp.floating_dtypes(endianness="?"),
    hnp.complex_number_dtypes(endianness="?"),
    hnp.unicode_string_dtypes(endianness="?", min_len=1, max_len=4),
    hnp.byte_string_dtypes(min_len=1, max_len=4),
)
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def arrays(draw: Any) -> np.ndarray:
    array = draw(hnp.arrays(dtypes, shapes))
    layout = draw(st.sampled_from(["c", "fortran", "transposed", "strided"]))
    if layout == "fortran":
        return np.asfortranarray(array)
    if layout == "transposed":
        return array.T
    if layout == "strided" and array.ndim:
        return array[::2]
    return array


metas = st.builds(Meta, name=texts, scores=st.dictionaries(texts, floats, max_size=3))
records = st.builds(
    Record,
    index=st.integers(-(2**63), 2**63 - 1),
    value=floats,
    text=texts,
    tags=st.lists(texts, max_size=4),
    arrays=st.lists(arrays(), max_size=3),
    meta=st.none() | metas,
)
chunkings = st.one_of(
    st.just([1]),
    st.lists(st.integers(1, 64), min_size=1, max_size=8),
    st.lists(st.integers(1, 4096), min_size=1, max_size=4),
)


def write(codec: str, header: Meta, items: list[Record], footer: Summary) -> bytes:
    writer = ts.stream_writer(TYPES[codec])
    frames = [writer.yield_header(header)]
    frames += [writer.yield_item(item) for item in items]
    frames += [writer.yield_footer(footer), writer.yield_end()]
    return b"".join(bytes(f) for f in frames)


def assert_records_equal(got: Record, want: Record) -> None:
    assert got.model_dump(exclude={"arrays"}) == want.model_dump(exclude={"arrays"})
    assert len(got.arrays) == len(want.arrays)
    for a, b in zip(got.arrays, want.arrays, strict=True):
        assert_array_equal(a, b)


@READERS
@pytest.mark.parametrize("codec", ["msgpack", "json"])
@examples(40)
@given(
    header=metas,
    items=st.lists(records, max_size=4),
    last=st.none() | arrays(),
    sizes=chunkings,
)
def test_random_models_round_trip_under_random_chunking(
    kind: str, codec: str, header: Meta, items: list[Record], last: Any, sizes: list[int]
) -> None:
    footer = Summary(count=len(items), last=last)
    data = write(codec, header, items, footer)
    factory = ReaderFactory(kind)
    try:
        got_header, got_items, got_footer = read_all(
            factory(TYPES[codec], rechunk(data, sizes)), TYPES[codec]
        )
    finally:
        factory.close()
    assert got_header == header
    assert len(got_items) == len(items)
    for got, want in zip(got_items, items, strict=True):
        assert_records_equal(got, want)
    assert got_footer.count == len(items)
    if last is None:
        assert got_footer.last is None
    else:
        assert_array_equal(got_footer.last, last)


@READERS
@examples(20)
@given(
    array=hnp.arrays(
        st.sampled_from([np.float32, np.int16, np.uint8, np.complex64]),
        hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=64),
    ),
    sizes=st.lists(st.integers(256, 16384), min_size=1, max_size=4),
)
def test_large_arrays_round_trip_through_the_zero_copy_path(
    kind: str, array: np.ndarray, sizes: list[int]
) -> None:
    big = np.concatenate([array.ravel()] * (70_000 // max(1, array.nbytes) + 1))
    record = Record(index=0, value=0.0, text="", tags=[], arrays=[big, array])
    data = write("msgpack", Meta(name="", scores={}), [record], Summary(count=1))
    factory = ReaderFactory(kind)
    try:
        _, (got,), _ = read_all(factory(TYPES["msgpack"], [data]), TYPES["msgpack"])
        assert_records_equal(got, record)
        _, (got,), _ = read_all(factory(TYPES["msgpack"], rechunk(data, sizes)), TYPES["msgpack"])
        assert_records_equal(got, record)
    finally:
        factory.close()


# Bad bytes ------------------------------------------------------------------------------


def read_expecting_only_stream_errors(kind: str, codec: str, chunks: list[bytes]) -> None:
    factory = ReaderFactory(kind)
    try:
        read_all(factory(TYPES[codec], chunks, max_frame_bytes=MAX_FRAME), TYPES[codec])
    except (ts.StreamError, pydantic.ValidationError):
        pass
    finally:
        factory.close()


@READERS
@pytest.mark.timeout(120)
@examples(150)
@given(data=st.binary(max_size=512), sizes=chunkings, codec=st.sampled_from(["msgpack", "json"]))
def test_random_bytes_raise_only_stream_or_validation_errors(
    kind: str, data: bytes, sizes: list[int], codec: str
) -> None:
    read_expecting_only_stream_errors(kind, codec, rechunk(data, sizes))


@READERS
@pytest.mark.timeout(120)
@examples(150)
@given(
    tail=st.binary(max_size=300),
    kind_byte=st.sampled_from([0x02, 0x03, 0x04, 0x06, 0x12, 0x13, 0x14, 0x16, 0x33]),
    sizes=chunkings,
)
def test_random_payloads_behind_valid_tags_raise_only_stream_or_validation_errors(
    kind: str, tail: bytes, kind_byte: int, sizes: list[int]
) -> None:
    frame = bytes([kind_byte]) + len(tail).to_bytes(4, "big") + tail
    codec = "msgpack" if kind_byte & 0x10 else "json"
    read_expecting_only_stream_errors(kind, codec, rechunk(frame + ts.end_frame(), sizes))


def _big_stream() -> bytes:
    record = Record(
        index=1,
        value=2.0,
        text="big",
        tags=["a"],
        arrays=[np.arange(20_000, dtype=np.float32), np.array(["x", "yz"])],
        meta=Meta(name="m", scores={"s": 1.0}),
    )
    return write("msgpack", Meta(name="h", scores={}), [record], Summary(count=1))


_BIG = _big_stream()


@st.composite
def mutated_streams(draw: Any) -> tuple[str, bytes]:
    name = draw(st.sampled_from(["msgpack", "json", "big"]))
    if name == "big":
        data = bytearray(_BIG)
        # Mutate where the structure is: tags and msgpack headers, not array data.
        positions = st.one_of(st.integers(0, 200), st.integers(len(data) - 120, len(data) - 1))
        codec = "msgpack"
    else:
        data = bytearray(b"".join(sample_frames(name)))
        positions = st.integers(0, len(data) - 1)
        codec = name
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "cut"]))
        at = min(draw(positions), len(data) - 1)
        if at < 0:
            break
        if op == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0xC1, 0xC9, 0xD6, 0xDF]))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return codec, bytes(data)


@READERS
@pytest.mark.timeout(120)
@examples(150)
@given(stream=mutated_streams(), sizes=chunkings)
def test_mutated_real_streams_raise_only_stream_or_validation_errors(
    kind: str, stream: tuple[str, bytes], sizes: list[int]
) -> None:
    codec, data = stream
    if len(data) > 10_000:  # the big stream: no 1-byte chunks, they only cost time
        sizes = [size * 256 for size in sizes]
    read_expecting_only_stream_errors(kind, codec, rechunk(data, sizes))


def test_the_mutation_base_streams_are_valid() -> None:
    factory = ReaderFactory("sync")
    _, items, footer = read_all(factory(TYPES["msgpack"], [_BIG]), TYPES["msgpack"])
    assert footer.count == 1
    assert items[0].arrays[0][-1] == 19_999
