"""The C++ CPU kernels against the torch reference, on every ISA path this host runs,
plus their layout, build cache, fallback and dispatch rules."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vllm_sparse.kernels import CPU_SPARSE, DENSE, WeightAnalysis, analyze_weight, pack_for_path, select_path
from vllm_sparse.kernels import SparseLayoutError, sparse_linear, stored_bytes_for_path
from vllm_sparse.kernels import cpu as cpu_kernels
from vllm_sparse.kernels.cpu import dispatch, isa
from vllm_sparse.kernels.cpu.layout import VALUE_PADDING, CpuSparseLayout

REPO = Path(__file__).resolve().parents[2]
DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# (out, in): odd rows, in_features not a multiple of the 32-column word, SmolLM2-like.
SHAPES = [(1, 1), (7, 33), (37, 70), (64, 576), (13, 1000), (130, 96)]
MS = [1, 2, 3, 5, 8, 9, 16, 17]
# One unit in the last place of the output dtype (its rounding) ...
OUTPUT_ULP = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24}
# ... plus fp32 accumulation error, bounded by this many fp32 roundings of sum |w x|:
# tight enough that one dropped or doubled product would fail.
ACCUMULATION_ROUNDINGS = 64


@pytest.fixture(scope="module", autouse=True)
def kernels():
    assert cpu_kernels.build.load(), cpu_kernels.build.load_error()


def _isa_params():
    cpu_kernels.build.load()
    return [pytest.param(code, id=isa.NAMES[code]) for code in isa.supported()]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pruned(shape, sparsity, dtype, gen, pattern=None):
    w = torch.randn(shape, generator=gen)
    if pattern is not None:  # N:M along in_features (in_features a multiple of m)
        n, m = pattern
        groups = w.abs().view(shape[0], -1, m)
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(n, -1).indices, True)
        w = w * keep.view(shape)
    else:
        w = w * (torch.rand(shape, generator=gen) >= sparsity)
    return w.to(dtype)


def _poison_allocator(numel: int, dtype: torch.dtype) -> None:
    """Leave a NaN-filled block of the output's size in the allocator's free lists, so
    an output element the kernel forgets to write would come back as NaN."""
    torch.full((numel,), float("nan"), dtype=dtype).add_(0)


def _check(y, x, w, bias, dtype):
    exact = x.double() @ w.double().t() + (0 if bias is None else bias.double())
    assert y.dtype == dtype and y.shape == exact.shape
    assert not torch.isnan(y).any(), "an output element was not written"
    scale = x.double().abs() @ w.double().abs().t() + (0 if bias is None else bias.double().abs())
    subnormal_spacing = torch.finfo(dtype).smallest_normal * OUTPUT_ULP[dtype] * 2
    allowed = (exact.abs() * OUTPUT_ULP[dtype] + scale * ACCUMULATION_ROUNDINGS * 2.0**-24 + subnormal_spacing)
    excess = ((y.double() - exact).abs() / allowed).max().item()
    assert excess <= 1.0, f"error {excess:.3g} x the allowed one ulp + fp32 accumulation error"


@pytest.mark.parametrize("code", _isa_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_direct_kernel_matches_reference(code, dtype):
    gen = _gen(1000 + code * 10 + DTYPES.index(dtype))
    for shape in SHAPES:
        for sparsity in (0.0, 0.5, 0.9, 1.0):
            w = _pruned(shape, sparsity, dtype, gen)
            layout = CpuSparseLayout.pack(w).validate()
            for m in MS:
                x = torch.randn(m, shape[1], generator=gen).to(dtype)
                bias = torch.randn(shape[0], generator=gen).to(dtype) if m % 2 else None
                _poison_allocator(m * shape[0], dtype)
                _check(cpu_kernels.linear(x, layout, bias, code, max_direct_m=1 << 20), x, w, bias, dtype)


@pytest.mark.parametrize("code", _isa_params())
def test_long_rows_at_decode(code):
    """One activation row over rows longer than the decode loops' slices (4096 columns
    for bf16 on AVX-512 BF16, 2048 for 16-bit weights on AVX-512; K = 4263: a last,
    partial slice ending in single words; K = 8192: whole slices), 40 rows: a block of
    16 (or 8) and a tail for each of one or two threads, in both 16-bit dtypes. On
    AVX-512 BF16 the 90% weight takes the walk of rows in pairs (below 45% kept; with
    fp32 FMAs on a row split once where the CPU has AMX), the 50% one the walk row by
    row; M = 3 and 9 decode their last row so, after passes of 2, and of 8 whose rows
    are interleaved."""
    _check_long_rows(code, _gen(77 + code))


@pytest.mark.parametrize("pair_form", ["dot", "fma"])
def test_both_forms_of_the_pair_walk(pair_form, monkeypatch):
    """The pair walk with the bf16 dot and with fp32 FMAs, each forced
    (VLLM_SPARSE_CPU_DECODE), whichever the host would take: the cases above."""
    if isa.AVX512_BF16 not in isa.supported():
        pytest.skip("this CPU has no AVX-512 BF16 path")
    monkeypatch.setenv("VLLM_SPARSE_CPU_DECODE", pair_form)
    _check_long_rows(isa.AVX512_BF16, _gen(91))


def _check_long_rows(code, gen):
    for dtype in (torch.bfloat16, torch.float16):
        for shape in [(40, 4263), (40, 8192)]:
            for sparsity in (0.5, 0.9):
                w = _pruned(shape, sparsity, dtype, gen)
                layout = CpuSparseLayout.pack(w).validate()
                for m in (1, 3, 9):
                    x = torch.randn(m, shape[1], generator=gen).to(dtype)
                    _poison_allocator(m * shape[0], dtype)
                    _check(cpu_kernels.linear(x, layout, None, code, max_direct_m=16), x, w, None, dtype)


@pytest.mark.parametrize("code", _isa_params())
@pytest.mark.parametrize("pattern", [(2, 4), (4, 8)], ids=["2:4", "4:8"])
def test_nm_weights(code, pattern):
    gen = _gen(7 + code)
    for shape in [(37, 64), (5, 576), (96, 1536)]:
        w = _pruned(shape, None, torch.bfloat16, gen, pattern)
        layout = CpuSparseLayout.pack(w)
        for m in (1, 4, 8, 13):
            x = torch.randn(m, shape[1], generator=gen).bfloat16()
            _check(cpu_kernels.linear(x, layout, None, code), x, w, None, torch.bfloat16)


@pytest.mark.parametrize("code", _isa_params())
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_tiled_large_m_path_and_unpack(code, dtype):
    gen = _gen(50 + code)
    for shape in [(37, 70), (300, 576)]:
        w = _pruned(shape, 0.7, dtype, gen)
        layout = CpuSparseLayout.pack(w)
        assert torch.equal(cpu_kernels.unpack(layout, code), w)
        x = torch.randn(70, shape[1], generator=gen).to(dtype)
        bias = torch.randn(shape[0], generator=gen).to(dtype)
        y = cpu_kernels.linear(x, layout, bias, code, max_direct_m=16)  # 70 rows: tiled
        assert torch.allclose(y.float(), F.linear(x, w, bias).float(), rtol=1e-2, atol=1e-2 * x.shape[1] ** 0.5)


@pytest.mark.parametrize("code", _isa_params())
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_widened_tiles_are_exact_to_fp32_accumulation(code, dtype, monkeypatch):
    """bf16 and fp16 weights above max_direct_m, their tiles widened to fp32 for torch's
    fp32 GEMM (``torch_fp32``, the rule on every ISA path but AVX-512 BF16): fp32
    accumulation, the bias added in fp32 and one rounding, so held to the direct
    kernel's bound. 600 x 1000 spans a full 512-row tile and a ragged one (2 MiB of
    fp32 a tile); outputs poisoned beforehand; both layouts where the path has both."""
    from vllm_sparse.kernels.cpu import layout24

    monkeypatch.setenv("VLLM_SPARSE_CPU_TILE_GEMM", "torch_fp32")
    gen = _gen(90 + code)
    for shape, pattern in [((600, 1000), None), ((37, 70), None), ((96, 1536), (2, 4))]:
        w = _pruned(shape, 0.6, dtype, gen, pattern)
        layouts = [CpuSparseLayout.pack(w)]
        if pattern is not None and dtype == torch.bfloat16 and code in (isa.AVX2, isa.AVX512_BF16):
            layouts.append(layout24.Cpu24Layout.pack(w))
        for layout in layouts:
            for m in (9, 70):
                x = torch.randn(m, shape[1], generator=gen).to(dtype)
                bias = torch.randn(shape[0], generator=gen).to(dtype) if m % 2 else None
                _poison_allocator(m * shape[0], dtype)
                if isinstance(layout, CpuSparseLayout):
                    y = cpu_kernels.linear(x, layout, bias, code, max_direct_m=8)
                else:
                    y = layout24.linear(x, layout, bias, max_direct_m=8, isa_code=code)
                _check(y, x, w, bias, dtype)


@pytest.mark.parametrize("tile_gemm", ["panels", "rows", "by rule"])
def test_own_gemms_of_the_large_m_path_are_exact_to_fp32_accumulation(tile_gemm, monkeypatch):
    """bf16 on the AVX-512 BF16 path: the large-M path decompresses the compressed
    weight into panels (gemm_tile_bf16.cpp) or row tiles (gemm_rowtile_bf16.cpp) and
    multiplies them itself, accumulating in fp32 and rounding once, so it is held to the
    direct kernel's bound. Rows not a multiple of the 32-row panel or the 12-row tile
    (2:4: the last panel's second half partly or wholly past the weight's 8-row
    blocks), pairs not a multiple of the 16-pair transpose, M across the 12-row blocks
    of the panels and the 8-row vectors and 32-row blocks of the row tiles (by rule
    without AMX: 13, 17 and 20 on panels, the others on row tiles; with AMX, the AMX
    path); several row tiles per thread
    (the bitmap's next tile is filled among the dots of the one before); both layouts;
    every output poisoned beforehand."""
    if isa.AVX512_BF16 not in isa.supported():
        pytest.skip("this CPU has no AVX-512 BF16 path")
    if tile_gemm != "by rule":
        monkeypatch.setenv("VLLM_SPARSE_CPU_TILE_GEMM", tile_gemm)
    _check_large_m_path(_gen(77), [(1, 70), (37, 70), (33, 1000), (130, 96)], [(37, 576), (64, 128), (90, 128)],
                        [13, 17, 20, 24, 40, 48, 64, 70], max_direct_m=8)


def _check_large_m_path(gen, bitmap_shapes, nm24_shapes, ms, max_direct_m, bitmap_24_shapes=()):
    """bf16 weights pruned 60% (bitmap layout) or 2:4 (2:4 layout; in the bitmap layout
    for ``bitmap_24_shapes``), times random activations of each M above max_direct_m,
    bias on odd M, outputs poisoned beforehand, against the fp32 reference."""
    from vllm_sparse.kernels.cpu import layout24

    cases = ([(shape, None, "bitmap") for shape in bitmap_shapes] + [(shape, (2, 4), "2:4") for shape in nm24_shapes]
             + [(shape, (2, 4), "bitmap") for shape in bitmap_24_shapes])
    for shape, pattern, kind in cases:
        w = _pruned(shape, 0.6, torch.bfloat16, gen, pattern)
        layout = CpuSparseLayout.pack(w) if kind == "bitmap" else layout24.Cpu24Layout.pack(w)
        if kind == "bitmap":
            assert layout.sixteen_per_word == (pattern is not None)
        for m in ms:
            x = torch.randn(m, shape[1], generator=gen).bfloat16()
            bias = torch.randn(shape[0], generator=gen).bfloat16() if m % 2 else None
            _poison_allocator(m * shape[0], torch.bfloat16)
            if kind == "bitmap":
                y = cpu_kernels.linear(x, layout, bias, isa.AVX512_BF16, max_direct_m=max_direct_m)
            else:
                y = layout24.linear(x, layout, bias, max_direct_m=max_direct_m, isa_code=isa.AVX512_BF16)
            _check(y, x, w, bias, torch.bfloat16)


def test_amx_path_is_exact_to_fp32_accumulation():
    """bf16 on a CPU with AMX-BF16 (csrc/gemm_amx_bf16.cpp): groups of 32 weight rows
    filled as A tiles (the bitmap fill four words of a row at a time, a 2:4 weight in the
    bitmap layout without popcounts, two words a load; the 2:4 fill from its records),
    activations packed as B tiles, C tiles transposed back as stored. Rows
    not a multiple of the 16-row tile or the 32-row group (the second half of the last
    group wholly past the weight), K not a multiple of the 32-column step, M from 1 to
    both halves of a 32-row block and past it (2, 16, 17, 32, 33, 70: chunks of 4 steps
    for one or two blocks, 64 for three; K = 4100 leaves a last chunk of one step);
    B tiles within 1 MiB a pass (K = 1000: one pass of all 290 rows; K = 2048: passes
    of 256 and 34 rows, each packed in turn into the same scratch) and, where a pass
    over all of K would hold fewer than 256 rows, K in parts with fp32 sums carried
    between them (K = 4100: M = 130 in parts of 102 and 27 steps, M = 290 in passes of
    256 and 34 rows, each in parts of 64, 64 and 1 step, the last with K's ragged tail;
    K = 8192: M = 70 in two parts, 130 in three, 290 in two passes of four);
    several groups per thread, each filling the first chunk of the thread's next (the
    last group's rows short of 32); both layouts, and 2:4 in the bitmap layout (K = 160: a
    chunk of 4 steps and one of 1; 576: a last chunk of 2; 8192 in parts); bias on odd
    M; outputs poisoned beforehand."""
    if isa.AVX512_BF16 not in isa.supported() or not isa.amx_ready():
        pytest.skip("this CPU has no AMX-BF16 (or the OS does not grant its tiles)")
    _check_large_m_path(_gen(78), [(1, 70), (15, 70), (37, 1000), (45, 2048), (130, 96), (300, 4100), (45, 8192)],
                        [(16, 128), (37, 576), (90, 128), (37, 8192)], [1, 2, 16, 17, 32, 33, 70, 130, 290],
                        max_direct_m=0, bitmap_24_shapes=[(37, 160), (90, 576), (37, 8192)])


def test_host_class_names_amx_hosts_apart():
    """The dispatcher reads the records of the host class it runs on: a CPU with AMX
    (whose dense GEMM and large-M path both run on the tile unit) is its own class,
    and records measured on an AVX-512 BF16 host without AMX do not apply to it."""
    expected = isa.AMX_HOST if isa.default() == isa.AVX512_BF16 and isa.amx_ready() else isa.NAMES[isa.default()]
    assert isa.host_class() == expected
    assert isa.host_class(isa.AVX2) == "avx2"
    zen = tuple({**r, "host": "avx512_bf16"} for r in RECORDS)
    assert dispatch.choose((4096, 4096), 0.55, torch.bfloat16, "avx2", zen, host=isa.AMX_HOST) is None
    assert dispatch.choose((4096, 4096), 0.55, torch.bfloat16, "avx2", zen, host="avx512_bf16") is not None


def test_every_kernel_source_is_in_the_build_key():
    """The build cache is keyed by the sources' text: a file under csrc/ missing from
    SOURCES or HEADERS would leave a stale build in use after it changed."""
    listed = set(cpu_kernels.build.SOURCES) | set(cpu_kernels.build.HEADERS)
    on_disk = {p.name for p in cpu_kernels.build.SOURCE_DIR.iterdir() if p.suffix in (".cpp", ".h")}
    assert on_disk == listed


def test_nm24_lanes_kernel_is_exact_to_fp32_accumulation():
    """2:4 on AVX-512 BF16 from M = 4 (gemm_nm24_lanes_bf16.cpp: the weight rows in the
    vector lanes, activations gathered by vpermw): M = 4..7 with each row's sum split
    over two accumulators, 8..16 in one pass, 17, 33 and 70 in passes of 16 and a
    remainder; M = 1..3 beside it (the gather kernel); rows not a multiple of the 8-row
    block; K from one 64-column record to 33; groups padded with zeros (fewer than two
    non-zeros); bias on odd M; outputs poisoned beforehand."""
    if isa.AVX512_BF16 not in isa.supported():
        pytest.skip("this CPU has no AVX-512 BF16 path")
    from vllm_sparse.kernels.cpu import layout24

    gen = _gen(31)
    for shape, ms in [((5, 64), [1, 4, 8, 17]), ((37, 2112), [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33, 70]),
                      ((16, 576), [4, 16, 32])]:
        w = _pruned(shape, None, torch.bfloat16, gen, (2, 4))
        w[0, :8] = 0
        w[1, 1] = 0
        layout = layout24.Cpu24Layout.pack(w)
        for m in ms:
            x = torch.randn(m, shape[1], generator=gen).bfloat16()
            bias = torch.randn(shape[0], generator=gen).bfloat16() if m % 2 else None
            _poison_allocator(m * shape[0], torch.bfloat16)
            y = layout24.linear(x, layout, bias, max_direct_m=1 << 20, isa_code=isa.AVX512_BF16)
            _check(y, x, w, bias, torch.bfloat16)


def test_tiled_path_inside_and_outside_inference_mode():
    """vLLM runs the model under torch.inference_mode (its warm-up too): the tiled path's
    worker threads must see the caller's mode, whichever it is."""
    w = _pruned((64, 128), 0.5, torch.bfloat16, _gen(11))
    layout = CpuSparseLayout.pack(w)
    x = torch.randn(40, 128).bfloat16()
    with torch.inference_mode():
        inside = cpu_kernels.linear(x, layout, torch.ones(64).bfloat16(), max_direct_m=8)
    outside = cpu_kernels.linear(x, layout, torch.ones(64).bfloat16(), max_direct_m=8)
    assert torch.equal(inside, outside)


def _nm24_or_skip():
    from vllm_sparse.kernels.cpu import layout24

    if not layout24.supported():
        pytest.skip("this CPU has no AVX2: no 2:4 kernel can run here")
    return layout24


def _nm24_isa_params():
    cpu_kernels.build.load()
    return [pytest.param(code, id=dispatch.NM24_PATHS[code]) for code in dispatch.NM24_PATHS
            if torch.ops.vllm_sparse.cpu_nm24_supported(code)]


@pytest.mark.parametrize("code", _nm24_isa_params())
def test_nm24_kernel_matches_reference(code):
    layout24 = _nm24_or_skip()
    gen = _gen(21)
    for shape in [(5, 64), (37, 576), (130, 1536)]:
        w = _pruned(shape, None, torch.bfloat16, gen, (2, 4))
        w[0, :8] = 0  # groups with fewer than two values are padded
        w[1, 1] = 0
        layout = layout24.Cpu24Layout.pack(w)
        positive_zeros = torch.where(w == 0, torch.zeros_like(w), w)
        assert torch.equal(layout.to_dense().view(torch.int16), positive_zeros.view(torch.int16))
        unpacked = torch.ops.vllm_sparse.cpu_nm24_unpack(layout.blocks, *shape, code)
        assert torch.equal(unpacked.view(torch.int16), positive_zeros.view(torch.int16))
        assert layout.stored_bytes == layout24.Cpu24Layout.stored_bytes_for(shape)
        for m in MS + [40]:
            x = torch.randn(m, shape[1], generator=gen).bfloat16()
            bias = torch.randn(shape[0], generator=gen).bfloat16() if m % 2 else None
            _poison_allocator(m * shape[0], torch.bfloat16)
            y = layout24.linear(x, layout, bias, max_direct_m=16, isa_code=code)  # M = 40: the tiled path
            _check(y, x, w, bias, torch.bfloat16) if m <= 16 else _check_loose(y, x, w, bias)


def _check_loose(y, x, w, bias):
    """The tiled path rounds through torch's bf16 GEMM: compare as torch does."""
    ref = F.linear(x, w, bias)
    assert torch.allclose(y.float(), ref.float(), rtol=2e-2, atol=2e-2 * x.shape[1] ** 0.5)


def test_nm24_rejects_what_it_cannot_take():
    layout24 = _nm24_or_skip()
    w = _pruned((8, 96), None, torch.bfloat16, _gen(22), (2, 4))
    with pytest.raises(SparseLayoutError, match="K % 64"):
        layout24.Cpu24Layout.pack(w)  # 96 columns: not whole 64-column chunks
    w = _pruned((8, 64), 0.2, torch.bfloat16, _gen(23))
    with pytest.raises(SparseLayoutError, match="breaks 2:4"):
        layout24.Cpu24Layout.pack(w)
    good = layout24.Cpu24Layout.pack(_pruned((8, 64), None, torch.bfloat16, _gen(24), (2, 4)))
    with pytest.raises(RuntimeError, match="x must be bf16"):
        layout24.linear(torch.randn(2, 64), good)
    with pytest.raises(RuntimeError, match="blocks must be"):  # 9 rows need two blocks of 8
        torch.ops.vllm_sparse.cpu_nm24_linear(torch.randn(2, 64).bfloat16(), good.blocks, 9, 64, layout24.kernel_isa(),
                                              16, None)
    with pytest.raises(RuntimeError, match="cannot run the 2:4 kernel"):  # no 2:4 kernel on the scalar path
        torch.ops.vllm_sparse.cpu_nm24_linear(torch.randn(2, 64).bfloat16(), good.blocks, 8, 64, isa.SCALAR, 16, None)
    torch.library.opcheck(torch.ops.vllm_sparse.cpu_nm24_linear.default,
                          (torch.randn(3, 64).bfloat16(), good.blocks, 8, 64, layout24.kernel_isa(), 16, None))


def test_layout_round_trip_and_bytes():
    gen = _gen(3)
    w = _pruned((33, 100), 0.6, torch.bfloat16, gen)
    w[0, 5] = float("nan")
    layout = CpuSparseLayout.pack(w).validate()
    positive_zeros = torch.where(w == 0, torch.zeros_like(w), w)  # pruning by w * mask leaves -0.0
    assert torch.equal(layout.to_dense().view(torch.int16), positive_zeros.view(torch.int16))
    nnz = int((w != 0).sum())
    assert layout.nnz == nnz
    assert layout.stored_bytes == (nnz + VALUE_PADDING) * 2 + 33 * 4 * 4 + 34 * 8
    # -0.0 is a zero: not stored, comes back as +0.0
    z = torch.tensor([[-0.0, 1.0]])
    assert torch.equal(CpuSparseLayout.pack(z).to_dense(), torch.tensor([[0.0, 1.0]]))


def test_layout_validation_names_the_problem():
    w = _pruned((8, 64), 0.5, torch.float32, _gen(4))
    good = CpuSparseLayout.pack(w)
    bad_offsets = good.row_offsets.clone()
    bad_offsets[3] += 1
    with pytest.raises(SparseLayoutError, match="row_offsets"):
        CpuSparseLayout(good.values, good.bitmap, bad_offsets, good.shape).validate()
    with pytest.raises(SparseLayoutError, match="values holds"):
        CpuSparseLayout(good.values[:10], good.bitmap, good.row_offsets, good.shape).validate()
    past_k = good.bitmap.clone()
    layout = CpuSparseLayout(good.values, past_k, good.row_offsets, (8, 60))
    with pytest.raises(SparseLayoutError, match="past in_features"):
        layout.validate()
    # The AMX fill trusts sixteen_per_word: set on a weight it does not describe, refused.
    assert not good.sixteen_per_word
    with pytest.raises(SparseLayoutError, match="other than 16 values"):
        replace(good, sixteen_per_word=True).validate()


def test_op_rejects_bad_arguments():
    w = _pruned((8, 64), 0.5, torch.bfloat16, _gen(5))
    layout = CpuSparseLayout.pack(w)
    x = torch.randn(2, 64).bfloat16()
    with pytest.raises(RuntimeError, match="x must be"):
        cpu_kernels.linear(torch.randn(2, 63).bfloat16(), layout)
    with pytest.raises(RuntimeError, match="x is Float but the weight is BFloat16"):
        cpu_kernels.linear(x.float(), layout)
    with pytest.raises(RuntimeError, match="unknown ISA"):
        cpu_kernels.linear(x, layout, None, 9)
    with pytest.raises(RuntimeError, match="row_offsets"):
        torch.ops.vllm_sparse.cpu_sparse_linear(x, layout.values, layout.bitmap, layout.row_offsets[:-1], 64, 0, 16,
                                                None)
    # The kernels load whole vectors of values past a row's last: the padding must be there.
    unpadded = layout.values[: layout.row_offsets[-1].item() + 63]
    with pytest.raises(RuntimeError, match="64 entries of padding must follow"):
        torch.ops.vllm_sparse.cpu_sparse_linear(x, unpadded, layout.bitmap, layout.row_offsets, 64, 0, 16, None)
    assert layout.nnz != 8 * 2 * 16  # a 50% weight whose count is not 16 a word: told it is, refused
    with pytest.raises(RuntimeError, match="sixteen_per_word"):
        torch.ops.vllm_sparse.cpu_sparse_linear(x, layout.values, layout.bitmap, layout.row_offsets, 64, 0, 16, None,
                                                True)


def test_opcheck_and_compiled_graph():
    w = _pruned((48, 96), 0.5, torch.bfloat16, _gen(6))
    layout = CpuSparseLayout.pack(w)
    x = torch.randn(3, 96).bfloat16()
    args = (x, layout.values, layout.bitmap, layout.row_offsets, 96, isa.best(), 16, None)
    torch.library.opcheck(torch.ops.vllm_sparse.cpu_sparse_linear.default, args)

    def f(inp):
        return torch.relu(torch.ops.vllm_sparse.cpu_sparse_linear(inp, *args[1:])) * 2

    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    assert torch.equal(compiled(x), f(x))
    x5 = torch.randn(5, 96).bfloat16()
    assert torch.equal(compiled(x5), f(x5))


def test_dense_gemv_opcheck_and_compiled_graph():
    """The head's op as vLLM's compiled graph runs it: fake shapes, dynamic M."""
    code = cpu_kernels.dense_gemv_isa()
    if code is None:
        pytest.skip("the dense GEMV has no kernel on this CPU")
    w, bias = torch.randn(40, 80).bfloat16(), torch.randn(40).bfloat16()
    x = torch.randn(3, 80).bfloat16()
    torch.library.opcheck(torch.ops.vllm_sparse.cpu_dense_linear.default, (x, w, bias, code))

    def f(inp):
        return torch.relu(torch.ops.vllm_sparse.cpu_dense_linear(inp, w, bias, code)) * 2

    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    assert torch.equal(compiled(x), f(x))
    x5 = torch.randn(5, 80).bfloat16()
    assert torch.equal(compiled(x5), f(x5))


def test_dispatcher_runs_the_cpu_path_through_sparse_linear(monkeypatch):
    monkeypatch.setenv("VLLM_SPARSE_PATH", CPU_SPARSE)  # whatever the committed table says
    w = _pruned((40, 128), 0.7, torch.bfloat16, _gen(8))
    analysis = analyze_weight(w)
    assert select_path(analysis, w.dtype, "cpu") == CPU_SPARSE
    packed = pack_for_path(w, analysis, CPU_SPARSE)
    assert packed.dense is None and packed.kernel_name.startswith("cpu_sparse/")
    assert packed.stored_bytes < w.numel() * 2 * 0.5
    x = torch.randn(2, 3, 128).bfloat16()
    y = sparse_linear(x, packed)
    assert y.shape == (2, 3, 40)
    _check(y.view(6, 40), x.view(6, 128), w, None, torch.bfloat16)


RECORDS = tuple(
    {"isa": "avx2", "dtype": "bf16", "shape": shape, "sparsity": s, "pattern": pattern, "m": m, "direct": d, "tiled": t}
    for shape, s, pattern, table in [
        ("4096x4096", 0.5, "50%", {1: 1.6, 8: 1.1, 16: 0.9, 64: 0.5, 512: 0.0}),
        ("2048x2048", 0.5, "50%", {1: 1.3, 8: 0.9, 16: 0.8, 64: 0.5, 512: 0.0}),  # batched decode loses
        ("4096x4096", 0.7, "70%", {1: 2.0, 8: 1.2, 16: 1.0, 64: 0.6, 512: 0.0}),
        ("576x576", 0.5, "50%", {1: 1.02, 8: 0.9, 16: 0.8, 64: 0.5, 512: 0.0}),
        # The same sparsity in another order: listed last, it must not stand in for 50%.
        ("4096x4096", 0.5, "4:8", {1: 1.4, 8: 1.1, 16: 0.9, 64: 0.5, 512: 0.0}),
    ]
    for m, d in table.items()
    for t in [{1: 0.0, 8: 0.6, 16: 0.95, 64: 0.9, 512: 0.97}[m]]
)


def test_dispatcher_sends_2of4_bf16_to_the_gather_kernel(monkeypatch):
    """With nothing measured (forced sparse), a 2:4 bf16 weight takes the 2:4 kernel."""
    _nm24_or_skip()
    monkeypatch.setenv("VLLM_SPARSE_PATH", CPU_SPARSE)
    monkeypatch.delenv("VLLM_SPARSE_CPU_ISA", raising=False)
    monkeypatch.setattr(dispatch, "load_table", lambda: ())
    w = _pruned((40, 128), None, torch.bfloat16, _gen(25), (2, 4))
    packed = pack_for_path(w, analyze_weight(w), CPU_SPARSE)
    best = max(code for code in dispatch.NM24_PATHS if torch.ops.vllm_sparse.cpu_nm24_supported(code))
    assert packed.kernel_name == f"cpu_sparse/{dispatch.NM24_PATHS[best]}"
    x = torch.randn(3, 128).bfloat16()
    _check(sparse_linear(x, packed), x, w, None, torch.bfloat16)
    monkeypatch.setenv("VLLM_SPARSE_CPU_ISA", "avx2")  # a forced AVX2 host takes the AVX2 2:4 kernel
    packed = pack_for_path(w, analyze_weight(w), CPU_SPARSE)
    assert packed.kernel_name == f"cpu_sparse/{dispatch.NM24_AVX2}"
    _check(sparse_linear(x, packed), x, w, None, torch.bfloat16)
    monkeypatch.setenv("VLLM_SPARSE_CPU_ISA", "scalar")  # no 2:4 kernel there: the bitmap kernel
    assert pack_for_path(w, analyze_weight(w), CPU_SPARSE).kernel_name == "cpu_sparse/scalar"


def test_a_2of4_weight_takes_the_kernel_measured_faster(monkeypatch):
    """A 2:4 bf16 weight can run on the 2:4 kernel or the bitmap kernel: the table
    decides, by the geometric mean of the speed-ups over the M of batched decode for
    its shape (M = 1 alone for an engine that never batches decode), and between two
    within 3% of each other by the geometric mean over every measured M."""
    layout24 = _nm24_or_skip()
    from vllm_sparse.kernels.dispatcher import cpu_plan

    monkeypatch.delenv("VLLM_SPARSE_PATH", raising=False)
    monkeypatch.delenv("VLLM_SPARSE_CPU_ISA", raising=False)
    nm24_name = dispatch.NM24_PATHS[layout24.kernel_isa()]
    bitmap_name = isa.NAMES[isa.default()]
    w = _pruned((64, 128), None, torch.bfloat16, _gen(26), (2, 4))
    analysis = analyze_weight(w)

    def table(nm24_gains, bitmap_gains):  # speed-ups at M = 1, 8 (and 64, the tiled path's)
        return tuple({"isa": name, "dtype": "bf16", "shape": "64x128", "sparsity": 0.5, "pattern": "2:4", "m": m,
                      "direct": gain if m < 64 else 0.5, "tiled": 0.5 if m < 64 else gain}
                     for name, gains in ((nm24_name, nm24_gains), (bitmap_name, bitmap_gains))
                     for m, gain in zip((1, 8, 64), gains))

    cases = [((1.5, 1.2), (1.2, 1.2), None, nm24_name),
             ((1.2, 1.2), (1.5, 1.2), None, bitmap_name),
             ((1.8, 1.0), (1.5, 1.3), None, bitmap_name),  # geometric mean over M = 1 and 8: 1.34 < 1.40
             ((2.4, 1.25), (2.3, 1.4), None, bitmap_name),  # faster at M = 1 is not enough
             ((1.8, 1.2), (1.5, 1.3), None, nm24_name),  # 1.47 > 1.40
             ((1.8, 0.9), (1.5, 1.3), None, bitmap_name),  # the 2:4 kernel loses 10% at M = 8: not eligible
             ((1.8, 0.9), (1.5, 1.3), 1, nm24_name),  # an engine that never batches decode
             ((1.0, 1.0), (1.0, 1.0), None, None),
             # within 3% over decode (1.470 and 1.449): the one better over M = 1, 8 and 64
             ((1.8, 1.2, 0.92), (1.5, 1.4, 1.05), None, bitmap_name),
             ((1.5, 1.4, 1.05), (1.8, 1.2, 0.92), None, nm24_name),
             ((1.8, 1.2, 0.92), (1.5, 1.3, 1.05), None, nm24_name)]  # 1.47 against 1.40: not a near tie
    for nm24_gains, bitmap_gains, max_batch, expected in cases:
        monkeypatch.setattr(dispatch, "load_table", lambda t=table(nm24_gains, bitmap_gains): t)
        plan = cpu_plan(analysis, torch.bfloat16, max_batch)
        assert (plan and plan.isa) == expected, (nm24_gains, bitmap_gains, max_batch)
        if expected is None:
            continue
        packed = pack_for_path(w, analysis, CPU_SPARSE, max_batch)
        assert packed.kernel_name == f"cpu_sparse/{expected}"
        if max_batch is None:
            assert packed.stored_bytes == stored_bytes_for_path(analysis, torch.bfloat16, CPU_SPARSE)
        x = torch.randn(3, 128).bfloat16()
        _check(sparse_linear(x, packed), x, w, None, torch.bfloat16)


def test_dispatch_rule_from_a_table():
    choose = dispatch.choose
    plan = choose((4096, 4096), 0.55, torch.bfloat16, "avx2", RECORDS)
    assert plan.max_direct_m == 8 and plan.decode_speedup == 1.6  # 16: tiled (0.95) beats direct (0.9)
    assert (plan.worst_m, plan.worst_speedup) == (64, 0.9)
    assert choose((4096, 4096), 0.75, torch.bfloat16, "avx2", RECORDS).decode_speedup == 2.0
    assert choose((4096, 4096), 0.45, torch.bfloat16, "avx2", RECORDS) is None  # below every measured sparsity
    assert choose((600, 600), 0.5, torch.bfloat16, "avx2", RECORDS) is None  # nearest shape gains < 5%
    assert choose((4096, 4096), 0.5, torch.float16, "avx2", RECORDS) is None  # dtype never measured
    assert choose((2048, 2048), 0.5, torch.bfloat16, "avx2", RECORDS) is None  # M = 8 loses 10%
    assert choose((2048, 2048), 0.5, torch.bfloat16, "avx2", RECORDS, max_batch=4) is None  # 4 unmeasured: 8 stands in
    one_at_a_time = choose((2048, 2048), 0.5, torch.bfloat16, "avx2", RECORDS, max_batch=1)
    assert one_at_a_time is not None and one_at_a_time.decode_speedup == 1.3  # engine never batches decode
    assert choose((4096, 4096), 0.5, torch.bfloat16, "avx512_bf16", RECORDS) is None  # ISA never measured
    # Ahead of the large-M path at every measured M, the largest included: direct at any M.
    ahead = tuple({**r, "direct": max(r["direct"], r["tiled"] + 0.1)} for r in RECORDS)
    assert choose((4096, 4096), 0.55, torch.bfloat16, "avx2", ahead).max_direct_m == dispatch.EVERY_M
    # Records by kind of pattern: a 4:8 layer its own, a 2:4 one (never measured on
    # this path) and an unstructured one the unstructured records.
    assert choose((4096, 4096), 0.5, torch.bfloat16, "avx2", RECORDS, pattern="4:8").decode_speedup == 1.4
    assert choose((4096, 4096), 0.5, torch.bfloat16, "avx2", RECORDS, pattern="2:4").decode_speedup == 1.6
    assert choose((4096, 4096), 0.5, torch.bfloat16, "avx2", RECORDS).decode_speedup == 1.6


def test_a_table_named_by_the_environment_replaces_the_committed_one(monkeypatch, tmp_path):
    """VLLM_SPARSE_CPU_DISPATCH_TABLE: a host's own table decides instead of the
    committed one; a missing or malformed one is refused naming the file."""
    monkeypatch.delenv(dispatch.TABLE_ENV, raising=False)
    assert dispatch.load_table() == dispatch.load_table(dispatch.TABLE_PATH) and dispatch.load_table()
    own = tmp_path / "host.json"
    own.write_text(json.dumps({"machine": {}, "records": list(RECORDS)}))
    monkeypatch.setenv(dispatch.TABLE_ENV, str(own))
    assert dispatch.table_path() == own and dispatch.load_table() == RECORDS
    assert dispatch.choose((4096, 4096), 0.55, torch.bfloat16, "avx2").decode_speedup == 1.6  # RECORDS' figure
    assert dispatch.choose((4096, 4096), 0.5, torch.bfloat16, "avx512_bf16") is None  # RECORDS: never measured
    for name, text in (("missing.json", None), ("bad.json", "{not json"), ("empty.json", '{"machine": {}}'),
                       ("odd.json", '{"records": [{"isa": "avx2"}]}')):
        if text is not None:
            (tmp_path / name).write_text(text)
        monkeypatch.setenv(dispatch.TABLE_ENV, str(tmp_path / name))
        with pytest.raises(ValueError, match=name):
            dispatch.load_table()


def test_committed_table_covers_this_host_class():
    """The dispatcher's table has records for every ISA path benchmarked, and for each
    M = 1 record a same-run speed-up."""
    table = json.loads(dispatch.TABLE_PATH.read_text())
    isas = {r["isa"] for r in table["records"]}
    assert {"avx2", dispatch.NM24_AVX2} <= isas, isas
    assert all("direct" in r for r in table["records"] if r["m"] == 1)
    assert table["machine"]["cpu"] and table["machine"]["date"]
    # Each record names the host class it was measured as; the AVX2 2:4 kernel serves
    # two classes, each against its own dense GEMM.
    hosts = {(r["host"], r["isa"]) for r in table["records"]}
    assert {("avx2", dispatch.NM24_AVX2), ("avx512", dispatch.NM24_AVX2)} <= hosts, hosts
    # Every case measured at some M has its M = 1 record: without it the dispatcher keeps
    # the layer dense (a merge that once dropped them sent a whole host class dense).
    def cases(records):
        return {(r["host"], r["isa"], r["dtype"], r["shape"], r["pattern"]) for r in records}

    assert cases(table["records"]) == cases(r for r in table["records"] if r["m"] == 1)


def test_records_count_only_on_the_host_class_they_were_measured_on():
    """One kernel path measured as two host classes (different dense GEMMs): the
    dispatcher reads the records of the host it runs on; untagged records (a table
    written before hosts were recorded) count for any host."""
    as_avx2 = tuple({**r, "host": "avx2"} for r in RECORDS)
    as_avx512 = tuple({**r, "host": "avx512", "direct": 0.5} for r in RECORDS)
    both = as_avx2 + as_avx512
    assert dispatch.choose((4096, 4096), 0.55, torch.bfloat16, "avx2", both, host="avx2").decode_speedup == 1.6
    assert dispatch.choose((4096, 4096), 0.55, torch.bfloat16, "avx2", both, host="avx512") is None
    assert dispatch.choose((4096, 4096), 0.55, torch.bfloat16, "avx2", RECORDS, host="avx512").decode_speedup == 1.6


def test_dense_gemv_rule_from_a_table():
    """The LM head's GEMV: taken where the nearest shape (row length first) wins by 5%
    at M = 1, up to the last measured M before it loses; never on unmeasured paths."""
    def records(shape, speedups):
        return [{"isa": "avx512_bf16", "dtype": "bf16", "shape": shape, "m": m, "speedup": v}
                for m, v in speedups.items()]

    table = tuple(records("49152x576", {1: 1.4, 2: 1.3, 4: 0.98, 8: 1.2})
                  + records("32000x4096", {1: 1.04, 2: 1.5}) + records("128256x2048", {1: 1.3, 8: 1.1, 16: 0.9}))
    assert dispatch.dense_gemv_max_m((49152, 576), "avx512_bf16", table) == 2  # M = 4 loses: stop before it
    assert dispatch.dense_gemv_max_m((151936, 896), "avx512_bf16", table) == 2  # short rows: the 576 records
    assert dispatch.dense_gemv_max_m((49152, 2048), "avx512_bf16", table) == 8
    assert dispatch.dense_gemv_max_m((32000, 4096), "avx512_bf16", table) == 0  # gains < 5% at M = 1
    assert dispatch.dense_gemv_max_m((49152, 576), "avx2", table) == 0


def test_committed_dense_gemv_table_measures_common_heads():
    table = json.loads(dispatch.DENSE_GEMV_TABLE_PATH.read_text())
    for host in ("avx512_bf16", "avx2"):
        shapes = {r["shape"] for r in table["records"] if r["isa"] == host}
        assert {"49152x576", "49152x2048", "128256x2048", "32000x4096"} <= shapes, (host, shapes)
    assert table["machine"]["cpu"] and table["machine"]["date"] and table["machine"]["read_gbps"]


def test_another_dense_gemv_table_by_environment(tmp_path, monkeypatch):
    """``VLLM_SPARSE_CPU_DENSE_GEMV_TABLE``: a table without records keeps every head
    on vLLM's GEMM (the A side of an end-to-end A/B); the committed one takes the GEMV
    for SmolLM2's head on both measured host classes."""
    for host in ("avx512_bf16", "avx2"):
        assert dispatch.dense_gemv_max_m((49152, 576), host) >= 1
    empty = tmp_path / "no_heads.json"
    empty.write_text(json.dumps({"records": []}))
    monkeypatch.setenv(dispatch.DENSE_GEMV_TABLE_ENV, str(empty))
    assert dispatch.dense_gemv_max_m((49152, 576), "avx2") == 0


def _run_python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env}, cwd=REPO)


LOAD_AND_CHOOSE = """
import logging, torch
logging.basicConfig(level=logging.INFO)
from vllm_sparse.kernels import WeightAnalysis, select_path
from vllm_sparse.kernels.cpu import build
a = WeightAnalysis((4096, 4096), 0.9, None)
print("path", select_path(a, torch.bfloat16, "cpu"), select_path(a, torch.bfloat16, "cpu"))
print("error", build.load_error())
"""


def test_no_compiler_means_one_warning_and_dense(tmp_path):
    done = _run_python(LOAD_AND_CHOOSE, {"CXX": str(tmp_path / "no-such-compiler"),
                                         "VLLM_SPARSE_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "path dense dense" in done.stdout
    assert "no C++ compiler" in done.stdout
    assert done.stderr.count("CPU sparse kernels unavailable") == 1, done.stderr[-3000:]
    assert not list((tmp_path / "cache").rglob("*.so"))


def test_failed_build_leaves_no_cache_and_turning_off_works(tmp_path):
    cache = tmp_path / "cache"
    # A compiler that always fails: the build must fail cleanly and leave nothing behind.
    failing = tmp_path / "cxx"
    failing.write_text("#!/bin/sh\nif [ \"$1\" = --version ]; then echo fake 1.0; exit 0; fi\nexit 1\n")
    failing.chmod(0o755)
    done = _run_python(LOAD_AND_CHOOSE, {"CXX": str(failing), "VLLM_SPARSE_CACHE": str(cache)})
    assert done.returncode == 0 and "path dense dense" in done.stdout, done.stderr[-3000:]
    assert not list(cache.rglob("*.so")) and not [p for p in (cache / "cpu_kernels").iterdir() if p.is_dir()]
    off = _run_python(LOAD_AND_CHOOSE, {"VLLM_SPARSE_CPU_KERNELS": "0"})
    assert "path dense dense" in off.stdout and "VLLM_SPARSE_CPU_KERNELS=0" in off.stdout


def test_build_is_cached_and_a_half_built_folder_is_not_trusted(tmp_path):
    cache = tmp_path / "cache"
    code = "from vllm_sparse.kernels.cpu import build; import sys; sys.exit(0 if build.load() else 1)"
    env = {"VLLM_SPARSE_CACHE": str(cache)}
    key = _run_python("from vllm_sparse.kernels.cpu import build; print(build.build_key())", env).stdout.strip()
    final = cache / "cpu_kernels" / key
    final.mkdir(parents=True)
    (final / "leftover.o").write_text("half a build")  # a folder without the library
    first = _run_python("import logging; logging.basicConfig(level=logging.INFO)\n" + code, env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "building the CPU kernels" in first.stderr
    assert not (final / "leftover.o").exists() and list(final.glob("*.so"))
    second = _run_python("import logging; logging.basicConfig(level=logging.INFO)\n" + code, env)
    assert second.returncode == 0 and "building the CPU kernels" not in second.stderr


def test_forced_isa_and_cpu_description(monkeypatch):
    monkeypatch.setenv("VLLM_SPARSE_CPU_ISA", "avx2" if isa.best() >= isa.AVX2 else "scalar")
    assert isa.default() == min(isa.best(), isa.AVX2) or isa.best() < isa.AVX2
    monkeypatch.setenv("VLLM_SPARSE_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match="sse9"):
        isa.default()
    described = isa.cpu_description()
    assert described["cpu"] and isinstance(described["flags"], list)
    # Two VMs can share a model name: the record names the family and model as well.
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    family = re.search(r"^cpu family\s*:\s*(\S+)", cpuinfo, re.M)
    model = re.search(r"^model\s*:\s*(\S+)", cpuinfo, re.M)
    if family and model:
        assert f"family {family.group(1)} model {model.group(1)}" in described["cpu"]


def test_stream_read_reads_every_word():
    """The benchmarks' bandwidth limit reads all of its input (the checksum would
    miss any word a stream skipped), thread shares and stream tails included."""
    for n in (1, 7, 4096 * 8 + 13, 1 << 20):
        data = torch.randint(0, 1 << 40, (n,), dtype=torch.int64, generator=_gen(n))
        assert torch.ops.vllm_sparse.cpu_stream_read(data) == int(data.sum())


def test_weights_copied_onto_huge_pages_keep_their_values():
    from vllm_sparse.kernels.cpu.hugepages import HUGE_PAGE, on_huge_pages

    small = torch.randn(8, 8)
    assert on_huge_pages(small) is small  # under one huge page: left as it is
    big = torch.randn(HUGE_PAGE // 2 + 123, 3).bfloat16()  # 3 MiB + a tail
    copy = on_huge_pages(big)
    assert copy.data_ptr() != big.data_ptr() and copy.data_ptr() % HUGE_PAGE == 0
    assert torch.equal(copy.view(torch.int16), big.view(torch.int16))
    del big
    assert torch.isfinite(copy.float()).all()  # the copy owns its memory


def _huge_kib_backing(address: int) -> int:
    """AnonHugePages (KiB) of the mapping of this process that holds `address`."""
    inside = False
    for line in open("/proc/self/smaps"):
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and all(c in "0123456789abcdef-" for c in fields[0]):
            start, end = (int(part, 16) for part in fields[0].split("-"))
            inside = start <= address < end
        elif inside and fields[0] == "AnonHugePages:":
            return int(fields[1])
    return 0


def test_huge_page_copies_get_huge_pages_after_the_heap_has_been_used():
    """Copies made after large allocations were freed (glibc then serves big requests
    from memory already faulted in on 4 KiB pages) still get 2 MiB pages wherever the
    system's transparent huge pages honour the advice."""
    from vllm_sparse.kernels.cpu.hugepages import HUGE_PAGE, on_huge_pages

    mode = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    honoured = mode.exists() and ("[madvise]" in mode.read_text() or "[always]" in mode.read_text())
    churn = [torch.ones(12 << 20, dtype=torch.uint8) for _ in range(8)]  # touched, then freed
    del churn
    source = torch.randint(0, 255, (4 * HUGE_PAGE + 4096,), dtype=torch.uint8, generator=_gen(3))
    copies = [on_huge_pages(source) for _ in range(4)]
    for copy in copies:
        assert torch.equal(copy, source)
    if honoured:
        huge_kib = [_huge_kib_backing(copy.data_ptr()) for copy in copies]
        # Each copy's four whole huge pages (a mapping may hold two copies; allow one
        # copy that the kernel could not back).
        assert sum(kib >= 4 * HUGE_PAGE // 1024 for kib in huge_kib) >= 3, huge_kib


@pytest.mark.parametrize("code", [isa.AVX2, isa.AVX512_BF16], ids=["avx2", "avx512_bf16"])
def test_dense_gemv_matches_reference_or_is_refused(code):
    """The LM head's dense GEMV on each ISA path it has (AVX-512 BF16; AVX2, which
    AVX-512 without BF16 runs too): every row count it splits into passes (1, 2,
    passes of 4 then 2 then 1), the AVX-512 kernel's row blocks of 16 / 8 / 6 with
    their tails, several L2-sized chunks of rows, a partial last 16- or 32-column
    group; on other CPUs and the scalar path the op refuses with the reason."""
    gen = _gen(77 + code)
    if code not in isa.supported():
        pytest.skip(f"this CPU has no {isa.NAMES[code]} path")
    x, w = torch.randn(1, 64).bfloat16(), torch.randn(8, 64).bfloat16()
    with pytest.raises(RuntimeError, match="needs AVX2"):
        cpu_kernels.dense_linear(x, w, isa_code=isa.SCALAR)
    assert cpu_kernels.dense_gemv_isa(code) == code and cpu_kernels.dense_gemv_isa(isa.SCALAR) is None
    for shape in [(1, 1), (7, 33), (37, 70), (130, 96), (61, 2048), (200, 576), (300, 2048), (9, 50)]:
        w = torch.randn(shape, generator=gen).bfloat16()
        for m in (1, 2, 3, 4, 5, 7, 8, 9, 17):
            x = torch.randn(m, shape[1], generator=gen).bfloat16()
            bias = torch.randn(shape[0], generator=gen).bfloat16() if m % 2 else None
            _poison_allocator(m * shape[0], torch.bfloat16)
            _check(cpu_kernels.dense_linear(x, w, bias, isa_code=code), x, w, bias, torch.bfloat16)
    # At M = 1 a row's result does not depend on where it falls (tensor-parallel shards,
    # thread shares): bit for bit the same from a shifted slice and from one thread.
    w, x = torch.randn(301, 576, generator=gen).bfloat16(), torch.randn(1, 576, generator=gen).bfloat16()
    full = cpu_kernels.dense_linear(x, w, isa_code=code)
    assert torch.equal(cpu_kernels.dense_linear(x, w[5:].contiguous(), isa_code=code), full[:, 5:])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(cpu_kernels.dense_linear(x, w, isa_code=code), full)
    finally:
        torch.set_num_threads(threads)
    w = torch.randn(16, 64).bfloat16()
    with pytest.raises(RuntimeError, match="contiguous bf16"):
        cpu_kernels.dense_linear(torch.randn(1, 64), w.float())
    with pytest.raises(RuntimeError, match=r"x must be bf16 \[M, 64\]"):
        cpu_kernels.dense_linear(torch.randn(1, 32).bfloat16(), w)
    with pytest.raises(RuntimeError, match="bias must have 16"):
        cpu_kernels.dense_linear(torch.randn(1, 64).bfloat16(), w, torch.zeros(3).bfloat16())
