"""Read compressed-tensors' ``marlin-24`` layout (4- or 8-bit weights, 2:4 sparse,
laid out for the Marlin 2:4 GPU kernel), as 0.14.0.1's ``Marlin24Compressor``
writes it, back into plain quantized values and scales. 0.14.0.1 itself can only
write it.

What the compressor did, per weight [N, K] of integer values in [-2^(b-1), 2^(b-1)):
cutlass 2:4 compression to [N, K/2] values plus metadata; transpose to [K/2, N];
+2^(b-1) (unsigned); 16x16 tiles, a fixed permutation, b-bit values packed into
int32 (``weight_packed``); the metadata's buffer re-shaped (``meta``); the scales
transposed and permuted (``scale_packed``, float16). Each step is undone here in
reverse; the cutlass metadata is read by compressed-tensors' converter (0.17 keeps
the one 0.14.0.1 wrote with). ``compress_marlin24`` runs the same steps forward,
so a checkpoint it writes holds the bytes 0.14.0.1 writes for the same values.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .errors import CheckpointError

TILE = 16
MARLIN24_PARTS = ("weight_packed", "meta", "scale_packed")


def _permutations(num_bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """The value, grouped-scale and per-channel-scale permutations of the Marlin
    2:4 layout (fixed by the kernel's tensor-core fragment order)."""
    perm = []
    for i in range(32):
        col, block_rows = i // 4, []
        for block in (0, 1):
            for row in (2 * (i % 4), 2 * (i % 4) + 1, 2 * (i % 4 + 4), 2 * (i % 4 + 4) + 1):
                block_rows.append(16 * row + (col // 2) * 256 + 8 * (col % 2) + 4 * block)
        for j in range(4):
            perm.extend(p + j for p in block_rows)
    interleave = np.array([0, 2, 4, 6, 1, 3, 5, 7] if num_bits == 4 else [0, 2, 1, 3])
    perm = np.array(perm).reshape(-1, len(interleave))[:, interleave].ravel()
    grouped = [i * 8 + j for i in range(8) for j in (0, 4, 1, 5, 2, 6, 3, 7)]
    single = list(range(64))
    return torch.from_numpy(perm), torch.tensor(grouped), torch.tensor(single)


def _inverse(perm: Tensor) -> Tensor:
    return torch.argsort(perm)


def _scale_order(group_size: int | None, size_k: int) -> Tensor:
    """The scale permutation: the grouped one only when there is more than one group
    along the kept half of a row (as the compressor decides)."""
    _, grouped, single = _permutations(4)
    return grouped if group_size is not None and group_size < size_k else single


def _check_tileable(rows: int, cols: int, name: str, row_multiple: int = TILE) -> None:
    """The tiles and the 1024-entry permutation need whole blocks; the cutlass
    converter the compressor uses needs rows in multiples of 32."""
    if cols % (2 * TILE) or rows % row_multiple or (rows * cols // 2) % _permutations(4)[0].numel():
        raise CheckpointError(f"{name}: a [{rows}, {cols}] weight does not fit marlin-24 (it needs rows a multiple "
                              f"of {row_multiple}, columns a multiple of 32 and rows x columns a multiple of 2048)")


def compress_marlin24(values: Tensor, scales: Tensor, num_bits: int, group_size: int | None,
                      name: str) -> dict[str, Tensor]:
    """``weight_packed`` / ``meta`` / ``scale_packed`` of one weight: ``values``
    [rows, cols] integers in [-2^(b-1), 2^(b-1)) with at most 2 non-zeros in every
    group of 4 along a row, ``scales`` [rows, groups] (stored float16)."""
    rows, cols = values.shape
    _check_tileable(rows, cols, name, row_multiple=2 * TILE)
    if num_bits not in (4, 8):
        raise CheckpointError(f"{name}: marlin-24 holds 4- or 8-bit values, not {num_bits}")
    low, high = -(1 << (num_bits - 1)), (1 << (num_bits - 1)) - 1
    if int(values.min()) < low or int(values.max()) > high:
        raise CheckpointError(f"{name}: values outside [{low}, {high}] do not fit {num_bits} bits")
    worst = int((values != 0).reshape(rows, -1, 4).sum(-1).max())
    if worst > 2:
        raise CheckpointError(f"{name}: {worst} non-zeros in a group of 4; marlin-24 stores 2:4 weights only")
    from compressed_tensors.utils.semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

    # The compressor hands the converter float16 values (integers are exact in it).
    kept, meta = sparse_semi_structured_from_dense_cutlass(values.to(torch.float16).contiguous())
    size_k, size_n = cols // 2, rows
    kept = kept.t().to(torch.int64) + (1 << (num_bits - 1))  # [cols / 2, rows], unsigned
    tiled = kept.reshape(size_k // TILE, TILE, size_n // TILE, TILE).permute(0, 2, 1, 3).reshape(size_k // TILE, -1)
    perm = _permutations(num_bits)[0]
    tiled = tiled.reshape(-1, perm.numel())[:, perm].reshape(size_k // TILE, size_n * TILE)
    pack = 32 // num_bits
    fields = tiled.numpy().astype(np.uint32)
    packed = np.zeros((fields.shape[0], fields.shape[1] // pack), dtype=np.uint32)
    for i in range(pack):  # low bits first
        packed |= fields[:, i::pack] << np.uint32(num_bits * i)
    order = _scale_order(group_size, size_k)
    scale_packed = scales.to(torch.float16).t().contiguous().reshape(-1, order.numel())[:, order]
    return {
        "weight_packed": torch.from_numpy(packed.view(np.int32)),
        # The metadata buffer [rows, m] is kept in order, re-shaped to [m / 2, 2 * rows].
        "meta": meta.contiguous().reshape(meta.shape[1] // 2, meta.shape[0] * 2),
        "scale_packed": scale_packed.reshape(-1, rows).contiguous(),
    }


def marlin24_weight_shape(weight_packed: Tensor, num_bits: int) -> tuple[int, int]:
    """[rows, cols] of the weight a ``weight_packed`` tensor holds (the layout keeps
    no shape of its own)."""
    return weight_packed.shape[1] * (32 // num_bits) // TILE, weight_packed.shape[0] * TILE * 2


def decompress_marlin24(parts: dict[str, Tensor], rows: int, cols: int, num_bits: int, group_size: int | None,
                        name: str) -> tuple[Tensor, Tensor]:
    """(values [rows, cols] int8 in [-2^(b-1), 2^(b-1)), with the pruned half zero;
    scales [rows, groups] float16) of one weight. ``group_size`` None: per channel."""
    missing = [p for p in MARLIN24_PARTS if p not in parts]
    if missing:
        raise CheckpointError(f"{name}: marlin-24 weight lacks {', '.join(f'{name}.{p}' for p in missing)}")
    if num_bits not in (4, 8):
        raise CheckpointError(f"{name}: marlin-24 holds 4- or 8-bit values, the config says {num_bits}")
    size_k, size_n = cols // 2, rows
    pack = 32 // num_bits
    packed, meta, scales = parts["weight_packed"], parts["meta"], parts["scale_packed"]
    want = (size_k // TILE, size_n * TILE // pack)
    _check_tileable(rows, cols, name)
    if packed.dtype != torch.int32 or tuple(packed.shape) != want:
        raise CheckpointError(
            f"{name}.weight_packed: {packed.dtype} {list(packed.shape)}, but a [{rows}, {cols}] weight in marlin-24 "
            f"needs int32 {list(want)} (rows a multiple of 16, columns of 32)")

    # Unpack the b-bit fields (low bits first), then undo the permutation and tiles.
    mask = (1 << num_bits) - 1
    tiled = torch.empty(want[0], want[1] * pack, dtype=torch.int32)
    for i in range(pack):
        tiled[:, i::pack] = (packed >> (num_bits * i)) & mask
    perm = _permutations(num_bits)[0]
    tiled = tiled.reshape(-1, perm.numel())[:, _inverse(perm)].reshape(want[0], size_n * TILE)
    kept = tiled.reshape(size_k // TILE, size_n // TILE, TILE, TILE).permute(0, 2, 1, 3).reshape(size_k, size_n)
    kept = (kept - (1 << (num_bits - 1))).t().contiguous()  # [rows, cols / 2], signed

    # The metadata buffer was re-shaped from [rows, m] to [m / 2, 2 * rows].
    if meta.dim() != 2 or meta.numel() % rows or meta.shape[1] != 2 * rows:
        raise CheckpointError(f"{name}.meta: shape {list(meta.shape)} does not fit a weight of {rows} rows")
    meta = meta.contiguous().reshape(rows, -1)
    # compressed-tensors' own copy of the cutlass converter: torch's current one
    # orders the metadata differently from the one the compressor used.
    from compressed_tensors.utils.semi_structured_conversions import sparse_semi_structured_to_dense_cutlass

    # The converter wants the 16-bit dtype the compressor used (integers are exact in it).
    values = sparse_semi_structured_to_dense_cutlass(kept.to(torch.float16), meta).to(torch.int8)

    groups = 1 if group_size is None else cols // group_size
    if scales.dim() != 2 or scales.numel() != groups * rows:
        raise CheckpointError(
            f"{name}.scale_packed: shape {list(scales.shape)}, but {groups} scale(s) per row x {rows} rows are needed")
    order = _scale_order(group_size, size_k)
    scales = scales.reshape(-1, order.numel())[:, _inverse(order)].reshape(groups, rows).t().contiguous()
    return values, scales
