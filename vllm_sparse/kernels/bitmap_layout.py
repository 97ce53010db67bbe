"""Unstructured layout: bitmap + packed values + per-(row, K-tile) offsets.

Stored per weight [out_features, in_features] (K = in_features), tile width ``tile_k``
(a multiple of 8; T = ceil(K / tile_k) tiles per row):

* ``bitmap``        [out, ceil(K / 8)] uint8, one bit per entry (see ``_bits``).
* ``values``        [nnz], the weight's dtype: the non-zeros in row-major order.
* ``tile_offsets``  [out * T + 1] int32 (int64 past 2**31 values): where the values of
  tile (r, t) start in ``values``; entry ``r * T + t + 1`` is where they end.

Why per-tile offsets rather than per-row ones: a kernel program handles one K-tile
of a block of rows and needs the first value of that tile for each row. With a row
offset it would have to popcount every earlier byte of the row (O(K) work per tile,
O(K^2 / tile_k) per row); with a tile offset it reads one int per row, and inside the
tile the entry's rank is a prefix popcount of ``tile_k / 8`` bytes. Cost: 4 bytes per
row per tile, 1.6% of dense fp16 at tile_k = 128 (bitmap: 6.25%). A CSR layout
(int16/int32 column index per value) costs 16-32 bits per kept value instead of 1 bit
per entry: more than the bitmap above ~6% density (int16), i.e. at every sparsity a
pruned LLM actually has (50-90%).

Zeros are detected by value; see ``nm_layout`` for the note on ``-0.0``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import _bits
from .patterns import SparseLayoutError

DEFAULT_TILE_K = 128


def _offset_dtype(nnz: int) -> torch.dtype:
    return torch.int32 if nnz < 2**31 else torch.int64


def _tile_counts(mask: torch.Tensor, tile_k: int) -> torch.Tensor:
    rows, k = mask.shape
    tiles = -(-k // tile_k)
    padded = torch.zeros(rows, tiles * tile_k, dtype=torch.int32, device=mask.device)
    padded[:, :k] = mask
    return padded.view(rows, tiles, tile_k).sum(-1)


@dataclass(frozen=True)
class BitmapLayout:
    values: torch.Tensor
    bitmap: torch.Tensor
    tile_offsets: torch.Tensor
    shape: tuple[int, int]
    tile_k: int = DEFAULT_TILE_K

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    @property
    def n_tiles(self) -> int:
        return -(-self.shape[1] // self.tile_k)

    @property
    def nnz(self) -> int:
        return self.values.numel()

    @property
    def stored_bytes(self) -> int:
        return (
            self.values.numel() * self.values.element_size()
            + self.bitmap.numel()
            + self.tile_offsets.numel() * self.tile_offsets.element_size()
        )

    @staticmethod
    def stored_bytes_for(shape: tuple[int, int], nnz: int, dtype: torch.dtype, tile_k: int = DEFAULT_TILE_K) -> int:
        out, k = shape
        tiles = -(-k // tile_k)
        return (
            nnz * dtype.itemsize
            + out * _bits.bitmap_bytes_per_row(k)
            + (out * tiles + 1) * _offset_dtype(nnz).itemsize
        )

    @classmethod
    def pack(cls, weight: torch.Tensor, tile_k: int = DEFAULT_TILE_K) -> "BitmapLayout":
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise SparseLayoutError(f"bitmap packing needs a 2-D weight, got {getattr(weight, 'shape', weight)!r}")
        _bits.check_value_dtype(weight, "weight")
        _check_tile_k(tile_k)
        rows, k = weight.shape
        mask = weight != 0
        values = torch.empty(int(mask.sum()), dtype=weight.dtype, device=weight.device)
        _bits.int_view(values)[:] = _bits.int_view(weight)[mask]  # row-major order
        counts = _tile_counts(mask, tile_k).flatten().to(torch.int64)
        offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=weight.device)
        offsets[1:] = counts.cumsum(0)
        return cls(values, _bits.pack_bits(mask), offsets.to(_offset_dtype(values.numel())), (rows, k), tile_k)

    def validate(self) -> "BitmapLayout":
        out, k = self.shape
        _check_tile_k(self.tile_k)
        if not isinstance(self.values, torch.Tensor):
            raise SparseLayoutError(f"values must be a tensor, got {type(self.values).__name__}")
        _bits.check_value_dtype(self.values, "values")
        if self.values.dim() != 1:
            raise SparseLayoutError(f"values must be 1-D (packed non-zeros), got shape {tuple(self.values.shape)}")
        _bits.check_bitmap(self.bitmap, self.shape)
        offs = self.tile_offsets
        if not isinstance(offs, torch.Tensor) or offs.dtype not in (torch.int32, torch.int64):
            raise SparseLayoutError(f"tile_offsets must be an int32/int64 tensor, got {getattr(offs, 'dtype', offs)}")
        want = out * self.n_tiles + 1
        if tuple(offs.shape) != (want,):
            raise SparseLayoutError(
                f"tile_offsets has shape {tuple(offs.shape)}; {out} rows x {self.n_tiles} tiles need ({want},)"
            )
        for name, t in (("bitmap", self.bitmap), ("tile_offsets", offs)):
            if t.device != self.values.device:
                raise SparseLayoutError(f"{name} is on {t.device} but values on {self.values.device}")
        mask = _bits.unpack_bits(self.bitmap, k)
        nnz = int(mask.sum())
        if nnz != self.values.numel():
            raise SparseLayoutError(
                f"bitmap/value count mismatch: the bitmap marks {nnz} entries but values holds {self.values.numel()}"
            )
        offs64 = offs.to(torch.int64)
        if int(offs64[0]) != 0 or int(offs64[-1]) != nnz:
            raise SparseLayoutError(
                f"tile_offsets must start at 0 and end at nnz={nnz}, got {int(offs64[0])} .. {int(offs64[-1])}"
            )
        counts = _tile_counts(mask, self.tile_k).flatten().to(torch.int64)
        bad = (offs64[1:] - offs64[:-1] != counts).nonzero()
        if bad.numel():
            i = int(bad[0])
            raise SparseLayoutError(
                f"tile_offsets out of range for row {i // self.n_tiles}, tile {i % self.n_tiles}: it spans "
                f"{int(offs64[i + 1] - offs64[i])} values but its bitmap marks {int(counts[i])}"
            )
        return self

    def to_dense(self) -> torch.Tensor:
        out, k = self.shape
        mask = _bits.unpack_bits(self.bitmap, k)
        dense = torch.zeros(out, k, dtype=self.values.dtype, device=self.values.device)
        _bits.int_view(dense)[mask] = _bits.int_view(self.values)
        return dense


def _check_tile_k(tile_k: int) -> None:
    if not isinstance(tile_k, int) or tile_k <= 0 or tile_k % 8 or tile_k & (tile_k - 1):
        raise SparseLayoutError(f"tile_k must be a power of two and a multiple of 8, got {tile_k!r}")


def pack_bitmap(weight: torch.Tensor, tile_k: int = DEFAULT_TILE_K) -> BitmapLayout:
    return BitmapLayout.pack(weight, tile_k)


def unpack_bitmap(layout: BitmapLayout) -> torch.Tensor:
    return layout.to_dense()
