"""The report's measures on known distributions: zero against itself, growing with
a perturbation, and close to the full-vocabulary KL when the top-K holds the mass."""

from __future__ import annotations

import numpy as np
import pytest

from vllm_sparse.quality import measures


def _topk(logits: np.ndarray, targets: np.ndarray, k: int) -> tuple[measures.TopK, np.ndarray]:
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(
        -1, keepdims=True)
    order = np.argsort(-logp, axis=-1)[:, :k]
    top = measures.TopK(order, np.take_along_axis(logp, order, -1), logp[np.arange(len(logp)), targets])
    return top, logp


def _full_kl(p_log: np.ndarray, q_log: np.ndarray) -> np.ndarray:
    return (np.exp(p_log) * (p_log - q_log)).sum(-1)


@pytest.fixture
def logits():
    rng = np.random.default_rng(0)
    # Peaked distributions over 2000 tokens, as a language model's are.
    return rng.standard_normal((300, 2000)) * 3.0


def test_a_model_against_itself(logits):
    targets = np.zeros(len(logits), dtype=int)
    top, _ = _topk(logits, targets, 50)
    kl, coverage = measures.next_token_kl(top, top)
    assert np.all(kl == 0.0)
    assert measures.top1_agreement(top, top) == 1.0
    assert np.all((coverage > 0) & (coverage <= 1 + 1e-9))


def test_kl_grows_and_top1_falls_with_the_perturbation(logits):
    rng = np.random.default_rng(1)
    targets = rng.integers(0, logits.shape[1], len(logits))
    reference, ref_log = _topk(logits, targets, 50)
    noise = rng.standard_normal(logits.shape)
    means, top1 = [], []
    for scale in (0.05, 0.3, 1.0):
        model, model_log = _topk(logits + scale * noise, targets, 50)
        kl, coverage = measures.next_token_kl(reference, model)
        full = _full_kl(ref_log, model_log)
        means.append(kl.mean())
        top1.append(measures.top1_agreement(reference, model))
        # Coarsened to top-K + tail: at most the full KL, and close to it when the
        # top-K holds most of the mass (here about 0.9 of it).
        assert kl.mean() <= full.mean() * 1.05
        assert kl.mean() >= 0.7 * full.mean()
    assert means[0] < means[1] < means[2]
    assert top1[0] > top1[1] > top1[2]


def test_kl_refuses_passes_of_different_lengths(logits):
    a, _ = _topk(logits, np.zeros(len(logits), dtype=int), 10)
    b, _ = _topk(logits[:10], np.zeros(10, dtype=int), 10)
    with pytest.raises(ValueError, match="positions"):
        measures.next_token_kl(a, b)


def test_perplexity_from_the_target_logprobs():
    top = measures.TopK(np.zeros((2, 1), int), np.zeros((2, 1)), np.log(np.array([0.5, 0.125])))
    assert measures.perplexity(top) == pytest.approx(4.0)


def test_sequence_agreement_and_overlap():
    ref = [[1, 2, 3, 4], [5, 6], []]
    out = [[1, 2, 9, 4], [5, 6, 7], []]
    positions, prefix, identical = measures.sequence_agreement(ref, out)
    assert positions == pytest.approx(5 / 7)  # 3 of 4, 2 of 3 (the extra token counts), empty pair adds none
    assert prefix == pytest.approx((2 + 2 + 0) / 3)
    assert identical == pytest.approx(1 / 3)
    assert measures.token_overlap(ref, ref) == 1.0
    assert measures.token_overlap([[1, 2]], [[2, 1]]) == 1.0  # order does not matter
    assert measures.token_overlap([[1, 2]], [[3, 4]]) == 0.0
    with pytest.raises(ValueError):
        measures.sequence_agreement(ref, out[:2])
