"""Choose the skip profile by quality: the largest skip ratio whose perplexity on a
held-out slice of the calibration corpus rises by at most a given percentage.

The corpus windows are split alternately: even windows calibrate (calibrate.py),
odd windows are held out. The perplexity of the held-out windows rises with the
skip ratio, so the ratio is bisected: each trial calibrates a profile for a target
(block granularity: a share of FFN blocks; neuron: a share of FFN neurons per
token), then scores the held-out windows with it (transformers path, every token as
generated). The largest trial within the budget wins; none within it (a budget below
what the smallest ratio costs) gives a disabled profile.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from tqdm import tqdm

from .calibrate import calibrate, neuron_policy, record_similarities, simulate
from .measure import measure_on
from .policy import SkipPolicy

GRANULARITIES = ("block", "neuron")
NEURON_CEILING = 0.95  # the largest neuron sparsity tried


@dataclass
class Trial:
    target: float
    held_out_ratio: float  # block: FFN blocks skipped; neuron: neurons dropped in the rows that may skip
    perplexity: float


@dataclass
class BudgetResult:
    policy: SkipPolicy
    base_perplexity: float  # held-out, no skipping
    perplexity: float  # held-out, with ``policy``
    held_out_ratio: float
    trials: list[Trial]

    @property
    def increase(self) -> float:
        """Perplexity increase over no skipping, in percent."""
        return 100 * (self.perplexity / self.base_perplexity - 1)


def split_windows(windows: list[list[int]]) -> tuple[list[list[int]], list[list[int]]]:
    """(calibration windows, held-out windows): alternate windows of the corpus."""
    if len(windows) < 2:
        raise ValueError("the corpus gives fewer than two windows: nothing to hold out")
    return windows[0::2], windows[1::2]


@torch.no_grad()
def calibrate_within_budget(model, windows: list[list[int]], max_increase: float, *, granularity: str = "block",
                            skip_layers: int = 3, warmup_tokens: int = 28, steps: int = 6,
                            progress: bool = True) -> BudgetResult:
    """``max_increase``: allowed held-out perplexity increase, in percent."""
    if not max_increase >= 0:
        raise ValueError(f"--max-ppl-increase must be a percentage >= 0, got {max_increase}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"--granularity must be one of {GRANULARITIES}, got {granularity!r}")
    calib, held_out = split_windows(windows)
    base_ppl, _ = measure_on(model, SkipPolicy(enabled=False), held_out)
    limit = base_ppl * (1 + max_increase / 100)
    if granularity == "block":
        sims = record_similarities(model, calib, progress)
        off = calibrate(model, calib, 0.0, skip_layers=skip_layers, warmup_tokens=warmup_tokens, similarities=sims,
                        progress=False).policy
        positions = torch.cat([torch.arange(len(w)) for w in calib])
        ceiling = simulate(replace(off, enabled=True, threshold=-1.0), sims, positions)

        def policy_for(target: float) -> SkipPolicy:
            return calibrate(model, calib, target, skip_layers=skip_layers, warmup_tokens=warmup_tokens,
                             similarities=sims, progress=False).policy
    else:
        off, ceiling = SkipPolicy(enabled=False), NEURON_CEILING

        def policy_for(target: float) -> SkipPolicy:
            return neuron_policy(model, calib, target, skip_layers=skip_layers, warmup_tokens=warmup_tokens)

    best = BudgetResult(off, base_ppl, base_ppl, 0.0, [])
    lo, hi = 0.0, ceiling
    for _ in tqdm(range(steps), desc=f"{granularity} skip within +{max_increase:g}% perplexity", disable=not progress):
        target = round((lo + hi) / 2, 4)
        policy = policy_for(target)
        ppl, ratios = measure_on(model, policy, held_out)
        ratio = ratios[granularity]
        best.trials.append(Trial(target, ratio, ppl))
        if ppl <= limit:
            lo = target
            if ratio >= best.held_out_ratio:
                best.policy, best.perplexity, best.held_out_ratio = policy, ppl, ratio
        else:
            hi = target
    return best
