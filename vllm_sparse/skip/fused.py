"""The skip-aware fused MLP kernel (``vllm_sparse.kernels``, op ``vllm_sparse::skip_mlp``)
as a ``FusedMLP`` for ``SkipRun.ffn``: skipped rows do no work inside the kernel
instead of being gathered out. For a merged [gate; up] weight, as vLLM stores it."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .decision import FusedMLP


def fused_skip_mlp(gate_up_weight: Callable[[], torch.Tensor], down_weight: Callable[[], torch.Tensor]) -> FusedMLP:
    """``gate_up_weight()`` -> [2I, H], ``down_weight()`` -> [H, I] (callables: the
    weights are read at call time, after loading has put them in place)."""
    from ..kernels import custom_ops

    def fused(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        w, wd = gate_up_weight(), down_weight()
        inter = w.shape[0] // 2
        return custom_ops.skip_mlp(x, skip, custom_ops.FMT_DENSE, 2, 4, 128, inter,
                                   w[:inter], None, None, w[inter:], None, None, wd, None, None)

    return fused
