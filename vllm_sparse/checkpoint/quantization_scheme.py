"""The quantization scheme a compressed-tensors ``quantization_config`` gives each
module (its ``config_groups`` and ``ignore``), as a short label for the layer
table: ``W8A8 int8``, ``W8A8 fp8``, ``W4A16 int4``; "" when not quantized."""

from __future__ import annotations

from collections.abc import Mapping

from .targets import target_matcher


def _label(group: Mapping) -> str:
    weights = group.get("weights") or {}
    bits = weights.get("num_bits")
    if not bits:
        return ""
    kind = "fp" if weights.get("type") == "float" else "int"
    activations = group.get("input_activations") or {}
    return f"W{bits}A{activations.get('num_bits') or 16} {kind}{bits}"


class QuantizationLabels:
    """module name (``model.layers.0.mlp.up_proj``) -> its scheme's label, matched
    as compressed-tensors matches ``targets`` (a linear layer is a ``Linear``).
    A plain object, so that it pickles with the config vLLM sends to its workers."""

    def __init__(self, quantization_config: Mapping | None) -> None:
        groups = (quantization_config or {}).get("config_groups") or {}
        self.ignore = list((quantization_config or {}).get("ignore") or ())
        self.rules = [(list(group.get("targets") or ()), _label(group), dict(group.get("weights") or {}))
                      for group in groups.values() if isinstance(group, Mapping)]

    def _rule(self, module: str):
        classes = {module: ("Linear",)}
        for rule in self.rules:
            if target_matcher(rule[0], self.ignore, classes)(module):
                return rule
        return None

    def __call__(self, module: str) -> str:
        rule = self._rule(module)
        return rule[1] if rule else ""

    def weights(self, module: str) -> dict:
        """The module's weight quantization arguments (``num_bits``,
        ``group_size``, ...); {} when not quantized."""
        rule = self._rule(module)
        return rule[2] if rule else {}
