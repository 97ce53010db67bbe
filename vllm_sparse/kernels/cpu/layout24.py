"""The 2:4 layout of the CPU gather kernel (``csrc/gemm_nm24.cpp``): exactly two
values per group of four columns, each with a 2-bit selector naming its column.

Per weight [N, K], bf16, K a multiple of 64:

* ``values``     1-D bf16: row r's K/2 values at ``r * K/2``, group by group, the two
  of a group in column order (a group with fewer non-zeros is padded with zeros),
  then ``VALUE_PADDING`` zeros.
* ``selectors``  int64 [N, K / 64]: bits 2l, 2l+1 of entry (r, c) are the column (0..3)
  within its group of value l (0..31) of 64-column chunk c.

Bytes per weight: 1 (values) + 1/8 (selectors), the same as the bitmap layout at 2:4,
but the kernel needs no expand instruction: it gathers the activations to the values
(vpermt2w) instead of spreading the values to the activations' columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import _bits
from ..patterns import NMPattern, SparseLayoutError, find_nm_violation
from .layout import VALUE_PADDING

CHUNK = 64


def eligible(shape: tuple[int, int], dtype: torch.dtype) -> bool:
    return dtype == torch.bfloat16 and len(shape) == 2 and shape[1] % CHUNK == 0


@dataclass(frozen=True)
class Cpu24Layout:
    values: torch.Tensor
    selectors: torch.Tensor
    shape: tuple[int, int]

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def stored_bytes(self) -> int:
        return self.values.numel() * self.values.element_size() + self.selectors.numel() * 8

    @staticmethod
    def stored_bytes_for(shape: tuple[int, int]) -> int:
        n, k = shape
        return (n * k // 2 + VALUE_PADDING) * 2 + n * (k // CHUNK) * 8

    @classmethod
    def pack(cls, weight: torch.Tensor) -> "Cpu24Layout":
        if weight.dim() != 2 or not eligible(tuple(weight.shape), weight.dtype):
            raise SparseLayoutError(f"the CPU 2:4 layout takes bf16 [N, K] weights with K % {CHUNK} == 0, "
                                    f"got {weight.dtype} {tuple(weight.shape)}")
        violation = find_nm_violation(weight, NMPattern(2, 4))
        if violation is not None:
            raise SparseLayoutError(f"weight breaks 2:4: {violation.describe()}")
        n, k = weight.shape
        weight = weight.contiguous()
        zero = (weight == 0).view(n, k // 4, 4)  # by value: -0.0 is a zero
        groups = torch.where(zero, 0, _bits.int_view(weight).view(n, k // 4, 4))
        # Stored columns of each group: its non-zeros first (in column order), then
        # its first zero columns as padding; the two kept are put in column order.
        order = (zero.to(torch.int64) * 4 + torch.arange(4)).argsort(-1)[..., :2].sort(-1).values
        kept = torch.gather(groups, -1, order)  # [n, k/4, 2]
        values = torch.zeros(n * k // 2 + VALUE_PADDING, dtype=torch.int16)
        values[: n * k // 2] = kept.reshape(-1)
        shifts = 2 * torch.arange(32, dtype=torch.int64)
        sel = (order.reshape(n, k // CHUNK, 32).to(torch.int64) << shifts).sum(-1)
        return cls(values.view(torch.bfloat16), sel, (int(n), int(k)))

    def to_dense(self) -> torch.Tensor:
        n, k = self.shape
        shifts = 2 * torch.arange(32, dtype=torch.int64)
        sel = ((self.selectors.unsqueeze(-1) >> shifts) & 3).view(n, k // 4, 2)
        columns = sel + 4 * torch.arange(k // 4).view(1, -1, 1)
        dense = torch.zeros(n, k, dtype=torch.int16)
        dense.scatter_(1, columns.view(n, -1), _bits.int_view(self.values)[: n * k // 2].view(n, -1))
        return dense.view(torch.bfloat16)


def supported() -> bool:
    """Can this CPU run the 2:4 gather kernel (AVX-512 BW + VBMI + BF16)?"""
    return bool(torch.ops.vllm_sparse.cpu_nm24_supported())


def linear(x: torch.Tensor, layout: Cpu24Layout, bias: torch.Tensor | None = None,
           max_direct_m: int = 16) -> torch.Tensor:
    return torch.ops.vllm_sparse.cpu_nm24_linear(x, layout.values, layout.selectors, layout.shape[1],
                                                 max_direct_m, bias)
