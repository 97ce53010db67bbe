"""The 2:4 layout of the CPU gather kernel (``csrc/gemm_nm24.cpp``): exactly two
values per group of four columns, each with a 2-bit selector naming its column.

Per weight [N, K], bf16, K a multiple of 64, one uint8 tensor ``blocks`` of shape
[ceil(N / 8), K / 64, 576]: rows in blocks of 8 (rows past N are zeros), each block
a run of 576-byte records, one per 64-column chunk:

* bytes 0..63: the 8 rows' selectors, a little-endian uint64 each: bits 2l, 2l+1 are
  the column (0..3) within its group of value l (0..31);
* bytes 64..575: the 8 rows' 32 bf16 values, group by group, the two of a group in
  column order (a group with fewer non-zeros is padded with zeros).

Bytes per weight: 1 (values) + 1/8 (selectors), the same as the bitmap layout at 2:4,
but the kernel needs no expand instruction: it gathers the activations to the values
(vpermt2w) instead of spreading the values to the activations' columns. A block is
one contiguous run of records, which the hardware prefetcher follows better than two
streams per row (measured: decode ~1.2x faster than row-by-row storage); the kernels
read it as a few streams at once (csrc/nm24_records.h, visit_records).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .. import _bits
from ..patterns import NMPattern, SparseLayoutError, find_nm_violation
from . import isa
from .hugepages import on_huge_pages

CHUNK = 64
BLOCK_ROWS = 8
RECORD_BYTES = 8 * 8 + BLOCK_ROWS * CHUNK  # selectors, then values (32 bf16 per row)


def eligible(shape: tuple[int, int], dtype: torch.dtype) -> bool:
    return dtype == torch.bfloat16 and len(shape) == 2 and shape[1] % CHUNK == 0


def _blocks(n: int) -> int:
    return -(-n // BLOCK_ROWS)


@dataclass(frozen=True)
class Cpu24Layout:
    blocks: torch.Tensor
    shape: tuple[int, int]

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16

    @property
    def stored_bytes(self) -> int:
        return self.blocks.numel()

    def on_huge_pages(self) -> "Cpu24Layout":
        """The same layout with its blocks on 2 MiB pages."""
        return replace(self, blocks=on_huge_pages(self.blocks))

    @staticmethod
    def stored_bytes_for(shape: tuple[int, int]) -> int:
        n, k = shape
        return _blocks(n) * (k // CHUNK) * RECORD_BYTES

    @classmethod
    def pack(cls, weight: torch.Tensor) -> "Cpu24Layout":
        if weight.dim() != 2 or not eligible(tuple(weight.shape), weight.dtype):
            raise SparseLayoutError(f"the CPU 2:4 layout takes bf16 [N, K] weights with K % {CHUNK} == 0, "
                                    f"got {weight.dtype} {tuple(weight.shape)}")
        violation = find_nm_violation(weight, NMPattern(2, 4))
        if violation is not None:
            raise SparseLayoutError(f"weight breaks 2:4: {violation.describe()}")
        n, k = weight.shape
        chunks, padded = k // CHUNK, _blocks(n) * BLOCK_ROWS
        weight = torch.nn.functional.pad(weight.contiguous(), (0, 0, 0, padded - n))
        zero = (weight == 0).view(padded, k // 4, 4)  # by value: -0.0 is a zero
        groups = torch.where(zero, 0, _bits.int_view(weight).view(padded, k // 4, 4))
        # Stored columns of each group: its non-zeros first (in column order), then
        # its first zero columns as padding; the two kept are put in column order.
        order = (zero.to(torch.int64) * 4 + torch.arange(4)).argsort(-1)[..., :2].sort(-1).values
        kept = torch.gather(groups, -1, order)  # [padded, k/4, 2]
        shifts = 2 * torch.arange(32, dtype=torch.int64)
        selectors = (order.reshape(padded, chunks, 32).to(torch.int64) << shifts).sum(-1)
        # [block, row, chunk] -> [block, chunk, row], then bytes.
        selectors = selectors.view(-1, BLOCK_ROWS, chunks).transpose(1, 2).contiguous()
        values = kept.reshape(padded, chunks, 32).view(-1, BLOCK_ROWS, chunks, 32).transpose(1, 2).contiguous()
        blocks = torch.cat([selectors.view(torch.uint8), values.view(torch.uint8).flatten(2)], dim=2)
        return cls(blocks.contiguous(), (int(n), int(k)))

    def to_dense(self) -> torch.Tensor:
        n, k = self.shape
        chunks = k // CHUNK
        selectors = self.blocks[..., :64].contiguous().view(torch.int64)  # [blocks, chunks, 8]
        values = self.blocks[..., 64:].contiguous().view(torch.int16).view(-1, chunks, BLOCK_ROWS, 32)
        selectors = selectors.transpose(1, 2).reshape(-1, chunks)[:n]
        values = values.transpose(1, 2).reshape(-1, k // 2)[:n]
        shifts = 2 * torch.arange(32, dtype=torch.int64)
        sel = ((selectors.unsqueeze(-1) >> shifts) & 3).view(n, k // 4, 2)
        columns = sel + 4 * torch.arange(k // 4).view(1, -1, 1)
        dense = torch.zeros(n, k, dtype=torch.int16)
        dense.scatter_(1, columns.view(n, -1), values)
        return dense.view(torch.bfloat16)


def kernel_isa(isa_code: int | None = None) -> int | None:
    """The 2:4 kernel's ISA path on a host whose bitmap kernels run ``isa_code``
    (default: ``isa.default()``): the AVX-512 gather kernel (BW + VBMI + BF16) where
    allowed and present, else the AVX2 one; None below AVX2."""
    top = isa.default() if isa_code is None else isa_code
    for code in (isa.AVX512_BF16, isa.AVX2):
        if code <= top and torch.ops.vllm_sparse.cpu_nm24_supported(code):
            return code
    return None


def supported(isa_code: int | None = None) -> bool:
    """Can this CPU run a 2:4 kernel (on ``isa_code`` or below)?"""
    return kernel_isa(isa_code) is not None


def linear(x: torch.Tensor, layout: Cpu24Layout, bias: torch.Tensor | None = None,
           max_direct_m: int = 16, isa_code: int | None = None) -> torch.Tensor:
    code = kernel_isa() if isa_code is None else isa_code
    return torch.ops.vllm_sparse.cpu_nm24_linear(x, layout.blocks, *layout.shape, code, max_direct_m, bias)
