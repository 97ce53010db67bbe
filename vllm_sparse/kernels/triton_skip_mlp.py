"""Fused gated MLP with per-row skipping: y = down(SiLU(x @ Wg^T) * (x @ Wu^T)).

Contract for skipped rows (``skip[r] != 0``): the row does no work and its output is
**exactly zero**, so a caller computing ``h + mlp(h)`` leaves skipped tokens as they
are. A program whose BLOCK_M rows are all skipped loads no weights and no
activations at all; in a partly skipped block the skipped rows are neither loaded
(masked to zero) nor stored.

Decomposition: program (pid_m, pid_i) owns BLOCK_M rows and a BLOCK_I slice of the
intermediate dimension. It computes the gate and up tiles for that slice over all
of H (two dots per K-step sharing one activation load), applies SiLU * up in fp32,
rounds to the activation dtype (as an unfused MLP would), and multiplies by the
matching [H, BLOCK_I] slice of the down weight, adding its partial result into an
fp32 output with atomics. The [M, I] intermediate never goes to memory, and each
weight byte is read once per row block. Atomics make fp32 summation order vary run
to run (within rounding). Best for decode; for large M, separate GEMMs are better.

Weights: all three in one format (constexpr FMT: 0 dense, 1 N:M, 2 bitmap).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._launch import ACT_DTYPES, dot_precision, upcast_in_kernel
from ._triton_mode import INTERPRET, check_device, jit
from .triton_tiles import load_weight_tile


@jit
def skip_mlp_kernel(
    x_ptr, skip_ptr, out_ptr,
    g_values, g_bitmap, g_offsets, g_stride_v, g_stride_b,
    u_values, u_bitmap, u_offsets, u_stride_v, u_stride_b,
    d_values, d_bitmap, d_offsets, d_stride_v, d_stride_b,
    M, H, I, stride_xm, stride_om, h_tiles, i_tiles,
    FMT: tl.constexpr, NM_N: tl.constexpr, NM_M: tl.constexpr,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_i = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    skip = tl.load(skip_ptr + offs_m, mask=offs_m < M, other=1)
    active = (skip == 0) & (offs_m < M)
    n_active = tl.sum(active.to(tl.int32), axis=0)
    if n_active > 0:  # an all-skipped row block reads nothing
        i_rows = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
        i_ok = i_rows < I
        gate = tl.zeros((BLOCK_M, BLOCK_I), dtype=tl.float32)
        up = tl.zeros((BLOCK_M, BLOCK_I), dtype=tl.float32)
        for k0 in range(0, H, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + cols[None, :],
                        mask=active[:, None] & (cols[None, :] < H), other=0.0)
            wg = load_weight_tile(FMT, g_values, g_bitmap, g_offsets, i_rows, i_ok, k0, H, g_stride_v, g_stride_b,
                                  h_tiles, BLOCK_I, BLOCK_K, NM_N, NM_M)
            wu = load_weight_tile(FMT, u_values, u_bitmap, u_offsets, i_rows, i_ok, k0, H, u_stride_v, u_stride_b,
                                  h_tiles, BLOCK_I, BLOCK_K, NM_N, NM_M)
            if UPCAST:
                x = x.to(tl.float32)
                wg = wg.to(tl.float32)
                wu = wu.to(tl.float32)
            gate = tl.dot(x, tl.trans(wg), gate, input_precision=DOT_PRECISION)
            up = tl.dot(x, tl.trans(wu), up, input_precision=DOT_PRECISION)
        # SiLU(g) = g * sigmoid(g); exp of -g overflows to inf for g << 0, giving g / inf = -0.
        act = gate / (1.0 + tl.exp(-gate)) * up
        h = act.to(x_ptr.dtype.element_ty)
        if UPCAST:
            h = h.to(tl.float32)
        for h0 in range(0, H, BLOCK_H):
            h_rows = h0 + tl.arange(0, BLOCK_H)
            h_ok = h_rows < H
            # Down weight is [H, I]: its rows are output features, its K-dim is I.
            wd = load_weight_tile(FMT, d_values, d_bitmap, d_offsets, h_rows, h_ok, pid_i * BLOCK_I, I,
                                  d_stride_v, d_stride_b, i_tiles, BLOCK_H, BLOCK_I, NM_N, NM_M)
            if UPCAST:
                wd = wd.to(tl.float32)
            part = tl.dot(h, tl.trans(wd), input_precision=DOT_PRECISION)
            tl.atomic_add(out_ptr + offs_m[:, None].to(tl.int64) * stride_om + h_rows[None, :], part,
                          mask=active[:, None] & h_ok[None, :])


@dataclass(frozen=True)
class MLPConfig:
    block_m: int
    block_i: int
    block_k: int
    block_h: int
    num_warps: int = 4
    num_stages: int = 2


def pick_config(m: int, hidden: int, intermediate: int, fmt: int, tile_k: int) -> MLPConfig:
    """BLOCK_K (over H, gate/up's K) and BLOCK_I (over I, down's K) must equal the bitmap
    layouts' tile_k; for dense / N:M they are free."""
    if INTERPRET:
        bk = tile_k if fmt == 2 else 64
        return MLPConfig(block_m=16 if m <= 16 else 32, block_i=bk, block_k=bk, block_h=64)
    if fmt == 2:
        bi = bk = tile_k
    else:
        bi, bk = 64, 128
    return MLPConfig(block_m=16 if m <= 16 else 64, block_i=bi, block_k=bk, block_h=64,
                     num_warps=4, num_stages=2)


@dataclass(frozen=True)
class MLPWeight:
    """One projection in a kernel-readable form: FMT 0 uses ``values`` as the dense
    [out, in] weight; 1 (N:M) and 2 (bitmap) use the layout tensors."""

    values: torch.Tensor
    bitmap: torch.Tensor | None = None
    tile_offsets: torch.Tensor | None = None


def skip_mlp(x: torch.Tensor, skip: torch.Tensor, gate: MLPWeight, up: MLPWeight, down: MLPWeight,
             fmt: int, intermediate: int, nm: tuple[int, int] = (2, 4), tile_k: int = 128,
             config: MLPConfig | None = None) -> torch.Tensor:
    """[M, H] -> [M, H]; rows with ``skip`` set come back as zeros (see module doc)."""
    if x.dim() != 2 or x.dtype not in ACT_DTYPES:
        raise ValueError(f"x must be a 2-D fp16/bf16/fp32 tensor, got {x.dtype} {tuple(x.shape)}")
    if x.stride(1) != 1:
        x = x.contiguous()
    rows, hidden = x.shape
    if skip.shape != (rows,):
        raise ValueError(f"skip must have one flag per row: shape ({rows},), got {tuple(skip.shape)}")
    if fmt not in (0, 1, 2):
        raise ValueError(f"unknown weight format {fmt}")
    check_device(x, "activation")
    for name, w, out_f, in_f in (("gate", gate, intermediate, hidden), ("up", up, intermediate, hidden),
                                 ("down", down, hidden, intermediate)):
        check_device(w.values, f"{name} weight")
        if w.values.dtype != x.dtype:
            raise ValueError(f"{name} weight dtype {w.values.dtype} differs from the activation's {x.dtype}")
        if fmt == 0 and tuple(w.values.shape) != (out_f, in_f):
            raise ValueError(f"{name} weight has shape {tuple(w.values.shape)}, expected {(out_f, in_f)}")
        if fmt != 0 and (w.bitmap is None or tuple(w.bitmap.shape) != (out_f, (in_f + 7) // 8)):
            raise ValueError(f"{name} bitmap does not fit a [{out_f}, {in_f}] weight")
        if fmt == 2 and (w.tile_offsets is None or w.tile_offsets.dtype != torch.int32):
            raise ValueError(f"{name} needs int32 tile_offsets for the fused MLP")
    cfg = config or pick_config(rows, hidden, intermediate, fmt, tile_k)
    if fmt == 2 and not (cfg.block_k == cfg.block_i == tile_k):
        raise ValueError(f"bitmap weights need BLOCK_K == BLOCK_I == tile_k ({tile_k}), got {cfg}")
    out = torch.zeros(rows, hidden, dtype=torch.float32, device=x.device)
    if rows == 0:
        return out.to(x.dtype)
    skip_i8 = skip.to(torch.int8).contiguous()

    def args(w: MLPWeight):
        bitmap = w.bitmap if w.bitmap is not None else skip_i8  # placeholder pointer, never read
        offsets = w.tile_offsets if w.tile_offsets is not None else skip_i8
        stride_v = w.values.stride(0) if w.values.dim() == 2 else 0
        return (w.values, bitmap, offsets, stride_v, bitmap.stride(0) if w.bitmap is not None else 0)

    n, m = nm if fmt == 1 else (1, 2)
    grid = (triton.cdiv(rows, cfg.block_m), triton.cdiv(intermediate, cfg.block_i))
    skip_mlp_kernel[grid](
        x, skip_i8, out, *args(gate), *args(up), *args(down),
        rows, hidden, intermediate, x.stride(0), out.stride(0),
        triton.cdiv(hidden, cfg.block_k), triton.cdiv(intermediate, cfg.block_i),
        FMT=fmt, NM_N=n, NM_M=m, UPCAST=upcast_in_kernel(x.dtype), DOT_PRECISION=dot_precision(x.dtype),
        BLOCK_M=cfg.block_m, BLOCK_I=cfg.block_i, BLOCK_K=cfg.block_k, BLOCK_H=cfg.block_h,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out.to(x.dtype)
