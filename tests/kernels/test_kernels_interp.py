"""The real Triton kernels, run by the Triton interpreter on CPU, against the torch
references: small ragged shapes (nothing a multiple of the block sizes, M = 1
included), fresh random data per case, NaN-poisoned outputs, relative error."""

import pytest
import torch

from conftest import TOL, LoadRecorder, prune_nm, prune_random, rel_err
from vllm_sparse.kernels import pack_bitmap, pack_nm
from vllm_sparse.kernels._bits import int_view
from vllm_sparse.kernels._launch import BlockConfig
from vllm_sparse.kernels.reference import linear_ref, skip_mlp_ref

pytestmark = [pytest.mark.interp, pytest.mark.usefixtures("interp_only")]

DTYPES = [torch.float16, torch.float32, torch.bfloat16]  # bf16: upcast on load under the interpreter


def _gen():
    return torch.Generator().manual_seed(torch.seed() % 2**31)  # fresh data every case and run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
@pytest.mark.parametrize("m_rows", [1, 7, 40])
def test_nm_matmul_matches_reference(dtype, nm, m_rows):
    from vllm_sparse.kernels.triton_nm_matmul import nm_matmul

    n, m = nm
    gen = _gen()
    out_f, in_f = 45, 104 if m == 8 else 92  # 92 % 8 == 4: half-filled last bitmap byte for 2:4
    w = prune_nm(torch.randn(out_f, in_f, generator=gen).to(dtype), n, m)
    layout = pack_nm(w, f"{n}:{m}").validate()
    x = torch.randn(m_rows, in_f, generator=gen).to(dtype)
    bias = torch.randn(out_f, generator=gen).to(dtype)
    y = nm_matmul(x, layout.values, layout.bitmap, n, m, in_f, bias)
    ref = linear_ref(x, w, bias)
    assert y.dtype == dtype and y.shape == (m_rows, out_f)
    assert not y.isnan().any(), "an output the kernel should write kept its NaN poison"
    assert rel_err(y, ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_nm_matmul_split_k_strided_input_and_no_bias(dtype):
    from vllm_sparse.kernels.triton_nm_matmul import nm_matmul

    gen = _gen()
    w = prune_nm(torch.randn(33, 200, generator=gen).to(dtype), 2, 4)
    layout = pack_nm(w, "2:4")
    x = torch.randn(200, 3, generator=gen).to(dtype).t()  # non-contiguous [3, 200]
    y = nm_matmul(x, layout.values, layout.bitmap, 2, 4, 200, None, BlockConfig(16, 32, 64, split_k=3))
    assert rel_err(y, linear_ref(x, w)) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
@pytest.mark.parametrize("m_rows", [1, 19])
def test_bitmap_gemm_matches_reference(dtype, sparsity, m_rows):
    from vllm_sparse.kernels.triton_bitmap_gemv import bitmap_gemm

    gen = _gen()
    out_f, in_f, tile_k = 37, 150, 64
    w = prune_random(torch.randn(out_f, in_f, generator=gen).to(dtype), sparsity, gen)
    layout = pack_bitmap(w, tile_k).validate()
    x = torch.randn(m_rows, in_f, generator=gen).to(dtype)
    bias = torch.randn(out_f, generator=gen).to(dtype)
    y = bitmap_gemm(x, layout.values, layout.bitmap, layout.tile_offsets, tile_k, in_f, bias)
    assert not y.isnan().any()
    assert rel_err(y, linear_ref(x, w, bias)) < TOL[dtype]


def test_bitmap_gemm_split_k_and_empty_rows():
    from vllm_sparse.kernels.triton_bitmap_gemv import bitmap_gemm

    gen = _gen()
    w = prune_random(torch.randn(20, 300, generator=gen).half(), 0.8, gen)
    w[3] = 0  # a row with no stored values at all
    layout = pack_bitmap(w, 64)
    x = torch.randn(2, 300, generator=gen).half()
    y = bitmap_gemm(x, layout.values, layout.bitmap, layout.tile_offsets, 64, 300, None,
                    BlockConfig(16, 32, 64, split_k=2))
    assert torch.equal(y[:, 3], torch.zeros(2, dtype=torch.float16))
    assert rel_err(y, linear_ref(x, w)) < TOL[torch.float16]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_unpack_kernel_is_bit_exact(dtype):
    from vllm_sparse.kernels.triton_unpack import unpack

    gen = _gen()
    w = prune_nm(torch.randn(35, 88, generator=gen).to(dtype), 4, 8)
    lay = pack_nm(w, "4:8")
    assert torch.equal(int_view(unpack(1, lay.values, lay.bitmap, None, 88, 4, 8)), int_view(w))
    w = prune_random(torch.randn(35, 90, generator=gen).to(dtype), 0.7, gen)
    lay = pack_bitmap(w, 64)
    assert torch.equal(int_view(unpack(2, lay.values, lay.bitmap, lay.tile_offsets, 90, tile_k=64)), int_view(w))


def _mlp_weights(fmt, dtype, hidden, inter, gen):
    from vllm_sparse.kernels.triton_skip_mlp import MLPWeight

    dense = [torch.randn(inter, hidden, generator=gen) * hidden**-0.5,
             torch.randn(inter, hidden, generator=gen) * hidden**-0.5,
             torch.randn(hidden, inter, generator=gen) * inter**-0.5]
    dense = [d.to(dtype) for d in dense]
    if fmt == 0:
        return dense, [MLPWeight(d) for d in dense]
    if fmt == 1:
        dense = [prune_nm(d, 2, 4) for d in dense]
        lays = [pack_nm(d, "2:4") for d in dense]
        return dense, [MLPWeight(lay.values, lay.bitmap) for lay in lays]
    dense = [prune_random(d, 0.7, gen) for d in dense]
    lays = [pack_bitmap(d, 64) for d in dense]
    return dense, [MLPWeight(lay.values, lay.bitmap, lay.tile_offsets) for lay in lays]


@pytest.mark.parametrize("fmt", [0, 1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_skip_mlp_matches_reference(fmt, dtype):
    from vllm_sparse.kernels.triton_skip_mlp import skip_mlp

    gen = _gen()
    hidden, inter, rows = 44, 100, 21
    dense, ws = _mlp_weights(fmt, dtype, hidden, inter, gen)
    x = torch.randn(rows, hidden, generator=gen).to(dtype)
    skip = torch.rand(rows, generator=gen) < 0.4
    skip[0], skip[1] = False, True
    y = skip_mlp(x, skip, *ws, fmt, inter, (2, 4), 64)
    ref = skip_mlp_ref(x, skip, *dense)
    assert torch.equal(y[skip], torch.zeros_like(y[skip])), "skipped rows must be exact zeros"
    assert rel_err(y[~skip], ref[~skip]) < TOL[dtype]
    one = skip_mlp(x[:1], skip[:1], *ws, fmt, inter, (2, 4), 64)  # M = 1
    assert rel_err(one, ref[:1]) < TOL[dtype]


@pytest.mark.parametrize("fmt", [0, 2])
def test_skip_mlp_all_skipped_tile_reads_no_weights(fmt, monkeypatch):
    from vllm_sparse.kernels.triton_skip_mlp import MLPConfig, skip_mlp

    gen = _gen()
    hidden, inter, rows = 40, 64, 40
    dense, ws = _mlp_weights(fmt, torch.float16, hidden, inter, gen)
    x = torch.randn(rows, hidden, generator=gen).half()
    skip = torch.ones(rows, dtype=torch.bool)
    skip[16:32] = False  # only the second block of 16 rows is active
    cfg = MLPConfig(block_m=16, block_i=64, block_k=64, block_h=64)
    rec = LoadRecorder(monkeypatch)
    y = skip_mlp(x, skip, *ws, fmt, inter, (2, 4), 64, config=cfg)
    weight_tensors = [t for w in ws for t in (w.values, w.bitmap, w.tile_offsets) if t is not None]
    reads_one_block = sum(rec.touched(t) for t in weight_tensors)
    assert reads_one_block > 0
    assert rec.touched(x[:16]) == 0 and rec.touched(x[32:]) == 0  # skipped rows: no activation loads
    assert rel_err(y[16:32], skip_mlp_ref(x, skip, *dense)[16:32]) < TOL[torch.float16]

    rec.addresses.clear()
    y = skip_mlp(x, torch.ones(rows, dtype=torch.bool), *ws, fmt, inter, (2, 4), 64, config=cfg)
    assert sum(rec.touched(t) for t in weight_tensors) == 0, "all-skipped tiles must not read weights"
    assert torch.equal(y, torch.zeros_like(y))


def test_nm_kernel_reads_only_stored_values(monkeypatch):
    from vllm_sparse.kernels.triton_nm_matmul import nm_matmul

    gen = _gen()
    w = prune_random(prune_nm(torch.randn(32, 64, generator=gen).half(), 2, 4), 0.3, gen)
    lay = pack_nm(w, "2:4")
    rec = LoadRecorder(monkeypatch)
    nm_matmul(torch.randn(1, 64, generator=gen).half(), lay.values, lay.bitmap, 2, 4, 64, None,
              BlockConfig(16, 32, 64))
    # One load per stored non-zero: empty slots and zero entries cost no value reads.
    assert rec.touched(lay.values) == int((w != 0).sum())
