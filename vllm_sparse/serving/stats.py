"""Throughput and latency over a sliding window, fed by vLLM's own per-iteration
statistics (through our stat-logger plugin) in the API server process, so it covers
every request the engine serves: HTTP and gRPC alike."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Percentiles:
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    samples: int = 0

    @classmethod
    def of(cls, values: list[float]) -> "Percentiles":
        if not values:
            return cls()
        p50, p90, p99 = np.percentile(np.asarray(values, dtype=np.float64), [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), len(values))


@dataclass(frozen=True)
class StatsSnapshot:
    timestamp: float
    window_seconds: float
    requests_per_second: float
    prompt_tokens_per_second: float
    generation_tokens_per_second: float
    time_to_first_token: Percentiles
    inter_token_latency: Percentiles
    end_to_end_latency: Percentiles
    requests_running: int
    requests_waiting: int
    requests_finished_total: int
    prompt_tokens_total: int
    generation_tokens_total: int


class ServingStats:
    """Thread-safe: vLLM records from its output loop, gRPC reads from handlers."""

    def __init__(self, window_seconds: float = 60.0, clock=time.time) -> None:
        self.window_seconds = window_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._tokens: deque[tuple[float, int, int]] = deque()  # (time, prompt, generated)
        self._ttft: deque[tuple[float, float]] = deque()
        self._itl: deque[tuple[float, float]] = deque()
        self._finished: deque[tuple[float, float]] = deque()  # (time, end-to-end latency)
        self._running = 0
        self._waiting = 0
        self._finished_total = 0
        self._prompt_tokens_total = 0
        self._generation_tokens_total = 0

    def record(self, scheduler_stats, iteration_stats) -> None:
        now = self._clock()
        with self._lock:
            if scheduler_stats is not None:
                self._running = scheduler_stats.num_running_reqs
                self._waiting = scheduler_stats.num_waiting_reqs
            if iteration_stats is not None:
                prompt, generated = iteration_stats.num_prompt_tokens, iteration_stats.num_generation_tokens
                self._tokens.append((now, prompt, generated))
                self._prompt_tokens_total += prompt
                self._generation_tokens_total += generated
                self._ttft.extend((now, value) for value in iteration_stats.time_to_first_tokens_iter)
                self._itl.extend((now, value) for value in iteration_stats.inter_token_latencies_iter)
                for finished in iteration_stats.finished_requests:
                    self._finished.append((now, finished.e2e_latency))
                    self._finished_total += 1
            self._forget_before(now - self.window_seconds)

    def _forget_before(self, cutoff: float) -> None:
        for samples in (self._tokens, self._ttft, self._itl, self._finished):
            while samples and samples[0][0] < cutoff:
                samples.popleft()

    def snapshot(self) -> StatsSnapshot:
        now = self._clock()
        with self._lock:
            self._forget_before(now - self.window_seconds)
            # Until a whole window has passed, rates are over the time since start.
            span = max(min(self.window_seconds, now - self._started), 1e-9)
            return StatsSnapshot(
                timestamp=now,
                window_seconds=span,
                requests_per_second=len(self._finished) / span,
                prompt_tokens_per_second=sum(p for _, p, _ in self._tokens) / span,
                generation_tokens_per_second=sum(g for _, _, g in self._tokens) / span,
                time_to_first_token=Percentiles.of([v for _, v in self._ttft]),
                inter_token_latency=Percentiles.of([v for _, v in self._itl]),
                end_to_end_latency=Percentiles.of([v for _, v in self._finished]),
                requests_running=self._running,
                requests_waiting=self._waiting,
                requests_finished_total=self._finished_total,
                prompt_tokens_total=self._prompt_tokens_total,
                generation_tokens_total=self._generation_tokens_total,
            )


# The one instance of the API server process.
SERVING_STATS = ServingStats()
