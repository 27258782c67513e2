"""Coverage-guided fuzzing of the readers and the SSE decoder with atheris (libFuzzer).

Run by ``make fuzz`` (bounded: ``-max_total_time``), not by ``make test``::

    .venv/bin/python tests/reliability/fuzz_reader.py -max_total_time=60 -rss_limit_mb=2048

The first input byte picks the chunk size, the rest is the stream. The only outcomes
allowed are a clean read, a ``StreamError`` or a ``pydantic.ValidationError``;
anything else (or a hang, or memory beyond ``-rss_limit_mb``) is reported by libFuzzer
as a crash. A seed corpus of real streams (both codecs, arrays, errors) is written to a
temporary directory unless corpus directories are given.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports():
    import numpy as np
    import pydantic

    import truss_stream as ts
    from transports.sse import SSEFrameDecoder, encode_event


class Header(pydantic.BaseModel):
    name: str
    scores: dict[str, float] = {}


class Item(pydantic.BaseModel):
    index: int
    text: str = ""
    tags: list[str] = []
    tensor: ts.NDArray | None = None


class Footer(pydantic.BaseModel):
    count: int


TYPES = [
    ts.stream_types(Item, header_type=Header, footer_type=Footer, codec=c)  # type: ignore[call-overload]
    for c in ("msgpack", "json")
]
LIMITS = ts.MsgpackLimits(
    max_array_len=10_000, max_map_len=10_000, max_str_len=1 << 20, max_bin_len=1 << 20
)
MAX_FRAME = 1 << 20


def seeds() -> list[bytes]:
    out = []
    for types in TYPES:
        writer = ts.stream_writer(types)
        frames = [bytes(writer.yield_header(Header(name="h", scores={"a": 1.0})))]
        for i, dtype in enumerate(("float32", "int8", "U3", "complex64")):
            tensor = np.arange(6).astype(dtype).reshape(2, 3)
            frames.append(bytes(writer.yield_item(Item(index=i, text="t\n", tensor=tensor))))
        frames.append(bytes(writer.yield_footer(Footer(count=4))))
        frames.append(bytes(writer.yield_end()))
        out.append(b"".join(frames))
        out.append(b"".join(frames[:2]) + bytes(ts.error_frame(RuntimeError("boom"))))
        out.append(b"".join(encode_event(i, f) for i, f in enumerate(frames)))
    return [bytes([0]) + s for s in out] + [bytes([7]) + s for s in out]


def read(types: object, chunks: list[bytes]) -> None:
    reader = ts.stream_reader(
        types,  # type: ignore[arg-type]
        chunks,
        max_frame_bytes=MAX_FRAME,
        msgpack_limits=LIMITS,
    )
    reader.read_header()
    for _ in reader.read_items():
        pass
    reader.read_footer()


def test_one_input(data: bytes) -> None:
    if not data:
        return
    size = data[0] or len(data)
    body = data[1:]
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    for types in TYPES:
        with contextlib.suppress(ts.StreamError, pydantic.ValidationError):
            read(types, chunks)
    # The same bytes as an SSE body: only StreamError may come out of the decoder.
    decoder = SSEFrameDecoder(max_event_bytes=4 * MAX_FRAME)
    frames = []
    try:
        for chunk in chunks:
            frames.append(decoder.feed(chunk))
        read(TYPES[0], frames)
    except (ts.StreamError, pydantic.ValidationError):
        pass


def main() -> None:
    args = list(sys.argv)
    if not any(not a.startswith("-") for a in args[1:]):
        corpus = Path(tempfile.mkdtemp(prefix="truss-stream-fuzz-"))
        for i, seed in enumerate(seeds()):
            (corpus / f"seed-{i}").write_bytes(seed)
        args.append(str(corpus))
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
