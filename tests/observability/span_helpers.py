"""Reading the spans a process printed with the SDK's console exporter."""

from __future__ import annotations

import json
import socket
from typing import Any


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def console_spans(text: str) -> list[dict[str, Any]]:
    """Every span object in ``text``: ConsoleSpanExporter writes indented JSON, one per span."""
    decoder = json.JSONDecoder()
    spans: list[dict[str, Any]] = []
    i = 0
    while True:
        start = text.find("{", i)
        if start < 0:
            return spans
        try:
            obj, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            i = start + 1
            continue
        if isinstance(obj, dict) and "context" in obj and "name" in obj:
            spans.append(obj)
        i = end


def hex_id(value: int, width: int) -> str:
    """An id as the console exporter writes it: ``0x`` and zero-padded hex."""
    return "0x" + format(value, f"0{width}x")
