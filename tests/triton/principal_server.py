"""A principal endpoint whose every byte the test controls: raw HTTP/1.1 over asyncio.

Unlike ``triton_helpers.PrincipalEndpoint`` (Starlette under uvicorn), this one can answer
what no well-behaved server would: any body with a 200, headers late, a body that
trickles one byte at a time. It runs its own event loop in a thread on a free loopback
port and answers every path the same way, so it also stands for a misconfigured
``--auth-url`` that points at some page answering 200.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

PRINCIPAL = json.dumps({"canonicalName": "tester", "isAnonymous": False}).encode()


@dataclass(frozen=True)
class Answer:
    """What the endpoint sends for one request.

    Attributes:
        status: the HTTP status.
        body: the body.
        content_type: its Content-Type.
        delay_s: wait this long before the status line.
        trickle_s: if > 0, send the body one byte at a time, this long apart.
    """

    status: int = 200
    body: bytes = PRINCIPAL
    content_type: str = "application/json"
    delay_s: float = 0.0
    trickle_s: float = 0.0


REFUSED = Answer(401, b'{"error": "unauthorized"}')


class ScriptedPrincipal:
    """The endpoint. ``valid`` holds the ``(header, value)`` pairs it accepts; ``answer``,
    when set, is sent to every request instead; ``answer_for`` decides otherwise.

    Counters: ``requests`` (lookups received), ``completed`` (answers sent in full),
    ``cut_off`` (answers the client stopped reading), ``seen`` (request headers).
    """

    def __init__(self, valid: set[tuple[str, str]] | None = None) -> None:
        self.valid: set[tuple[str, str]] = set(valid or ())
        self.answer: Answer | None = None
        self.allow = Answer()
        self.refuse = REFUSED
        self.answer_for: Callable[[dict[str, str]], Answer] | None = None
        self.requests = 0
        self.completed = 0
        self.cut_off = 0
        self.seen: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v4/auth/principal"

    def start(self) -> ScriptedPrincipal:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0), self._loop
        )
        self._server = future.result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            current = asyncio.current_task()
            pending = [t for t in asyncio.all_tasks() if t is not current]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _choose(self, headers: dict[str, str]) -> Answer:
        if self.answer is not None:
            return self.answer
        if self.answer_for is not None:
            return self.answer_for(headers)
        if any((name, value) in self.valid for name, value in headers.items()):
            return self.allow
        return self.refuse

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")[1:]
        headers = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        with self._lock:
            self.requests += 1
            self.seen.append(headers)
        answer = self._choose(headers)
        try:
            if answer.delay_s:
                await asyncio.sleep(answer.delay_s)
            writer.write(
                f"HTTP/1.1 {answer.status} X\r\ncontent-type: {answer.content_type}\r\n"
                f"content-length: {len(answer.body)}\r\nconnection: close\r\n\r\n".encode()
            )
            if answer.trickle_s > 0:
                for i in range(len(answer.body)):
                    writer.write(answer.body[i : i + 1])
                    await writer.drain()
                    await asyncio.sleep(answer.trickle_s)
                    if reader.at_eof():  # the proxy hung up
                        raise ConnectionResetError
            else:
                writer.write(answer.body)
            await writer.drain()
            with self._lock:
                self.completed += 1
        except (ConnectionError, asyncio.CancelledError):
            with self._lock:
                self.cut_off += 1
        finally:
            writer.close()
