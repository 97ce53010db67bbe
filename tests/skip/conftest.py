"""A tiny random transformers Llama for fast FFN-skip tests (no vLLM, no files)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def token_ids():
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, 96, (3, 48), generator=generator)
