"""OWL: outlier-weighted layer-wise sparsity (Yin et al., 2024, "Outlier Weighed
Layerwise Sparsity: A Missing Secret Sauce for Pruning LLMs to High Sparsity").

Layers differ in how many outlier features they hold, and pruning a layer rich in
outliers hurts more. A layer's outlier ratio is the share of its Wanda scores
(|W| * ||X||, over all its linear layers) above M times the layer's mean score.
Layers with more outliers keep more weights: sparsity_i = target - lambda * r_i,
where r_i is the outlier ratio centred on its mean over the layers and scaled so
the largest deviation is 1. So the allocation averages exactly to the target (every
layer has the same number of prunable weights in a Llama) and stays within
[target - lambda, target + lambda].

The ratios are measured on the dense model (the scores before any pruning), in one
calibration pass that runs each layer once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .wanda import wanda_scores


def outlier_ratio(scores: Sequence[torch.Tensor], m: float = 5.0) -> float:
    """Share of all the given scores (one layer's) above ``m`` x their mean."""
    flat = torch.cat([s.reshape(-1).float() for s in scores])
    return float((flat > m * flat.mean()).float().mean())


def owl_layer_sparsity(ratios: Sequence[float], target: float, lam: float = 0.08) -> tuple[float, ...]:
    """Per-layer sparsity from per-layer outlier ratios (see the module docstring)."""
    if not 0.0 <= target < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {target}")
    if lam < 0:
        raise ValueError(f"OWL lambda must be >= 0, got {lam}")
    if target - lam < 0 or target + lam >= 1:
        raise ValueError(
            f"OWL sparsity range [{target - lam:.3f}, {target + lam:.3f}] leaves [0, 1); lower --owl-lambda"
        )
    r = torch.tensor(list(ratios), dtype=torch.float64)
    if r.numel() == 0:
        raise ValueError("OWL needs the outlier ratio of at least one layer")
    centred = r - r.mean()
    spread = centred.abs().max()
    if spread == 0:  # every layer alike: nothing to redistribute
        return tuple(float(target) for _ in ratios)
    return tuple(float(s) for s in target - lam * centred / spread)


def layer_outlier_ratio(weights: dict[str, torch.Tensor], column_norms: dict[str, torch.Tensor], m: float) -> float:
    """Outlier ratio of one decoder layer from its linear weights and input norms."""
    return outlier_ratio([wanda_scores(weights[name], column_norms[name]) for name in weights], m)
