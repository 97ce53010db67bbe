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


# Process-local totals, for snapshots (gRPC GetMetrics, tests) without scraping.
_ffn_totals: dict[int, list[int]] = defaultdict(lambda: [0, 0])
_ffn_counters: dict[int, tuple] = {}  # layer -> (skipped, computed) children of FFN_BLOCKS


def record_ffn_blocks(layer_index: int, skipped: int, computed: int) -> None:
    """Count one forward pass of a decoder layer's FFN: how many token rows skipped
    it and how many computed it."""
    counters = _ffn_counters.get(layer_index)
    if counters is None:  # labels() takes a lock and builds a key: once per layer, not per step
        label = str(layer_index)
        counters = _ffn_counters[layer_index] = (FFN_BLOCKS.labels(label, "skipped"),
                                                 FFN_BLOCKS.labels(label, "computed"))
    if skipped:
        counters[0].inc(skipped)
    if computed:
        counters[1].inc(computed)
    totals = _ffn_totals[layer_index]
    totals[0] += skipped
    totals[1] += computed


# Sources that count in tensors and hand their counts on every FFN_FLUSH_SECONDS (the
# one-op skip step): asked to hand them on before totals are read.
FFN_FLUSH_SECONDS = 0.5
_ffn_pending: list[Callable[[], None]] = []


def on_ffn_totals_read(flush: Callable[[], None]) -> None:
    _ffn_pending.append(flush)


def ffn_block_totals() -> dict[int, tuple[int, int]]:
    """Per decoder layer: (skipped, computed) recorded in this process."""
    for flush in _ffn_pending:
        flush()
    return {layer: (skipped, computed) for layer, (skipped, computed) in sorted(_ffn_totals.items())}
