"""The sparse figures as the API server sees them: the per-layer table written by
the worker, and the FFN-skip counters aggregated over every process."""

from __future__ import annotations

import os
from collections import Counter as Tally
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

from ..checkpoint.layer_table import LayerRow
from ..plugin.run_files import read_layer_table

FFN_METRIC = "vllm_sparse_ffn_blocks"


@dataclass(frozen=True)
class SparseFigures:
    quantization: str
    layers: list[LayerRow]
    ffn_skip: dict[int, tuple[int, int]]  # layer -> (skipped, computed)

    @property
    def model_sparsity(self) -> float:
        params = sum(_numel(row.shape) for row in self.layers)
        zeros = sum(row.sparsity * _numel(row.shape) for row in self.layers)
        return zeros / params if params else 0.0

    @property
    def ffn_skip_ratio(self) -> float:
        skipped = sum(s for s, _ in self.ffn_skip.values())
        total = skipped + sum(c for _, c in self.ffn_skip.values())
        return skipped / total if total else 0.0

    @property
    def kernel_layers(self) -> dict[str, int]:
        return dict(Tally(row.kernel for row in self.layers))


def ffn_skip_counts() -> dict[int, tuple[int, int]]:
    """Skip counters summed over all processes (multiprocess mode) or this one."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    counts: dict[int, list[int]] = {}
    for family in registry.collect():
        if family.name != FFN_METRIC:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            entry = counts.setdefault(int(sample.labels["layer"]), [0, 0])
            entry[0 if sample.labels["decision"] == "skipped" else 1] += int(sample.value)
    return {layer: (skipped, computed) for layer, (skipped, computed) in sorted(counts.items())}


_layer_table: tuple[str, list[LayerRow]] | None = None


def _loaded_layer_table() -> tuple[str, list[LayerRow]]:
    """The worker writes the table once, at load: read it once it is there, not on
    every snapshot (WatchMetrics may ask ten times a second)."""
    global _layer_table
    if _layer_table is None:
        table = read_layer_table()
        if not table[1]:
            return table
        _layer_table = table
    return _layer_table


def current_figures() -> SparseFigures:
    quantization, layers = _loaded_layer_table()
    return SparseFigures(quantization, layers, ffn_skip_counts())


def _numel(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
