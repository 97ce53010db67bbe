"""Rules every gRPC Generate stream follows, whichever protocol it speaks
(``SparseServing`` or vLLM's ``VllmEngine``): one limit on streams in flight
(RESOURCE_EXHAUSTED past it), UNAVAILABLE for streams still generating when the
shutdown grace period ends, and one request counter labelled by final status."""

from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager

import grpc

from .prometheus_metrics import GRPC_REQUEST_DURATION, GRPC_REQUESTS

SHUTDOWN_MESSAGE = "the server is shutting down; retry on another replica"
# How grpc.aio ends a streaming handler whose client went away (cancel, deadline,
# dropped connection): the task is cancelled, or the response generator closed.
ENDED_BY_CLIENT = (asyncio.CancelledError, GeneratorExit)
# A client whose deadline passes cancels its call at that moment, which can reach
# the server before its own copy of the deadline expires: the server dates its copy
# from when it read the call's headers, which a loaded server does late (with 0.1 s
# of slack, a 1 s deadline was once counted as a cancel in a CI run with two test
# workers serving at once). A client that cancels in its deadline's last half
# second is counted as a deadline.
DEADLINE_SLACK_SECONDS = 0.5


class ShuttingDown(Exception):
    """The server's grace period for in-flight streams is over: UNAVAILABLE."""


class StreamGate:
    """The in-flight count and limit shared by both services, and the signal that
    ends the streams left at the end of the shutdown grace period."""

    def __init__(self, max_inflight: int) -> None:
        self.max_inflight = max_inflight
        self.inflight = 0
        self.closing = asyncio.Event()

    def refusal(self) -> str | None:
        """Why a new stream cannot start now (answered RESOURCE_EXHAUSTED), or None.
        Check it and enter ``admitted`` with no await between them."""
        if self.inflight >= self.max_inflight:
            return f"{self.inflight} streams in flight, the limit is {self.max_inflight}; retry later"
        return None

    @contextmanager
    def admitted(self):
        """Holds one in-flight slot."""
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1

    def close_streams(self) -> None:
        """End every stream still generating with UNAVAILABLE."""
        self.closing.set()

    async def until_closing(self, stream):
        """The items of ``stream`` until ``close_streams``: then ShuttingDown. The
        step under way is cancelled, which makes vLLM abort the engine request."""
        items = stream.__aiter__()
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            while True:
                step = asyncio.ensure_future(items.__anext__())
                done, _ = await asyncio.wait({step, closing}, return_when=asyncio.FIRST_COMPLETED)
                if step not in done:
                    step.cancel()
                    await asyncio.wait({step})  # let the stream's own cleanup run first
                    raise ShuttingDown
                try:
                    yield step.result()
                except StopAsyncIteration:
                    return
        finally:
            closing.cancel()


def client_deadline(context) -> float | None:
    """The monotonic time at which the client's deadline passes (less the slack)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining - DEADLINE_SLACK_SECONDS


def ended_by_client_code(deadline: float | None) -> grpc.StatusCode:
    """Why the client went away: its deadline passed, or it cancelled."""
    if deadline is not None and time.monotonic() >= deadline:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


@contextmanager
def observed(method: str):
    """Counts a request by its final status code and times it. The handler sets
    ``outcome["code"]`` when it ends the call itself."""
    started = time.perf_counter()
    outcome = {"code": grpc.StatusCode.OK}
    try:
        yield outcome
    except ENDED_BY_CLIENT:
        if outcome["code"] == grpc.StatusCode.OK:
            outcome["code"] = grpc.StatusCode.CANCELLED
        raise
    except Exception:
        if outcome["code"] == grpc.StatusCode.OK:
            outcome["code"] = grpc.StatusCode.INTERNAL
        raise
    finally:
        GRPC_REQUESTS.labels(method, outcome["code"].name).inc()
        GRPC_REQUEST_DURATION.labels(method).observe(time.perf_counter() - started)
