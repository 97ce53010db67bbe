"""Which tensors of a Llama-family checkpoint are the decoder layers' linear
weights: the ones pruning acts on and the sparse formats store compressed."""

from __future__ import annotations

import re

# Decoder-layer linear weights of Llama-family checkpoints (q/k/v/o, gate/up/down).
# Embeddings and lm_head are never pruned: they are lookups, and pruning them hurts
# quality far more than it saves.
_PRUNABLE = re.compile(r"^(?:model\.)?layers\.(\d+)\.(?:self_attn|mlp)\.\w+_proj\.weight$")


def prunable_layer_index(name: str) -> int | None:
    """Decoder layer index of a prunable weight name, None for anything else."""
    match = _PRUNABLE.match(name)
    return int(match.group(1)) if match else None
