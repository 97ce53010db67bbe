"""The weight layout the CPU kernels read: a bitmap per row plus the row's packed
non-zeros. One layout serves 2:4, 4:8 and unstructured sparsity alike.

Per weight [out_features N, in_features K], W = ceil(K / 32) words per row:

* ``bitmap``       int32 [N, W]: bit j of word w is set where column 32 w + j holds a
  stored value (columns past K: 0).
* ``values``       1-D, the weight's dtype: each row's non-zeros in column order, rows
  one after another, then ``VALUE_PADDING`` zeros (the AVX2 kernel's 16-byte loads
  may read past the last value; the bitmap masks out what they read).
* ``row_offsets``  int64 [N + 1]: where each row's values start.

Bytes per weight: 2 (1 - s) + 1/8 for bf16 at sparsity s, the same as the N:M layout
(2:4: 56% of dense) and the unstructured one without its per-tile offsets. Why a
32-bit word: an AVX-512 masked expand-load takes exactly one such word for 32 bf16
values, and AVX2 splits it into four byte-indexed shuffles. Per-row offsets make the
rows independent, so threads and the several rows a kernel keeps in flight never
wait on each other; inside a row, the value pointer advances by popcount(word).

Zeros are found by value, so ``-0.0`` comes back as ``+0.0`` (see ``nm_layout``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .. import _bits
from ..patterns import SparseLayoutError
from .hugepages import on_huge_pages

VALUE_PADDING = 64
WORD_BITS = 32


def words_per_row(in_features: int) -> int:
    return -(-in_features // WORD_BITS)


def stored_bytes_for(shape: tuple[int, int], nnz: int, dtype: torch.dtype) -> int:
    out, k = shape
    return (nnz + VALUE_PADDING) * dtype.itemsize + out * words_per_row(k) * 4 + (out + 1) * 8


def _pack_words(mask: torch.Tensor) -> torch.Tensor:
    """[N, K] bool -> [N, W] int32 (bit j of word w = column 32 w + j)."""
    rows, k = mask.shape
    words = words_per_row(k)
    padded = torch.zeros(rows, words * WORD_BITS, dtype=torch.int64, device=mask.device)
    padded[:, :k] = mask
    weights = torch.ones(WORD_BITS, dtype=torch.int64, device=mask.device) << torch.arange(WORD_BITS, device=mask.device)
    packed = (padded.view(rows, words, WORD_BITS) * weights).sum(-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def _sixteen_per_word(mask: torch.Tensor) -> bool:
    """Does every whole 32-column word of every row hold exactly 16 values (and K end
    on a word)?"""
    rows, k = mask.shape
    return k % WORD_BITS == 0 and bool((mask.view(rows, -1, WORD_BITS).sum(-1) == WORD_BITS // 2).all())


def _unpack_words(bitmap: torch.Tensor, k: int) -> torch.Tensor:
    shifts = torch.arange(WORD_BITS, dtype=torch.int32, device=bitmap.device)
    bits = (bitmap.unsqueeze(-1) >> shifts) & 1
    return bits.view(bitmap.shape[0], -1)[:, :k].bool()


@dataclass(frozen=True)
class CpuSparseLayout:
    values: torch.Tensor
    bitmap: torch.Tensor
    row_offsets: torch.Tensor
    shape: tuple[int, int]  # dense [out_features, in_features]
    # Every 32-column word of every row holds exactly 16 values (a 2:4 weight): the
    # large-M path on AMX then fills its tiles without popcounts (csrc/gemm_amx_bf16.cpp).
    sixteen_per_word: bool = False

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def nnz(self) -> int:
        return int(self.row_offsets[-1])

    @property
    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.values, self.bitmap, self.row_offsets))

    def on_huge_pages(self) -> "CpuSparseLayout":
        """The same layout with the streamed tensors (values, bitmap) on 2 MiB pages."""
        return replace(self, values=on_huge_pages(self.values), bitmap=on_huge_pages(self.bitmap))

    @classmethod
    def pack(cls, weight: torch.Tensor) -> "CpuSparseLayout":
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] == 0:
            raise SparseLayoutError(f"CPU sparse packing needs a 2-D weight, got {getattr(weight, 'shape', weight)!r}")
        _bits.check_value_dtype(weight, "weight")
        weight = weight.contiguous()
        mask = weight != 0
        nnz = int(mask.sum())
        values = torch.zeros(nnz + VALUE_PADDING, dtype=weight.dtype, device=weight.device)
        _bits.int_view(values)[:nnz] = _bits.int_view(weight)[mask]
        offsets = torch.zeros(weight.shape[0] + 1, dtype=torch.int64, device=weight.device)
        offsets[1:] = mask.sum(1).cumsum(0)
        shape = (int(weight.shape[0]), int(weight.shape[1]))
        return cls(values, _pack_words(mask), offsets, shape, _sixteen_per_word(mask))

    def validate(self) -> "CpuSparseLayout":
        """Raise SparseLayoutError naming what is inconsistent (the kernels trust it)."""
        out, k = self.shape
        _bits.check_value_dtype(self.values, "values")
        if self.bitmap.dtype != torch.int32 or tuple(self.bitmap.shape) != (out, words_per_row(k)):
            raise SparseLayoutError(
                f"bitmap must be int32 [{out}, {words_per_row(k)}], got {self.bitmap.dtype} {tuple(self.bitmap.shape)}"
            )
        mask = _unpack_words(self.bitmap, words_per_row(k) * WORD_BITS)
        if mask[:, k:].any():
            raise SparseLayoutError(f"bitmap marks columns past in_features={k}")
        counts = mask.sum(1)
        offsets = self.row_offsets
        if offsets.dtype != torch.int64 or tuple(offsets.shape) != (out + 1,):
            raise SparseLayoutError(f"row_offsets must be int64 [{out + 1}], got {offsets.dtype} {tuple(offsets.shape)}")
        if int(offsets[0]) != 0 or not torch.equal(offsets[1:] - offsets[:-1], counts):
            raise SparseLayoutError("row_offsets disagree with the bitmap's per-row counts")
        if self.sixteen_per_word and not _sixteen_per_word(mask[:, :k]):
            raise SparseLayoutError("sixteen_per_word is set but a 32-column word holds other than 16 values")
        if self.values.dim() != 1 or self.values.numel() < self.nnz + VALUE_PADDING:
            raise SparseLayoutError(
                f"values holds {self.values.numel()} entries; the bitmap marks {self.nnz} (+{VALUE_PADDING} padding)"
            )
        return self

    def to_dense(self) -> torch.Tensor:
        out, k = self.shape
        mask = _unpack_words(self.bitmap, k)
        dense = torch.zeros(out, k, dtype=self.values.dtype, device=self.values.device)
        _bits.int_view(dense)[mask] = _bits.int_view(self.values)[: self.nnz]
        return dense
