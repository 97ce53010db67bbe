"""N:M semi-structured layout (2:4, 4:8, any n < m with m in 2, 4, 8).

Stored per weight [out_features, in_features] (K = in_features, K % m == 0):

* ``values``  [out, K / m * n], the weight's dtype: for each group of m columns, its
  non-zeros in column order, then zeros up to n slots.
* ``bitmap``  [out, ceil(K / 8)] uint8: one bit per column (see ``_bits``), 1 where
  the group stores a value.

Why a bitmap rather than per-value indices: a 2:4 group needs 4 bits either way
(2 x 2-bit indices = 4-bit mask), but a 4:8 group needs 12 bits of 3-bit indices
(16 once aligned) against 8 bits of mask, and the information minimum is
log2(C(8,4)) = 6.1 bits. So the mask is the smallest byte-friendly metadata for both
patterns (fp16 2:4: 4.5 bits/weight -> 56% of dense; 4:8: 9 bits/8 weights -> 56%),
it is the *same* bitmap the unstructured layout uses, and a kernel decodes it with
one popcount per entry (rank of the entry in its group = set bits below it), no
reductions. Groups with fewer than n non-zeros are fine: their extra slots hold 0.

Zeros are detected by value (``w != 0``), so a pruned ``-0.0`` comes back as
``+0.0``: unpack(pack(w)) is bit-identical to ``w`` for every weight without
negative zeros (NaN and its payload included), and equal to ``w + 0.0`` otherwise.
Keeping the sign would cost a stored slot per negative zero, and pruning by
``w * mask`` makes a negative zero of every pruned negative weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _bits
from .patterns import NMPattern, SparseLayoutError, SparsePatternError, find_nm_violation

SUPPORTED_GROUP_SIZES = (2, 4, 8)


def _check_pattern(pattern: NMPattern) -> None:
    if pattern.m not in SUPPORTED_GROUP_SIZES:
        raise SparseLayoutError(
            f"N:M layout supports M in {SUPPORTED_GROUP_SIZES} (a group must fit in one bitmap byte), got {pattern}"
        )


def _rank_in_group(mask: torch.Tensor, m: int) -> torch.Tensor:
    """For each entry, how many set entries precede it in its group of m."""
    rows, k = mask.shape
    grouped = mask.view(rows, k // m, m).to(torch.int32)
    return (grouped.cumsum(-1) - grouped).view(rows, k)


@dataclass(frozen=True)
class NMLayout:
    values: torch.Tensor
    bitmap: torch.Tensor
    pattern: NMPattern
    shape: tuple[int, int]  # dense [out_features, in_features]

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def stored_bytes(self) -> int:
        return self.values.numel() * self.values.element_size() + self.bitmap.numel()

    @staticmethod
    def stored_bytes_for(shape: tuple[int, int], pattern: NMPattern, dtype: torch.dtype) -> int:
        out, k = shape
        return out * (k // pattern.m) * pattern.n * dtype.itemsize + out * _bits.bitmap_bytes_per_row(k)

    @classmethod
    def pack(cls, weight: torch.Tensor, pattern: NMPattern) -> "NMLayout":
        """Compress a dense pruned weight; SparsePatternError if it breaks ``pattern``."""
        _check_pattern(pattern)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise SparseLayoutError(f"N:M packing needs a 2-D weight, got {getattr(weight, 'shape', weight)!r}")
        _bits.check_value_dtype(weight, "weight")
        violation = find_nm_violation(weight, pattern)  # also checks K % m
        if violation is not None:
            raise SparsePatternError(f"weight breaks its {pattern} pattern: {violation.describe()}")
        rows, k = weight.shape
        n, m = pattern.n, pattern.m
        mask = weight != 0
        slot = torch.arange(k, device=weight.device).div(m, rounding_mode="floor") * n + _rank_in_group(mask, m)
        r, c = mask.nonzero(as_tuple=True)
        values = torch.zeros(rows, k // m * n, dtype=weight.dtype, device=weight.device)
        _bits.int_view(values)[r, slot[r, c]] = _bits.int_view(weight)[r, c]
        return cls(values, _bits.pack_bits(mask), pattern, (rows, k))

    def validate(self) -> "NMLayout":
        """Raise SparseLayoutError / SparsePatternError naming what is wrong."""
        _check_pattern(self.pattern)
        out, k = self.shape
        if k % self.pattern.m:
            raise SparseLayoutError(f"in_features={k} is not a multiple of M={self.pattern.m} for {self.pattern}")
        if not isinstance(self.values, torch.Tensor):
            raise SparseLayoutError(f"values must be a tensor, got {type(self.values).__name__}")
        _bits.check_value_dtype(self.values, "values")
        want = (out, k // self.pattern.m * self.pattern.n)
        if tuple(self.values.shape) != want:
            raise SparseLayoutError(
                f"values has shape {tuple(self.values.shape)}; a [{out}, {k}] {self.pattern} weight needs {want}"
            )
        _bits.check_bitmap(self.bitmap, self.shape)
        if self.bitmap.device != self.values.device:
            raise SparseLayoutError(f"bitmap is on {self.bitmap.device} but values on {self.values.device}")
        n, m = self.pattern.n, self.pattern.m
        mask = _bits.unpack_bits(self.bitmap, k)
        counts = mask.view(out, k // m, m).sum(-1)
        bad = (counts > n).nonzero()
        if bad.numel():
            row, group = (int(v) for v in bad[0])
            raise SparsePatternError(
                f"bitmap breaks {self.pattern}: row {row}, columns {group * m}..{group * m + m - 1} "
                f"mark {int(counts[row, group])} stored values, more than {n} slots"
            )
        # Slots past a group's count must be zero, or the same dense weight would have
        # two encodings (and a value would silently be dropped by unpack).
        used = torch.arange(n, device=counts.device) < counts.unsqueeze(-1)
        stray = (~used.view(out, -1)) & (_bits.int_view(self.values) != 0)
        if stray.any():
            row, s = (int(v) for v in stray.nonzero()[0])
            raise SparseLayoutError(
                f"values row {row} slot {s} (group {s // n}) is non-zero but the bitmap marks only "
                f"{int(counts[row, s // n])} value(s) in that group: bitmap/value count mismatch"
            )
        return self

    def to_dense(self) -> torch.Tensor:
        out, k = self.shape
        n, m = self.pattern.n, self.pattern.m
        mask = _bits.unpack_bits(self.bitmap, k)
        slot = torch.arange(k, device=mask.device).div(m, rounding_mode="floor") * n + _rank_in_group(mask, m)
        r, c = mask.nonzero(as_tuple=True)
        dense = torch.zeros(out, k, dtype=self.values.dtype, device=self.values.device)
        _bits.int_view(dense)[r, c] = _bits.int_view(self.values)[r, slot[r, c]]
        return dense


def pack_nm(weight: torch.Tensor, pattern: NMPattern | str) -> NMLayout:
    if isinstance(pattern, str):
        pattern = NMPattern.parse(pattern)
    return NMLayout.pack(weight, pattern)


def unpack_nm(layout: NMLayout) -> torch.Tensor:
    return layout.to_dense()
