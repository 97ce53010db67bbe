"""The neuron-level skipping MLP kernel (triton_neuron_mlp), run by the Triton
interpreter on CPU, against the torch reference: ragged shapes, every dtype, rows of
all three modes, fresh random data per case; and the bytes it does not read."""

import pytest
import torch

from conftest import TOL, LoadRecorder, rel_err
from vllm_sparse.kernels.reference import neuron_mlp_ref

pytestmark = [pytest.mark.interp, pytest.mark.usefixtures("interp_only")]

DTYPES = [torch.float16, torch.float32, torch.bfloat16]


def _gen():
    return torch.Generator().manual_seed(torch.seed() % 2**31)


def _mlp(dtype, hidden, inter, gen):
    gate = (torch.randn(inter, hidden, generator=gen) * hidden**-0.5).to(dtype)
    up = (torch.randn(inter, hidden, generator=gen) * hidden**-0.5).to(dtype)
    down = (torch.randn(hidden, inter, generator=gen) * inter**-0.5).to(dtype)
    return gate, up, down


def _threshold_at(x, gate, sparsity):
    """A threshold dropping about ``sparsity`` of the neurons, nudged off the dtype's
    grid so no activation equals it (the decision is then stable to rounding order)."""
    act = torch.nn.functional.silu(torch.nn.functional.linear(x.float(), gate.float()).to(x.dtype).float())
    return float(act.abs().flatten().quantile(sparsity)) * (1 + 1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows", [1, 5, 21])
def test_neuron_mlp_matches_reference(dtype, rows):
    from vllm_sparse.kernels.triton_neuron_mlp import ROW_DROP_NEURONS, ROW_FULL, ROW_SKIPPED, NeuronLayout, neuron_mlp

    gen = _gen()
    hidden, inter = 44, 100  # neither a multiple of the block sizes
    gate, up, down = _mlp(dtype, hidden, inter, gen)
    x = torch.randn(rows, hidden, generator=gen).to(dtype)
    mode = torch.randint(0, 3, (rows,), generator=gen, dtype=torch.int8)
    mode[0] = ROW_DROP_NEURONS
    if rows > 2:
        mode[1], mode[2] = ROW_FULL, ROW_SKIPPED
    threshold = _threshold_at(x, gate, 0.5)
    y, dropped = neuron_mlp(x, mode, NeuronLayout.from_dense(gate, up, down), threshold)
    ref, ref_dropped = neuron_mlp_ref(x, mode, gate, up, down, threshold)
    assert torch.equal(dropped, ref_dropped), (dropped, ref_dropped)
    assert int(dropped[0]) > 0 and (rows < 3 or int(dropped[1]) == 0)
    skipped = mode == ROW_SKIPPED
    assert torch.equal(y[skipped], torch.zeros_like(y[skipped])), "skipped rows must be exact zeros"
    assert rel_err(y[~skipped], ref[~skipped]) < TOL[dtype]
    # The dropped neurons matter: the full MLP differs from the dropped one.
    full, _ = neuron_mlp_ref(x, torch.zeros_like(mode), gate, up, down, threshold)
    assert rel_err(full[mode == ROW_DROP_NEURONS], ref[mode == ROW_DROP_NEURONS]) > 3 * TOL[dtype]


def test_zero_threshold_is_the_plain_mlp():
    from vllm_sparse.kernels.reference import skip_mlp_ref
    from vllm_sparse.kernels.triton_neuron_mlp import ROW_DROP_NEURONS, NeuronLayout, neuron_mlp

    gen = _gen()
    gate, up, down = _mlp(torch.float32, 40, 70, gen)
    x = torch.randn(3, 40, generator=gen)
    y, dropped = neuron_mlp(x, torch.full((3,), ROW_DROP_NEURONS, dtype=torch.int8),
                            NeuronLayout.from_dense(gate, up, down), 0.0)
    assert int(dropped.sum()) == 0
    assert rel_err(y, skip_mlp_ref(x, torch.zeros(3, dtype=torch.bool), gate, up, down)) < TOL[torch.float32]


def test_dropped_neurons_are_not_read(monkeypatch):
    """A neuron's up row and down column are loaded iff some row of the block keeps it;
    the gate is read in full; skipped rows load no activations."""
    from vllm_sparse.kernels.triton_neuron_mlp import ROW_DROP_NEURONS, ROW_SKIPPED, NeuronLayout, neuron_mlp

    gen = _gen()
    hidden, inter, rows = 40, 96, 3  # one block of rows
    gate, up, down = _mlp(torch.float16, hidden, inter, gen)
    x = torch.randn(rows, hidden, generator=gen).half()
    mode = torch.tensor([ROW_DROP_NEURONS, ROW_DROP_NEURONS, ROW_SKIPPED], dtype=torch.int8)
    threshold = _threshold_at(x[:2], gate, 0.8)
    layout = NeuronLayout.from_dense(gate, up, down)
    recorder = LoadRecorder(monkeypatch)
    y, dropped = neuron_mlp(x, mode, layout, threshold)
    _, ref_dropped = neuron_mlp_ref(x, mode, gate, up, down, threshold)
    assert torch.equal(dropped, ref_dropped)
    # Rounded as the kernel and the reference round it: the gate's output, then SiLU's.
    act = torch.nn.functional.silu(torch.nn.functional.linear(x.float(), gate.float()).half().float()).half().float()
    kept_by_some_row = (act[:2].abs() > threshold).any(dim=0)
    assert 0 < int(kept_by_some_row.sum()) < inter
    assert recorder.touched(layout.up) == int(kept_by_some_row.sum()) * hidden
    assert recorder.touched(layout.down_t) == int(kept_by_some_row.sum()) * hidden
    assert recorder.touched(layout.gate) == inter * hidden
    assert recorder.touched(x[2]) == 0
    assert torch.equal(y[2], torch.zeros_like(y[2]))


def test_strided_views_read_as_copies():
    """vLLM's merged gate_up weight (two views) and the CPU kernel's interleaved
    up_down rows are read in place, as the contiguous layout would be."""
    from vllm_sparse.kernels.cpu.skip_mlp import neuron_weights
    from vllm_sparse.kernels.triton_neuron_mlp import ROW_DROP_NEURONS, NeuronLayout, neuron_mlp

    gen = _gen()
    hidden, inter = 36, 70
    gate, up, down = _mlp(torch.float32, hidden, inter, gen)
    x = torch.randn(4, hidden, generator=gen)
    mode = torch.full((4,), ROW_DROP_NEURONS, dtype=torch.int8)
    threshold = _threshold_at(x, gate, 0.6)
    want, want_dropped = neuron_mlp(x, mode, NeuronLayout.from_dense(gate, up, down), threshold)
    merged = NeuronLayout.from_gate_up(torch.cat([gate, up]), down)
    assert merged.up.stride(0) == hidden and merged.up.data_ptr() != up.data_ptr()
    cpu_gate, up_down = neuron_weights(torch.cat([gate, up]), down)
    interleaved = NeuronLayout(cpu_gate, up_down[:, :hidden], up_down[:, hidden:])
    assert interleaved.up.stride(0) == 2 * hidden
    for layout in (merged, interleaved):
        y, dropped = neuron_mlp(x, mode, layout, threshold)
        assert torch.equal(dropped, want_dropped) and int(dropped.sum()) > 0
        assert rel_err(y, want) < TOL[torch.float32]


def test_bad_arguments_are_refused():
    from vllm_sparse.kernels.triton_neuron_mlp import NeuronLayout, neuron_mlp

    gate, up, down = _mlp(torch.float32, 8, 16, _gen())
    layout = NeuronLayout.from_dense(gate, up, down)
    with pytest.raises(ValueError, match="one gated MLP"):
        NeuronLayout.from_dense(gate, up, down.t())
    with pytest.raises(ValueError, match="rows must be contiguous"):
        neuron_mlp(torch.zeros(2, 8), torch.zeros(2, dtype=torch.int8), NeuronLayout(gate, up, down.t()), 0.1)
    with pytest.raises(ValueError, match="hidden size"):
        neuron_mlp(torch.zeros(2, 9), torch.zeros(2, dtype=torch.int8), layout, 0.1)
    with pytest.raises(ValueError, match="one entry per row"):
        neuron_mlp(torch.zeros(2, 8), torch.zeros(3, dtype=torch.int8), layout, 0.1)
    with pytest.raises(ValueError, match="threshold"):
        neuron_mlp(torch.zeros(2, 8), torch.zeros(2, dtype=torch.int8), layout, -1.0)
    with pytest.raises(ValueError, match="dtype"):
        neuron_mlp(torch.zeros(2, 8, dtype=torch.float16), torch.zeros(2, dtype=torch.int8), layout, 0.1)


def test_custom_op_checks_and_compiles():
    """``vllm_sparse::neuron_mlp``: torch.library.opcheck (schema, fake, autograd
    registration) and one node in a full graph, equal to the eager call."""
    from vllm_sparse.kernels import custom_ops  # noqa: F401 - registers the op
    from vllm_sparse.kernels.triton_neuron_mlp import NeuronLayout

    gen = _gen()
    gate, up, down = _mlp(torch.float16, 24, 40, gen)
    layout = NeuronLayout.from_dense(gate, up, down)
    x = torch.randn(5, 24, generator=gen).half()
    mode = torch.tensor([1, 0, 2, 1, 1], dtype=torch.int8)
    threshold = _threshold_at(x, gate, 0.5)
    args = (x, mode, layout.gate, layout.up, layout.down_t, threshold)
    torch.library.opcheck(torch.ops.vllm_sparse.neuron_mlp.default, args)
    compiled = torch.compile(lambda *a: torch.ops.vllm_sparse.neuron_mlp(*a)[0] * 2, backend="aot_eager",
                             fullgraph=True)
    eager, dropped = torch.ops.vllm_sparse.neuron_mlp(*args)
    assert torch.equal(compiled(*args), eager * 2) and int(dropped.sum()) > 0
