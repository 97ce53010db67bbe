"""Custom ops (opcheck, torch.compile), the dispatcher's choices and its public API."""

import pytest
import torch
import torch.nn.functional as F

from conftest import TOL, prune_nm, prune_random, rel_err
from vllm_sparse.kernels import (
    DENSE,
    TORCH_SEMI_STRUCTURED,
    TRITON_BITMAP,
    TRITON_NM,
    NMPattern,
    SparsePatternError,
    WeightAnalysis,
    analyze_weight,
    compressed_bytes,
    dense_bytes,
    pack_bitmap,
    pack_for_path,
    pack_nm,
    select_path,
    sparse_linear,
)
from vllm_sparse.kernels import custom_ops

interp = pytest.mark.interp


def _gen():
    return torch.Generator().manual_seed(torch.seed() % 2**31)


# ---- dispatcher: choices ---------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cpu_dense_below_min_sparsity_or_when_forced(dtype, monkeypatch):
    assert select_path(WeightAnalysis((576, 576), 0.0, None), dtype, "cpu") == DENSE
    assert select_path(WeightAnalysis((4096, 4096), 0.2, None), dtype, torch.device("cpu")) == DENSE
    monkeypatch.setenv("VLLM_SPARSE_PATH", DENSE)
    assert select_path(WeightAnalysis((4096, 4096), 0.9, None), dtype, "cpu") == DENSE


def test_cuda_choices_without_semi_structured_support():
    # No CUDA device here, so torch's semi-structured path is unavailable and 2:4 goes to ours.
    assert select_path(WeightAnalysis((4096, 4096), 0.5, NMPattern(2, 4)), torch.float16, "cuda") == TRITON_NM
    assert select_path(WeightAnalysis((4096, 4096), 0.5, NMPattern(4, 8)), torch.bfloat16, "cuda") == TRITON_NM
    assert select_path(WeightAnalysis((4096, 4096), 0.7, None), torch.float16, "cuda") == TRITON_BITMAP
    assert select_path(WeightAnalysis((4096, 4096), 0.4, None), torch.float16, "cuda") == DENSE
    assert select_path(WeightAnalysis((4096, 4096), 0.1, None), torch.float16, "cuda") == DENSE
    assert select_path(WeightAnalysis((4096, 4096), 0.7, None), torch.float64, "cuda") == DENSE


def test_forced_path(monkeypatch):
    a = WeightAnalysis((64, 64), 0.7, None)
    monkeypatch.setenv("VLLM_SPARSE_PATH", DENSE)
    assert select_path(a, torch.float16, "cuda") == DENSE
    monkeypatch.setenv("VLLM_SPARSE_PATH", TRITON_NM)  # not allowed for unstructured: ignored
    assert select_path(a, torch.float16, "cuda") == TRITON_BITMAP
    monkeypatch.setenv("VLLM_SPARSE_PATH", "bogus")
    with pytest.raises(ValueError, match="bogus"):
        select_path(a, torch.float16, "cuda")


def test_compressed_bytes_matches_packed_layouts():
    gen = _gen()
    w = prune_nm(torch.randn(64, 256, generator=gen).half(), 2, 4)
    a = analyze_weight(w)
    assert a.nm == NMPattern(2, 4)
    packed = pack_for_path(w, a, TRITON_NM)
    assert compressed_bytes(a, torch.float16) == packed.stored_bytes == pack_nm(w, "2:4").stored_bytes
    assert packed.stored_bytes < 0.6 * dense_bytes(a, torch.float16)
    w = prune_random(torch.randn(64, 300, generator=gen).half(), 0.8, gen)
    a = analyze_weight(w)
    packed = pack_for_path(w, a, TRITON_BITMAP)
    assert compressed_bytes(a, torch.float16) == packed.stored_bytes == pack_bitmap(w).stored_bytes
    assert pack_for_path(w, a, DENSE).stored_bytes == dense_bytes(a, torch.float16)


def test_pack_for_path_errors():
    w = prune_random(torch.randn(64, 128), 0.7)
    a = analyze_weight(w)
    with pytest.raises(SparsePatternError, match="needs an N:M weight"):
        pack_for_path(w, a, TRITON_NM)
    with pytest.raises(ValueError, match="unknown path"):
        pack_for_path(w, a, "nope")
    with pytest.raises(ValueError, match="CUDA sm_80"):
        pack_for_path(w.half(), analyze_weight(w.half()), TORCH_SEMI_STRUCTURED)
    with pytest.raises(ValueError, match="differs from its analysis"):
        pack_for_path(w[:32], a, TRITON_BITMAP)


# ---- custom ops and sparse_linear through the kernels -----------------------------


def _nm_args(gen, rows=3, out_f=24, in_f=40, dtype=torch.float16, bias=True):
    w = prune_nm(torch.randn(out_f, in_f, generator=gen).to(dtype), 2, 4)
    lay = pack_nm(w, "2:4")
    x = torch.randn(rows, in_f, generator=gen).to(dtype)
    b = torch.randn(out_f, generator=gen).to(dtype) if bias else None
    return w, (x, lay.values, lay.bitmap, 2, 4, in_f, b)


def _bitmap_args(gen, rows=3, out_f=24, in_f=40, dtype=torch.float16, bias=True):
    w = prune_random(torch.randn(out_f, in_f, generator=gen).to(dtype), 0.7, gen)
    lay = pack_bitmap(w, 64)
    x = torch.randn(rows, in_f, generator=gen).to(dtype)
    b = torch.randn(out_f, generator=gen).to(dtype) if bias else None
    return w, (x, lay.values, lay.bitmap, lay.tile_offsets, 64, in_f, b)


@interp
@pytest.mark.usefixtures("interp_only")
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck_linear_ops(bias):
    gen = _gen()
    _, args = _nm_args(gen, bias=bias)
    torch.library.opcheck(torch.ops.vllm_sparse.nm_linear.default, args)
    _, args = _bitmap_args(gen, bias=bias)
    torch.library.opcheck(torch.ops.vllm_sparse.bitmap_linear.default, args)


@interp
@pytest.mark.usefixtures("interp_only")
def test_opcheck_unpack_and_skip_mlp():
    gen = _gen()
    w = prune_random(torch.randn(24, 40, generator=gen).half(), 0.7, gen)
    lay = pack_bitmap(w, 64)
    torch.library.opcheck(torch.ops.vllm_sparse.unpack.default,
                          (lay.values, lay.bitmap, lay.tile_offsets, 2, 0, 0, 64, 40))
    hidden, inter = 24, 40
    x = torch.randn(5, hidden, generator=gen).half()
    skip = torch.tensor([0, 1, 0, 0, 1], dtype=torch.bool)
    g, u = (torch.randn(inter, hidden, generator=gen).half() * 0.2 for _ in range(2))
    d = torch.randn(hidden, inter, generator=gen).half() * 0.2
    torch.library.opcheck(torch.ops.vllm_sparse.skip_mlp.default,
                          (x, skip, 0, 2, 4, 64, inter, g, None, None, u, None, None, d, None, None))


@interp
@pytest.mark.usefixtures("interp_only")
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_sparse_linear_every_path_and_large_m(dtype):
    gen = _gen()
    w_nm = prune_nm(torch.randn(30, 64, generator=gen).to(dtype), 2, 4)
    w_un = prune_random(torch.randn(30, 64, generator=gen).to(dtype), 0.75, gen)
    bias = torch.randn(30, generator=gen).to(dtype)
    for w, path in ((w_nm, TRITON_NM), (w_un, TRITON_BITMAP), (w_un, DENSE)):
        packed = pack_for_path(w, analyze_weight(w), path)
        assert packed.path == path
        # [2, 3, 64]: leading dims; 300 rows: above both direct-kernel limits (unpack + dense GEMM).
        for shape in ((2, 3, 64), (custom_ops.NM_DIRECT_MAX_M + 44, 64)):
            x = torch.randn(*shape, generator=gen).to(dtype)
            y = sparse_linear(x, packed, bias)
            ref = F.linear(x.float(), w.float(), bias.float()).to(dtype)
            assert y.shape == ref.shape
            assert rel_err(y, ref) < TOL[dtype]


@interp
@pytest.mark.usefixtures("interp_only")
def test_sparse_linear_under_torch_compile():
    gen = _gen()
    w = prune_random(torch.randn(30, 64, generator=gen).half(), 0.75, gen)
    packed = pack_for_path(w, analyze_weight(w), TRITON_BITMAP)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: sparse_linear(x, packed) * 2, backend="aot_eager", fullgraph=True)
    x = torch.randn(4, 64, generator=gen).half()
    assert rel_err(compiled(x), 2 * F.linear(x.float(), w.float()).half()) < TOL[torch.float16]


def test_reference_fallback_when_kernels_cannot_run(monkeypatch):
    # Where no Triton backend can run (CPU without the interpreter), ops use the reference.
    monkeypatch.setattr(custom_ops, "kernels_can_run", lambda device: False)
    gen = _gen()
    w, args = _nm_args(gen)
    y = torch.ops.vllm_sparse.nm_linear(*args)
    assert rel_err(y, F.linear(args[0].float(), w.float(), args[-1].float()).half()) < TOL[torch.float16]


@interp
@pytest.mark.usefixtures("interp_only")
@pytest.mark.parametrize("paths", [(DENSE,) * 3, (TRITON_NM,) * 3, (TRITON_BITMAP,) * 3,
                                   (TRITON_NM, TRITON_BITMAP, DENSE)])  # last: mixed, not fusable
def test_skip_gated_mlp_paths(paths):
    from vllm_sparse.kernels import skip_gated_mlp
    from vllm_sparse.kernels.reference import skip_mlp_ref

    gen = _gen()
    hidden, inter = 48, 80
    shapes = [(inter, hidden), (inter, hidden), (hidden, inter)]
    dense, packed = [], []
    for path, shape in zip(paths, shapes):
        w = torch.randn(*shape, generator=gen).half() * shape[1] ** -0.5
        w = prune_nm(w, 2, 4) if path == TRITON_NM else prune_random(w, 0.7, gen) if path == TRITON_BITMAP else w
        dense.append(w)
        packed.append(pack_for_path(w, analyze_weight(w), path))
    x = torch.randn(2, 9, hidden, generator=gen).half()
    skip = torch.rand(2, 9, generator=gen) < 0.5
    skip[0, 0] = False
    y = skip_gated_mlp(x, skip, *packed)
    ref = skip_mlp_ref(x.reshape(-1, hidden), skip.reshape(-1), *dense).reshape(2, 9, hidden)
    assert y.shape == x.shape
    assert torch.equal(y[skip], torch.zeros_like(y[skip]))
    assert rel_err(y[~skip], ref[~skip]) < TOL[torch.float16]
