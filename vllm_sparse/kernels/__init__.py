"""Pure torch + Triton sparse kernels, their layouts and the dispatcher.

Never imports vLLM, so it runs (and is benchmarked) on machines without it.
"""

from .dispatcher import DENSE, dense_bytes, select_path
from .patterns import (
    SUPPORTED_NM_PATTERNS,
    NMPattern,
    NMViolation,
    SparsePatternError,
    WeightAnalysis,
    analyze_weight,
    find_nm_violation,
    satisfies_nm,
)

__all__ = [
    "DENSE",
    "SUPPORTED_NM_PATTERNS",
    "NMPattern",
    "NMViolation",
    "SparsePatternError",
    "WeightAnalysis",
    "analyze_weight",
    "dense_bytes",
    "find_nm_violation",
    "satisfies_nm",
    "select_path",
]
