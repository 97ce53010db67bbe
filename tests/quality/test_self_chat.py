"""`--calibration self-chat`: the dense model writes its own calibration text through
its chat template, deterministically, from prompts the report never asks."""

from __future__ import annotations

import pytest

from vllm_sparse.pruning.calibration import SELF_CHAT, CalibrationConfig, calibration_tokens
from vllm_sparse.pruning.self_chat import self_chat_ids
from vllm_sparse.quality.chat_prompts import EVAL_CHAT_PROMPTS, SELF_CHAT_SEEDS


def test_seed_prompts_are_not_evaluation_prompts():
    assert not set(EVAL_CHAT_PROMPTS) & set(SELF_CHAT_SEEDS)
    assert len(set(SELF_CHAT_SEEDS)) == len(SELF_CHAT_SEEDS) >= 16


def test_self_chat_text_is_the_models_own_chat(base_model):
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = LlamaForCausalLM.from_pretrained(base_model).eval()
    seeds = SELF_CHAT_SEEDS[:3]
    ids = self_chat_ids(model, tokenizer, answer_tokens=12, seed=0, seeds=seeds)
    assert ids == self_chat_ids(model, tokenizer, answer_tokens=12, seed=0, seeds=seeds)  # seeded
    assert ids != self_chat_ids(model, tokenizer, answer_tokens=12, seed=1, seeds=seeds)  # sampled
    text = tokenizer.decode(ids)
    for seed in seeds:
        assert seed in text
    assert text.count("<|im_start|>assistant") == len(seeds)
    prompt_len = len(tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": seeds[0]}],
                                                             add_generation_prompt=True, tokenize=False),
                               add_special_tokens=False)["input_ids"])
    assert prompt_len < len(ids) <= sum(prompt_len + 40 for _ in seeds)  # prompts plus at most 12 tokens each

    windows = calibration_tokens(tokenizer, CalibrationConfig(SELF_CHAT, samples=2, seqlen=16), model)
    assert tuple(windows.shape) == (2, 16)
    assert CalibrationConfig(SELF_CHAT).recipe()["source"] == SELF_CHAT


def test_self_chat_needs_a_chat_template_and_the_model(base_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    with pytest.raises(ValueError, match="needs the dense model"):
        calibration_tokens(tokenizer, CalibrationConfig(SELF_CHAT))
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        self_chat_ids(object(), tokenizer, answer_tokens=4)
