"""Gated MLP with neuron-level skipping: per row, the intermediate neurons whose
|SiLU(gate)| is at or under a threshold are dropped, and the kernel reads the up_proj
row and the down_proj column of a neuron only where some row of its block keeps it.

Weights come as ``NeuronLayout``: gate, up and down_t, each [I, H] with neuron j in
row j (down_t is down_proj transposed). A dropped neuron's up row and down_t row are
then contiguous bytes that are never fetched; down_proj in its own [H, I] layout would
put a neuron's weights in a column, and a memory sector of a row holds 16
neighbouring neurons, which are rarely all dropped. The rows may be views with any
row stride: gate and up as the two halves of vLLM's merged gate_up weight, or the CPU
kernel's interleaved up_down rows (kernels/cpu/skip_mlp.neuron_weights).

Each row has a mode (int8): ROW_FULL computes every neuron, ROW_DROP_NEURONS drops
those under the threshold, ROW_SKIPPED does no work and returns exact zeros (a
skipped FFN block, as in triton_skip_mlp).

Rounding follows an unfused MLP step by step: gate and up rounded to the activation
dtype as a GEMM writes them, SiLU rounded, the product rounded; so the drop decision
is the one the reference path (skip/hf.py) takes on the same gate values.

Program (pid_m, pid_i) owns BLOCK_M rows and BLOCK_I neurons: the gate tile over all
of H, the drop mask, then (only if a neuron of the block is kept) the up tile over H
and the down products, added into an fp32 output with atomics. Decode first: at
large M nearly every neuron is kept by some row, and separate GEMMs are better.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._launch import ACT_DTYPES, dot_precision, upcast_in_kernel
from ._triton_mode import INTERPRET, check_device, jit
from .row_modes import ROW_DROP_NEURONS, ROW_FULL, ROW_SKIPPED  # noqa: F401 - ROW_FULL: for callers
from .triton_skip_mlp import MLPConfig  # the same four block sizes

_DROP: tl.constexpr = tl.constexpr(ROW_DROP_NEURONS)  # the same values, readable inside the kernel
_SKIPPED: tl.constexpr = tl.constexpr(ROW_SKIPPED)


@jit
def _round_to_act(v, x_ptr):
    """fp32 ``v`` rounded to the activation dtype (to nearest, ties to even), kept as
    fp32. bf16 by its bits: the Triton interpreter's own cast truncates, and the drop
    decision must not depend on which mode runs."""
    if x_ptr.dtype.element_ty == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return v.to(x_ptr.dtype.element_ty).to(tl.float32)


@jit
def neuron_mlp_kernel(
    x_ptr, mode_ptr, gate_ptr, up_ptr, down_t_ptr, out_ptr, dropped_ptr,
    threshold, M, H, I, stride_xm, stride_om, stride_g, stride_u, stride_d,
    UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_H: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_i = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    in_rows = offs_m < M
    mode = tl.load(mode_ptr + offs_m, mask=in_rows, other=_SKIPPED)
    rows_on = (mode != _SKIPPED) & in_rows
    if tl.sum(rows_on.to(tl.int32), axis=0) > 0:  # a block of skipped rows reads nothing
        neurons = pid_i * BLOCK_I + tl.arange(0, BLOCK_I)
        neuron_ok = neurons < I
        x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
        weight_rows = neurons[:, None].to(tl.int64)
        gate = tl.zeros((BLOCK_M, BLOCK_I), dtype=tl.float32)
        for k0 in range(0, H, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            x = tl.load(x_rows + cols[None, :], mask=rows_on[:, None] & (cols[None, :] < H), other=0.0)
            wg = tl.load(gate_ptr + weight_rows * stride_g + cols[None, :], mask=neuron_ok[:, None] & (cols[None, :] < H),
                         other=0.0)
            if UPCAST:
                x = x.to(tl.float32)
                wg = wg.to(tl.float32)
            gate = tl.dot(x, tl.trans(wg), gate, input_precision=DOT_PRECISION)
        g = _round_to_act(gate, x_ptr)
        # SiLU(g) = g * sigmoid(g); exp of -g overflows to inf for g << 0, giving g / inf = -0.
        act = _round_to_act(g / (1.0 + tl.exp(-g)), x_ptr)
        may_drop = (mode == _DROP) & rows_on
        dropped = may_drop[:, None] & (tl.abs(act) <= threshold) & neuron_ok[None, :]
        keep = rows_on[:, None] & neuron_ok[None, :] & ~dropped
        tl.atomic_add(dropped_ptr + offs_m, tl.sum(dropped.to(tl.int32), axis=1), mask=may_drop)
        neuron_on = tl.max(keep.to(tl.int32), axis=0) > 0
        if tl.sum(neuron_on.to(tl.int32), axis=0) > 0:  # every neuron dropped: no up or down reads
            up = tl.zeros((BLOCK_M, BLOCK_I), dtype=tl.float32)
            for k0 in range(0, H, BLOCK_K):
                cols = k0 + tl.arange(0, BLOCK_K)
                x = tl.load(x_rows + cols[None, :], mask=rows_on[:, None] & (cols[None, :] < H), other=0.0)
                wu = tl.load(up_ptr + weight_rows * stride_u + cols[None, :],
                             mask=neuron_on[:, None] & (cols[None, :] < H), other=0.0)
                if UPCAST:
                    x = x.to(tl.float32)
                    wu = wu.to(tl.float32)
                up = tl.dot(x, tl.trans(wu), up, input_precision=DOT_PRECISION)
            h = _round_to_act(tl.where(keep, act * _round_to_act(up, x_ptr), 0.0), x_ptr)
            if not UPCAST:
                h = h.to(x_ptr.dtype.element_ty)  # exact: h is on the dtype's grid
            for h0 in range(0, H, BLOCK_H):
                h_cols = h0 + tl.arange(0, BLOCK_H)
                h_ok = h_cols < H
                # Neuron j's down_proj column is row j of down_t: [BLOCK_I, BLOCK_H].
                wd = tl.load(down_t_ptr + weight_rows * stride_d + h_cols[None, :],
                             mask=neuron_on[:, None] & h_ok[None, :], other=0.0)
                if UPCAST:
                    wd = wd.to(tl.float32)
                part = tl.dot(h, wd, input_precision=DOT_PRECISION)
                tl.atomic_add(out_ptr + offs_m[:, None].to(tl.int64) * stride_om + h_cols[None, :], part,
                              mask=rows_on[:, None] & h_ok[None, :])


def pick_config(m: int) -> MLPConfig:
    """BLOCK_I neurons share one keep decision per load; smaller blocks skip more
    reads at a given sparsity (a block is read if any of its neurons is kept), larger
    ones give longer contiguous runs. 32 neurons is 64 B of each row per lane group."""
    if INTERPRET:
        return MLPConfig(block_m=16, block_i=32, block_k=32, block_h=32)
    return MLPConfig(block_m=16 if m <= 16 else 32, block_i=32, block_k=128, block_h=128)


@dataclass(frozen=True)
class NeuronLayout:
    """A gated MLP laid out for neuron-level skipping (see the module doc): three
    [I, H] tensors, row j being neuron j's."""

    gate: torch.Tensor
    up: torch.Tensor
    down_t: torch.Tensor

    @classmethod
    def from_dense(cls, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> "NeuronLayout":
        """gate, up [I, H] and down [H, I] as nn.Linear weights (down is copied, transposed)."""
        if tuple(down.shape) != tuple(reversed(gate.shape)):
            raise ValueError(f"gate {tuple(gate.shape)}, up {tuple(up.shape)} and down {tuple(down.shape)} "
                             "are not one gated MLP's [I, H], [I, H], [H, I]")
        return cls(gate, up, down.t().contiguous())

    @classmethod
    def from_gate_up(cls, gate_up: torch.Tensor, down: torch.Tensor) -> "NeuronLayout":
        """vLLM's merged [2I, H] gate_up weight (viewed, not copied) and down [H, I]."""
        inter = gate_up.shape[0] // 2
        return cls.from_dense(gate_up[:inter], gate_up[inter:], down)

    @property
    def intermediate(self) -> int:
        return self.gate.shape[0]

    @property
    def hidden(self) -> int:
        return self.gate.shape[1]

    def check(self) -> None:
        for name, t in (("gate", self.gate), ("up", self.up), ("down_t", self.down_t)):
            if tuple(t.shape) != (self.intermediate, self.hidden):
                raise ValueError(f"{name} has shape {tuple(t.shape)}; gate is {tuple(self.gate.shape)}: "
                                 "not one gated MLP's [I, H], [I, H], [H, I]")
            if t.stride(1) != 1:
                raise ValueError(f"{name} rows must be contiguous (stride {t.stride()})")


def neuron_mlp(x: torch.Tensor, row_mode: torch.Tensor, layout: NeuronLayout, threshold: float,
               config: MLPConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(MLP output [M, H] in x's dtype, neurons dropped per row int32 [M])."""
    if x.dim() != 2 or x.dtype not in ACT_DTYPES:
        raise ValueError(f"x must be a 2-D fp16/bf16/fp32 tensor, got {x.dtype} {tuple(x.shape)}")
    rows, hidden = x.shape
    layout.check()
    if hidden != layout.hidden:
        raise ValueError(f"x has {hidden} features; the MLP's hidden size is {layout.hidden}")
    if row_mode.shape != (rows,):
        raise ValueError(f"row_mode must have one entry per row: shape ({rows},), got {tuple(row_mode.shape)}")
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    for name, t in (("activation", x), ("gate weight", layout.gate), ("up weight", layout.up),
                    ("down weight", layout.down_t)):
        check_device(t, name)
        if t.dtype != x.dtype:
            raise ValueError(f"{name} dtype {t.dtype} differs from the activation's {x.dtype}")
    x = x.contiguous()
    cfg = config or pick_config(rows)
    out = torch.zeros(rows, hidden, dtype=torch.float32, device=x.device)
    dropped = torch.zeros(rows, dtype=torch.int32, device=x.device)
    if rows == 0:
        return out.to(x.dtype), dropped
    mode = row_mode.to(torch.int8).contiguous()
    grid = (triton.cdiv(rows, cfg.block_m), triton.cdiv(layout.intermediate, cfg.block_i))
    neuron_mlp_kernel[grid](
        x, mode, layout.gate, layout.up, layout.down_t, out, dropped,
        float(threshold), rows, hidden, layout.intermediate, x.stride(0), out.stride(0),
        layout.gate.stride(0), layout.up.stride(0), layout.down_t.stride(0),
        UPCAST=upcast_in_kernel(x.dtype), DOT_PRECISION=dot_precision(x.dtype),
        BLOCK_M=cfg.block_m, BLOCK_I=cfg.block_i, BLOCK_K=cfg.block_k, BLOCK_H=cfg.block_h,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out.to(x.dtype), dropped
