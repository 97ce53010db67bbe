"""Figures recorded where the model runs (vLLM's worker processes) and exported on
the API server's ``/metrics``.

prometheus_client's multiprocess mode carries them across processes: when
``PROMETHEUS_MULTIPROC_DIR`` names a folder before vLLM starts (``vllm-sparse serve``
sets it), every process writes its samples there and the server aggregates them.
Without it they stay in the recording process (fine in one-process tests).

Call these from eager Python code only: a Prometheus call inside a compiled graph
is rejected by torch.compile.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from prometheus_client import Counter, Gauge

FFN_BLOCKS = Counter(
    "vllm_sparse_ffn_blocks_total",
    "Feed-forward blocks run per token, by decoder layer and decision (skipped or computed).",
    ["layer", "decision"],
)
FFN_NEURONS = Counter(
    "vllm_sparse_ffn_neurons_total",
    "Intermediate FFN neurons under neuron-level skipping, per token row that may skip and computes the block, "
    "by decoder layer and decision (dropped: |SiLU(gate)| at or under the layer's threshold, or kept).",
    ["layer", "decision"],
)
KERNEL_LAYERS = Gauge(
    "vllm_sparse_kernel_layers",
    "Linear layers by the kernel path the dispatcher chose for them at load.",
    ["kernel"],
    multiprocess_mode="max",
)
LAYER_SPARSITY = Gauge(
    "vllm_sparse_layer_sparsity_ratio",
    "Share of zero weights in each linear layer, as loaded.",
    ["layer", "pattern", "kernel"],
    multiprocess_mode="max",
)

WEIGHT_BYTES = Gauge(
    "vllm_sparse_linear_weight_bytes",
    "Bytes of the linear layers' weights handled by vllm-sparse: as dense tensors (form=dense) and as this "
    "server keeps them in memory (form=stored); summed over the live worker processes.",
    ["form"],
    multiprocess_mode="livesum",
)

HEAD_GEMV_ROWS = Gauge(
    "vllm_sparse_lm_head_gemv_max_rows",
    "Rows (decode batch) up to which the LM head runs vllm-sparse's dense GEMV; above it, and everywhere when 0, "
    "vLLM's GEMM.",
    multiprocess_mode="max",
)


def record_head_gemv(max_rows: int) -> None:
    HEAD_GEMV_ROWS.set(max_rows)


def record_layer_sparsity(layer: str, pattern: str, kernel: str, sparsity: float, dense_bytes: int = 0,
                          stored_bytes: int = 0) -> None:
    """One linear layer loaded: its sparsity, pattern, kernel path and weight bytes."""
    LAYER_SPARSITY.labels(layer, pattern, kernel).set(sparsity)
    KERNEL_LAYERS.labels(kernel).inc()
    WEIGHT_BYTES.labels("dense").inc(dense_bytes)
    WEIGHT_BYTES.labels("stored").inc(stored_bytes)


class _PerLayerCounts:
    """A counter by decoder layer and one of two decisions, with process-local totals
    for snapshots (gRPC GetMetrics, tests) without scraping."""

    def __init__(self, counter: Counter, decisions: tuple[str, str]) -> None:
        self.counter = counter
        self.decisions = decisions
        self._children: dict[int, tuple] = {}  # layer -> the counter's two children
        self._totals: dict[int, list[int]] = defaultdict(lambda: [0, 0])

    def add(self, layer_index: int, first: int, second: int) -> None:
        children = self._children.get(layer_index)
        if children is None:  # labels() takes a lock and builds a key: once per layer, not per step
            label = str(layer_index)
            children = self._children[layer_index] = tuple(self.counter.labels(label, d) for d in self.decisions)
        if first:
            children[0].inc(first)
        if second:
            children[1].inc(second)
        totals = self._totals[layer_index]
        totals[0] += first
        totals[1] += second

    def totals(self) -> dict[int, tuple[int, int]]:
        return {layer: (first, second) for layer, (first, second) in sorted(self._totals.items())}


_blocks = _PerLayerCounts(FFN_BLOCKS, ("skipped", "computed"))
_neurons = _PerLayerCounts(FFN_NEURONS, ("dropped", "kept"))


def record_ffn_blocks(layer_index: int, skipped: int, computed: int) -> None:
    """Count one forward pass of a decoder layer's FFN: how many token rows skipped
    it and how many computed it."""
    _blocks.add(layer_index, skipped, computed)


def record_ffn_neurons(layer_index: int, dropped: int, kept: int) -> None:
    """Count the intermediate neurons that neuron-level skipping dropped and kept in
    one forward pass of a decoder layer's FFN (over its computed rows that may skip)."""
    _neurons.add(layer_index, dropped, kept)


# Sources that count in tensors and hand their counts on every FFN_FLUSH_SECONDS (the
# one-op skip step): asked to hand them on before totals are read.
FFN_FLUSH_SECONDS = 0.5
_ffn_pending: list[Callable[[], None]] = []


def on_ffn_totals_read(flush: Callable[[], None]) -> None:
    _ffn_pending.append(flush)


def ffn_block_totals() -> dict[int, tuple[int, int]]:
    """Per decoder layer: (skipped, computed) token rows recorded in this process."""
    for flush in _ffn_pending:
        flush()
    return _blocks.totals()


def ffn_neuron_totals() -> dict[int, tuple[int, int]]:
    """Per decoder layer: (dropped, kept) neurons recorded in this process."""
    for flush in _ffn_pending:
        flush()
    return _neurons.totals()
