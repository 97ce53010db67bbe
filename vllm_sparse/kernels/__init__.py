"""Pure torch + Triton sparse kernels, their layouts and the dispatcher.

Never imports vLLM, so it runs (and is benchmarked) on machines without it. The
Triton kernel modules (``triton_*``) are imported lazily, on the first kernel call;
the C++ CPU kernels (``cpu/``) are built and loaded on first use.
"""

from .bitmap_layout import BitmapLayout, pack_bitmap, unpack_bitmap
from .dispatcher import (
    CPU_SPARSE,
    DENSE,
    PATHS,
    TORCH_SEMI_STRUCTURED,
    TRITON_BITMAP,
    TRITON_NM,
    PackedWeight,
    compressed_bytes,
    dense_bytes,
    pack_for_path,
    select_path,
    skip_gated_mlp,
    stored_bytes_for_path,
    sparse_linear,
)
from .nm_layout import NMLayout, pack_nm, unpack_nm
from .patterns import (
    SUPPORTED_NM_PATTERNS,
    NMPattern,
    NMViolation,
    SparseLayoutError,
    SparsePatternError,
    WeightAnalysis,
    analyze_weight,
    find_nm_violation,
    satisfies_nm,
)

__all__ = [
    "CPU_SPARSE",
    "DENSE",
    "PATHS",
    "SUPPORTED_NM_PATTERNS",
    "TORCH_SEMI_STRUCTURED",
    "TRITON_BITMAP",
    "TRITON_NM",
    "BitmapLayout",
    "NMLayout",
    "NMPattern",
    "NMViolation",
    "PackedWeight",
    "SparseLayoutError",
    "SparsePatternError",
    "WeightAnalysis",
    "analyze_weight",
    "compressed_bytes",
    "dense_bytes",
    "find_nm_violation",
    "pack_bitmap",
    "pack_for_path",
    "pack_nm",
    "satisfies_nm",
    "select_path",
    "skip_gated_mlp",
    "stored_bytes_for_path",
    "sparse_linear",
    "unpack_bitmap",
    "unpack_nm",
]
