"""Neuron-level skipping in FFN skipping's Python step (ffn_skip.py): where the C++ op
of ffn_skip_op does not run (CUDA, quantized layers, tensor parallelism), a layer with
a neuron threshold drops, in the rows that may skip, the intermediate neurons whose
|SiLU(gate)| is at or under it, as the transformers reference (skip/hf.py) does.

Two ways, same decisions:
* any device, any linear method: vLLM's own gate_up and down projections with the
  dropped activations zeroed (no bytes saved: the point is the same tokens);
* CUDA, dense unsharded weights without bias: the Triton kernel
  (``vllm_sparse::neuron_mlp``) that reads only the kept neurons' up rows and down
  columns, at up to ``KERNEL_MAX_ROWS`` rows (decode; a prompt's many rows keep
  nearly every neuron, where vLLM's GEMMs are faster). It keeps down_proj
  transposed, a copy of that weight, made at the first call (after loading).

The first way counts the neurons it drops and keeps (``take_counts``, for
``vllm_sparse_ffn_neurons_total``); the Triton kernel does not report them, so its
calls are not counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..kernels.custom_ops import neuron_mlp
from ..kernels.row_modes import ROW_DROP_NEURONS, ROW_FULL, ROW_SKIPPED
from . import vllm_internals as vi

logger = logging.getLogger(vi.LOGGER_NAME)

KERNEL_MAX_ROWS = 64


def kernel_applies(mlp) -> bool:
    """Can the Triton kernel run this vLLM MLP module's projections?"""
    gate_up, down = mlp.gate_up_proj, mlp.down_proj
    weight, down_weight = getattr(gate_up, "weight", None), getattr(down, "weight", None)
    return (weight is not None and down_weight is not None and weight.device.type == "cuda"
            and all(isinstance(p.quant_method, vi.UnquantizedLinearMethod) and p.bias is None
                    and getattr(p, "tp_size", 1) == 1 for p in (gate_up, down)))


class NeuronMLP:
    """One layer's MLP under neuron-level skipping, for ``SkipRun.ffn``: called as
    the MLP (the rows of its call that may skip drop neurons) and, through ``fused``,
    with the rows that skip the block given as flags."""

    def __init__(self, mlp, threshold: float, may_skip_rows: Callable[[], torch.Tensor]) -> None:
        self.mlp = mlp
        self.threshold = threshold
        self.may_skip_rows = may_skip_rows  # bool [rows of the current MLP call]
        self.kernel = kernel_applies(mlp)
        self._down_t: torch.Tensor | None = None
        self._dropped = self._kept = 0  # neurons since the last take_counts()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        may_skip = self.may_skip_rows().to(x.device)
        if self.kernel and x.shape[0] <= KERNEL_MAX_ROWS:
            return self._kernel(x, torch.where(may_skip, ROW_DROP_NEURONS, ROW_FULL).to(torch.int8))
        gate_up, _ = self.mlp.gate_up_proj(x)
        inter = gate_up.shape[-1] // 2
        act = F.silu(gate_up[:, :inter])
        drop = (act.abs() <= self.threshold) & may_skip[:, None]
        out, _ = self.mlp.down_proj(act.masked_fill(drop, 0) * gate_up[:, inter:])
        dropped, rows_dropping = torch.stack([drop.sum(), may_skip.sum()]).tolist()
        self._dropped += dropped
        self._kept += rows_dropping * inter - dropped
        return out

    def take_counts(self) -> tuple[int, int]:
        """(dropped, kept) neurons over the calls since the last take."""
        counts = (self._dropped, self._kept)
        self._dropped = self._kept = 0
        return counts

    @property
    def fused(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
        """``FusedMLP`` for SkipRun (rows flagged in ``skip`` return zeros), where the
        kernel runs; None elsewhere (SkipRun then gathers the computing rows)."""
        if not self.kernel:
            return None

        def fused(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
            may_skip = self.may_skip_rows().to(x.device)
            mode = torch.where(skip, ROW_SKIPPED, torch.where(may_skip, ROW_DROP_NEURONS, ROW_FULL))
            return self._kernel(x, mode.to(torch.int8))

        return fused

    def _kernel(self, x: torch.Tensor, mode: torch.Tensor) -> torch.Tensor:
        weight = self.mlp.gate_up_proj.weight
        inter = weight.shape[0] // 2
        if self._down_t is None:  # first call: the weights are loaded by now
            self._down_t = self.mlp.down_proj.weight.t().contiguous()
            logger.info("FFN skipping: neuron-level Triton kernel on a [%d, %d] MLP (down_proj kept transposed)",
                        inter, weight.shape[1])
        out, _ = neuron_mlp(x, mode, weight[:inter], weight[inter:], self._down_t, self.threshold)
        return out
