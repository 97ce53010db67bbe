"""Triton device functions that turn a compressed weight tile into a dense one.

Every kernel computes ``x @ W^T`` tile by tile; these helpers return the dense
[BLOCK_R, BLOCK_K] tile of W (rows ``rows``, columns k0 .. k0 + BLOCK_K - 1) in the
weight's dtype, reading only the compressed bytes: the bitmap bytes of the tile and
the stored values. An entry's value slot is its rank among the set bits before it
(in its N:M group, or in its bitmap tile), computed with a byte popcount, so no
entry depends on a loop over its neighbours.

Format codes (constexpr ``FMT``): 0 dense, 1 N:M, 2 bitmap.
"""

import triton.language as tl

from ._triton_mode import jit

FMT_DENSE = 0
FMT_NM = 1
FMT_BITMAP = 2


@jit
def popcount8(x):
    """Set bits of each int32 in [0, 255] (SWAR, 3 steps)."""
    x = x - ((x >> 1) & 0x55)
    x = (x & 0x33) + ((x >> 2) & 0x33)
    return (x + (x >> 4)) & 0x0F


@jit
def _bitmap_bytes(bitmap_ptr, rows, row_ok, k0, K, stride_b, BLOCK_K: tl.constexpr):
    """[BLOCK_R, BLOCK_K // 8] int32 bitmap bytes of the tile (0 outside the weight)."""
    offs_b = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    ok = row_ok[:, None] & (offs_b[None, :] < (K + 7) // 8)
    ptrs = bitmap_ptr + rows[:, None].to(tl.int64) * stride_b + offs_b[None, :]
    return tl.load(ptrs, mask=ok, other=0).to(tl.int32)


@jit
def load_nm_tile(values_ptr, bitmap_ptr, rows, row_ok, k0, K, stride_v, stride_b,
                 BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, NM_N: tl.constexpr, NM_M: tl.constexpr):
    byte = _bitmap_bytes(bitmap_ptr, rows, row_ok, k0, K, stride_b, BLOCK_K)
    j = tl.arange(0, 8)
    # Bits of entry j's group that lie below j: [group_start, j).
    group_start = (j // NM_M) * NM_M
    below_mask = ((1 << j) - 1) - ((1 << group_start) - 1)
    b3 = byte[:, :, None]
    bit = (b3 >> j[None, None, :]) & 1
    rank = popcount8(b3 & below_mask[None, None, :])
    bit = tl.reshape(bit, (BLOCK_R, BLOCK_K))
    rank = tl.reshape(rank, (BLOCK_R, BLOCK_K))
    cols = k0 + tl.arange(0, BLOCK_K)
    slot = (cols // NM_M) * NM_N
    ptrs = values_ptr + rows[:, None].to(tl.int64) * stride_v + slot[None, :] + rank
    return tl.load(ptrs, mask=bit != 0, other=0.0)


@jit
def load_bitmap_tile(values_ptr, bitmap_ptr, offsets_ptr, rows, row_ok, tile, n_tiles, K, stride_b,
                     BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Tile ``tile`` (columns tile*BLOCK_K ...): BLOCK_K must equal the layout's tile_k."""
    byte = _bitmap_bytes(bitmap_ptr, rows, row_ok, tile * BLOCK_K, K, stride_b, BLOCK_K)
    start = tl.load(offsets_ptr + rows.to(tl.int64) * n_tiles + tile, mask=row_ok, other=0).to(tl.int64)
    per_byte = popcount8(byte)
    before_byte = tl.cumsum(per_byte, axis=1) - per_byte  # set bits in earlier bytes of the tile
    j = tl.arange(0, 8)
    b3 = byte[:, :, None]
    bit = (b3 >> j[None, None, :]) & 1
    rank = before_byte[:, :, None] + popcount8(b3 & ((1 << j) - 1)[None, None, :])
    bit = tl.reshape(bit, (BLOCK_R, BLOCK_K))
    rank = tl.reshape(rank, (BLOCK_R, BLOCK_K))
    ptrs = values_ptr + start[:, None] + rank
    return tl.load(ptrs, mask=bit != 0, other=0.0)


@jit
def load_dense_tile(w_ptr, rows, row_ok, k0, K, stride_w, BLOCK_K: tl.constexpr):
    cols = k0 + tl.arange(0, BLOCK_K)
    ptrs = w_ptr + rows[:, None].to(tl.int64) * stride_w + cols[None, :]
    return tl.load(ptrs, mask=row_ok[:, None] & (cols[None, :] < K), other=0.0)


@jit
def load_weight_tile(FMT: tl.constexpr, values_ptr, bitmap_ptr, offsets_ptr, rows, row_ok, k0, K,
                     stride_v, stride_b, n_tiles,
                     BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, NM_N: tl.constexpr, NM_M: tl.constexpr):
    """Dense [BLOCK_R, BLOCK_K] tile of any of our formats (for the fused MLP)."""
    if FMT == 0:
        w = load_dense_tile(values_ptr, rows, row_ok, k0, K, stride_v, BLOCK_K)
    elif FMT == 1:
        w = load_nm_tile(values_ptr, bitmap_ptr, rows, row_ok, k0, K, stride_v, stride_b,
                         BLOCK_R, BLOCK_K, NM_N, NM_M)
    else:
        w = load_bitmap_tile(values_ptr, bitmap_ptr, offsets_ptr, rows, row_ok, k0 // BLOCK_K, n_tiles, K,
                             stride_b, BLOCK_R, BLOCK_K)
    return w
