"""The skip decision: the one implementation both paths run (vLLM's decoder layers
in ``plugin/ffn_skip.py``, transformers' in ``skip/hf.py``) and calibration replays.

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

import math
from collections.abc import Callable, Sequence

import torch

from .policy import SkipPolicy

MLP = Callable[[torch.Tensor], torch.Tensor]
# Optional fused kernel: (x [N, H], skip [N] bool) -> out with zero rows where skip.
FusedMLP = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Calibration hook: (layer, row indices that computed, their similarities).
Recorder = Callable[[int, torch.Tensor, torch.Tensor], None]

# Up to this many rows a similarity comes from dot products finished on the host
# (dot_cosine); more rows are left to residual_cosine on the device.
HOST_COSINE_MAX_ROWS = 64

def layer_is_hot(policy: SkipPolicy, layer: int, num_layers: int) -> bool:
    return policy.cold_start <= layer < num_layers - policy.cold_end


def layer_is_checked(policy: SkipPolicy, layer: int, num_layers: int) -> bool:
    """Does layer ``layer``'s similarity matter? A trigger at layer l only has an
    effect if layer l + 1 may skip: a computed layer resets the countdown, so a
    trigger before the last cold layer at the start, or at the last hot layer or
    later, is forgotten unused."""
    return (policy.enabled and policy.threshold < 1.0
            and policy.cold_start - 1 <= layer < num_layers - policy.cold_end - 1)


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


def dot_cosine(residual: torch.Tensor, update: torch.Tensor) -> list[float]:
    """residual_cosine for a few rows: the dot products hh, uu and hu on the device,
    then cos(h, h + u) = (hh + hu) / sqrt(hh (hh + 2 hu + uu)) on the host. Four tensor
    ops against about ten for the cosine: at batch 1 on CPU the decision's op count,
    not its arithmetic, is what costs (measured inside vLLM: 14 us against 24 us a
    layer at batch 1, 16 against 30 at batch 8)."""
    rows = residual.shape[0]
    stacked = torch.cat((residual, update)).float()
    dots = torch.cat((torch.linalg.vecdot(stacked, stacked),
                      torch.linalg.vecdot(stacked[:rows], stacked[rows:]))).tolist()
    cosines = []
    for hh, uu, hu in zip(dots[:rows], dots[rows:2 * rows], dots[2 * rows:]):
        cosine = (hh + hu) / math.sqrt(max(hh * (hh + 2 * hu + uu), 1e-24))
        cosines.append(min(1.0, max(-1.0, cosine)))
    return cosines


class SkipRun:
    """State of one forward pass through the decoder layers (one per batch).

    The bookkeeping (which rows may skip, each one's countdown) is plain Python
    lists over the *candidate* rows only (eligible ones): for a decode batch that
    costs less per layer than any tensor op, and on CPU at batch 1 a dozen small
    tensor ops per layer cost more than a skipped FFN saves. Prompt rows and rows in
    warm-up are not candidates and cost nothing. Tensors are touched only to run the
    FFN on the computing rows and to measure the candidates' similarities (one
    device-to-host copy per checked layer)."""

    def __init__(self, policy: SkipPolicy, num_layers: int, eligible: Sequence[bool],
                 recorder: Recorder | None = None) -> None:
        self.policy = policy
        self.num_layers = num_layers
        self.rows = len(eligible)
        self.candidates = [row for row, ok in enumerate(eligible) if ok]  # rows that may skip, ascending
        self.countdown = [0] * len(self.candidates)
        self.recorder = recorder
        self.last_skip_rows: list[int] = []  # rows that skipped the last layer run (tests trace it)
        self.mlp_rows: list[int] | None = None  # rows of the last MLP call (None: all); neuron masking reads it
        self._pending = False  # any countdown > 0

    @classmethod
    def start(cls, policy: SkipPolicy, num_layers: int, positions: torch.Tensor, is_prompt: torch.Tensor,
              recorder: Recorder | None = None) -> "SkipRun":
        eligible = eligible_rows(policy, positions.reshape(-1), is_prompt.reshape(-1))
        return cls(policy, num_layers, eligible.tolist(), recorder)

    @property
    def last_skip(self) -> torch.Tensor:
        """bool [N]: which rows skipped the last layer run."""
        skip = torch.zeros(self.rows, dtype=torch.bool)
        skip[self.last_skip_rows] = True
        return skip

    def may_skip_rows(self) -> torch.Tensor:
        """bool [rows of the last MLP call]: which of them may skip (candidates); the
        rows neuron-level skipping applies to."""
        eligible = torch.zeros(self.rows, dtype=torch.bool)
        eligible[self.candidates] = True
        return eligible if self.mlp_rows is None else eligible[self.mlp_rows]

    def plan(self, layer: int) -> list[bool] | None:
        """Which candidates skip layer ``layer`` (one bool per candidate); None: none do."""
        if not self._pending or not layer_is_hot(self.policy, layer, self.num_layers):
            return None
        return [count > 0 for count in self.countdown]

    def check_matters(self, layer: int) -> bool:
        return layer_is_checked(self.policy, layer, self.num_layers)

    def checked(self, skipping: list[bool] | None) -> list[int]:
        """Candidates that computed the layer (their similarity is what is checked)."""
        if skipping is None:
            return self.candidates
        return [row for row, skipped in zip(self.candidates, skipping) if not skipped]

    def observe(self, layer: int, skipping: list[bool] | None, similarity: Sequence[float] | None) -> None:
        """Advance the countdowns past layer ``layer``: a candidate that skipped uses one
        up; one that computed is reset, then set to k where its similarity (given for
        ``checked(skipping)``, in that order; None when the check does not matter)
        passes the threshold."""
        threshold, k = self.policy.threshold, self.policy.skip_layers
        if skipping is None:
            if similarity is None:
                self.countdown = [0] * len(self.candidates)
            else:
                self.countdown = [k if value > threshold else 0 for value in similarity]
        else:
            values = None if similarity is None else iter(similarity)
            countdown = []
            for count, skipped in zip(self.countdown, skipping):
                if skipped:
                    countdown.append(count - 1)
                else:  # computed: reset, or k where its similarity passes (no similarity: reset)
                    countdown.append(k if values is not None and next(values) > threshold else 0)
            self.countdown = countdown
        self._pending = any(self.countdown)

    def ffn(self, layer: int, x: torch.Tensor, residual: torch.Tensor, mlp: MLP,
            fused: FusedMLP | None = None) -> tuple[torch.Tensor, int, int]:
        """Run layer ``layer``'s FFN on the rows that do not skip and update the
        countdowns. ``x``: the FFN input [N, H] (normed), ``residual``: the residual
        stream entering the FFN [N, H]. Returns (ffn output [N, H], skipped, computed)."""
        skipping = self.plan(layer)
        skip_rows = [] if skipping is None else [row for row, s in zip(self.candidates, skipping) if s]
        self.last_skip_rows = skip_rows
        n_skip = len(skip_rows)
        computed = None  # None: every row computed
        self.mlp_rows = None
        if n_skip == 0:
            out = mlp(x)
        elif n_skip == self.rows:
            out, computed = torch.zeros_like(x), []
        else:
            skip = [False] * self.rows
            for row in skip_rows:
                skip[row] = True
            computed = [row for row, skipped in enumerate(skip) if not skipped]
            if fused is not None:  # skipped rows do no work inside the kernel
                out = fused(x, torch.tensor(skip, dtype=torch.bool, device=x.device))
            else:  # gather the computing rows, run the MLP on them, scatter back
                self.mlp_rows = computed
                index = torch.tensor(computed, device=x.device)
                out = torch.zeros_like(x).index_copy_(0, index, mlp(x.index_select(0, index)))
        similarity = None
        if self.check_matters(layer):
            checked = self.checked(skipping)
            if checked:
                similarity = self._similarity(checked, residual, out)
        self.observe(layer, skipping, similarity)
        if self.recorder is not None:
            rows = list(range(self.rows)) if computed is None else computed
            if rows:
                h, u = self._gather(rows, residual, out)
                self.recorder(layer, torch.tensor(rows), residual_cosine(h, u))
        return out, n_skip, self.rows - n_skip

    def _similarity(self, rows: list[int], residual: torch.Tensor, out: torch.Tensor) -> list[float]:
        if self.rows <= HOST_COSINE_MAX_ROWS:  # every row's dot products cost what a gather would
            cosines = dot_cosine(residual, out)
            return cosines if len(rows) == self.rows else [cosines[row] for row in rows]
        h, u = self._gather(rows, residual, out)
        return residual_cosine(h, u).tolist()

    def _gather(self, rows: list[int], residual: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(rows) == self.rows:  # every row (rows are ascending and unique): no copy
            return residual, out
        index = torch.tensor(rows, device=residual.device)
        return residual.index_select(0, index), out.index_select(0, index)
