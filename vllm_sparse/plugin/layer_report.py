"""Collects one table row per sparse-aware layer as the model loads and logs the
whole table once the last layer is done."""

from __future__ import annotations

import functools
import logging

import psutil  # a dependency of vLLM's

from ..checkpoint.layer_table import LayerRow, format_layer_table
from ..runtime import release_freed_memory
from .run_files import write_layer_table
from .vllm_internals import after_cpu_warm_up
from .worker_metrics import record_layer_sparsity


class LayerReport:
    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._pending: set[str] = set()
        self.rows: list[LayerRow] = []

    def expect(self, layer_name: str) -> None:
        """A layer was built with our linear method; its row will come at load."""
        self._pending.add(layer_name)

    def add(self, row: LayerRow) -> None:
        self.rows.append(row)
        self._pending.discard(row.name)
        record_layer_sparsity(row.name, row.pattern, row.kernel, row.sparsity, row.dense_bytes, row.stored_bytes)
        if not self._pending:
            release_freed_memory()
            # And again once a compiled engine's warm-up is over: compiling and running
            # that forward free memory that glibc would otherwise keep (up to ~370 MiB
            # on a Llama ~1B), hiding part of what the compressed weights saved.
            after_cpu_warm_up(functools.partial(release_after_warm_up, self._logger))
            self._logger.info("vllm-sparse layer table:\n%s", format_layer_table(self.rows))
            write_layer_table(self.rows, quantization="vllm-sparse")


def release_after_warm_up(logger: logging.Logger) -> None:
    """Hand back what a compiled engine's warm-up freed, logging RSS before and after
    (a plain function: the wrapper installed once per process keeps it, not a report)."""
    process = psutil.Process()
    before = process.memory_info().rss
    release_freed_memory()
    logger.info("vllm-sparse: compiled warm-up over; freed heap handed back, RSS %.0f -> %.0f MiB",
                before / 2**20, process.memory_info().rss / 2**20)
