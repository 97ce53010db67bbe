"""The sparse figures as the API server sees them: the per-layer table written by
the worker, and the FFN-skip counters (token rows by block, neurons) aggregated over
every process."""

from __future__ import annotations

import os
from collections import Counter as Tally
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

from ..checkpoint.layer_table import LayerRow
from ..plugin.run_files import read_layer_table

FFN_METRIC = "vllm_sparse_ffn_blocks"
NEURON_METRIC = "vllm_sparse_ffn_neurons"


@dataclass(frozen=True)
class SparseFigures:
    quantization: str
    layers: list[LayerRow]
    ffn_skip: dict[int, tuple[int, int]]  # layer -> (skipped, computed) token rows
    ffn_neurons: dict[int, tuple[int, int]]  # layer -> (dropped, kept) neurons

    @property
    def model_sparsity(self) -> float:
        params = sum(_numel(row.shape) for row in self.layers)
        zeros = sum(row.sparsity * _numel(row.shape) for row in self.layers)
        return zeros / params if params else 0.0

    @property
    def ffn_skip_ratio(self) -> float:
        return _first_share(self.ffn_skip.values())

    @property
    def ffn_neuron_drop_ratio(self) -> float:
        return _first_share(self.ffn_neurons.values())

    @property
    def kernel_layers(self) -> dict[str, int]:
        return dict(Tally(row.kernel for row in self.layers))


def share(first: int, second: int) -> float:
    """first / (first + second); 0 when both are 0."""
    return first / (first + second) if first + second else 0.0


def _first_share(pairs) -> float:
    """share() of the sums over (first, second) pairs."""
    pairs = list(pairs)
    return share(sum(a for a, _ in pairs), sum(b for _, b in pairs))


def ffn_skip_counts() -> dict[int, tuple[int, int]]:
    """Token rows (skipped, computed) per layer, summed over all processes
    (multiprocess mode) or this one."""
    return _per_layer_counts(FFN_METRIC, "skipped")


def ffn_neuron_counts() -> dict[int, tuple[int, int]]:
    """Neurons (dropped, kept) per layer, summed like ``ffn_skip_counts``."""
    return _per_layer_counts(NEURON_METRIC, "dropped")


def _per_layer_counts(metric: str, first_decision: str) -> dict[int, tuple[int, int]]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    counts: dict[int, list[int]] = {}
    for family in registry.collect():
        if family.name != metric:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            entry = counts.setdefault(int(sample.labels["layer"]), [0, 0])
            entry[0 if sample.labels["decision"] == first_decision else 1] += int(sample.value)
    return {layer: (first, second) for layer, (first, second) in sorted(counts.items())}


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
    return SparseFigures(quantization, layers, ffn_skip_counts(), ffn_neuron_counts())


def _numel(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
