"""Perplexity of a model under a skip profile, and how much it skipped (transformers
path; every token of the windows treated as generated)."""

from __future__ import annotations

import torch

from ..quality.perplexity import perplexity_from_nll
from .hf import skipping
from .policy import SkipPolicy


@torch.no_grad()
def measure_on(model, policy: SkipPolicy, windows: list[list[int]]) -> tuple[float, dict[str, float]]:
    """(perplexity, {"block": share of FFN blocks skipped, "neuron": share of neurons
    dropped in the rows that may skip}) over the windows."""
    total_nll, tokens = 0.0, 0
    with skipping(model, policy) as s:
        for window in windows:
            ids = torch.tensor([window])
            logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
            total_nll -= logprobs.gather(1, ids[0, 1:, None]).sum().item()
            tokens += len(window) - 1
    return perplexity_from_nll(total_nll, tokens), {"block": s.skip_ratio, "neuron": s.neuron_sparsity}


def skip_perplexity(model, policy: SkipPolicy, windows: list[list[int]]) -> tuple[float, float]:
    """(perplexity, realised skip ratio) over the windows."""
    ppl, ratios = measure_on(model, policy, windows)
    return ppl, ratios["block"]
