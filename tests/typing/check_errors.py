"""Snippets that misuse the typed API: mypy must report an error for each one.

Run as a script (``make typecheck``) or through ``tests/test_typing.py``.
"""

from __future__ import annotations

import sys
import tempfile
import textwrap
from pathlib import Path

from mypy import api

PRELUDE = """
from collections.abc import AsyncIterator, Iterator
import pydantic
import truss_stream as ts

class Header(pydantic.BaseModel):
    request_id: str

class Item(pydantic.BaseModel):
    index: int

class Footer(pydantic.BaseModel):
    count: int

class Other(pydantic.BaseModel):
    name: str

ITEMS_ONLY = ts.stream_types(Item)
FULL = ts.stream_types(Item, header_type=Header, footer_type=Footer)

def chunks() -> Iterator[bytes]:
    return iter([b""])

async def _agen() -> AsyncIterator[bytes]:
    yield b""

def achunks() -> AsyncIterator[bytes]:
    return _agen()
"""

#: name -> a snippet (appended to PRELUDE) that must not type-check.
MUST_FAIL: dict[str, str] = {
    "read_header without header": """
        ts.stream_reader(ITEMS_ONLY, chunks()).read_header()
    """,
    "async read_header without header": """
        async def f() -> None:
            await ts.stream_reader(ITEMS_ONLY, achunks()).read_header()
    """,
    "read_footer without footer": """
        ts.stream_reader(ITEMS_ONLY, chunks()).read_footer()
    """,
    "yield_item with the wrong model": """
        ts.stream_writer(FULL).yield_item(Other(name="x"))
    """,
    "yield_item with a header": """
        ts.stream_writer(FULL).yield_item(Header(request_id="x"))
    """,
    "yield_header without header": """
        ts.stream_writer(ITEMS_ONLY).yield_header(Header(request_id="x"))
    """,
    "yield_footer without footer": """
        ts.stream_writer(ITEMS_ONLY).yield_footer(Footer(count=1))
    """,
    "yield_header with the wrong model": """
        ts.stream_writer(FULL).yield_header(Footer(count=1))
    """,
    "items are the item model": """
        for item in ts.stream_reader(FULL, chunks()).read_items():
            x: int = item
    """,
    "async items are the item model": """
        async def f() -> None:
            async for item in ts.stream_reader(FULL, achunks()).read_items():
                x: Header = item
    """,
    "header is the header model": """
        h: Footer = ts.stream_reader(FULL, chunks()).read_header()
    """,
    "footer is the footer model": """
        f: Header = ts.stream_reader(FULL, chunks()).read_footer()
    """,
    "sync reader has no awaitable read_header": """
        async def f() -> None:
            await ts.stream_reader(FULL, chunks()).read_header()
    """,
    "source of str chunks": """
        ts.stream_reader(ITEMS_ONLY, ["not", "bytes"])
    """,
    "a bytes object as the source": """
        ts.stream_reader(ITEMS_ONLY, b"\\x05\\0\\0\\0\\0")
    """,
    "item type must be a pydantic model": """
        ts.stream_types(int)
    """,
    "unknown codec name": """
        ts.stream_types(Item, codec="cbor")
    """,
}


def check(names: list[str] | None = None, *, verbose: bool = False) -> dict[str, str]:
    """Run mypy --strict over each snippet; return {name: problem} for snippets that passed.

    Also fails if the prelude alone has errors (so a broken prelude cannot pass for
    expected errors).
    """
    problems: dict[str, str] = {}
    cases = {"prelude": ""} | {n: s for n, s in MUST_FAIL.items() if names is None or n in names}
    with tempfile.TemporaryDirectory() as tmp:
        paths: dict[str, Path] = {}
        for i, (name, snippet) in enumerate(cases.items()):
            path = Path(tmp) / f"case_{i}.py"
            path.write_text(PRELUDE + textwrap.dedent(snippet))
            paths[name] = path
        # One mypy run for all snippets (separate modules): errors carry the file name.
        stdout, stderr, _ = api.run(
            [
                "--strict",
                "--show-error-codes",
                "--no-error-summary",
                "--follow-imports=silent",
                *map(str, paths.values()),
            ]
        )
        if stderr.strip():
            problems["mypy"] = stderr.strip()
        for name, path in paths.items():
            # Match on the file name: mypy's cache may report an earlier run's directory.
            errors = [
                line for line in stdout.splitlines() if line.split(":", 1)[0].endswith(path.name)
            ]
            errors = [line for line in errors if ": error:" in line]
            if verbose:
                print(f"--- {name}", *errors, sep="\n")
            if name == "prelude":
                if errors:
                    problems[name] = "prelude has errors:\n" + "\n".join(errors)
            elif not errors:
                problems[name] = "mypy accepted this misuse"
    return problems


def main() -> int:
    problems = check(verbose="-v" in sys.argv)
    for name, problem in problems.items():
        print(f"FAIL {name}: {problem}")
    if not problems:
        print(f"ok: mypy rejects all {len(MUST_FAIL)} misuses")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
