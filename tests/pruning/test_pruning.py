from __future__ import annotations

import pytest
import torch

from vllm_sparse.checkpoint.layer_names import prunable_layer_index
from vllm_sparse.pruning.masks import magnitude_prune
from vllm_sparse.pruning.plan import PruningPlan, parse_layer_sparsity, prune_state_dict
from vllm_sparse.kernels import NMPattern, analyze_weight, find_nm_violation


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_unstructured_keeps_the_largest_entries_per_row(sparsity):
    weight = torch.randn(16, 100, dtype=torch.bfloat16)
    pruned = magnitude_prune(weight, sparsity)
    dropped = int(100 * sparsity)
    assert ((pruned == 0).sum(dim=1) == dropped).all()
    kept_min = torch.where(pruned != 0, weight.abs(), torch.inf).amin(dim=1)
    dropped_max = torch.where(pruned == 0, weight.abs(), -torch.inf).amax(dim=1)
    assert (kept_min >= dropped_max).all()
    assert torch.equal(pruned[pruned != 0], weight[pruned != 0])


@pytest.mark.parametrize("pattern", [NMPattern(2, 4), NMPattern(4, 8)])
def test_nm_pruning_satisfies_the_pattern_and_keeps_the_largest(pattern):
    weight = torch.randn(8, 64)
    pruned = magnitude_prune(weight, pattern=pattern)
    assert find_nm_violation(pruned, pattern) is None
    analysis = analyze_weight(pruned)
    assert analysis.nm == pattern and analysis.sparsity == pytest.approx(0.5)
    groups = weight.abs().reshape(8, -1, pattern.m)
    kept = (pruned != 0).reshape(8, -1, pattern.m)
    threshold = groups.sort(dim=-1, descending=True).values[..., pattern.n - 1 : pattern.n]
    assert torch.equal(kept, groups >= threshold)
    # zeros are +0.0, so bit-exact round trips through bitmask formats hold
    assert not torch.signbit(pruned[pruned == 0]).any()


def test_plan_rejects_impossible_requests():
    with pytest.raises(ValueError, match="means sparsity 0.5"):
        PruningPlan(sparsity=0.6, pattern=NMPattern(2, 4))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        PruningPlan(sparsity=1.0)
    with pytest.raises(ValueError, match="per-layer"):
        PruningPlan(pattern=NMPattern(2, 4), layer_sparsity=(0.5,))
    with pytest.raises(ValueError, match="comma-separated"):
        parse_layer_sparsity("0.5,abc")


def test_state_dict_pruning_touches_only_decoder_linears():
    state = {
        "model.embed_tokens.weight": torch.randn(10, 8),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8),
        "model.layers.1.mlp.down_proj.weight": torch.randn(8, 8),
        "model.layers.1.input_layernorm.weight": torch.randn(8),
        "lm_head.weight": torch.randn(10, 8),
    }
    plan = PruningPlan(layer_sparsity=(0.25, 0.75))
    pruned = prune_state_dict(state, plan)
    assert analyze_weight(pruned["model.layers.0.self_attn.q_proj.weight"]).sparsity == 0.25
    assert analyze_weight(pruned["model.layers.1.mlp.down_proj.weight"]).sparsity == 0.75
    for name in ("model.embed_tokens.weight", "model.layers.1.input_layernorm.weight", "lm_head.weight"):
        assert torch.equal(pruned[name], state[name])
    assert prunable_layer_index("model.layers.12.mlp.gate_proj.weight") == 12
    assert prunable_layer_index("model.norm.weight") is None
    with pytest.raises(ValueError, match="lists 1 values"):
        prune_state_dict(state, PruningPlan(layer_sparsity=(0.5,)))
