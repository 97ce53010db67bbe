"""The transformers path on a tiny random Llama: off is exact, per-token decisions
are independent of batching and of KV-cache decoding, calibration meets its target."""

from __future__ import annotations

import torch

from vllm_sparse.skip.calibrate import calibrate, record_similarities, simulate
from vllm_sparse.skip.evaluate import greedy, prefill
from vllm_sparse.skip.hf import skipping
from vllm_sparse.skip.policy import SkipPolicy

ON = SkipPolicy(enabled=True, threshold=0.0, skip_layers=2, cold_start=1, cold_end=1, warmup_tokens=6)


@torch.no_grad()
def test_off_and_threshold_one_are_exact(tiny_llama, token_ids):
    reference = tiny_llama(token_ids).logits
    for policy in (SkipPolicy(enabled=False), SkipPolicy(**{**ON.__dict__, "threshold": 1.0})):
        with skipping(tiny_llama, policy) as s:
            assert torch.equal(tiny_llama(token_ids).logits, reference)
        assert sum(s.skipped) == 0 and sum(s.computed) == token_ids.numel() * 8


@torch.no_grad()
def test_skipping_changes_output_and_counts(tiny_llama, token_ids):
    with skipping(tiny_llama, ON, trace=True) as s:
        logits = tiny_llama(token_ids).logits
    assert 0 < s.skip_ratio < 1
    assert not torch.equal(logits, tiny_llama(token_ids).logits)
    skipped_rows = torch.stack(s.decisions)  # [layers, rows]
    assert not skipped_rows[:, s.positions < ON.warmup_tokens].any()  # warm-up computes
    assert not skipped_rows[[0, 7]].any()  # cold layers compute
    # greedy: right after a skipped run of k layers, the row computes (checks again)
    for row in range(skipped_rows.shape[1]):
        col = skipped_rows[:, row].tolist()
        runs = "".join("s" if c else "c" for c in col).split("c")
        assert all(len(r) <= ON.skip_layers for r in runs)


@torch.no_grad()
def test_rows_are_independent_of_the_batch(tiny_llama, token_ids):
    def decisions(ids):
        with skipping(tiny_llama, ON, trace=True) as s:
            tiny_llama(ids)
        return torch.stack(s.decisions).reshape(8, ids.shape[0], ids.shape[1])

    batched = decisions(token_ids)
    for b in range(token_ids.shape[0]):
        assert torch.equal(decisions(token_ids[b: b + 1])[:, 0], batched[:, b])


@torch.no_grad()
def test_kv_cache_decode_matches_full_sequence(tiny_llama, token_ids):
    prompt_len = 20
    prompts = token_ids[:, :prompt_len]
    continuation = greedy(tiny_llama, ON, prompts, 12, prefill(tiny_llama, prompts))
    full = torch.cat([prompts, continuation[:, :-1]], dim=1)
    with skipping(tiny_llama, ON, prompt_len=prompt_len) as s:
        logits = tiny_llama(full).logits
    assert torch.equal(logits[:, prompt_len - 1:].argmax(-1), continuation)
    assert sum(s.skipped) > 0


@torch.no_grad()
def test_calibration_meets_target_and_replay_is_exact_without_feedback(tiny_llama, token_ids):
    windows = token_ids.tolist()
    result = calibrate(tiny_llama, windows, 0.3, skip_layers=2, warmup_tokens=6, progress=False)
    assert abs(result.realised_ratio - 0.3) <= 0.01
    assert result.policy.enabled and 0 < result.policy.threshold < 1
    # Open-loop replay equals the real run when skipping cannot change the hidden
    # states: a policy that triggers at most once per token, on the last hot layer's check.
    sims = record_similarities(tiny_llama, windows, progress=False)
    positions = torch.arange(token_ids.shape[1]).repeat(token_ids.shape[0])
    late = SkipPolicy(enabled=True, threshold=0.0, skip_layers=1, cold_start=6, cold_end=1, warmup_tokens=6)
    with skipping(tiny_llama, late) as s:
        for w in windows:
            tiny_llama.model(torch.tensor([w]))
    assert simulate(late, sims, positions) == s.skip_ratio > 0


def test_calibration_rejects_an_unreachable_target(tiny_llama, token_ids):
    import pytest

    with pytest.raises(ValueError, match="above what this rule can skip"):
        calibrate(tiny_llama, token_ids.tolist(), 0.9, skip_layers=1, warmup_tokens=6, progress=False)


def test_closed_loop_brackets_the_target_from_measured_ratios():
    from vllm_sparse.skip.calibrate import _bracket

    assert _bracket([(0.9, 0.30)], 0.25) is None  # only "skips too much" seen so far
    history = [(0.90, 0.30), (0.95, 0.20), (0.92, 0.27), (0.97, 0.10)]
    # closest threshold that skipped too much, closest that skipped too little
    assert _bracket(history, 0.25) == (0.92, 0.95)
