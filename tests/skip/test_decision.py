"""The decision step on hand-made tensors: the greedy k-layer rule, cold layers,
warm-up, prompt rows, threshold 1.0, and that skipped rows do no FFN work."""

from __future__ import annotations

import pytest
import torch

from vllm_sparse.skip.decision import HOST_COSINE_MAX_ROWS, SkipRun, dot_cosine, residual_cosine
from vllm_sparse.skip.policy import SkipPolicy

HIDDEN = 8


class CountingMLP:
    """A stand-in FFN: a small update (similarity ~0.9999), recording how many rows
    each call received."""

    def __init__(self, scale: float = 0.01) -> None:
        self.scale, self.calls = scale, []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        return self.scale * x


def run_layers(policy, positions, is_prompt, layers=10, mlp=None, residual=None):
    mlp = mlp or CountingMLP()
    run = SkipRun.start(policy, layers, torch.tensor(positions), torch.tensor(is_prompt))
    residual = torch.randn(len(positions), HIDDEN) if residual is None else residual
    skipped = []
    for layer in range(layers):
        out, n_skip, n_comp = run.ffn(layer, residual, residual, mlp)
        assert n_skip + n_comp == len(positions)
        assert torch.all(out[run.last_skip] == 0)  # a skipped row's FFN output is exactly zero
        skipped.append(run.last_skip.tolist())
        residual = residual + out
    return skipped, mlp


POLICY = SkipPolicy(enabled=True, threshold=0.5, skip_layers=2, cold_start=1, cold_end=1, warmup_tokens=4)


def test_greedy_k_layer_rule_and_cold_layers():
    skipped, _ = run_layers(POLICY, [10], [False])
    # layer 0 (cold) computes and triggers; 1-2 skip; 3 checks; 4-5 skip; 6 checks; 7-8 skip; 9 is cold.
    assert [s[0] for s in skipped] == [False, True, True, False, True, True, False, True, True, False]


def test_low_similarity_never_triggers():
    mlp = CountingMLP(scale=-1.0)  # h + ffn(h) = 0: cosine 0, below the threshold
    skipped, _ = run_layers(POLICY, [10], [False], mlp=mlp)
    assert not any(s[0] for s in skipped)


def test_warmup_prompt_and_per_row_decisions():
    # rows: in warm-up; a prompt token; a decode token; a prompt token with skip_prompt
    skipped, _ = run_layers(POLICY, [2, 10, 11], [False, True, False])
    per_row = list(zip(*skipped))
    assert not any(per_row[0]) and not any(per_row[1]) and sum(per_row[2]) == 6
    with_prompt = SkipPolicy(**{**POLICY.__dict__, "skip_prompt": True})
    skipped, _ = run_layers(with_prompt, [2, 10], [True, True])
    assert not any(s[0] for s in skipped) and sum(s[1] for s in skipped) == 6


def test_threshold_one_and_disabled_never_skip():
    never = (SkipPolicy(**{**POLICY.__dict__, "threshold": 1.0}), SkipPolicy(**{**POLICY.__dict__, "enabled": False}))
    for policy in never:
        zero = CountingMLP(scale=0.0)  # h + 0 = h: cosine exactly 1.0
        skipped, mlp = run_layers(policy, [10, 20, 30], [False] * 3, mlp=zero)
        assert not any(any(s) for s in skipped)
        assert mlp.calls == [3] * 10


def test_skipping_rows_are_gathered_out_and_all_skip_reads_nothing():
    # row 0 decodes (skips), row 1 is in warm-up (always computes)
    _, mlp = run_layers(POLICY, [10, 1], [False, False])
    assert mlp.calls == [2, 1, 1, 2, 1, 1, 2, 1, 1, 2]
    _, mlp = run_layers(POLICY, [10, 12], [False, False])
    assert mlp.calls == [2, 2, 2, 2]  # layers 1-2, 4-5, 7-8: every row skips, the FFN is not called


def test_cosine_is_clamped():
    h = torch.randn(4, HIDDEN)
    assert torch.all(residual_cosine(h, torch.zeros_like(h)) <= 1.0)
    assert torch.allclose(residual_cosine(h, -h / 2), torch.ones(4))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_host_cosine_matches_the_tensor_cosine(dtype):
    """The few-row similarity (dot products finished on the host) is the same
    quantity as residual_cosine, to fp32 rounding, and clamped alike."""
    torch.manual_seed(1)
    h = (torch.randn(7, 64) * 10).to(dtype)
    u = torch.cat([torch.randn(4, 64), torch.zeros(1, 64), -h[5:6].float() / 2, -h[6:7].float()]).to(dtype)
    want = residual_cosine(h, u).double()
    got = torch.tensor(dot_cosine(h, u), dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert got[4] == 1.0 and got[5] == 1.0 and got.max() <= 1.0  # u = 0 and u = -h/2: h + u is parallel to h


def test_many_rows_take_the_tensor_cosine_with_the_same_decisions():
    rows = HOST_COSINE_MAX_ROWS + 3
    policy = SkipPolicy(enabled=True, threshold=0.9999, skip_layers=2, cold_start=1, cold_end=1, warmup_tokens=4)
    residual = torch.randn(rows, HIDDEN)
    residual[::2] *= 1000  # against these rows the update is tiny: they trigger
    skipped, _ = run_layers(policy, [10] * rows, [False] * rows, residual=residual, mlp=torch.ones_like)
    even = [row % 2 == 0 for row in range(rows)]
    assert skipped[1] == skipped[2] == even
    assert skipped[4] == skipped[5] == even  # layers 1-2 checked the odd rows only: a gather


def test_fused_kernel_path_matches_the_gather_path():
    """The skip-aware fused MLP op (torch reference on CPU, Triton on CUDA) fed a
    merged [gate; up] weight gives what gathering rows into the MLP gives."""
    import torch.nn.functional as F

    from vllm_sparse.skip.fused import fused_skip_mlp

    torch.manual_seed(0)
    gate_up, down = torch.randn(2 * 16, HIDDEN) / 3, torch.randn(HIDDEN, 16) / 4

    def mlp(x):
        g, u = F.linear(x, gate_up).chunk(2, dim=-1)
        return F.linear(F.silu(g) * u, down)

    policy = SkipPolicy(enabled=True, threshold=-1.0, skip_layers=2, cold_start=1, cold_end=1, warmup_tokens=4)
    x = torch.randn(5, HIDDEN)
    positions, prompt = torch.tensor([10, 1, 12, 30, 2]), torch.zeros(5, dtype=torch.bool)
    outs = []
    for fused in (None, fused_skip_mlp(lambda: gate_up, lambda: down)):
        run = SkipRun.start(policy, 6, positions, prompt)
        run.ffn(0, x, x, mlp, fused)
        out, n_skip, _ = run.ffn(1, x, x, mlp, fused)
        assert n_skip == 3 and torch.all(out[[0, 2, 3]] == 0)
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
