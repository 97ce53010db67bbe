"""What to prune and how: the sparsity plan (one sparsity, a pattern, or one
sparsity per decoder layer), the method's settings, the checks made before any
model is loaded, and magnitude pruning of a whole state dict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..checkpoint.layer_names import prunable_layer_index
from ..kernels.patterns import NMPattern
from .masks import magnitude_prune


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


METHODS = ("magnitude", "wanda", "sparsegpt")
ALLOCATIONS = ("uniform", "owl")


@dataclass(frozen=True)
class OWLConfig:
    m: float = 5.0  # a score is an outlier above m x its layer's mean score
    lam: float = 0.08  # layer sparsities stay within target +- lam


@dataclass(frozen=True)
class SparseGPTConfig:
    blocksize: int = 128
    damp: float = 0.01  # added to H's diagonal, relative to its mean


def check_request(method: str, plan: PruningPlan, allocation: str = "uniform", calibration=None) -> None:
    """Refuse impossible combinations before any model is loaded."""
    if method not in METHODS:
        raise ValueError(f"unknown pruning method {method!r}; choose one of {', '.join(METHODS)}")
    if allocation not in ALLOCATIONS:
        raise ValueError(f"unknown sparsity allocation {allocation!r}; choose one of {', '.join(ALLOCATIONS)}")
    if allocation == "owl":
        if plan.pattern is not None:
            raise ValueError(
                f"OWL allocation gives each layer its own sparsity, but {plan.pattern} fixes every layer at "
                f"{1 - plan.pattern.density:g}; use --pattern unstructured with --allocation owl"
            )
        if plan.layer_sparsity is not None:
            raise ValueError("OWL allocation computes the per-layer sparsity itself; drop --layer-sparsity")
    if calibration is None and (method != "magnitude" or allocation == "owl"):
        what = f"--method {method}" if method != "magnitude" else "--allocation owl"
        raise ValueError(f"{what} needs calibration text: pass --calibration FILE (or --calibration self-chat)")
