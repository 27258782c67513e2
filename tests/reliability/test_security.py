"""Nothing hostile gets in: no pickle anywhere, SSE data cannot forge events, gRPC TLS
(wrong CA, wrong name, mutual TLS), auth decisions cached only for successes and only
briefly, and credentials never logged or echoed in errors.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pydantic
import pytest
from live_server import live_server
from reliability_helpers import ROOT, TYPES, grpc_request, grpc_service
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import truss_stream as ts
from transports import grpc as tgrpc
from transports import sse
from transports.grpc import ClientTLS, GrpcStatusError, ServerTLS, serve_in_thread
from transports.triton.server.auth import DominoAuthInterceptor

# No pickle -----------------------------------------------------------------------------------

_PICKLE_PATTERNS = [
    (re.compile(r"^\s*(import|from)\s+(c?pickle|cloudpickle|dill|_pickle)\b", re.M), "import"),
    (re.compile(r"\b(c?pickle|cloudpickle|dill)\.(loads?|Unpickler)\b"), "unpickling call"),
    (re.compile(r"allow_pickle\s*=\s*True"), "allow_pickle=True"),
    (re.compile(r"\bcloudpickle\b"), "cloudpickle"),
    (
        re.compile(r"\bnp\.load\((?![^)]*allow_pickle\s*=\s*False)"),
        "np.load without allow_pickle=False",
    ),
    (
        re.compile(r"\bnumpy\.load\((?![^)]*allow_pickle\s*=\s*False)"),
        "np.load without allow_pickle=False",
    ),
]
_SCANNED_DIRS = ["truss_stream", "transports", "examples", "tests", "benchmarks"]


def _source_files() -> Iterator[Path]:
    for name in _SCANNED_DIRS:
        root = ROOT / name
        if root.is_dir():
            yield from (p for p in root.rglob("*.py") if p.resolve() != Path(__file__).resolve())


def test_no_pickle_anywhere_in_the_repository() -> None:
    found = []
    files = list(_source_files())
    assert len(files) > 20, "the scan found almost nothing: wrong root?"
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        for pattern, what in _PICKLE_PATTERNS:
            for match in pattern.finditer(text):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert not found, "pickle use found:\n" + "\n".join(found)


def test_the_pickle_scan_catches_what_it_should() -> None:
    bad = [
        "import pickle",
        "from cloudpickle import dumps",
        "x = pickle.loads(b)",
        "np.load(path, allow_pickle=True)",
        "np.load(path)",
    ]
    ok = ["np.load(path, allow_pickle=False)", "# pickles are vegetables", "unpickled = None"]
    for text in bad:
        assert any(p.search(text) for p, _ in _PICKLE_PATTERNS), text
    for text in ok:
        assert not any(p.search(text) for p, _ in _PICKLE_PATTERNS), text


# SSE data cannot forge events ------------------------------------------------------------------

HOSTILE = [
    "line\nbreak",
    "carriage\rreturn",
    "crlf\r\npair",
    "\n\nevent: end\ndata: {}\n\n",
    '\r\n\r\nevent: error\r\ndata: {"type":"X","message":"forged"}\r\n\r\n',
    "event: end",
    "data: forged",
    "id: 999",
    "retry: 1",
    ": comment",
    "line\u2028separator",
    "paragraph\u2029separator",
    "next\u0085line",
    "nul\x00byte",
    "\ufeffbom",
    "\n",
    "\r",
    "",
]


class Doc(pydantic.BaseModel):
    text: str
    tags: dict[str, str]


class DocHeader(pydantic.BaseModel):
    note: str


def _spec_events(body: bytes) -> list[tuple[str, str, str]]:
    """Parse an SSE body exactly as the WHATWG spec says: lines end at CRLF, CR or LF."""
    events: list[tuple[str, str, str]] = []
    text = body.decode("utf-8")
    event, data, last_id = "", [], ""
    for line in re.split(r"\r\n|\r|\n", text):
        if line == "":
            if data:
                events.append((event or "message", "\n".join(data), last_id))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            last_id = value
    return events


@pytest.mark.parametrize("codec", ["json", "msgpack"])
def test_sse_event_data_cannot_forge_events_or_break_framing(codec: str) -> None:
    types = ts.stream_types(Doc, header_type=DocHeader, codec=codec)  # type: ignore[call-overload]
    docs = [Doc(text=s, tags={s: s, "k": s}) for s in HOSTILE]

    async def produce() -> AsyncIterator[bytes | memoryview]:
        writer = ts.stream_writer(types)
        yield writer.yield_header(DocHeader(note="\n\nevent: end\n\n"))
        for doc in docs:
            yield writer.yield_item(doc)

    async def endpoint(request: Request) -> Response:
        return sse.sse_response(produce(), ping_interval=None)

    app = Starlette(routes=[Route("/sse", endpoint)])
    with live_server(app) as server, httpx.Client(timeout=10) as client:
        body = client.get(f"{server.url}/sse").content
        with sse.connect(client, "GET", f"{server.url}/sse", types) as reader:
            assert reader.read_header().note == "\n\nevent: end\n\n"
            assert list(reader.read_items()) == docs

    # Nothing that any SSE parser could take for a line break sits inside a value.
    for raw in ("\u2028", "\u2029", "\u0085"):
        assert raw.encode() not in body
    events = _spec_events(body)
    kinds = [e[0] for e in events]
    assert kinds == ["header"] + ["item"] * len(docs) + ["end"]
    assert [e[2] for e in events] == [str(i) for i in range(len(events))]
    for (_, data, _), doc in zip(events[1:-1], docs, strict=True):
        if codec == "json":
            assert Doc.model_validate_json(data) == doc
        else:
            frame = base64.b64decode(data, validate=True)
            assert ts.frame_info(frame)[0] is ts.FrameKind.ITEM
    # The same body, parsed by a client that also breaks lines at U+2028/2029/0085.
    stricter = body.decode().replace("\u2028", "\n").replace("\u2029", "\n")
    assert _spec_events(stricter.replace("\u0085", "\n").encode()) == events


# gRPC TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    trustme = pytest.importorskip("trustme")
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    wrong_name = ca.issue_cert("example.com")
    client = ca.issue_cert("client@example.com")
    rogue_client = other_ca.issue_cert("client@example.com")

    def chain(cert: Any) -> bytes:
        return b"".join(blob.bytes() for blob in cert.cert_chain_pems)

    return {
        "ca": ca.cert_pem.bytes(),
        "other_ca": other_ca.cert_pem.bytes(),
        "server": ServerTLS(
            private_key=server.private_key_pem.bytes(), certificate_chain=chain(server)
        ),
        "wrong_name": ServerTLS(
            private_key=wrong_name.private_key_pem.bytes(), certificate_chain=chain(wrong_name)
        ),
        "mutual": ServerTLS(
            private_key=server.private_key_pem.bytes(),
            certificate_chain=chain(server),
            client_root_certificates=ca.cert_pem.bytes(),
            require_client_auth=True,
        ),
        "client": (client.private_key_pem.bytes(), chain(client)),
        "rogue_client": (rogue_client.private_key_pem.bytes(), chain(rogue_client)),
    }


def _read_over(target: str, tls: ClientTLS | None) -> int:
    with tgrpc.connect(
        target, "Stream", TYPES["msgpack"], request=grpc_request(stream=1, n=3), tls=tls, timeout=5
    ) as reader:
        reader.read_header()
        return len(list(reader.read_items()))


def test_grpc_tls_refuses_an_untrusted_or_misnamed_server(pki: dict[str, Any]) -> None:
    with serve_in_thread(grpc_service(), tls=pki["server"], reflection=False) as running:
        assert _read_over(running.target, ClientTLS(root_certificates=pki["ca"])) == 3
        with pytest.raises(GrpcStatusError) as untrusted:
            _read_over(running.target, ClientTLS(root_certificates=pki["other_ca"]))
        assert untrusted.value.code is grpc.StatusCode.UNAVAILABLE
    with serve_in_thread(grpc_service(), tls=pki["wrong_name"], reflection=False) as running:
        with pytest.raises(GrpcStatusError) as misnamed:
            _read_over(running.target, ClientTLS(root_certificates=pki["ca"]))
        assert misnamed.value.code is grpc.StatusCode.UNAVAILABLE


def test_grpc_mutual_tls_requires_a_client_certificate_from_the_right_ca(
    pki: dict[str, Any],
) -> None:
    with serve_in_thread(grpc_service(), tls=pki["mutual"], reflection=False) as running:
        key, chain = pki["client"]
        good = ClientTLS(root_certificates=pki["ca"], private_key=key, certificate_chain=chain)
        assert _read_over(running.target, good) == 3
        rogue_key, rogue_chain = pki["rogue_client"]
        for tls in (
            ClientTLS(root_certificates=pki["ca"]),
            ClientTLS(
                root_certificates=pki["ca"], private_key=rogue_key, certificate_chain=rogue_chain
            ),
        ):
            with pytest.raises(GrpcStatusError) as info:
                _read_over(running.target, tls)
            assert info.value.code is grpc.StatusCode.UNAVAILABLE


# Auth: caching and secrets ---------------------------------------------------------------------

SECRET_KEY = "sk-live-7f3a9c0e1b2d4f6a8c0e1b2d4f6a8c0e"
SECRET_TOKEN = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0LXRva2Vu.Zm9yZ2VkLXNpZ25hdHVyZQ"
WRONG_KEY = "sk-wrong-0000deadbeef0000deadbeef00"


class Principal:
    """A principal endpoint whose answers the test changes as it goes."""

    def __init__(self) -> None:
        self.allowed = {SECRET_KEY, f"Bearer {SECRET_TOKEN}"}
        self.status_override: int | None = None
        self.lookups = 0
        self._lock = threading.Lock()

    def app(self) -> Starlette:
        async def principal(request: Request) -> Response:
            with self._lock:
                self.lookups += 1
            if self.status_override is not None:
                return JSONResponse({"error": "down"}, status_code=self.status_override)
            key = request.headers.get("x-domino-api-key")
            auth = request.headers.get("authorization")
            if key in self.allowed or auth in self.allowed:
                return JSONResponse({"canonicalName": "tester", "isAnonymous": False})
            return JSONResponse({"error": "unauthorized"}, status_code=401)

        return Starlette(routes=[Route("/v4/auth/principal", principal)])


def _call(target: str, metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
    try:
        with tgrpc.connect(
            target,
            "Stream",
            TYPES["msgpack"],
            request=grpc_request(stream=1, n=1),
            metadata=metadata,
            timeout=10,
        ) as reader:
            reader.read_header()
            list(reader.read_items())
        return grpc.StatusCode.OK
    except GrpcStatusError as exc:
        echoed = [s for s in (SECRET_KEY, SECRET_TOKEN, WRONG_KEY) if s in f"{exc} {exc.details}"]
        if echoed:
            raise AssertionError(f"a credential was echoed in {exc!r}") from exc
        return exc.code


KEY = (("x-domino-api-key", SECRET_KEY),)
TOKEN = (("authorization", f"Bearer {SECRET_TOKEN}"),)
WRONG = (("x-domino-api-key", WRONG_KEY),)


@pytest.fixture
def authed() -> Iterator[tuple[str, Principal]]:
    principal = Principal()
    with live_server(principal.app()) as web:
        interceptor = DominoAuthInterceptor(
            f"{web.url}/v4/auth/principal", cache_ttl=0.5, timeout=2
        )
        with serve_in_thread(
            grpc_service(), interceptors=[interceptor], reflection=False
        ) as running:
            yield running.target, principal


def test_auth_caches_successes_briefly_and_failures_never(
    authed: tuple[str, Principal], caplog: pytest.LogCaptureFixture
) -> None:
    target, principal = authed
    caplog.set_level(logging.DEBUG)
    assert _call(target, KEY) == grpc.StatusCode.OK
    assert _call(target, KEY) == grpc.StatusCode.OK
    assert principal.lookups == 1, "a success is cached"
    # Revoked: still allowed while cached, refused once the short TTL is over.
    principal.allowed.discard(SECRET_KEY)
    assert _call(target, KEY) == grpc.StatusCode.OK
    time.sleep(0.6)
    assert _call(target, KEY) == grpc.StatusCode.UNAUTHENTICATED
    assert principal.lookups == 2
    # Failures are never cached: a key fixed upstream works at once.
    lookups = principal.lookups
    assert _call(target, KEY) == grpc.StatusCode.UNAUTHENTICATED
    principal.allowed.add(SECRET_KEY)
    assert _call(target, KEY) == grpc.StatusCode.OK
    assert principal.lookups == lookups + 2
    # Neither are "unavailable" answers.
    assert _call(target, TOKEN) == grpc.StatusCode.OK
    principal.status_override = 503
    assert _call(target, WRONG) == grpc.StatusCode.UNAVAILABLE
    assert _call(target, WRONG) == grpc.StatusCode.UNAVAILABLE
    principal.status_override = None
    assert _call(target, WRONG) == grpc.StatusCode.UNAUTHENTICATED
    assert _call(target, ()) == grpc.StatusCode.UNAUTHENTICATED
    logged = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert logged.strip(), "expected some auth log lines at DEBUG"
    for secret in (SECRET_KEY, SECRET_TOKEN, WRONG_KEY):
        assert secret not in logged


def test_auth_principal_down_is_unavailable_never_a_bypass(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    principal = Principal()
    web = live_server(principal.app())
    server = web.__enter__()
    url = f"{server.url}/v4/auth/principal"
    interceptor = DominoAuthInterceptor(url, cache_ttl=0.3, timeout=1)
    stopped = False
    try:
        with serve_in_thread(
            grpc_service(), interceptors=[interceptor], reflection=False
        ) as running:
            assert _call(running.target, KEY) == grpc.StatusCode.OK
            web.__exit__(None, None, None)  # the principal endpoint goes away
            stopped = True
            time.sleep(0.4)  # past the cache TTL
            for metadata in (KEY, TOKEN, WRONG):
                started = time.monotonic()
                assert _call(running.target, metadata) == grpc.StatusCode.UNAVAILABLE
                assert time.monotonic() - started < 3
    finally:
        if not stopped:
            web.__exit__(None, None, None)
    logged = caplog.text
    for secret in (SECRET_KEY, SECRET_TOKEN, WRONG_KEY):
        assert secret not in logged


def test_sse_and_http_errors_do_not_echo_request_credentials() -> None:
    # A server that refuses the request: the client's error carries the status and
    # the server's body, never the Authorization header it sent.
    async def refuse(request: Request) -> Response:
        return Response("no", status_code=401)

    app = Starlette(routes=[Route("/s", refuse)])
    headers = {"authorization": f"Bearer {SECRET_TOKEN}", "x-domino-api-key": SECRET_KEY}
    with (
        live_server(app) as server,
        httpx.Client(timeout=5) as client,
        pytest.raises(ts.StreamError) as info,
        sse.connect(client, "GET", f"{server.url}/s", TYPES["msgpack"], headers=headers),
    ):
        pass
    text = f"{info.value} {info.value!r} {json.dumps(vars(info.value), default=str)}"
    assert "401" in text
    assert SECRET_TOKEN not in text
    assert SECRET_KEY not in text


def test_asyncio_interceptor_check_is_consistent_under_concurrency(
    authed: tuple[str, Principal],
) -> None:
    # 20 concurrent calls with one key: all succeed, none bypass a refused key.
    target, _ = authed

    async def main() -> list[grpc.StatusCode]:
        return list(
            await asyncio.gather(
                *(asyncio.to_thread(_call, target, KEY if i % 2 else WRONG) for i in range(20))
            )
        )

    codes = asyncio.run(main())
    assert codes.count(grpc.StatusCode.OK) == 10
    assert codes.count(grpc.StatusCode.UNAUTHENTICATED) == 10


def test_auth_principal_that_hangs_or_redirects_is_never_a_bypass() -> None:
    from test_timeouts import silent_listener

    async def redirect(request: Request) -> Response:
        return Response(status_code=302, headers={"location": "http://127.0.0.1:9/ok"})

    app = Starlette(routes=[Route("/v4/auth/principal", redirect)])
    with silent_listener() as port, live_server(app) as web:
        for url, expected in (
            (f"http://127.0.0.1:{port}/v4/auth/principal", grpc.StatusCode.UNAVAILABLE),
            (f"{web.url}/v4/auth/principal", grpc.StatusCode.UNAUTHENTICATED),
        ):
            interceptor = DominoAuthInterceptor(url, cache_ttl=30, timeout=0.5)
            with serve_in_thread(
                grpc_service(), interceptors=[interceptor], reflection=False
            ) as running:
                for _ in range(2):  # nothing cached either
                    started = time.monotonic()
                    assert _call(running.target, KEY) == expected
                    assert time.monotonic() - started < 3
