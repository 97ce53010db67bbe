"""Sends the requests (fixed concurrency or Poisson arrivals), times every
streamed message, and keeps going when requests fail."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Iterator, Protocol

from .backends import RequestError
from .workload import GenerationParams, Prompt, poisson_arrivals


class Backend(Protocol):
    name: str

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    def generate(self, prompt: Prompt, params: GenerationParams): ...


@dataclass
class RequestRecord:
    """What one request did, times in seconds from its send."""

    send_time: float  # perf_counter at send
    ttft: float | None = None  # to the first message carrying a token
    itls: list[float] = field(default_factory=list)  # one per token after the first message
    e2e: float | None = None  # to the last message
    input_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None  # kind, when the request failed
    error_detail: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class LoadPlan:
    num_requests: int | None = None  # stop after this many requests ...
    duration: float | None = None  # ... or stop sending after this many seconds
    concurrency: int | None = None  # requests in flight (a cap, with request_rate)
    request_rate: float | None = None  # Poisson arrivals per second; None: back to back
    seed: int = 0
    request_timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.num_requests is None and self.duration is None:
            raise ValueError("give a number of requests or a duration")
        if self.concurrency is None and self.request_rate is None:
            self.concurrency = 1
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("--concurrency must be >= 1")


@dataclass
class RunResult:
    records: list[RequestRecord]
    duration: float  # first send until the last request is done


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, RequestError):
        return exc.kind
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    return type(exc).__name__


async def measure(backend: Backend, prompt: Prompt, params: GenerationParams, timeout: float) -> RequestRecord:
    """Run one request and time it. Never raises (except on cancellation): a
    failure becomes the record's error kind."""
    record = RequestRecord(send_time=time.perf_counter())
    last: float | None = None  # arrival of the previous token message
    counted = 0  # tokens counted message by message
    reported: int | None = None  # the server's own completion count, if it gave one

    async def consume() -> None:
        nonlocal last, counted, reported
        async for message in backend.generate(prompt, params):
            now = time.perf_counter()
            record.e2e = now - record.send_time
            if message.prompt_tokens is not None:
                record.input_tokens = message.prompt_tokens
            if message.completion_tokens is not None:
                reported = message.completion_tokens
            if message.tokens <= 0:
                continue
            if last is None:
                record.ttft = now - record.send_time
            else:
                # A message bringing k tokens stands for k inter-token gaps.
                record.itls.extend([(now - last) / message.tokens] * message.tokens)
            last = now
            counted += message.tokens

    try:
        await asyncio.wait_for(consume(), timeout)
        if record.ttft is None:
            raise RequestError("no tokens", "the stream ended without a token")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the run
        record.error = error_kind(exc)
        record.error_detail = f"not done after {timeout:g} s" if record.error == "timeout" else (str(exc) or repr(exc))[:300]
    record.output_tokens = reported if reported is not None else counted
    if not record.input_tokens and prompt.known_length is not None:
        record.input_tokens = prompt.known_length
    return record


class _Progress:
    """tqdm when wanted; a no-op otherwise (tests, JSON-only runs)."""

    def __init__(self, enabled: bool, total: int | None, label: str) -> None:
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=label, unit="req", leave=False)
        self._errors = 0

    def update(self, record: RequestRecord) -> None:
        if self._bar is not None:
            if not record.ok:  # failures show while the run goes on
                self._errors += 1
                self._bar.set_postfix(errors=self._errors, refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


async def run_load(backend: Backend, prompts: Iterator[Prompt], params: GenerationParams, plan: LoadPlan,
                   progress: bool = False, label: str = "") -> RunResult:
    """Send ``prompts`` (in order) to a started backend as ``plan`` says."""
    records: list[RequestRecord] = []
    bar = _Progress(progress, plan.num_requests, label)
    start = time.perf_counter()
    deadline = None if plan.duration is None else start + plan.duration
    budget = itertools.count() if plan.num_requests is None else iter(range(plan.num_requests))

    def next_prompt() -> Prompt | None:
        """The next request's prompt, or None when the count or the time is up."""
        if deadline is not None and time.perf_counter() >= deadline:
            return None
        if next(budget, None) is None:
            return None
        return next(prompts)

    async def one(prompt: Prompt) -> None:
        record = await measure(backend, prompt, params, plan.request_timeout)
        records.append(record)
        bar.update(record)

    try:
        if plan.request_rate is None:
            await _closed_loop(plan.concurrency, next_prompt, one)
        else:
            await _open_loop(plan, start, next_prompt, one)
    finally:
        bar.close()
    # As vLLM's client does: from the first send until the last request is done.
    return RunResult(records=records, duration=time.perf_counter() - start)


async def _closed_loop(concurrency: int, next_prompt, one) -> None:
    """``concurrency`` workers, each sending its next request when the last ends."""

    async def worker() -> None:
        while (prompt := next_prompt()) is not None:
            await one(prompt)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def _open_loop(plan: LoadPlan, start: float, next_prompt, one) -> None:
    """Requests leave at Poisson times whatever the server's pace (an open system),
    optionally capped at ``concurrency`` in flight; the latencies are then counted
    from the actual send, after any wait for a free slot."""
    slots = asyncio.Semaphore(plan.concurrency) if plan.concurrency else None

    async def limited(prompt: Prompt) -> None:
        if slots is None:
            await one(prompt)
        else:
            async with slots:
                await one(prompt)

    tasks = []
    for offset in poisson_arrivals(plan.request_rate, plan.seed):
        delay = start + offset - time.perf_counter()
        if plan.duration is not None and offset >= plan.duration:
            break
        if delay > 0:
            await asyncio.sleep(delay)
        prompt = next_prompt()
        if prompt is None:
            break
        tasks.append(asyncio.create_task(limited(prompt)))
    await asyncio.gather(*tasks)
