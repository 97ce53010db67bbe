"""Decompress an N:M or bitmap weight into a dense [out, in] buffer on the GPU.

Used for large M (prefill): one pass that reads the compressed bytes and writes the
dense weight, followed by the vendor dense GEMM, beats re-decoding every weight tile
once per BLOCK_M rows of activations when M is in the thousands (the GEMM is then
compute-bound and the unpack is a small fixed cost). Also a fast ``to_dense``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_mode import check_device, jit
from .triton_tiles import load_weight_tile

BLOCK_R = 32  # rows per program; BLOCK_K is the bitmap layout's tile_k (or 128 for N:M)
NM_BLOCK_K = 128


@jit
def unpack_kernel(values_ptr, bitmap_ptr, offsets_ptr, out_ptr, N, K, stride_v, stride_b, stride_o, n_tiles,
                  FMT: tl.constexpr, NM_N: tl.constexpr, NM_M: tl.constexpr,
                  BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    k0 = tl.program_id(1) * BLOCK_K
    row_ok = rows < N
    w = load_weight_tile(FMT, values_ptr, bitmap_ptr, offsets_ptr, rows, row_ok, k0, K, stride_v, stride_b,
                         n_tiles, BLOCK_R, BLOCK_K, NM_N, NM_M)
    cols = k0 + tl.arange(0, BLOCK_K)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * stride_o + cols[None, :], w,
             mask=row_ok[:, None] & (cols[None, :] < K))


def unpack(fmt: int, values: torch.Tensor, bitmap: torch.Tensor, tile_offsets: torch.Tensor | None,
           in_features: int, n: int = 0, m: int = 0, tile_k: int = NM_BLOCK_K) -> torch.Tensor:
    """Dense weight from layout tensors (fmt 1 = N:M, 2 = bitmap). Bit-exact: values are
    only moved, never computed on (so bf16 is safe under the interpreter too)."""
    if fmt not in (1, 2):
        raise ValueError(f"unpack handles N:M (1) and bitmap (2) layouts, got format {fmt}")
    check_device(values, "values")
    out_features = bitmap.shape[0]
    block_k = tile_k if fmt == 2 else NM_BLOCK_K  # bitmap: one tile offset per program row
    # Values go through an integer view, so the kernel copies bits, never floats.
    ity = {2: torch.int16, 4: torch.int32}[values.element_size()]
    vals = values.view(ity)
    out = torch.empty(out_features, in_features, dtype=ity, device=values.device)
    offs = tile_offsets if tile_offsets is not None else bitmap
    n_tiles = triton.cdiv(in_features, block_k)
    grid = (triton.cdiv(out_features, BLOCK_R), n_tiles)
    unpack_kernel[grid](vals, bitmap, offs, out, out_features, in_features,
                        vals.stride(0) if fmt == 1 else 0, bitmap.stride(0), out.stride(0), n_tiles,
                        FMT=fmt, NM_N=n if fmt == 1 else 1, NM_M=m if fmt == 1 else 2,
                        BLOCK_R=BLOCK_R, BLOCK_K=block_k)
    return out.view(values.dtype)
