"""``vllm.stat_logger_plugins`` entry point: vLLM hands every engine iteration's
statistics to this logger in the API server process; we keep them for gRPC."""

from __future__ import annotations

from vllm.v1.metrics.loggers import StatLoggerBase

from .stats import SERVING_STATS


class SparseStatLogger(StatLoggerBase):
    def __init__(self, vllm_config, engine_index: int = 0) -> None:
        self.engine_index = engine_index

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0) -> None:
        SERVING_STATS.record(scheduler_stats, iteration_stats)

    def log_engine_initialized(self) -> None:
        pass
