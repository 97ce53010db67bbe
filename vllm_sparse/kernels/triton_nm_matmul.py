"""N:M sparse weight x dense activation: y[M, N] = x[M, K] @ W^T (+ bias), any M.

Each program owns a [BLOCK_M, BLOCK_N] output tile (and, with split-K, a strided
share of the K-tiles). Per K-tile it loads the activation tile and *decompresses*
the weight tile in registers from the N:M layout (values + bitmap, see
``triton_tiles.load_nm_tile``), then feeds both to ``tl.dot`` with an fp32
accumulator. Memory traffic for the weight is the compressed size (56% of dense
fp16 for 2:4 and 4:8), which is what decode (M <= 64, bandwidth-bound) gains from.
Prefill (large M) re-decodes each weight tile M / BLOCK_M times; BLOCK_M = 128 keeps
that cost small next to the dot.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._launch import BlockConfig, check_activation, check_bias, dot_precision, out_buffer, upcast_in_kernel
from ._triton_mode import INTERPRET, check_device, jit
from .triton_tiles import load_nm_tile


@jit
def nm_matmul_kernel(
    x_ptr, values_ptr, bitmap_ptr, bias_ptr, out_ptr,
    M, N, K,
    stride_xm, stride_xk, stride_v, stride_b, stride_om,
    NM_N: tl.constexpr, NM_M: tl.constexpr,
    HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output features = weight rows
    m_ok = offs_m < M
    row_ok = rows < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(pid_k * BLOCK_K, K, SPLIT_K * BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + cols[None, :] * stride_xk,
                    mask=m_ok[:, None] & (cols[None, :] < K), other=0.0)
        w = load_nm_tile(values_ptr, bitmap_ptr, rows, row_ok, k0, K, stride_v, stride_b,
                         BLOCK_N, BLOCK_K, NM_N, NM_M)
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


def pick_config(m: int, n: int, k: int) -> BlockConfig:
    """Block sizes per M. Decode: small BLOCK_M (tl.dot needs >= 16), narrow BLOCK_N and
    split-K so that even a 1024-row weight spreads over ~all 132 SMs of an H100.
    Prefill: 128 x 128 tiles so the decode of a weight tile is amortised over 128 rows.
    Under the interpreter: as few, large tiles as possible (each tile costs ms)."""
    if INTERPRET:
        return BlockConfig(block_m=16 if m <= 16 else 32, block_n=32, block_k=64)
    if m <= 16:
        tiles = triton.cdiv(n, 32)
        split = max(1, min(8, 264 // max(tiles, 1), triton.cdiv(k, 256)))
        return BlockConfig(16, 32, 128, split_k=split, num_warps=4, num_stages=3)
    if m <= 64:
        tiles = triton.cdiv(m, 64) * triton.cdiv(n, 64)
        split = max(1, min(4, 264 // max(tiles, 1), triton.cdiv(k, 512)))
        return BlockConfig(64, 64, 128, split_k=split, num_warps=4, num_stages=3)
    return BlockConfig(128, 128, 64, split_k=1, num_warps=8, num_stages=3)


def nm_matmul(x: torch.Tensor, values: torch.Tensor, bitmap: torch.Tensor, n: int, m: int, in_features: int,
              bias: torch.Tensor | None = None, config: BlockConfig | None = None) -> torch.Tensor:
    """x [M, K] @ W^T for W in the N:M layout (``nm_layout.NMLayout`` tensors)."""
    out_features = values.shape[0]
    check_activation(x, in_features, values.dtype)
    check_device(values, "values")
    if values.shape[1] != in_features // m * n or bitmap.shape != (out_features, (in_features + 7) // 8):
        raise ValueError(
            f"N:M layout tensors do not fit [{out_features}, {in_features}] {n}:{m}: values "
            f"{tuple(values.shape)}, bitmap {tuple(bitmap.shape)}"
        )
    check_bias(bias, out_features, x)
    rows = x.shape[0]
    cfg = config or pick_config(rows, out_features, in_features)
    if cfg.block_k % 8 or cfg.block_k % m:
        raise ValueError(f"BLOCK_K={cfg.block_k} must be a multiple of 8 and of M={m}")
    out = out_buffer(rows, out_features, x.dtype, x.device, cfg.split_k)
    if rows == 0 or out_features == 0:
        return out.to(x.dtype)
    grid = (triton.cdiv(rows, cfg.block_m), triton.cdiv(out_features, cfg.block_n), cfg.split_k)
    nm_matmul_kernel[grid](
        x, values, bitmap, bias if bias is not None else values, out,
        rows, out_features, in_features,
        x.stride(0), x.stride(1), values.stride(0), bitmap.stride(0), out.stride(0),
        NM_N=n, NM_M=m, HAS_BIAS=bias is not None, SPLIT_K=cfg.split_k,
        UPCAST=upcast_in_kernel(x.dtype), DOT_PRECISION=dot_precision(x.dtype),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out if out.dtype == x.dtype else out.to(x.dtype)
