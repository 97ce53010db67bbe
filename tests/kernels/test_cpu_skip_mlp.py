"""The one-op skip-aware MLP (``vllm_sparse::cpu_skip_mlp``) against the Python
decision step (skip/decision.py: SkipRun) over whole forward passes, and each way it
runs a projection (dense, 2:4 and bitmap CPU kernels) against the dense MLP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vllm_sparse.kernels import CPU_SPARSE
from vllm_sparse.kernels import cpu as cpu_kernels
from vllm_sparse.kernels.cpu import isa, layout24
from vllm_sparse.kernels.cpu.layout import CpuSparseLayout
from vllm_sparse.kernels.cpu.skip_mlp import (ROW_COMPUTE, ROW_MAY_SKIP, ROW_UNCOUNTED, Projection, neuron_weights,
                                              new_counts, skip_mlp, skip_params)
from vllm_sparse.kernels.dispatcher import PackedWeight
from vllm_sparse.skip.decision import SkipRun, layer_is_hot, residual_cosine
from vllm_sparse.skip.policy import SkipPolicy

HIDDEN, INTER, LAYERS = 64, 96, 10
NEVER_CHECK = skip_params(hot=True, check=False, threshold=0.0, skip_layers=1)


@pytest.fixture(scope="module", autouse=True)
def kernels():
    assert cpu_kernels.build.load(), cpu_kernels.build.load_error()


def _mlp_weights(gen, dtype, scale):
    gate_up = (torch.randn(2 * INTER, HIDDEN, generator=gen) * scale).to(dtype)
    down = (torch.randn(HIDDEN, INTER, generator=gen) * scale).to(dtype)
    return gate_up, down


def _dense_mlp(gate_up, down, neuron_threshold=0.0, run=None):
    """The MLP; with a neuron threshold, the rows of ``run`` that may skip drop the
    neurons with |SiLU(gate)| at or under it (the transformers path's rule)."""
    def mlp(x):
        h = F.linear(x, gate_up)
        act = F.silu(h[:, :INTER])
        if neuron_threshold > 0:
            act = act.masked_fill((act.abs() <= neuron_threshold) & run.may_skip_rows()[:, None], 0)
        return F.linear(act * h[:, INTER:], down)
    return mlp


def _run_op_pass(policy, weights, residual, kinds, counts, decisions):
    """The op over LAYERS layers, each layer's FFN input = its residual stream."""
    countdown = torch.zeros(residual.shape[0], dtype=torch.int32)
    last_hot = LAYERS - policy.cold_end - 1
    skipped, outs = [], []
    for layer, (gate_up, down) in enumerate(weights):
        check = policy.threshold < 1.0 and policy.cold_start - 1 <= layer < last_hot
        params = skip_params(hot=layer_is_hot(policy, layer, LAYERS), check=check, threshold=policy.threshold,
                             skip_layers=policy.skip_layers, neuron_threshold=policy.neuron_threshold(layer))
        out, countdown = skip_mlp(residual, residual, kinds, countdown, counts, decisions, Projection.dense(gate_up),
                                  Projection.dense(down), params)
        skipped.append(decisions[:residual.shape[0]].bool().clone())
        outs.append(out)
        residual = residual + out
    return skipped, outs


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("decoding", [8, 37])  # 11 rows: the MLP runs on every row; 40: on the computed rows
@pytest.mark.parametrize("neurons", [0.0, 0.1], ids=["block", "block+neuron"])
def test_op_decides_and_computes_as_the_python_step(dtype, decoding, neurons):
    gen = torch.Generator().manual_seed(7)
    weights = [_mlp_weights(gen, dtype, 0.1) for _ in range(LAYERS)]
    # rows: warm-up, prompt, 8 decode rows, a padding row (never skips, not counted)
    positions = torch.tensor([2, 40] + [30 + i for i in range(decoding)] + [0])
    is_prompt = torch.tensor([False, True] + [False] * decoding + [True])
    residual = torch.randn(len(positions), HIDDEN, generator=gen).to(dtype)
    # threshold at the median first-layer similarity: some rows trigger, some do not
    first = _dense_mlp(*weights[0])(residual)
    threshold = float(residual_cosine(residual, first).median())
    policy = SkipPolicy(enabled=True, threshold=threshold, skip_layers=2, cold_start=1, cold_end=1, warmup_tokens=28,
                        neuron_thresholds=(neurons,) * LAYERS)

    run = SkipRun.start(policy, LAYERS, positions, is_prompt)
    h, expected_skip, expected_out = residual, [], []
    neurons_counted, neurons_dropped = 0, 0  # in the decoding rows that compute the layer
    for layer, (gate_up, down) in enumerate(weights):
        out, _, _ = run.ffn(layer, h, h, _dense_mlp(gate_up, down, policy.neuron_threshold(layer), run))
        expected_skip.append(run.last_skip)
        expected_out.append(out)
        if neurons:
            dropping = torch.tensor([False, False] + [True] * decoding + [False]) & ~run.last_skip
            act = F.silu(F.linear(h[dropping], gate_up)[:, :INTER])
            neurons_counted += act.numel()
            neurons_dropped += int((act.abs() <= neurons).sum())
        h = h + out

    kinds = torch.tensor([ROW_COMPUTE, ROW_COMPUTE] + [ROW_MAY_SKIP] * decoding + [ROW_UNCOUNTED], dtype=torch.int8)
    counts = new_counts()
    decisions = torch.full((64,), 7, dtype=torch.uint8)
    skipped, outs = _run_op_pass(policy, weights, residual, kinds, counts, decisions)

    total_skipped = int(sum(s.sum() for s in expected_skip))
    assert 0 < total_skipped < decoding * (LAYERS - 2)  # the case exercises both decisions
    for layer in range(LAYERS):
        assert torch.equal(skipped[layer], expected_skip[layer]), layer
        assert torch.all(outs[layer][skipped[layer]] == 0)
        # same values up to the GEMM's rounding (it runs on all rows at decode sizes)
        torch.testing.assert_close(outs[layer], expected_out[layer], rtol=1e-2, atol=1e-5)
    counted = LAYERS * (decoding + 2)  # the padding row is not counted
    assert counts[:2].tolist() == [total_skipped, counted - total_skipped]
    # Neurons: counted in the decoding rows that computed each layer; dropped as the
    # reference drops them (a value at the threshold may round the other way in bf16).
    dropped, kept = counts[2:].tolist()
    assert dropped + kept == neurons_counted
    assert abs(dropped - neurons_dropped) <= (0 if dtype == torch.float32 else neurons_counted // 200)
    assert (dropped > 0) == (neurons > 0)
    assert torch.all(decisions[len(positions):] == 7)  # rows past the batch untouched


def test_threshold_one_and_cold_layers_never_skip():
    gen = torch.Generator().manual_seed(3)
    weights = [_mlp_weights(gen, torch.float32, 0.01) for _ in range(LAYERS)]
    residual = torch.randn(4, HIDDEN, generator=gen)
    kinds = torch.full((4,), ROW_MAY_SKIP, dtype=torch.int8)
    counts, decisions = new_counts(), torch.zeros(4, dtype=torch.uint8)
    never = SkipPolicy(enabled=True, threshold=1.0, skip_layers=3, cold_start=2, cold_end=2, warmup_tokens=0)
    skipped, _ = _run_op_pass(never, weights, residual, kinds, counts, decisions)
    assert not any(s.any() for s in skipped) and counts.tolist() == [0, 4 * LAYERS, 0, 0]
    # tiny updates: every check passes; cold layers 0, 1, 8, 9 still compute
    always = SkipPolicy(enabled=True, threshold=0.5, skip_layers=3, cold_start=2, cold_end=2, warmup_tokens=0)
    skipped, _ = _run_op_pass(always, weights, residual, kinds, counts, decisions)
    assert [bool(s.all()) for s in skipped] == [False, False, True, True, True, False, True, True, False, False]


def test_every_projection_kind_matches_the_dense_mlp():
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(5, HIDDEN, generator=gen).bfloat16()
    gate_up, down = _mlp_weights(gen, torch.float32, 1.0)
    gate_up[:, 1::2] = 0  # 2:4 along in_features
    down = down * (torch.rand(down.shape, generator=gen) > 0.7)  # 70% unstructured
    gate_up, down = gate_up.bfloat16(), down.bfloat16()
    reference = _dense_mlp(gate_up, down)(x).float()
    kinds = torch.full((5,), ROW_COMPUTE, dtype=torch.int8)
    pairs = [(Projection.dense(gate_up), Projection.dense(down)),
             (_bitmap_projection(gate_up), _bitmap_projection(down))]
    if layout24.supported():
        pairs.append((_nm24_projection(gate_up), _bitmap_projection(down)))
    for gu, dn in pairs:
        out, countdown = skip_mlp(x, x, kinds, torch.zeros(5, dtype=torch.int32), new_counts(),
                                  torch.zeros(5, dtype=torch.uint8), gu, dn, NEVER_CHECK)
        assert torch.all(countdown == 0)
        torch.testing.assert_close(out.float(), reference, rtol=2e-2, atol=2e-2)
    assert [p.name for pair in pairs for p in pair][:4] == ["torch dense", "torch dense", "cpu_sparse bitmap",
                                                              "cpu_sparse bitmap"]


def _bitmap_projection(weight):
    packed = PackedWeight(CPU_SPARSE, tuple(weight.shape), weight.dtype, layout=CpuSparseLayout.pack(weight),
                          cpu_isa=isa.default(), max_direct_m=16)
    return Projection.cpu_sparse(packed)


def _nm24_projection(weight):
    packed = PackedWeight(CPU_SPARSE, tuple(weight.shape), weight.dtype, layout=layout24.Cpu24Layout.pack(weight),
                          cpu_isa=layout24.kernel_isa(), max_direct_m=16)
    return Projection.cpu_sparse(packed)


def test_bad_inputs_are_refused():
    x = torch.randn(3, HIDDEN)
    gate_up, down = _mlp_weights(torch.Generator().manual_seed(0), torch.float32, 1.0)
    params = skip_params(hot=True, check=True, threshold=0.9, skip_layers=2)
    good = (torch.zeros(3, dtype=torch.int8), torch.zeros(3, dtype=torch.int32), new_counts(),
            torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="row_kind must be int8"):
        skip_mlp(x, x, good[0].long(), *good[1:], Projection.dense(gate_up), Projection.dense(down), params)
    with pytest.raises(RuntimeError, match="countdown must be int32"):
        skip_mlp(x, x, good[0], torch.zeros(2, dtype=torch.int32), *good[2:], Projection.dense(gate_up),
                 Projection.dense(down), params)
    with pytest.raises(RuntimeError, match=r"counts must be int64 \[4\]"):
        skip_mlp(x, x, *good[:2], torch.zeros(2, dtype=torch.int64), good[3], Projection.dense(gate_up),
                 Projection.dense(down), params)
    with pytest.raises(RuntimeError, match="unknown projection kind"):
        skip_mlp(x, x, *good, Projection(9, (gate_up,)), Projection.dense(down), params)


def test_wide_mlp_under_inference_mode():
    """A decode batch wide enough that SiLU * up runs on the worker threads, on
    inference tensors (as vLLM calls it): same values as the torch MLP, bit for bit."""
    gen = torch.Generator().manual_seed(5)
    inter = 1536
    gate_up = (torch.randn(2 * inter, HIDDEN, generator=gen) * 0.1).bfloat16()
    down = (torch.randn(HIDDEN, inter, generator=gen) * 0.1).bfloat16()
    with torch.inference_mode():
        x = torch.randn(8, HIDDEN, generator=gen).bfloat16()
        out, _ = skip_mlp(x, x, torch.zeros(8, dtype=torch.int8), torch.zeros(8, dtype=torch.int32),
                          new_counts(), torch.zeros(8, dtype=torch.uint8),
                          Projection.dense(gate_up), Projection.dense(down), NEVER_CHECK)
        h = F.linear(x, gate_up)
        expected = F.linear(F.silu(h[:, :inter]) * h[:, inter:], down)
    assert torch.equal(out, expected)


def test_one_row_neuron_kernel_reads_only_active_neurons():
    """One decoding row under neuron-level skipping, bf16, AVX-512 BF16 hosts: the
    up rows and down columns of the dropped neurons are NaN, and the output is the
    masked MLP's (so they were never read)."""
    from vllm_sparse.kernels.cpu import isa

    if "avx512_bf16" not in isa.cpu_description()["flags"]:
        pytest.skip("no AVX-512 BF16: one decoding row runs the masked MLP (tested above)")
    gen = torch.Generator().manual_seed(9)
    hidden, inter, threshold = 200, 1000, 0.15  # neither a multiple of the vector width
    gate_up = (torch.randn(2 * inter, hidden, generator=gen) * 0.07).bfloat16()
    down = (torch.randn(hidden, inter, generator=gen) * 0.07).bfloat16()
    x = torch.randn(1, hidden, generator=gen).bfloat16()
    h = F.linear(x, gate_up)
    act = F.silu(h[:, :inter])
    dropped = act.abs()[0] <= threshold
    assert 0.2 < dropped.float().mean() < 0.8
    expected = F.linear(act.masked_fill(dropped, 0) * h[:, inter:], down).float()
    gate, up_down = neuron_weights(gate_up, down)
    assert torch.equal(up_down[:, :hidden], gate_up[inter:]) and torch.equal(up_down[:, hidden:], down.t())
    up_down[dropped] = float("nan")
    params = skip_params(hot=True, check=False, threshold=1.0, skip_layers=1, neuron_threshold=threshold)
    counts = new_counts()
    out, _ = skip_mlp(x, x, torch.ones(1, dtype=torch.int8), torch.zeros(1, dtype=torch.int32),
                      counts, torch.zeros(1, dtype=torch.uint8),
                      Projection.dense(gate_up), Projection.dense(down), params, (gate, up_down))
    assert torch.isfinite(out).all()
    # the kernel's gate dot products round in another order: a neuron at the threshold may go either way
    assert counts[:2].tolist() == [0, 1] and counts[2:].sum() == inter
    assert abs(int(counts[2]) - int(dropped.sum())) <= 2
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-3)
