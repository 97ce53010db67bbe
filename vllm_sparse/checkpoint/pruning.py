"""Pruning core: zero the lowest-scoring weights of each linear layer, unstructured
(per output row, at a given sparsity) or N:M (per group of M inputs), and
``prune_model``, the one entry point for every method.

Magnitude pruning scores weights by |W| and needs nothing but the checkpoint. The
calibrated methods live one per module and reuse the score helpers here:
``wanda`` (|W| x input norm), ``sparsegpt`` (second-order reconstruction) and
``owl`` (a sparsity per decoder layer from outlier ratios); ``calibration`` walks a
Llama model layer by layer to feed them activation statistics.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

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


def prune_model(
    model_dir: str | Path,
    method: str,
    plan: PruningPlan,
    *,
    calibration=None,
    allocation: str = "uniform",
    owl: OWLConfig = OWLConfig(),
    sparsegpt: SparseGPTConfig = SparseGPTConfig(),
    owl_ratios: Sequence[float] | None = None,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Prune the checkpoint in ``model_dir``: returns its state dict (original names
    and dtypes, decoder linear weights pruned) and the recipe to record.

    ``calibration`` is a ``calibration.CalibrationConfig``; ``owl_ratios`` reuses
    outlier ratios measured before (they depend only on the dense model, M and the
    calibration data), which saves a pass when pruning one model several ways.
    """
    from .writer import load_state_dict

    check_request(method, plan, allocation, calibration)
    needs_model = method != "magnitude" or allocation == "owl"
    if needs_model:  # fail before the slow part
        from .calibration import check_architecture

        check_architecture(model_dir)
        calibration.check()
    recipe: dict = {"method": method, "pattern": plan.structure, "sparsity": plan.sparsity, "allocation": allocation}
    if needs_model:
        recipe["calibration"] = calibration.recipe()
    state = load_state_dict(model_dir)
    if method == "magnitude" and allocation == "uniform":
        if plan.layer_sparsity:
            recipe["layer_sparsity"] = list(plan.layer_sparsity)
        return prune_state_dict(state, plan), recipe

    from . import calibration as calib

    model, tokenizer = calib.load_llama(model_dir)
    tokens = calib.calibration_tokens(tokenizer, calibration, model)
    if allocation == "owl":
        from .owl import owl_layer_sparsity

        if owl_ratios is None:
            owl_ratios = measure_outlier_ratios(model, tokens, owl.m, calibration.batch_size)
        plan = PruningPlan(sparsity=plan.sparsity, layer_sparsity=owl_layer_sparsity(owl_ratios, plan.sparsity, owl.lam))
        recipe["owl"] = {"m": owl.m, "lambda": owl.lam, "outlier_ratios": [round(r, 6) for r in owl_ratios]}
    if plan.layer_sparsity:
        recipe["layer_sparsity"] = [round(s, 6) for s in plan.layer_sparsity]
    if method == "magnitude":
        return prune_state_dict(state, plan), recipe

    if method == "sparsegpt":
        recipe["sparsegpt"] = {"blocksize": sparsegpt.blocksize, "damp": sparsegpt.damp}
    pruned = dict(state)

    def prune_layer(index: int, layer, stats) -> bool:
        from .sparsegpt import sparsegpt_prune
        from .wanda import wanda_prune

        sparsity = plan.sparsity_for_layer(index)
        for name, linear in calib.linear_layers(layer).items():
            key = f"model.layers.{index}.{name}.weight"
            if key not in state:
                raise ValueError(f"{model_dir}: the checkpoint has no tensor {key}")
            if method == "wanda":
                new = wanda_prune(linear.weight, stats.column_norms(name), sparsity, plan.pattern)
            else:
                new = sparsegpt_prune(
                    linear.weight, stats.hessian_of(name), sparsity, plan.pattern,
                    blocksize=sparsegpt.blocksize, damp=sparsegpt.damp,
                )
            # Round to the stored dtype now, so later layers calibrate on exactly the
            # weights that will be served.
            pruned[key] = new.to(state[key].dtype)
            linear.weight.data = pruned[key].to(linear.weight.dtype)
        return True

    calib.walk_layers(
        model, tokens, prune_layer, hessian=method == "sparsegpt", batch_size=calibration.batch_size,
        description=f"{method} {plan.structure}",
    )
    return pruned, recipe


def measure_outlier_ratios(model, tokens: torch.Tensor, m: float, batch_size: int = 8) -> list[float]:
    """OWL's outlier ratio of every decoder layer of the dense model."""
    from .calibration import linear_layers, walk_layers
    from .owl import layer_outlier_ratio

    ratios: list[float] = []

    def measure(_index: int, layer, stats) -> bool:
        weights = {name: linear.weight for name, linear in linear_layers(layer).items()}
        ratios.append(layer_outlier_ratio(weights, {n: stats.column_norms(n) for n in weights}, m))
        return False  # nothing changed: the dense outputs feed the next layer

    walk_layers(model, tokens, measure, hessian=False, batch_size=batch_size, description="OWL outlier ratios")
    return ratios
