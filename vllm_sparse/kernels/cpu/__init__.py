"""C++ SIMD kernels for sparse weights on CPUs: sparse weight x dense activations.

``CpuSparseLayout`` is the layout they read; ``linear`` runs one (the op
``vllm_sparse::cpu_sparse_linear``); ``build.load()`` compiles and loads them on first
use. Never imports vLLM.
"""

from __future__ import annotations

import torch

from . import build, isa
from .layout import CpuSparseLayout

# Activation rows up to which the direct sparse kernel runs; above, the large-M path:
# the weight decompressed a cache-sized piece at a time into our own GEMMs (AVX-512
# BF16: row tiles, csrc/gemm_rowtile_bf16.cpp, or panels, csrc/gemm_tile_bf16.cpp) or
# torch's dense GEMM (csrc/ops.cpp). The dispatcher
# sets it per layer from measurements.
DEFAULT_MAX_DIRECT_M = 16


def linear(x: torch.Tensor, layout: CpuSparseLayout, bias: torch.Tensor | None = None, isa_code: int | None = None,
           max_direct_m: int = DEFAULT_MAX_DIRECT_M) -> torch.Tensor:
    """x [M, in] @ W^T (+ bias) through the C++ kernels; x must have W's dtype."""
    return torch.ops.vllm_sparse.cpu_sparse_linear(
        x, layout.values, layout.bitmap, layout.row_offsets, layout.shape[1],
        isa.default() if isa_code is None else isa_code, max_direct_m, bias, layout.sixteen_per_word,
    )


def unpack(layout: CpuSparseLayout, isa_code: int | None = None) -> torch.Tensor:
    return torch.ops.vllm_sparse.cpu_sparse_unpack(
        layout.values, layout.bitmap, layout.row_offsets, layout.shape[1],
        isa.default() if isa_code is None else isa_code,
    )


def dense_gemv_isa(isa_code: int | None = None) -> int | None:
    """The ISA path the dense GEMV runs on for path ``isa_code`` (default: the one in
    force): AVX-512 BF16 has its own kernel, AVX2 and AVX-512 without BF16 run the AVX2
    one; None where it cannot run (kernels not built, scalar path)."""
    if not build.load():
        return None
    code = isa.default() if isa_code is None else isa_code
    if not torch.ops.vllm_sparse.cpu_dense_gemv_supported(code):
        return None
    return isa.AVX512_BF16 if code == isa.AVX512_BF16 else isa.AVX2


def dense_gemv_available(isa_code: int | None = None) -> bool:
    """Can ``dense_linear`` run here on ISA path ``isa_code`` (default: the one in force)?"""
    return dense_gemv_isa(isa_code) is not None


def dense_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 isa_code: int | None = None) -> torch.Tensor:
    """x [M, in] @ weight^T (+ bias) for a dense bf16 weight and a few rows of x (up to
    which M it beats vLLM's GEMM: ``dispatch.dense_gemv_max_m``)."""
    return torch.ops.vllm_sparse.cpu_dense_linear(x, weight, bias, isa.default() if isa_code is None else isa_code)


__all__ = ["CpuSparseLayout", "DEFAULT_MAX_DIRECT_M", "build", "dense_gemv_available", "dense_gemv_isa",
           "dense_linear", "isa", "linear", "unpack"]
