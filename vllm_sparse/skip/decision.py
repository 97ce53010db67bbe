"""The skip decision, on tensors: the one implementation both paths run (vLLM's
decoder layers in ``plugin/ffn_skip.py``, transformers' in ``skip/hf.py``).

Per token (one row of the flattened batch) and per decoder layer ``l``:

* the row may skip at all only if it is past warm-up (``position >= warmup_tokens``)
  and is not a prompt token (unless ``skip_prompt``): its *eligibility*;
* a layer in the cold regions (first ``cold_start``, last ``cold_end``) never skips;
* the row skips layer ``l``'s FFN iff it is eligible, ``l`` is hot and its
  countdown is > 0 (set by an earlier check);
* a row that computes layer ``l`` is checked: cosine(h, h + ffn(h)) of its
  residual stream before and after the FFN update; above ``threshold`` the next
  ``skip_layers`` layers are skipped (countdown = k), otherwise countdown = 0.
  A skipped layer uses up one unit of countdown; when it reaches 0, the next
  computed layer checks again (the greedy rule of FFN-SkipLLM).

Each row's decisions depend only on its own hidden states, position and prompt
flag, so rows of any mix of requests (prefill chunks, decodes) are independent.
A skipped row's FFN output is exactly zero: the residual stream passes unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .policy import SkipPolicy

MLP = Callable[[torch.Tensor], torch.Tensor]
# Optional fused kernel: (x [N, H], skip [N] bool) -> out with zero rows where skip.
FusedMLP = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Calibration hook: (layer, row indices that computed, their similarities).
Recorder = Callable[[int, torch.Tensor, torch.Tensor], None]


def layer_is_hot(policy: SkipPolicy, layer: int, num_layers: int) -> bool:
    return policy.cold_start <= layer < num_layers - policy.cold_end


def eligible_rows(policy: SkipPolicy, positions: torch.Tensor, is_prompt: torch.Tensor) -> torch.Tensor:
    """Rows that may ever skip in this forward pass (bool [N])."""
    ok = positions >= policy.warmup_tokens
    if not policy.skip_prompt:
        ok = ok & ~is_prompt
    return ok if policy.enabled else torch.zeros_like(ok)


def residual_cosine(residual: torch.Tensor, update: torch.Tensor) -> torch.Tensor:
    """cosine(h, h + u) per row, in fp32, clamped to [-1, 1] so a threshold of 1.0
    can never be passed (rounding can otherwise give 1.0000001)."""
    h = residual.float()
    after = h + update.float()
    return torch.nn.functional.cosine_similarity(h, after, dim=-1, eps=1e-12).clamp(-1.0, 1.0)


@dataclass
class SkipRun:
    """State of one forward pass through the decoder layers (one per batch)."""

    policy: SkipPolicy
    num_layers: int
    eligible: torch.Tensor  # bool [N]
    recorder: Recorder | None = None
    countdown: torch.Tensor = field(init=False)
    last_skip: torch.Tensor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.countdown = torch.zeros(self.eligible.shape, dtype=torch.int32, device=self.eligible.device)

    @classmethod
    def start(cls, policy: SkipPolicy, num_layers: int, positions: torch.Tensor, is_prompt: torch.Tensor,
              recorder: Recorder | None = None) -> "SkipRun":
        return cls(policy, num_layers, eligible_rows(policy, positions.reshape(-1), is_prompt.reshape(-1)), recorder)

    def skip_mask(self, layer: int) -> torch.Tensor:
        if not layer_is_hot(self.policy, layer, self.num_layers):
            return torch.zeros_like(self.eligible)
        return self.eligible & (self.countdown > 0)

    def check_matters(self, layer: int) -> bool:
        # A trigger here only has an effect if a later layer may skip.
        last_hot = self.num_layers - self.policy.cold_end - 1
        return self.policy.enabled and self.policy.threshold < 1.0 and layer < last_hot

    def ffn(self, layer: int, x: torch.Tensor, residual: torch.Tensor, mlp: MLP,
            fused: FusedMLP | None = None) -> tuple[torch.Tensor, int, int]:
        """Run layer ``layer``'s FFN on the rows that do not skip and update the
        countdowns. ``x``: the FFN input [N, H] (normed), ``residual``: the residual
        stream entering the FFN [N, H]. Returns (ffn output [N, H], skipped, computed)."""
        rows = x.shape[0]
        skip = self.skip_mask(layer)
        self.last_skip = skip  # kept for tracing (tests compare decisions across paths)
        n_skip = int(skip.sum())
        if n_skip == 0:
            out, computed = mlp(x), None
        elif n_skip == rows:
            out, computed = torch.zeros_like(x), torch.zeros(0, dtype=torch.long, device=x.device)
        else:
            computed = (~skip).nonzero().squeeze(1)
            if fused is not None:
                out = fused(x, skip)  # skipped rows do no work inside the kernel
            else:  # gather the computing rows, run the MLP on them, scatter back
                out = torch.zeros_like(x).index_copy_(0, computed, mlp(x.index_select(0, computed)))
        self._update(layer, skip, computed, residual, out)
        return out, n_skip, rows - n_skip

    def _update(self, layer: int, skip: torch.Tensor, computed: torch.Tensor | None,
                residual: torch.Tensor, out: torch.Tensor) -> None:
        countdown = torch.where(skip, self.countdown - 1, torch.zeros_like(self.countdown))
        want_check = self.check_matters(layer)
        if want_check or self.recorder is not None:
            idx = torch.arange(skip.shape[0], device=skip.device) if computed is None else computed
            if idx.numel():
                sim = residual_cosine(residual.index_select(0, idx), out.index_select(0, idx))
                if self.recorder is not None:
                    self.recorder(layer, idx, sim)
                if want_check:
                    trigger = (sim > self.policy.threshold) & self.eligible.index_select(0, idx)
                    k = torch.full_like(sim, self.policy.skip_layers, dtype=torch.int32)
                    countdown.index_copy_(0, idx, torch.where(trigger, k, torch.zeros_like(k)))
        self.countdown = countdown
