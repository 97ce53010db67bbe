"""The one place that decides how a pruned linear layer is computed.

The plugin asks ``select_path`` once per layer (at load time), keeps the weight in
the layout that path reads (``pack_for_path``) and calls ``sparse_linear`` at run
time. ``DENSE`` means: keep the ordinary dense weight and let the caller run its
usual dense matmul (in vLLM, the unquantized linear method), which is what wins on
CPU, where zeros alone buy nothing.
"""

from __future__ import annotations

import torch

from .patterns import WeightAnalysis

DENSE = "dense"

# Below this share of zeros a compressed layout cannot read fewer bytes than dense
# (the index metadata eats the saving), so such layers always stay dense.
MIN_SPARSITY_FOR_SPARSE_PATH = 0.3


def select_path(analysis: WeightAnalysis, dtype: torch.dtype, device: torch.device | str) -> str:
    """Name of the fastest correct path for a weight on a device."""
    device = torch.device(device)
    if device.type != "cuda" or analysis.sparsity < MIN_SPARSITY_FOR_SPARSE_PATH:
        return DENSE
    return DENSE


def dense_bytes(analysis: WeightAnalysis, dtype: torch.dtype) -> int:
    numel = 1
    for size in analysis.shape:
        numel *= size
    return numel * dtype.itemsize
