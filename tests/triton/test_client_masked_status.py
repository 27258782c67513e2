"""A Chat status grpc.aio masked as ``INTERNAL: Internal error from Core`` (grpc/grpc#36066).

When the proxy ends a call while the client writes (a credential revoked mid-call),
grpc.aio's failed write can overwrite the proxy's UNAUTHENTICATED. The client core then
asks once more (``ServerReady``, same credentials) and raises the refusal it gets; these
tests drive that step sequence without I/O, then through the real proxy.
"""

from __future__ import annotations

import grpc
import pytest

from transports.triton import TritonBytesStreamer, TritonClientError
from transports.triton.client._core import GRPC_AIO_MASKED_DETAILS, Rpc, Stepper


def _masked() -> TritonClientError:
    return TritonClientError("Chat", grpc.StatusCode.INTERNAL, GRPC_AIO_MASKED_DETAILS)


def _drive(error: BaseException, answer: object) -> tuple[list[Rpc], BaseException]:
    streamer = TritonBytesStreamer("127.0.0.1:1", "x", (1,), 0)  # never connects
    try:
        stepper = Stepper(streamer._chat_failure_steps(error))
        asked: list[Rpc] = []
        step = stepper.first()
        while step is not None:
            assert isinstance(step, Rpc)
            asked.append(step)
            step = stepper.send(answer)
        return asked, stepper.result
    finally:
        streamer.close()


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED]
)
def test_a_masked_status_becomes_the_refusal_the_proxy_gives_again(
    code: grpc.StatusCode,
) -> None:
    masked = _masked()
    asked, raised = _drive(masked, TritonClientError("ServerReady", code, "key revoked"))
    assert [r.method for r in asked] == ["ServerReady"]
    assert isinstance(raised, TritonClientError)
    assert raised.code() is code
    assert "key revoked" in raised.details()
    assert "grpc/grpc#36066" in raised.details()
    assert raised.__cause__ is masked


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param("ready", id="proxy-answers"),
        pytest.param(
            TritonClientError("ServerReady", grpc.StatusCode.UNAVAILABLE, "gone"), id="unreachable"
        ),
    ],
)
def test_a_masked_status_the_proxy_does_not_explain_stays_internal(answer: object) -> None:
    masked = _masked()
    asked, raised = _drive(masked, answer)
    assert len(asked) == 1
    assert raised is masked


@pytest.mark.parametrize(
    "error",
    [
        TritonClientError("Chat", grpc.StatusCode.INTERNAL, "model failed"),
        TritonClientError("Chat", grpc.StatusCode.UNAUTHENTICATED, GRPC_AIO_MASKED_DETAILS),
        ValueError("the frame iterable's own error"),
    ],
)
def test_any_other_failure_is_raised_as_it_is_without_asking(error: BaseException) -> None:
    asked, raised = _drive(error, "unused")
    assert asked == []
    assert raised is error
