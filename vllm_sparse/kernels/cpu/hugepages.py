"""Weights the CPU kernels stream, on 2 MiB pages (``vllm_sparse::cpu_hugepage_copy``).

A decode kernel reads each weight once per step; on 4 KiB pages that is a TLB miss
every 4 KiB, and the scattered rows of the neuron-level kernel miss more
(``benchmarks/huge_pages.py``: 1.05-1.12x for the 2:4 kernel, 1.21x for the
neuron-level MLP on a 2-core AMD EPYC). Linux's transparent huge pages in "madvise"
mode (the usual default) honour the advice; elsewhere it is ignored and the copy is
an ordinary one.
"""

from __future__ import annotations

import torch

from . import build

HUGE_PAGE = 2 << 20


def on_huge_pages(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` copied onto memory advised for 2 MiB pages; smaller tensors, and any
    when the kernels are not built, are returned as they are."""
    if tensor.device.type != "cpu" or tensor.nbytes < HUGE_PAGE or not build.load():
        return tensor
    return torch.ops.vllm_sparse.cpu_hugepage_copy(tensor.contiguous())
