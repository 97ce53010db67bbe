"""What a checkpoint declares about its sparsity (from config.json), in one object."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..kernels.patterns import NMPattern
from .targets import target_matcher

DENSE_FORMAT = "dense"
UNSTRUCTURED = "unstructured"


@dataclass(frozen=True)
class SparsitySpec:
    """``format``: how weights are stored (``dense``, ``sparse-bitmask``,
    ``sparse-24-bitmask``). ``structure``: the declared pattern (``2:4``, ``4:8``,
    ``unstructured``) or None when nothing is declared. ``targets`` and ``ignore``
    follow compressed-tensors: class names such as ``Linear``, module names, or
    ``re:`` regular expressions."""

    format: str = DENSE_FORMAT
    structure: str | None = None
    targets: tuple[str, ...] = ("Linear",)
    ignore: tuple[str, ...] = ("lm_head",)
    global_sparsity: float | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @classmethod
    def detect_all(cls) -> "SparsitySpec":
        """Nothing declared: dense storage, every linear layer scanned at load."""
        return cls()

    @property
    def nm_pattern(self) -> NMPattern | None:
        if self.structure in (None, "", UNSTRUCTURED, "0:0"):
            return None
        return NMPattern.parse(self.structure)

    def applies_to(self, module_name: str) -> bool:
        """Whether a linear module (checkpoint name, e.g. ``model.layers.0.mlp.up_proj``)
        is covered by the declaration, matched the way compressed-tensors matches
        ``targets`` and ``ignore`` when it writes the checkpoint."""
        return target_matcher(self.targets, self.ignore, {module_name: ("Linear",)})(module_name)
