"""Choose a skip profile that reaches a target skip ratio on a calibration corpus.

1. Record: one pass of the unskipped model (transformers) over the corpus windows,
   keeping cosine(h, h + ffn(h)) for every token at every layer.
2. Cold regions: the leading and trailing layers whose median similarity is below
   the median over all layers (the FFNs that change the residual stream most);
   at least 10% of the layers at the start and 5% at the end (at least one each).
3. Threshold, open loop: bisect the threshold so the greedy k-layer rule, replayed on
   the recorded similarities with warm-up, skips the target share of FFN blocks.
4. Threshold, closed loop: skipping changes later similarities, so re-run the model
   with skipping on: first move the open-loop target by the error seen, then, once
   two measured thresholds bracket the target, bisect between them, until the
   realised ratio is within ``tolerance`` of the target.

Passes run the decoder stack only (``model.model``): the LM head is not needed.

The skip ratio is skipped / all (token, layer) FFN blocks over the windows, counting
warm-up tokens and cold layers (what compute is saved). Corpus tokens are treated as
generated tokens (teacher forcing), so ``skip_prompt`` does not matter here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from tqdm import tqdm

from .decision import SkipRun
from .hf import skipping
from .policy import SkipPolicy


@torch.no_grad()
def record_similarities(model, windows: list[list[int]], progress: bool = True) -> torch.Tensor:
    """[tokens, layers] similarities of the unskipped model; rows are window-major."""
    per_window = []
    for window in tqdm(windows, desc="record similarities", disable=not progress):
        sims: dict[int, torch.Tensor] = {}

        def recorder(layer: int, rows: torch.Tensor, sim: torch.Tensor) -> None:
            sims[layer] = sim.clone()

        with skipping(model, SkipPolicy(enabled=False), recorder=recorder) as s:
            model.model(torch.tensor([window]))
        per_window.append(torch.stack([sims[layer] for layer in range(s.num_layers)], dim=1))
    return torch.cat(per_window)


@torch.no_grad()
def neuron_thresholds(model, windows: list[list[int]], sparsity: float, warmup_tokens: int = 28,
                      progress: bool = True) -> tuple[float, ...]:
    """Per decoder layer, the |SiLU(gate)| at or under which ``sparsity`` of the
    intermediate neurons fall, over the tokens past warm-up of the unskipped model."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"--neuron-sparsity must be in [0, 1), got {sparsity}")
    layers = list(model.model.layers)
    samples: list[list[torch.Tensor]] = [[] for _ in layers]
    handles = []
    for index, layer in enumerate(layers):
        def keep(module, args, out, index=index):
            samples[index].append(out.reshape(-1, out.shape[-1])[warmup_tokens:].abs().flatten().float())
        handles.append(layer.mlp.act_fn.register_forward_hook(keep))
    try:
        for window in tqdm(windows, desc="record activations", disable=not progress):
            model.model(torch.tensor([window]))
    finally:
        for handle in handles:
            handle.remove()
    thresholds = []
    for values in samples:
        flat = torch.cat(values)
        k = int(sparsity * flat.numel())
        thresholds.append(0.0 if k == 0 else float(flat.kthvalue(k).values))
    return tuple(thresholds)


def neuron_policy(model, windows: list[list[int]], sparsity: float, *, skip_layers: int = 3,
                  warmup_tokens: int = 28, progress: bool = False) -> SkipPolicy:
    """Neuron-level skipping alone (block skipping off) at ``sparsity``."""
    layers = len(model.model.layers)
    return SkipPolicy(enabled=sparsity > 0, threshold=1.0, skip_layers=skip_layers, cold_start=0, cold_end=0,
                      warmup_tokens=warmup_tokens,
                      neuron_thresholds=neuron_thresholds(model, windows, sparsity, warmup_tokens, progress)
                      if sparsity > 0 else ()).validate(layers)


def choose_cold(similarities: torch.Tensor) -> tuple[int, int]:
    median = similarities.median(dim=0).values
    cut = median.median()
    layers = median.shape[0]
    start = max(1, round(0.1 * layers))
    while start < layers and median[start] < cut:
        start += 1
    end = max(1, round(0.05 * layers))
    while end < layers - start - 1 and median[layers - 1 - end] < cut:
        end += 1
    return start, end


def simulate(policy: SkipPolicy, similarities: torch.Tensor, positions: torch.Tensor) -> float:
    """Skip ratio of ``policy`` replayed on recorded similarities (open loop: the
    similarity of a computed layer is the unskipped model's)."""
    tokens, layers = similarities.shape
    run = SkipRun.start(policy, layers, positions, torch.zeros_like(positions, dtype=torch.bool))
    recorded = similarities.T.tolist()  # [layer][token]
    skipped = 0
    for layer in range(layers):
        skipping = run.plan(layer)
        skipped += 0 if skipping is None else sum(skipping)
        similarity = [recorded[layer][row] for row in run.checked(skipping)] if run.check_matters(layer) else None
        run.observe(layer, skipping, similarity)
    return skipped / (tokens * layers)


@torch.no_grad()
def realised_ratio(model, policy: SkipPolicy, windows: list[list[int]]) -> float:
    with skipping(model, policy) as s:
        for window in windows:
            model.model(torch.tensor([window]))
    return s.skip_ratio


def _bisect(ratio_of, target: float, lo: float, hi: float, steps: int, tolerance: float) -> float:
    """Threshold in [lo, hi] whose ratio is nearest the target; the ratio falls as the
    threshold rises."""
    best, best_err = hi, float("inf")
    for _ in range(steps):
        mid = (lo + hi) / 2
        ratio = ratio_of(mid)
        if abs(ratio - target) < best_err:
            best, best_err = mid, abs(ratio - target)
        if abs(ratio - target) <= tolerance:
            break
        lo, hi = (mid, hi) if ratio > target else (lo, mid)
    return best


def _bracket(history: list[tuple[float, float]], target: float) -> tuple[float, float] | None:
    """(threshold that skipped too much, threshold that skipped too little), the
    closest pair measured so far, or None while the target is not bracketed."""
    too_low = [t for t, ratio in history if ratio > target]
    too_high = [t for t, ratio in history if ratio < target]
    if not too_low or not too_high:
        return None
    return max(too_low), min(too_high)


@dataclass
class Calibration:
    policy: SkipPolicy
    open_loop_ratio: float
    realised_ratio: float
    layer_median: list[float]


def calibrate(model, windows: list[list[int]], target: float, *, skip_layers: int = 3, warmup_tokens: int = 28,
              tolerance: float = 0.01, closed_loop_steps: int = 8,
              similarities: torch.Tensor | None = None, progress: bool = True) -> Calibration:
    if not 0.0 <= target < 1.0:
        raise ValueError(f"--target-skip must be in [0, 1), got {target}")
    if similarities is None:
        similarities = record_similarities(model, windows, progress)
    layers = similarities.shape[1]
    cold_start, cold_end = choose_cold(similarities)
    base = SkipPolicy(enabled=target > 0, threshold=1.0, skip_layers=skip_layers, cold_start=cold_start,
                      cold_end=cold_end, warmup_tokens=warmup_tokens).validate(layers)
    median = similarities.median(dim=0).values.tolist()
    if target == 0:
        return Calibration(base, 0.0, 0.0, median)
    positions = torch.cat([torch.arange(len(w)) for w in windows])
    ceiling = simulate(replace(base, threshold=-1.0), similarities, positions)
    if target > ceiling + tolerance:
        raise ValueError(f"target {target:.2f} is above what this rule can skip ({ceiling:.3f}: k={skip_layers}, "
                         f"cold {cold_start}+{cold_end} of {layers} layers, warm-up {warmup_tokens}); "
                         "raise skip_layers or lower warmup_tokens")
    lo = float(similarities.min()) - 1e-3

    def open_loop(goal: float) -> float:
        return _bisect(lambda t: simulate(replace(base, threshold=t), similarities, positions), goal, lo, 1.0, 40,
                       tolerance / 10)

    # Closed loop. The first steps aim the open-loop replay at target + (error so
    # far); once measured ratios bracket the target, bisect the threshold on the
    # measured ratio itself (it falls as the threshold rises), which converges even
    # where the replay is biased (pruned models).
    goal, history = target, []
    for step in tqdm(range(closed_loop_steps), desc=f"closed loop (target {target:.2f})", disable=not progress):
        bracket = _bracket(history, target)
        threshold = round((bracket[0] + bracket[1]) / 2 if bracket and step >= 2 else open_loop(goal), 6)
        ratio = realised_ratio(model, replace(base, threshold=threshold), windows)
        history.append((threshold, ratio))
        if abs(ratio - target) <= tolerance:
            break
        goal = min(max(goal + target - ratio, 0.0), ceiling)
    best = min(history, key=lambda entry: abs(entry[1] - target))
    policy = replace(base, threshold=best[0])
    return Calibration(policy, simulate(policy, similarities, positions), best[1], median)
