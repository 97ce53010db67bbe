"""FFN skipping as one C++ op per decoder layer (CPU): the decision, the countdowns and
the MLP inside ``vllm_sparse::cpu_skip_mlp`` (kernels/cpu/skip_mlp.py), so a compiled
graph runs each layer's skip-aware MLP as one node with no Python and no decision read
back to the host. Eager mode calls the same ops, so both decide alike.

Per forward pass, the first decoder layer calls ``vllm_sparse::ffn_skip_rows`` (Python,
once a pass): each row's kind from the attention metadata (prompt or warm-up rows
never skip; padding rows and dummy runs are not counted). The countdowns then flow
from layer to layer as an int32 tensor. Each MLP module holds two buffers the op
updates in place: ``ffn_skip_counts`` (skipped and computed rows, dropped and kept
neurons so far) and
``ffn_skip_decisions`` (which rows skipped its last call). A daemon thread hands the
counts to Prometheus every ``FFN_FLUSH_SECONDS`` (and ``worker_metrics.ffn_block_totals()``
before it reads them): per step that would cost ~60 counter updates, more than the
decision itself. The decisions feed the test trace.

Used where every MLP projection runs a kernel the op can call: vLLM's oneDNN GEMM
(dense layers) or our CPU sparse kernels, unsharded (TP = 1) and without bias.
Elsewhere (CUDA, quantized layers, tensor parallelism) ffn_skip.py's Python step runs.
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from ..kernels import dispatcher
from ..kernels.cpu import build as cpu_build
from ..kernels.cpu.skip_mlp import (ROW_COMPUTE, ROW_MAY_SKIP, ROW_UNCOUNTED, Projection, neuron_weights,
                                    new_counts, skip_mlp, skip_params)
from ..skip.decision import eligible_rows, layer_is_checked, layer_is_hot
from ..skip.policy import SkipPolicy
from . import vllm_internals as vi
from .batch_rows import append_trace, query_rows_prompt, tracing
from .worker_metrics import FFN_FLUSH_SECONDS, on_ffn_totals_read, record_ffn_blocks, record_ffn_neurons

logger = logging.getLogger(vi.LOGGER_NAME)


def projection(linear) -> tuple[Projection | None, str]:
    """How the op runs ``linear`` (None, and why, where it cannot)."""
    if getattr(linear, "bias", None) is not None:
        return None, "has a bias"
    if getattr(linear, "tp_size", 1) != 1:
        return None, "is sharded (tensor parallel)"
    method = linear.quant_method
    from .sparse_linear import SparseLinearMethod

    if isinstance(method, SparseLinearMethod) and linear.sparse_path == dispatcher.CPU_SPARSE:
        return Projection.cpu_sparse(linear.sparse_weight), ""
    dense = isinstance(method, vi.UnquantizedLinearMethod) or (
        isinstance(method, SparseLinearMethod) and linear.sparse_path == dispatcher.DENSE)
    if not dense:
        return None, f"runs {type(method).__name__}"
    handler = vi.cpu_onednn_handler(linear)
    if handler is None:
        return None, "does not run vLLM's oneDNN GEMM"
    return Projection.onednn(handler.handler_tensor, handler.n), ""


class OpSkip:
    """One model's FFN skipping through the op."""

    def __init__(self, policy: SkipPolicy, num_layers: int, first_layer: int, mlps: dict[int, torch.nn.Module],
                 max_rows: int) -> None:
        self.policy = policy
        self.num_layers = num_layers
        self.first_layer = first_layer
        self.mlps = mlps
        self.projections: dict[int, tuple[Projection, Projection]] = {}
        # Neuron-level skipping: per layer, the bf16 weights laid out for the one-row
        # kernel that reads only the active neurons (kernels/cpu/skip_mlp.neuron_weights).
        self.neuron_weights: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # Normal tensors, not inference tensors: the op updates them in place in
        # vLLM's forward passes, some of which run outside inference mode.
        with torch.inference_mode(False):
            for index, mlp in mlps.items():
                params = skip_params(hot=layer_is_hot(policy, index, num_layers),
                                     check=layer_is_checked(policy, index, num_layers),
                                     threshold=policy.threshold, skip_layers=policy.skip_layers,
                                     neuron_threshold=policy.neuron_threshold(index))
                mlp.register_buffer("ffn_skip_params", params, persistent=False)
                mlp.register_buffer("ffn_skip_counts", new_counts(), persistent=False)
                mlp.register_buffer("ffn_skip_decisions", torch.zeros(max_rows, dtype=torch.uint8),
                                    persistent=False)
            # Which entry of MODELS this is, as data: a compiled graph loaded from vLLM's
            # cache in another process must find that process's model, not a constant.
            mlps[first_layer].register_buffer("ffn_skip_model", torch.full((1,), -1, dtype=torch.int64),
                                              persistent=False)
        self._flushed = {i: (0, 0, 0, 0) for i in mlps}
        self._flush_lock = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._trace_pass: tuple[torch.Tensor, torch.Tensor] | None = None  # (positions, row kinds) to trace
        # Per-pass values the hooks hand on (set while a pass runs).
        self.row_kind: torch.Tensor | None = None
        self.countdown: torch.Tensor | None = None

    @staticmethod
    def resolve(mlps: dict[int, torch.nn.Module]) -> tuple[dict[int, tuple[Projection, Projection]] | None, str]:
        """Every layer's (gate_up, down) projections, or None and the first reason the
        op cannot run them."""
        if not cpu_build.load():
            return None, f"the CPU kernels did not build ({cpu_build.load_error()})"
        projections = {}
        for index, mlp in mlps.items():
            pair = []
            for name in ("gate_up_proj", "down_proj"):
                linear = getattr(mlp, name)
                proj, why = projection(linear)
                if proj is None:
                    return None, f"layer {index} {name} {why}"
                pair.append(proj)
            projections[index] = (pair[0], pair[1])
        return projections, ""

    def keep_neuron_weights(self) -> None:
        """Called once the checkpoint is loaded, before vLLM prepacks the weights and
        drops the plain tensors: lay out each dense bf16 layer under neuron-level
        skipping for the one-row kernel (an extra copy of those MLPs: vLLM's prepacked
        one still serves batched and prompt rows)."""
        for index, mlp in self.mlps.items():
            gate_up, down = mlp.gate_up_proj, mlp.down_proj
            dense = all(isinstance(p.quant_method, vi.UnquantizedLinearMethod) and getattr(p, "bias", None) is None
                        and getattr(p, "tp_size", 1) == 1 and p.weight.dtype == torch.bfloat16
                        for p in (gate_up, down))
            if self.policy.neuron_threshold(index) > 0 and dense:
                self.neuron_weights[index] = neuron_weights(gate_up.weight.data, down.weight.data)
        if self.policy.neuron_level:
            logger.info("FFN skipping: neuron-level on %d layers; the one-row kernel reads only active neurons "
                        "on %d of them (dense bf16)", sum(self.policy.neuron_threshold(i) > 0 for i in self.mlps),
                        len(self.neuron_weights))

    def rows(self, positions: torch.Tensor) -> torch.Tensor:
        """int8 [rows]: each row's kind for this pass (the op ``ffn_skip_rows``)."""
        positions = positions.reshape(-1)
        rows = positions.shape[0]
        kind = torch.full((rows,), ROW_UNCOUNTED, dtype=torch.int8, device=positions.device)
        is_prompt = query_rows_prompt(positions.device)
        if is_prompt is not None:
            real = min(rows, is_prompt.shape[0])
            may = eligible_rows(self.policy, positions[:real], is_prompt[:real])
            kind[:real] = torch.where(may, ROW_MAY_SKIP, ROW_COMPUTE).to(torch.int8)
        self.flush_trace()
        if tracing() and is_prompt is not None:
            self._trace_pass = (positions.clone().cpu(), kind.clone().cpu())
        return kind

    def register(self) -> None:
        """Make the op ``ffn_skip_rows`` find this model, and start handing counts on."""
        MODELS.append(self)
        self.mlps[self.first_layer].ffn_skip_model.fill_(len(MODELS) - 1)
        self.start_flusher()

    def step(self, index: int, x: torch.Tensor, residual: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Layer ``index``'s skip-aware MLP; the first layer's call starts the pass."""
        if index == self.first_layer:
            key = self.mlps[index].ffn_skip_model
            self.row_kind = torch.ops.vllm_sparse.ffn_skip_rows(positions, key)
            self.countdown = torch.zeros(x.shape[0], dtype=torch.int32, device=x.device)
        mlp = self.mlps[index]
        gate_up, down = self.projections[index]
        out, self.countdown = skip_mlp(x, residual, self.row_kind, self.countdown, mlp.ffn_skip_counts,
                                       mlp.ffn_skip_decisions, gate_up, down, mlp.ffn_skip_params,
                                       self.neuron_weights.get(index))
        return out

    def flush_counts(self) -> None:
        """Hand the op's counts since the last flush to Prometheus. (Read while the op
        may be adding to them: a count read before its update is handed on next time.)"""
        with self._flush_lock:
            for index, mlp in self.mlps.items():
                counts = tuple(mlp.ffn_skip_counts.tolist())
                done = self._flushed[index]
                if counts == done:
                    continue
                skipped, computed, dropped, kept = (now - before for now, before in zip(counts, done))
                record_ffn_blocks(index, skipped, computed)
                if dropped or kept:
                    record_ffn_neurons(index, dropped, kept)
                self._flushed[index] = counts

    def start_flusher(self) -> None:
        def loop() -> None:
            while True:
                time.sleep(FFN_FLUSH_SECONDS)
                self.flush_counts()

        if self._flusher is None:
            self._flusher = threading.Thread(target=loop, name="vllm-sparse-ffn-counts", daemon=True)
            self._flusher.start()

    def flush_trace(self) -> None:
        """Append the last traced pass's decisions (its counted rows) to the test trace."""
        if self._trace_pass is None:
            return
        positions, kind = self._trace_pass
        self._trace_pass = None
        counted = kind != ROW_UNCOUNTED
        for index, mlp in self.mlps.items():
            skipped = mlp.ffn_skip_decisions[:positions.shape[0]].cpu().bool()
            append_trace(index, positions[counted], skipped[counted])


# The models of this process, by the index their ``ffn_skip_model`` buffer holds.
MODELS: list[OpSkip] = []


@torch.library.custom_op("vllm_sparse::ffn_skip_rows", mutates_args=())
def ffn_skip_rows(positions: torch.Tensor, model: torch.Tensor) -> torch.Tensor:
    """Each row's kind for this forward pass (int8 [rows]); reads the attention
    metadata of the forward context, which no traced graph holds."""
    return MODELS[int(model)].rows(positions)


@ffn_skip_rows.register_fake
def _ffn_skip_rows_fake(positions, model):
    return positions.new_empty(positions.reshape(-1).shape[0], dtype=torch.int8)


def flush_all() -> None:
    for state in MODELS:
        state.flush_counts()
        state.flush_trace()


def _flush_counts() -> None:
    for state in MODELS:
        state.flush_counts()


on_ffn_totals_read(_flush_counts)
