"""Torch references for every kernel: decompress, then an ordinary fp32 matmul.

They define what the kernels must compute (tests compare against them) and are the
fallback where no Triton backend exists. Accumulation is fp32, like the kernels, and
the result is cast to the activation dtype once at the end.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .bitmap_layout import BitmapLayout
from .nm_layout import NMLayout

Layout = NMLayout | BitmapLayout


def dense_weight(weight: torch.Tensor | Layout) -> torch.Tensor:
    return weight if isinstance(weight, torch.Tensor) else weight.to_dense()


def linear_ref(x: torch.Tensor, weight: torch.Tensor | Layout, bias: torch.Tensor | None = None) -> torch.Tensor:
    """y = x @ W^T + b for a dense or compressed W, fp32 accumulate."""
    w = dense_weight(weight)
    y = F.linear(x.float(), w.float(), None if bias is None else bias.float())
    return y.to(x.dtype)


def nm_linear_ref(x: torch.Tensor, layout: NMLayout, bias: torch.Tensor | None = None) -> torch.Tensor:
    return linear_ref(x, layout, bias)


def bitmap_linear_ref(x: torch.Tensor, layout: BitmapLayout, bias: torch.Tensor | None = None) -> torch.Tensor:
    return linear_ref(x, layout, bias)


def skip_mlp_ref(
    x: torch.Tensor,
    skip: torch.Tensor,
    gate: torch.Tensor | Layout,
    up: torch.Tensor | Layout,
    down: torch.Tensor | Layout,
) -> torch.Tensor:
    """down(SiLU(gate(x)) * up(x)) per row; rows with ``skip`` set give exact zeros.

    The intermediate activation is rounded to x.dtype before the down projection, as
    an unfused fp16/bf16 MLP (and our fused kernel) does.
    """
    xf = x.float()
    g = F.linear(xf, dense_weight(gate).float())
    u = F.linear(xf, dense_weight(up).float())
    h = (F.silu(g) * u).to(x.dtype).float()
    y = F.linear(h, dense_weight(down).float())
    y[skip.bool()] = 0
    return y.to(x.dtype)


def neuron_mlp_ref(x: torch.Tensor, row_mode: torch.Tensor, gate: torch.Tensor, up: torch.Tensor,
                   down: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated MLP with neuron-level skipping (triton_neuron_mlp): per row mode 0 all
    neurons, 1 those with |SiLU(gate)| <= threshold dropped, 2 exact zeros. Each
    intermediate is rounded to x.dtype as an unfused MLP writes it. Returns (output,
    neurons dropped per row, int32)."""
    xf = x.float()
    g = F.linear(xf, gate.float()).to(x.dtype)
    act = F.silu(g.float()).to(x.dtype).float()
    u = F.linear(xf, up.float()).to(x.dtype).float()
    mode = row_mode.long()
    dropped = (mode == 1)[:, None] & (act.abs() <= threshold)
    h = torch.where(dropped, 0.0, act * u).to(x.dtype).float()
    y = F.linear(h, down.float())
    y[mode == 2] = 0
    return y.to(x.dtype), dropped.sum(dim=1, dtype=torch.int32)
