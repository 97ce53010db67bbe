"""Layouts: bit-exact round trips (hypothesis) and clear rejection of malformed input."""

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import prune_nm, prune_random
from vllm_sparse.kernels import (
    BitmapLayout,
    NMLayout,
    NMPattern,
    SparseLayoutError,
    SparsePatternError,
    pack_bitmap,
    pack_nm,
)
from vllm_sparse.kernels._bits import int_view

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
PATTERNS = [NMPattern(2, 4), NMPattern(4, 8), NMPattern(1, 4), NMPattern(1, 2)]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _weight(seed, rows, cols, dtype, specials):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen).to(dtype)
    if specials and w.numel() >= 3:
        flat = w.view(-1)
        flat[0], flat[1], flat[2] = float("inf"), float("nan"), -float("inf")
    return w


def _bits_equal(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(int_view(a), int_view(b))


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 9), groups=st.integers(1, 11),
       pattern=st.sampled_from(PATTERNS), dtype=st.sampled_from(DTYPES), specials=st.booleans(),
       extra_zeros=st.floats(0, 0.6))
def test_nm_round_trip_is_bit_exact(seed, rows, groups, pattern, dtype, specials, extra_zeros):
    w = prune_nm(_weight(seed, rows, groups * pattern.m, dtype, specials), pattern.n, pattern.m)
    w = prune_random(w, extra_zeros, torch.Generator().manual_seed(seed + 1))  # groups with < n values
    layout = pack_nm(w, pattern).validate()
    assert _bits_equal(layout.to_dense(), w)
    assert layout.values.shape == (rows, groups * pattern.n)
    assert layout.stored_bytes == NMLayout.stored_bytes_for((rows, groups * pattern.m), pattern, dtype)
    # Re-packing the unpacked weight gives the same encoding (the layout is canonical).
    again = pack_nm(layout.to_dense(), pattern)
    assert torch.equal(again.bitmap, layout.bitmap) and _bits_equal(again.values, layout.values)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 9), cols=st.integers(1, 300),
       sparsity=st.floats(0, 1), dtype=st.sampled_from(DTYPES), tile_k=st.sampled_from([8, 16, 64, 128]),
       specials=st.booleans())
def test_bitmap_round_trip_is_bit_exact(seed, rows, cols, sparsity, dtype, tile_k, specials):
    w = prune_random(_weight(seed, rows, cols, dtype, specials), sparsity, torch.Generator().manual_seed(seed))
    layout = pack_bitmap(w, tile_k).validate()
    assert _bits_equal(layout.to_dense(), w)
    assert layout.nnz == int((w != 0).sum())
    assert layout.tile_offsets.shape == (rows * -(-cols // tile_k) + 1,)
    assert layout.stored_bytes == BitmapLayout.stored_bytes_for((rows, cols), layout.nnz, dtype, tile_k)


def test_negative_zero_comes_back_as_positive_zero():
    w = torch.tensor([[1.0, -0.0, 0.0, 2.0, -0.0, 0.0, 0.0, 3.0]], dtype=torch.float16)
    for layout in (pack_nm(w, "2:4"), pack_bitmap(w, 8)):
        out = layout.to_dense()
        assert torch.equal(int_view(out), int_view(w + 0.0))  # documented: sign of zero is not stored
        assert not torch.equal(int_view(out), int_view(w))


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_pack_rejects_weight_that_breaks_pattern(pattern):
    p = NMPattern.parse(pattern)
    w = prune_nm(torch.randn(6, 4 * p.m), p.n, p.m)
    w[3, p.m : 2 * p.m] = 1.0  # group 1 of row 3 fully dense
    with pytest.raises(SparsePatternError, match=rf"row 3, columns {p.m}\.\.{2 * p.m - 1} hold {p.m} non-zeros"):
        pack_nm(w, p)


def test_pack_rejects_bad_inputs():
    with pytest.raises(SparseLayoutError, match="dtype torch.int32"):
        pack_nm(torch.zeros(4, 8, dtype=torch.int32), "2:4")
    with pytest.raises(SparseLayoutError, match="dtype torch.float64"):
        pack_bitmap(torch.zeros(4, 8, dtype=torch.float64))
    with pytest.raises(SparsePatternError, match="not a multiple of M=8"):
        pack_nm(torch.zeros(4, 12), "4:8")
    with pytest.raises(SparseLayoutError, match="2-D"):
        pack_bitmap(torch.zeros(8))
    with pytest.raises(SparseLayoutError, match="tile_k"):
        pack_bitmap(torch.zeros(4, 8), tile_k=12)
    with pytest.raises(SparseLayoutError, match="M in"):
        pack_nm(torch.zeros(4, 16), NMPattern(2, 16))


def _nm_layout(n=2, m=4, rows=5, k=24, dtype=torch.float16):
    return pack_nm(prune_nm(torch.randn(rows, k).to(dtype), n, m), NMPattern(n, m))


def test_nm_validate_rejects_malformed():
    good = _nm_layout()
    cases = {
        "dtype torch.int16": dataclasses.replace(good, values=good.values.view(torch.int16)),
        r"values has shape \(5, 11\)": dataclasses.replace(good, values=good.values[:, :11]),
        "bitmap has dtype torch.int32": dataclasses.replace(good, bitmap=good.bitmap.to(torch.int32)),
        r"bitmap has shape \(5, 2\)": dataclasses.replace(good, bitmap=good.bitmap[:, :2]),
    }
    too_many = good.bitmap.clone()
    too_many[2, 1] = 0b0111_0000  # group 2 of row 2 marks 3 of 4
    cases["row 2, columns 12..15 mark 3 stored values, more than 2"] = dataclasses.replace(good, bitmap=too_many)
    stray = good.values.clone()
    bm = good.bitmap.clone()
    bm[1, 0] = 0b0000_0001 | (bm[1, 0] & 0xF0)  # group 0 of row 1 now stores one value...
    stray[1, 1] = 1.5  # ...but its second slot is non-zero
    cases["values row 1 slot 1 .* count mismatch"] = dataclasses.replace(good, bitmap=bm, values=stray)
    for message, bad in cases.items():
        with pytest.raises(SparsePatternError, match=message):
            bad.validate()


def test_nm_validate_rejects_bits_past_in_features():
    lay = _nm_layout(2, 4, rows=3, k=12)  # 12 columns: last byte has 4 padding bits
    bm = lay.bitmap.clone()
    bm[2, 1] |= 0b0001_0000  # column 12: out of range
    with pytest.raises(SparseLayoutError, match="row 2 marks a column >= in_features=12"):
        dataclasses.replace(lay, bitmap=bm).validate()


def test_bitmap_validate_rejects_malformed():
    w = prune_random(torch.randn(4, 50), 0.6, torch.Generator().manual_seed(0))
    good = pack_bitmap(w, 16).validate()
    offs = good.tile_offsets.clone()
    offs[5] += 1
    bm = good.bitmap.clone()
    bm[0, 0] ^= 1  # flips one entry: counts no longer agree with values
    pad = good.bitmap.clone()
    pad[3, -1] |= 0b1000_0000  # column 55 of a 50-column weight
    cases = {
        "values has dtype torch.int16": dataclasses.replace(good, values=good.values.view(torch.int16)),
        "values must be 1-D": dataclasses.replace(good, values=good.values.view(1, -1)),
        "bitmap/value count mismatch": dataclasses.replace(good, values=good.values[:-1]),
        "tile_offsets out of range for row 1, tile 0": dataclasses.replace(good, tile_offsets=offs),
        r"tile_offsets has shape": dataclasses.replace(good, tile_offsets=good.tile_offsets[:-1]),
        "tile_offsets must be an int32/int64": dataclasses.replace(good, tile_offsets=good.tile_offsets.float()),
        "marks a column >= in_features=50": dataclasses.replace(good, bitmap=pad),
    }
    for message, bad in cases.items():
        with pytest.raises(SparseLayoutError, match=message):
            bad.validate()
    with pytest.raises(SparseLayoutError, match="bitmap/value count mismatch|tile_offsets"):
        dataclasses.replace(good, bitmap=bm).validate()


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), row=st.integers(0, 2), col=st.integers(0, 39))
def test_bitmap_any_single_bit_flip_is_rejected(seed, row, col):
    # One flipped bit changes its tile's count, so offsets and values no longer agree.
    gen = torch.Generator().manual_seed(seed)
    good = pack_bitmap(prune_random(torch.randn(3, 40, generator=gen), 0.5, gen), 8)
    bm = good.bitmap.clone()
    bm[row, col // 8] ^= 1 << (col % 8)
    with pytest.raises(SparseLayoutError, match="count mismatch|tile_offsets out of range"):
        dataclasses.replace(good, bitmap=bm).validate()
