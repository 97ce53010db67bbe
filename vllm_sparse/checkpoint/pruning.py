"""Magnitude pruning: zero the smallest-magnitude weights of each linear layer,
unstructured (per layer, at a given sparsity) or N:M (per group of M inputs).

Better methods (Wanda, SparseGPT, OWL allocation) build on the same entry points.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..kernels.patterns import NMPattern

# Decoder-layer linear weights of Llama-family checkpoints (q/k/v/o, gate/up/down).
# Embeddings and lm_head are never pruned: they are lookups, and pruning them hurts
# quality far more than it saves.
_PRUNABLE = re.compile(r"^(?:model\.)?layers\.(\d+)\.(?:self_attn|mlp)\.\w+_proj\.weight$")


def prunable_layer_index(name: str) -> int | None:
    """Decoder layer index of a prunable weight name, None for anything else."""
    match = _PRUNABLE.match(name)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class PruningPlan:
    """``pattern`` None means unstructured at ``sparsity`` (or ``layer_sparsity[i]``
    for decoder layer i when given)."""

    sparsity: float = 0.5
    pattern: NMPattern | None = None
    layer_sparsity: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.pattern is not None:
            if self.layer_sparsity is not None:
                raise ValueError("per-layer sparsity applies to unstructured pruning, not N:M")
            if abs(self.sparsity - (1 - self.pattern.density)) > 1e-9:
                raise ValueError(
                    f"pattern {self.pattern} means sparsity {1 - self.pattern.density}, got {self.sparsity}"
                )
        for value in (self.sparsity, *(self.layer_sparsity or ())):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"sparsity must be in [0, 1), got {value}")

    @property
    def structure(self) -> str:
        return str(self.pattern) if self.pattern else "unstructured"

    def sparsity_for_layer(self, index: int) -> float:
        if self.layer_sparsity is None:
            return self.sparsity
        if index >= len(self.layer_sparsity):
            raise ValueError(
                f"per-layer sparsity lists {len(self.layer_sparsity)} values but the model has layer {index}"
            )
        return self.layer_sparsity[index]


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


def prune_state_dict(state_dict: dict[str, torch.Tensor], plan: PruningPlan) -> dict[str, torch.Tensor]:
    """Magnitude-prune every decoder-layer linear weight of a checkpoint."""
    pruned = {}
    for name, tensor in state_dict.items():
        index = prunable_layer_index(name)
        if index is None:
            pruned[name] = tensor
        else:
            pruned[name] = magnitude_prune(tensor, plan.sparsity_for_layer(index), plan.pattern)
    return pruned


def parse_layer_sparsity(text: str | Sequence[float] | None) -> tuple[float, ...] | None:
    """``"0.3,0.5,0.7"`` -> (0.3, 0.5, 0.7)."""
    if text is None:
        return None
    if isinstance(text, str):
        try:
            return tuple(float(part) for part in text.split(",") if part.strip())
        except ValueError as exc:
            raise ValueError(f"per-layer sparsity must be comma-separated numbers, got {text!r}") from exc
    return tuple(float(value) for value in text)
