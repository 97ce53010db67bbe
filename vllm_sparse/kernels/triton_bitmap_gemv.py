"""Unstructured-sparse weight x dense activation for small M (decode): y = x @ W^T.

Reads the bitmap layout (``bitmap_layout.BitmapLayout``): per K-tile, one offset per
weight row, ``tile_k / 8`` bitmap bytes per row, and the stored values, gathered by
their rank in the tile (``triton_tiles.load_bitmap_tile``). At 50-90% sparsity that
is 0.56x-0.17x the bytes of dense fp16, and decode is bound by those bytes.

BLOCK_K is the layout's ``tile_k`` (one offset per row per program step). Split-K
(strided K-tiles per program, fp32 atomics into a zeroed buffer) gives decode
enough programs to fill the GPU when out_features is small. It computes any M
correctly, but for large M the dispatcher prefers decompress-then-dense-GEMM.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import BlockConfig, check_activation, check_bias, dot_precision, out_buffer, upcast_in_kernel
from ._triton_mode import INTERPRET, check_device, jit
from .bitmap_layout import DEFAULT_TILE_K
from .triton_tiles import load_bitmap_tile

GPU_TILE_K = DEFAULT_TILE_K


@jit
def bitmap_gemm_kernel(
    x_ptr, values_ptr, bitmap_ptr, offsets_ptr, bias_ptr, out_ptr,
    M, N, K, n_tiles,
    stride_xm, stride_xk, stride_b, stride_om,
    HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    row_ok = rows < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for tile in range(pid_k, n_tiles, SPLIT_K):
        cols = tile * BLOCK_K + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + cols[None, :] * stride_xk,
                    mask=m_ok[:, None] & (cols[None, :] < K), other=0.0)
        w = load_bitmap_tile(values_ptr, bitmap_ptr, offsets_ptr, rows, row_ok, tile, n_tiles, K, stride_b,
                             BLOCK_N, BLOCK_K)
        if UPCAST:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        b = tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        acc += b[None, :] * (pid_k == 0).to(tl.float32)
    out_ptrs = out_ptr + offs_m[:, None].to(tl.int64) * stride_om + rows[None, :]
    out_mask = m_ok[:, None] & row_ok[None, :]
    if SPLIT_K == 1:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.atomic_add(out_ptrs, acc, mask=out_mask)


def pick_config(m: int, n: int, k: int, tile_k: int) -> BlockConfig:
    if INTERPRET:
        return BlockConfig(block_m=16 if m <= 16 else 32, block_n=32, block_k=tile_k)
    n_tiles = triton.cdiv(k, tile_k)
    block_m = 16 if m <= 16 else (32 if m <= 32 else 64)
    block_n = 32 if m <= 16 else 64
    programs = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    split = max(1, min(8, 264 // max(programs, 1), n_tiles // 2 or 1))
    return BlockConfig(block_m, block_n, tile_k, split_k=split, num_warps=4, num_stages=3)


def bitmap_gemm(x: torch.Tensor, values: torch.Tensor, bitmap: torch.Tensor, tile_offsets: torch.Tensor,
                tile_k: int, in_features: int, bias: torch.Tensor | None = None,
                config: BlockConfig | None = None) -> torch.Tensor:
    """x [M, K] @ W^T for W in the bitmap layout."""
    out_features = bitmap.shape[0]
    check_activation(x, in_features, values.dtype)
    for t, what in ((values, "values"), (bitmap, "bitmap"), (tile_offsets, "tile_offsets")):
        check_device(t, what)
    n_tiles = triton.cdiv(in_features, tile_k)
    if bitmap.shape != (out_features, (in_features + 7) // 8) or tile_offsets.numel() != out_features * n_tiles + 1:
        raise ValueError(
            f"bitmap layout tensors do not fit [{out_features}, {in_features}] with tile_k={tile_k}: "
            f"bitmap {tuple(bitmap.shape)}, tile_offsets {tuple(tile_offsets.shape)}"
        )
    check_bias(bias, out_features, x)
    rows = x.shape[0]
    cfg = config or pick_config(rows, out_features, in_features, tile_k)
    if cfg.block_k != tile_k:
        raise ValueError(f"BLOCK_K={cfg.block_k} must equal the layout's tile_k={tile_k}")
    out = out_buffer(rows, out_features, x.dtype, x.device, cfg.split_k)
    if rows == 0 or out_features == 0:
        return out.to(x.dtype)
    grid = (triton.cdiv(rows, cfg.block_m), triton.cdiv(out_features, cfg.block_n), cfg.split_k)
    bitmap_gemm_kernel[grid](
        x, values, bitmap, tile_offsets, bias if bias is not None else values, out,
        rows, out_features, in_features, n_tiles,
        x.stride(0), x.stride(1), bitmap.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, SPLIT_K=cfg.split_k,
        UPCAST=upcast_in_kernel(x.dtype), DOT_PRECISION=dot_precision(x.dtype),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out if out.dtype == x.dtype else out.to(x.dtype)
