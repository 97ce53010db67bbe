"""Bitmaps shared by both layouts: one bit per weight entry, 1 = stored value.

Row r of a weight with K input features owns ``ceil(K / 8)`` bytes; column k is bit
``k % 8`` (least significant first) of byte ``k // 8``. Bits past column K-1 in the
last byte are padding and must be 0. Byte granularity lets a kernel load the bits of
a K-tile with one ``uint8`` load of ``BLOCK_K / 8`` bytes per row.
"""

from __future__ import annotations

import torch

from .patterns import SparseLayoutError

# Dtypes our layouts store (and our kernels read).
VALUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32}


def int_view(t: torch.Tensor) -> torch.Tensor:
    """The same bits as a signed integer tensor: copies through it are bit-exact
    (NaN payloads included), whatever float semantics a backend applies."""
    return t.view(_INT_VIEW[t.dtype])


def check_value_dtype(t: torch.Tensor, what: str) -> None:
    if t.dtype not in VALUE_DTYPES:
        names = ", ".join(str(d).replace("torch.", "") for d in VALUE_DTYPES)
        raise SparseLayoutError(f"{what} has dtype {t.dtype}; sparse layouts store {names}")


def bitmap_bytes_per_row(in_features: int) -> int:
    return (in_features + 7) // 8


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """[rows, K] bool -> [rows, ceil(K/8)] uint8, little-endian bits."""
    rows, k = mask.shape
    k8 = bitmap_bytes_per_row(k)
    padded = torch.zeros(rows, k8 * 8, dtype=torch.uint8, device=mask.device)
    padded[:, :k] = mask
    weights = (1 << torch.arange(8, device=mask.device, dtype=torch.int32)).to(torch.uint8)
    return (padded.view(rows, k8, 8) * weights).sum(dim=-1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(bitmap: torch.Tensor, in_features: int) -> torch.Tensor:
    """[rows, ceil(K/8)] uint8 -> [rows, K] bool."""
    rows = bitmap.shape[0]
    shifts = torch.arange(8, device=bitmap.device, dtype=torch.int32)
    bits = (bitmap.to(torch.int32).unsqueeze(-1) >> shifts) & 1
    return bits.view(rows, -1)[:, :in_features].bool()


def check_bitmap(bitmap: torch.Tensor, shape: tuple[int, int], what: str = "bitmap") -> None:
    rows, k = shape
    if not isinstance(bitmap, torch.Tensor):
        raise SparseLayoutError(f"{what} must be a tensor, got {type(bitmap).__name__}")
    if bitmap.dtype != torch.uint8:
        raise SparseLayoutError(f"{what} has dtype {bitmap.dtype}; it must be torch.uint8")
    want = (rows, bitmap_bytes_per_row(k))
    if tuple(bitmap.shape) != want:
        raise SparseLayoutError(
            f"{what} has shape {tuple(bitmap.shape)}; a [{rows}, {k}] weight needs {want} (one bit per column)"
        )
    if k % 8:
        # Padding bits would name columns >= in_features: an out-of-range index.
        pad = int(bitmap[:, -1].to(torch.int32).bitwise_right_shift(k % 8).count_nonzero())
        if pad:
            row = int((bitmap[:, -1].to(torch.int32) >> (k % 8)).nonzero()[0])
            raise SparseLayoutError(
                f"{what} row {row} marks a column >= in_features={k} (padding bits of the last byte "
                f"must be 0); {pad} row(s) affected"
            )
