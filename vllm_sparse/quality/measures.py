"""How far a model's outputs are from a reference's, from what one vLLM pass of each
returns (top-K prompt logprobs, greedy continuations): plain numpy, no engine.

KL(reference || model) of the next-token distribution at each position is computed
on the reference's top-K tokens plus one tail bucket (everything else), because vLLM
returns the top-K logprobs, not the whole vocabulary:

* a reference top-K token that is also in the model's top-K takes the model's logprob;
* one that is not takes the model's K-th logprob, an upper bound on its probability;
* the tail bucket holds the rest of each distribution's mass (1 - the sum over the
  reference's top-K; for the model at least 1e-9).

Merging tokens into a bucket can only lower a KL divergence, so this is the KL of the
two distributions coarsened to K + 1 outcomes: close to the full KL when the
reference's top-K holds most of its mass (``coverage``, reported with it) and never
above it but for the bound used for missing tokens. It is exactly 0 for a model
against itself.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

TAIL_FLOOR = 1e-9


@dataclass(frozen=True)
class TopK:
    """Prompt logprobs of one pass over the scoring windows, every position but each
    window's first: ``ids`` / ``logprobs`` [P, K] by rank, ``target`` [P] the logprob of
    the token that actually comes next."""

    ids: np.ndarray
    logprobs: np.ndarray
    target: np.ndarray


def next_token_kl(reference: TopK, model: TopK) -> tuple[np.ndarray, np.ndarray]:
    """Per position: (KL(reference || model) in nats, the reference's top-K mass)."""
    if reference.ids.shape[0] != model.ids.shape[0]:
        raise ValueError(f"the passes scored {reference.ids.shape[0]} and {model.ids.shape[0]} positions")
    match = reference.ids[:, :, None] == model.ids[:, None, :]  # [P, Kref, Kmodel]
    found = match.any(-1)
    matched = np.where(match, model.logprobs[:, None, :], 0.0).sum(-1)
    bound = model.logprobs.min(-1, keepdims=True)
    q_log = np.where(found, matched, bound)
    p = np.exp(reference.logprobs)
    coverage = p.sum(-1)
    head = (p * (reference.logprobs - q_log)).sum(-1)
    p_tail = np.clip(1.0 - coverage, 0.0, None)
    q_tail = np.clip(1.0 - np.exp(q_log).sum(-1), TAIL_FLOOR, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = np.where(p_tail > 0, p_tail * (np.log(np.maximum(p_tail, TAIL_FLOOR)) - np.log(q_tail)), 0.0)
    return np.maximum(head + tail, 0.0), coverage


def top1_agreement(reference: TopK, model: TopK) -> float:
    return float((reference.ids[:, 0] == model.ids[:, 0]).mean())


def perplexity(pass_: TopK) -> float:
    return math.exp(-float(pass_.target.mean()))


def sequence_agreement(reference: list[list[int]], model: list[list[int]]) -> tuple[float, float, float]:
    """(share of positions holding the same token, mean length of the common prefix,
    share of sequences identical). Positions run over the longer of each pair: a
    token one side has and the other does not counts as a difference."""
    if len(reference) != len(model):
        raise ValueError(f"{len(reference)} reference sequences against {len(model)}")
    same = total = 0
    prefixes, identical = [], 0
    for ref, out in zip(reference, model):
        length = max(len(ref), len(out))
        common = sum(a == b for a, b in zip(ref, out))
        same += common
        total += length
        prefix = next((i for i, (a, b) in enumerate(zip(ref, out)) if a != b), min(len(ref), len(out)))
        prefixes.append(prefix)
        identical += ref == out
    n = max(len(reference), 1)
    return same / max(total, 1), float(np.mean(prefixes)) if prefixes else 0.0, identical / n


def token_overlap(reference: list[list[int]], model: list[list[int]]) -> float:
    """Mean F1 of the token multisets of each pair: agreement that survives a shifted
    word or a reworded start, where position-by-position agreement drops to zero.
    Two empty sequences agree fully."""
    scores = []
    for ref, out in zip(reference, model):
        if not ref and not out:
            scores.append(1.0)
            continue
        common = sum((Counter(ref) & Counter(out)).values())
        scores.append(2 * common / (len(ref) + len(out)))
    return float(np.mean(scores)) if scores else 0.0


def summarise_kl(kl: np.ndarray) -> dict[str, float]:
    return {"mean": float(kl.mean()), "median": float(np.median(kl)), "p99": float(np.percentile(kl, 99))}
