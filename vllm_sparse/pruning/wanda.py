"""Wanda (Sun et al., 2023, "A Simple and Effective Pruning Approach for LLMs").

A weight's importance is |W_ij| * ||X_j||_2: its magnitude times the L2 norm of the
input column it multiplies, over the calibration tokens. Large activations (the
outlier features of LLMs) make even small weights matter, which magnitude pruning
misses. Weights are compared within each output row (per-output comparison group),
which the paper found better than per-layer for LLMs; no weight update follows.
"""

from __future__ import annotations

import torch

from ..kernels.patterns import NMPattern
from .masks import prune_by_score, prune_by_score_nm


def wanda_scores(weight: torch.Tensor, column_norms: torch.Tensor) -> torch.Tensor:
    """|W| * ||X_j||_2, broadcast over rows. ``column_norms``: [in_features]."""
    if column_norms.shape != (weight.shape[1],):
        raise ValueError(f"column norms of shape {tuple(column_norms.shape)} for a weight of shape {tuple(weight.shape)}")
    return weight.abs().float() * column_norms.float()[None, :]


def wanda_prune(
    weight: torch.Tensor, column_norms: torch.Tensor, sparsity: float = 0.5, pattern: NMPattern | None = None
) -> torch.Tensor:
    """A copy of ``weight`` with the lowest-scoring entries of each row (or of each
    group of M inputs for N:M) set to +0.0."""
    scores = wanda_scores(weight, column_norms)
    if pattern is not None:
        return prune_by_score_nm(weight, scores, pattern)
    return prune_by_score(weight, scores, sparsity)
