"""Streaming (decoupled) models through the proxy in front of a REAL Triton.

PyTriton's decoupled generator models (``streaming_models.py``) and a model for
Triton's own python backend that watches ``request.is_cancelled()``
(``model_repository/cancel_watch``), both from ``streaming_helpers``. The proxy runs
through its command line; every client test runs over both clients (``kind``).
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from streaming_helpers import StreamingServer, python_backend_triton, streaming_triton
from test_streaming_embedded import check_frames, collect, count_frame, streamer
from triton_helpers import ProxyProcess

from transports.triton import TritonBytesStreamer, TritonClientError

pytestmark = [pytest.mark.triton, pytest.mark.timeout(240)]


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def pytriton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamingServer]:
    with streaming_triton(tmp_path_factory.mktemp("streaming-triton")) as server:
        yield server


@pytest.fixture(scope="module", params=["plain", "coalescing"])
def proxy(request: pytest.FixtureRequest, pytriton: StreamingServer) -> Iterator[ProxyProcess]:
    # "coalescing": the same tests through a proxy with --coalesce, whose coalescer must
    # leave streaming models (and every response of theirs) alone.
    extra = ["--coalesce", "16"] if request.param == "coalescing" else []
    process = ProxyProcess(["--triton-url", pytriton.url, "--max-in-flight", "8", *extra])
    yield process
    process.stop()


def test_decoupled_model_every_response_through_the_proxy(kind: str, proxy: ProxyProcess) -> None:
    counts = [3, 0, 5, 1]
    results = collect(kind, proxy.target, "stream_count", [count_frame(n) for n in counts])
    check_frames(results, counts)
    # PyTriton ends each request with an empty final response: the final result
    # carries no outputs.
    finals = [r for r in results if r.final]
    assert all(r.outputs is None for r in finals)


def test_model_with_no_responses_gets_its_final(kind: str, proxy: ProxyProcess) -> None:
    results = collect(kind, proxy.target, "stream_none", [count_frame(3), count_frame(1)])
    assert sorted((r.seq, r.index, r.final, r.status) for r in results) == [
        (0, 0, True, "OK"),
        (1, 0, True, "OK"),
    ]


def test_error_mid_stream_then_final_and_the_next_frame_goes_on(
    kind: str, proxy: ProxyProcess
) -> None:
    results = collect(kind, proxy.target, "stream_fail", [count_frame(2), count_frame(0)])
    first = [r for r in results if r.seq == 0]
    assert [(r.index, r.status) for r in first[:2]] == [(0, "OK"), (1, "OK")]
    assert first[2].status == "INTERNAL"
    assert "stream_fail after 2" in (first[2].error or "")
    assert first[-1].final
    assert first[-1].status == "INTERNAL"
    assert [r.final for r in first] == [False] * (len(first) - 1) + [True]
    second = [r for r in results if r.seq == 1]
    assert second[-1].final
    assert second[-1].status == "INTERNAL"  # 0 responses, then the error
    assert "stream_fail after 0" in (second[0].error or "")


def test_ordinary_model_through_stream_responses(kind: str, proxy: ProxyProcess) -> None:
    results = collect(kind, proxy.target, "count_unary", [count_frame(n) for n in (1, 4, 2)])
    assert sorted((r.seq, r.index, r.final, r.status) for r in results) == [
        (0, 0, True, "OK"),
        (1, 0, True, "OK"),
        (2, 0, True, "OK"),
    ]
    by_seq = {r.seq: r for r in results}
    assert by_seq[1].outputs is not None
    assert by_seq[1].outputs["INDEX"].tolist() == [3]


def test_stream_bytes_on_a_decoupled_model_is_failed_precondition(proxy: ProxyProcess) -> None:
    with TritonBytesStreamer(proxy.target) as client, pytest.raises(TritonClientError) as info:
        list(client.stream_bytes("stream_count", "1", [count_frame(2)]))
    assert info.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    # And without metadata (explicit spec): at the frame's second response.
    with streamer("sync", proxy.target) as client, pytest.raises(TritonClientError) as late:
        list(client.stream_bytes("stream_count", "1", [count_frame(3)]))
    assert late.value.code() is grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture(scope="module")
def backend_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StreamingServer]:
    with python_backend_triton(tmp_path_factory.mktemp("python-backend"), delay=0.02) as server:
        yield server


def test_breaking_the_loop_cancels_the_request_in_triton(
    kind: str, backend_triton: StreamingServer
) -> None:
    proxy = ProxyProcess(["--triton-url", backend_triton.url])
    try:
        results = collect(
            kind,
            proxy.target,
            "cancel_watch",
            [count_frame(5000)],
            limit=5,
            stream_id=f"cancel-{kind}",
        )
        assert len(results) == 5
        # The proxy sends the packet's correlation id as Triton's request id.
        record = backend_triton.wait_record(f"cancel-{kind}:0")
    finally:
        proxy.stop()
    assert record["cancelled"] is True, record
    assert 5 <= record["sent"] < 5000  # stopped at once: 0.02 s per response
