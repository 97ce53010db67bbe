"""Collects one table row per sparse-aware layer as the model loads and logs the
whole table once the last layer is done."""

from __future__ import annotations

import logging

from ..checkpoint.layer_table import LayerRow, format_layer_table
from ..runtime import release_freed_memory
from .run_files import write_layer_table
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
            self._logger.info("vllm-sparse layer table:\n%s", format_layer_table(self.rows))
            write_layer_table(self.rows, quantization="vllm-sparse")
