"""Calibration text that needs no data set: the dense model answers a fixed list of
seed prompts through its own chat template, and pruning is calibrated on those
conversations (template, system prompt, question and answer), i.e. on the
activations the model sees when people talk to it. Calibrating an instruct model on
novels tunes the pruned weights to prose and loses its answers; this keeps what it
does in chat.

Answers are sampled (temperature 0.7, top-p 0.9, seeded) rather than greedy: a small
model's greedy text repeats itself, which would calibrate on repetition.
"""

from __future__ import annotations

import torch

from ..quality.chat_prompts import SELF_CHAT_SEEDS

BATCH = 8
TEMPERATURE = 0.7
TOP_P = 0.9


@torch.no_grad()
def self_chat_ids(model, tokenizer, answer_tokens: int, seed: int = 0,
                  seeds: tuple[str, ...] = SELF_CHAT_SEEDS) -> list[int]:
    """The token ids of every seed conversation (prompt through the chat template,
    then the model's answer up to its end-of-turn token or ``answer_tokens``), one
    after another."""
    from tqdm.auto import tqdm

    if tokenizer.chat_template is None:
        raise ValueError("self-chat calibration needs a model with a chat template (an instruct model); "
                         "give --calibration FILE instead")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    stream: list[int] = []
    try:
        for start in tqdm(range(0, len(seeds), BATCH), desc="self-chat calibration text", unit="batch"):
            prompts = [tokenizer.apply_chat_template([{"role": "user", "content": s}], add_generation_prompt=True,
                                                     tokenize=False) for s in seeds[start:start + BATCH]]
            encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
            width = max(len(e) for e in encoded)
            input_ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])  # left padding
            attention = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
            out = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=answer_tokens,
                                 do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, pad_token_id=pad)
            for prompt, row in zip(encoded, out[:, width:].tolist()):
                answer = []
                for token in row:
                    answer.append(token)
                    if token == tokenizer.eos_token_id:
                        break
                stream.extend(prompt + answer)
    finally:
        torch.random.set_rng_state(generator_state)
    return stream
