"""``prune_model``, the one entry point for every method: load the checkpoint,
calibrate where the method needs activations (``calibration`` walks a Llama model
layer by layer), prune, and return the weights with the recipe to record.

Magnitude pruning needs nothing but the checkpoint; ``wanda`` (|W| x input norm)
and ``sparsegpt`` (second-order reconstruction) prune each layer from its
activation statistics; ``owl`` sets one sparsity per decoder layer from outlier
ratios."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..checkpoint.writer import load_state_dict
from . import calibration as calib
from .owl import layer_outlier_ratio, owl_layer_sparsity
from .plan import OWLConfig, PruningPlan, SparseGPTConfig, check_request, prune_state_dict
from .sparsegpt import sparsegpt_prune
from .wanda import wanda_prune


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
    check_request(method, plan, allocation, calibration)
    needs_model = method != "magnitude" or allocation == "owl"
    if needs_model:  # fail before the slow part
        calib.check_architecture(model_dir)
        calibration.check()
    recipe: dict = {"method": method, "pattern": plan.structure, "sparsity": plan.sparsity, "allocation": allocation}
    if needs_model:
        recipe["calibration"] = calibration.recipe()
    state = load_state_dict(model_dir)
    if method == "magnitude" and allocation == "uniform":
        if plan.layer_sparsity:
            recipe["layer_sparsity"] = list(plan.layer_sparsity)
        return prune_state_dict(state, plan), recipe

    model, tokenizer = calib.load_llama(model_dir)
    tokens = calib.calibration_tokens(tokenizer, calibration, model)
    if allocation == "owl":
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
    ratios: list[float] = []

    def measure(_index: int, layer, stats) -> bool:
        weights = {name: linear.weight for name, linear in calib.linear_layers(layer).items()}
        ratios.append(layer_outlier_ratio(weights, {n: stats.column_norms(n) for n in weights}, m))
        return False  # nothing changed: the dense outputs feed the next layer

    calib.walk_layers(model, tokens, measure, hessian=False, batch_size=batch_size, description="OWL outlier ratios")
    return ratios
