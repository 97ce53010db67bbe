"""Zero the lowest-scoring weights of a linear layer: unstructured (per output row,
at a given sparsity) or N:M (per group of M inputs). Magnitude pruning scores by
|W|; the calibrated methods bring their own scores."""

from __future__ import annotations

import torch

from ..kernels.patterns import NMPattern


def magnitude_prune(weight: torch.Tensor, sparsity: float = 0.5, pattern: NMPattern | None = None) -> torch.Tensor:
    """A copy of ``weight`` with its smallest-magnitude entries set to zero."""
    scores = weight.abs().float()
    if pattern is not None:
        return prune_by_score_nm(weight, scores, pattern)
    return prune_by_score(weight, scores, sparsity)


def prune_by_score(weight: torch.Tensor, scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Zero the ``sparsity`` share of entries with the lowest scores, per output row
    (per-row is what Wanda does and keeps every neuron alive)."""
    drop = int(weight.shape[1] * sparsity)
    pruned = weight.clone()
    if drop == 0:
        return pruned
    lowest = torch.topk(scores, drop, dim=1, largest=False).indices
    pruned.scatter_(1, lowest, 0)
    return pruned


def prune_by_score_nm(weight: torch.Tensor, scores: torch.Tensor, pattern: NMPattern) -> torch.Tensor:
    """Keep the N highest-scoring entries of every group of M along the input dim."""
    rows, cols = weight.shape
    if cols % pattern.m:
        raise ValueError(f"in_features={cols} is not a multiple of {pattern.m} for {pattern}")
    grouped_scores = scores.reshape(rows, cols // pattern.m, pattern.m)
    lowest = torch.topk(grouped_scores, pattern.m - pattern.n, dim=-1, largest=False).indices
    keep = torch.ones_like(grouped_scores, dtype=torch.bool).scatter_(-1, lowest, False)
    return weight.masked_fill(~keep.reshape(rows, cols), 0)
