"""Perplexity on a text corpus, computed the same way through vLLM and through
transformers so the two can be compared: the corpus is tokenised once, cut into
``count`` non-overlapping windows of ``window`` tokens, and each window is scored
on its own (every token but the first, given the tokens before it)."""

from __future__ import annotations

import math
from pathlib import Path

import torch


def corpus_windows(tokenizer, corpus: str | Path, window: int = 512, count: int = 8) -> list[list[int]]:
    text = Path(corpus).read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{corpus}: the corpus is empty")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    windows = [ids[start : start + window] for start in range(0, len(ids) - window + 1, window)][:count]
    if not windows:
        raise ValueError(f"{corpus}: fewer than {window} tokens")
    return windows


def perplexity_from_nll(total_nll: float, tokens: int) -> float:
    return math.exp(total_nll / tokens)


def vllm_perplexity(llm, windows: list[list[int]]) -> float:
    """Perplexity from vLLM's prompt logprobs (a ``vllm.LLM`` with the model loaded)."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=w) for w in windows], params, use_tqdm=False)
    total_nll, tokens = 0.0, 0
    for window, output in zip(windows, outputs):
        for position, token in enumerate(window[1:], start=1):
            total_nll -= output.prompt_logprobs[position][token].logprob
            tokens += 1
    return perplexity_from_nll(total_nll, tokens)


@torch.no_grad()
def transformers_perplexity(model, windows: list[list[int]]) -> float:
    total_nll, tokens = 0.0, 0
    for window in windows:
        ids = torch.tensor([window])
        logits = model(ids).logits.float()
        logprobs = torch.log_softmax(logits[0, :-1], dim=-1)
        total_nll -= logprobs.gather(1, ids[0, 1:, None]).sum().item()
        tokens += len(window) - 1
    return perplexity_from_nll(total_nll, tokens)
