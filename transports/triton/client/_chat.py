"""One ``Chat`` call as a sans-IO state machine, fed by the sync and the async driver.

A driver opens the gRPC call and owns its waits (a thread and a semaphore, or a task
and an ``asyncio.Semaphore``); everything it decides is asked of a :class:`ChatCall`:

- :meth:`ChatCall.batches` / :meth:`ChatCall.packet`: which frames go in the next
  packet (one window slot per frame) and the packet itself;
- :meth:`ChatCall.frames_failed`: the frame iterable raised (the request stream then
  ends cleanly and the results of the frames before it are still given);
- :meth:`ChatCall.on_ack`: an Ack arrived; the results to yield now (each frees
  its frame's window slot, through the driver's callback, just before it is given);
- :attr:`ChatCall.watch` (:class:`AckWatch`): the idle and per-frame limits; a driver
  wraps each read in ``with call.watch.reading():`` and its watchdog cancels the call when
  :meth:`AckWatch.check` says so;
- :meth:`ChatCall.failed`: the gRPC call failed (or was cancelled locally): the one
  exception to raise, in the same order of precedence in both clients;
- :meth:`ChatCall.finished`: the response stream ended: raise what is left to raise.

:class:`FrameCall` gives one :class:`FrameResult` per frame (``stream_bytes``,
``stream_results``), :class:`ResponseCall` one :class:`ResponseResult` per model
response (``stream_responses``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

import grpc

from ..protocol import multimodal_pb2 as pb
from ._packets import AckPipeline, FrameResult, ResponseResult, chunked
from .errors import TritonClientError, status_error

__all__ = ["AckWatch", "ChatCall", "FrameCall", "ResponseCall"]

ResultT = TypeVar("ResultT", FrameResult, ResponseResult)


class AckWatch:
    """Tells a stuck Chat call: the caller waiting for an Ack too long with frames in flight.

    Drivers wrap each read of an Ack in ``with watch.reading():`` (or call :meth:`waiting`
    before and :meth:`got` after it); a watchdog (thread or task) calls :meth:`check` every
    :attr:`interval_s` and cancels the call when it returns True. Time spent in the
    caller's own code between results (a slow consumer) never counts.
    """

    def __init__(
        self,
        pipe: AckPipeline,
        limit_s: float,
        clock: Callable[[], float],
        frame_limit_s: float | None = None,
    ) -> None:
        self._pipe = pipe
        self.limit_s = limit_s
        self.frame_limit_s = float("inf") if frame_limit_s is None else float(frame_limit_s)
        self._clock = clock
        self._since: float | None = None
        self.tripped = False
        self._frame_tripped = False

    @staticmethod
    def _finite(limit: float) -> bool:
        return limit != float("inf") and limit > 0

    @property
    def enabled(self) -> bool:
        """Whether there is a finite limit to watch."""
        return self._finite(self.limit_s) or self._finite(self.frame_limit_s)

    @property
    def interval_s(self) -> float:
        """How often the watchdog should look."""
        limits = [x for x in (self.limit_s, self.frame_limit_s) if self._finite(x)]
        return min(1.0, max(min(limits, default=4.0) / 4, 0.05))

    def waiting(self) -> None:
        """The driver starts waiting for the next Ack."""
        self._since = self._clock()

    def got(self) -> None:
        """The driver stopped waiting (an Ack, the end, or an error)."""
        self._since = None

    def reading(self) -> AckWatch:
        """``with watch.reading(): ack = <read>``: :meth:`waiting`, then :meth:`got`."""
        return self

    def __enter__(self) -> None:
        self._since = self._clock()

    def __exit__(self, *exc_info: object) -> None:
        self._since = None

    def check(self) -> bool:
        """Whether the call is stuck; latches :attr:`tripped`."""
        since = self._since
        if since is not None and self._pipe.unreleased:
            if self._clock() - since > self.limit_s:
                self.tripped = True
            elif self._pipe.oldest_age() > self.frame_limit_s:
                self.tripped = self._frame_tripped = True
        return self.tripped

    def error(self) -> TritonClientError:
        """The error to raise for a stuck call."""
        if self._frame_tripped:
            return TritonClientError(
                "Chat",
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"a frame got no final response within {self.frame_limit_s:g}s of being sent "
                f"({self._pipe.unreleased} frames in flight; frame_timeout_sec)",
            )
        return TritonClientError(
            "Chat",
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"no Ack from the proxy for {self.limit_s:g}s with {self._pipe.unreleased} "
            "frames in flight (ack_timeout_sec)",
        )


class ChatCall(Generic[ResultT]):
    """The state of one Chat call: what to send, what to yield, what to raise.

    Built by the client core (``StreamerCore._open_chat``) once the packet spec is
    known; see the module docstring for how a driver feeds it.
    """

    def __init__(
        self,
        pipe: AckPipeline,
        watch: AckWatch,
        *,
        frames_per_packet: int,
        on_unavailable: Callable[[], None],
    ) -> None:
        self.pipe = pipe
        self.watch = watch
        self.frames_per_packet = frames_per_packet
        self._on_unavailable = on_unavailable
        self.failure: Exception | None = None
        """What the frame iterable raised, raised after the results of the frames before it."""

    # The request side (the driver's request thread or task) ---------------------------

    def batches(self, frames: Iterable[bytes]) -> Iterator[list[bytes]]:
        """The frames of each packet, in order (one frame each unless batching)."""
        if self.frames_per_packet == 1:
            return ([data] for data in frames)
        return chunked(frames, self.frames_per_packet)

    def packet(self, frames: Sequence[bytes]) -> pb.DataPacket:
        """The packet for one batch from :meth:`batches` (the driver holds its slots)."""
        if len(frames) == 1:
            return self.pipe.packet(frames[0])
        return self.pipe.packet_frames(frames)

    def frames_failed(self, exc: Exception) -> None:
        """The frame iterable raised ``exc``: the driver ends the request stream cleanly."""
        if self.failure is None:
            self.failure = exc

    # The response side (the caller's thread or task) ----------------------------------

    def on_ack(self, ack: pb.Ack, free_slot: Callable[[], object]) -> Iterable[ResultT]:
        """Take one Ack now; iterate the results it makes releasable, in order.

        The Ack is matched and parsed at once (call it under the lock that guards the
        call's state, if any); ``free_slot`` (the driver's ``window.release``) is
        called once for each frame done, just before its result is handed over.

        Raises:
            TritonClientError: the proxy broke the protocol (``INTERNAL``), or a
                one-result call met a streaming model (``FAILED_PRECONDITION``).
        """
        raise NotImplementedError

    def failed(self, exc: BaseException | None) -> BaseException:
        """The exception to raise for a failed call, in one order for both clients.

        Args:
            exc: the gRPC error the call failed with, or None when the call was
                cancelled locally (the async driver's read raised ``CancelledError``
                while its task was not being cancelled: its watchdog or
                :meth:`close`).

        Returns, first that applies: the frame iterable's own exception (the cause
        the caller owns); a protocol error of ours as is; the stuck-call
        ``DEADLINE_EXCEEDED`` when the watchdog cancelled the call; ``CANCELLED``
        for a local cancel (the client was closed); else ``exc`` as a
        :class:`TritonClientError` (``UNAVAILABLE`` makes the next call probe the
        channel again).
        """
        if self.failure is not None:
            failure = self.failure
            failure.__suppress_context__ = True  # as `raise failure from None`
            return failure
        if isinstance(exc, TritonClientError):
            return exc
        if self.watch.tripped:
            error = self.watch.error()
        elif exc is None:
            error = TritonClientError(
                "Chat", grpc.StatusCode.CANCELLED, "the client was closed during the call"
            )
        else:
            error = status_error("Chat", exc)
            if error.code() is grpc.StatusCode.UNAVAILABLE:
                self._on_unavailable()
        error.__cause__ = exc
        return error

    def finished(self) -> None:
        """The response stream ended without an error.

        Raises:
            Exception: what the frame iterable raised.
            TritonClientError: (INTERNAL) frames sent got no (final) Ack.
        """
        if self.failure is not None:
            raise self.failure
        self.pipe.finish()


class FrameCall(ChatCall[FrameResult]):
    """One result per frame, in frame order (``stream_bytes``, ``stream_results``)."""

    def on_ack(self, ack: pb.Ack, free_slot: Callable[[], object]) -> Iterable[FrameResult]:
        return _free_each(self.pipe.on_ack(ack), free_slot)


class ResponseCall(ChatCall[ResponseResult]):
    """Every model response to each frame (``stream_responses``)."""

    def on_ack(self, ack: pb.Ack, free_slot: Callable[[], object]) -> Iterable[ResponseResult]:
        response, done = self.pipe.on_response(ack)
        if done:  # one result: freeing now is freeing just before it is handed over
            free_slot()
        return (response,)


def _free_each(
    results: list[FrameResult], free_slot: Callable[[], object]
) -> Iterator[FrameResult]:
    for result in results:
        free_slot()
        yield result
