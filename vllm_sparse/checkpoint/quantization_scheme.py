"""The quantization scheme a compressed-tensors ``quantization_config`` gives each
module (its ``config_groups`` and ``ignore``), as a short label for the layer
table: ``W8A8 int8``, ``W8A8 fp8``, ``W4A16 int4``; "" when not quantized."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .targets import target_matcher


def _label(group: Mapping) -> str:
    weights = group.get("weights") or {}
    bits = weights.get("num_bits")
    if not bits:
        return ""
    kind = "fp" if weights.get("type") == "float" else "int"
    activations = group.get("input_activations") or {}
    return f"W{bits}A{activations.get('num_bits') or 16} {kind}{bits}"


def quantization_labels(quantization_config: Mapping | None) -> Callable[[str], str]:
    """module name (``model.layers.0.mlp.up_proj``) -> its scheme's label, matched
    as compressed-tensors matches ``targets`` (a linear layer is a ``Linear``)."""
    groups = (quantization_config or {}).get("config_groups") or {}
    ignore = (quantization_config or {}).get("ignore")
    rules = [(group.get("targets"), _label(group)) for group in groups.values() if isinstance(group, Mapping)]

    def label(module: str) -> str:
        classes = {module: ("Linear",)}
        for targets, text in rules:
            if target_matcher(targets, ignore, classes)(module):
                return text
        return ""

    return label
