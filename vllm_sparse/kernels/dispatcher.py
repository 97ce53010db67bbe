"""The one place that decides how a pruned linear layer is computed.

The plugin asks ``select_path`` once per layer (at load time), keeps the weight in
the layout that path reads (``pack_for_path``) and calls ``sparse_linear`` at run
time. ``DENSE`` means: keep the ordinary dense weight and let the caller run its
usual dense matmul (in vLLM, the unquantized linear method).

On CPU: ``cpu_sparse`` (our C++ kernels, ``kernels/cpu``) where the measured table
``kernels/cpu/dispatch_table.json`` says the direct kernel beats vLLM's own CPU GEMM
(oneDNN on a prepacked weight) at decode on this ISA path, dtype, shape and sparsity (see
``kernels/cpu/dispatch.py``); the weight then lives only in the CPU layout. Torch's own
sparse formats never win there (benchmarks/results/cpu_linear.md: no bf16 CSR matmul;
an fp32 CSR copy at best ties dense at 90% sparsity). If the kernels cannot be built
(no compiler, ...), one warning and every layer stays dense.

Paths on CUDA, and why (a heuristic from roofline reasoning: **not yet measured on a
GPU**; benchmarks/kernels.py produces the numbers to confirm or retune it):

* ``torch_semi_structured`` for 2:4 fp16/bf16 weights on sm_80+ whose shape torch
  accepts: the vendor sparse tensor cores (cuSPARSELt/CUTLASS) do half the MACs, so
  they win prefill, and read the same ~56% of bytes as our layout at decode.
* ``triton_nm`` for other N:M weights (4:8; 2:4 torch cannot take): our N:M kernel
  reads 56% of the dense bytes, which decode (M <= 64, bandwidth-bound) turns into
  time. Above ``custom_ops.NM_DIRECT_MAX_M`` rows it unpacks once and uses cuBLAS.
* ``triton_bitmap`` for unstructured weights at >= 50% sparsity: the bitmap layout
  reads 0.56x (50%) to 0.17x (90%) of the dense fp16 bytes at decode; above
  ``custom_ops.BITMAP_DIRECT_MAX_M`` rows it unpacks and uses cuBLAS (prefill is
  compute-bound, and dense tensor cores beat any gather-based sparse kernel there).
* ``dense`` otherwise (sparsity < 30%, or unsupported dtype).

``VLLM_SPARSE_PATH=<path>`` forces a path on CUDA where the weight allows it (for
benchmarking a whole model under each path).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import cpu as cpu_kernels
from .bitmap_layout import DEFAULT_TILE_K, BitmapLayout
from .cpu import dispatch as cpu_dispatch
from .cpu import layout24 as cpu_layout24
from .cpu.layout import CpuSparseLayout
from .cpu.layout import stored_bytes_for as cpu_stored_bytes_for
from .nm_layout import NMLayout
from .patterns import NMPattern, SparseLayoutError, SparsePatternError, WeightAnalysis, find_nm_violation

DENSE = "dense"
TRITON_NM = "triton_nm"
TRITON_BITMAP = "triton_bitmap"
TORCH_SEMI_STRUCTURED = "torch_semi_structured"
CPU_SPARSE = "cpu_sparse"
PATHS = (DENSE, TRITON_NM, TRITON_BITMAP, TORCH_SEMI_STRUCTURED, CPU_SPARSE)
CUDA_PATHS = (DENSE, TRITON_NM, TRITON_BITMAP, TORCH_SEMI_STRUCTURED)

# Below this share of zeros a compressed layout cannot read fewer bytes than dense
# (the index metadata eats the saving), so such layers always stay dense.
MIN_SPARSITY_FOR_SPARSE_PATH = 0.3
# Unstructured weights need more zeros than N:M ones: the bitmap (1 bit/entry) and
# the gather cost more than the N:M decode.
MIN_SPARSITY_FOR_BITMAP = 0.5

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16)


def _numel(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _as_2d(shape) -> tuple[int, int]:
    if len(shape) == 2:
        return int(shape[0]), int(shape[1])
    return _numel(shape[:-1]), int(shape[-1])


def semi_structured_supported(shape, dtype: torch.dtype, device: torch.device | str) -> bool:
    """Would ``torch.sparse.to_sparse_semi_structured`` take this weight here?"""
    device = torch.device(device)
    if device.type != "cuda" or dtype not in _SEMI_STRUCTURED_DTYPES or len(shape) != 2:
        return False
    if not hasattr(torch.sparse, "to_sparse_semi_structured") or not torch.cuda.is_available():
        return False
    major, _ = torch.cuda.get_device_capability(device)
    if major < 8:
        return False
    rows, cols = shape
    # Strictest of torch's per-backend minimum shapes for fp16/bf16 (CUTLASS: 32 x 128
    # for the dense operand; cuSPARSELt: 16 x 16 ...): multiples of 64 x 128 pass all.
    return rows % 64 == 0 and cols % 128 == 0


def cpu_plan(analysis: WeightAnalysis, dtype: torch.dtype,
             max_batch: int | None = None) -> cpu_dispatch.CpuChoice | None:
    """The measured CPU sparse plan for a weight, or None (stay dense). ``max_batch``:
    the engine's largest decode batch, where known (see ``cpu.dispatch.choose``).

    ``VLLM_SPARSE_PATH=cpu_sparse`` takes the sparse path for every sparse-enough
    layer whatever the table says (for benchmarking); ``=dense`` keeps all dense."""
    if dtype not in _KERNEL_DTYPES or len(analysis.shape) != 2 or analysis.sparsity < MIN_SPARSITY_FOR_SPARSE_PATH:
        return None
    forced = forced_path()
    if forced not in (None, CPU_SPARSE):
        return None
    if not cpu_kernels.build.load():
        return None
    pattern = None if analysis.nm is None else str(analysis.nm)
    candidates = _cpu_path_names(analysis, dtype)
    host = cpu_kernels.isa.host_class()  # the class the bitmap path names (or AMX's)
    choice = cpu_dispatch.choose_among(candidates, _as_2d(analysis.shape), analysis.sparsity, dtype,
                                       max_batch=max_batch, pattern=pattern, host=host)
    if choice is None and forced == CPU_SPARSE:
        choice = cpu_dispatch.CpuChoice(candidates[0], cpu_kernels.DEFAULT_MAX_DIRECT_M, float("nan"), float("nan"), 0)
    return choice


def _cpu_path_names(analysis: WeightAnalysis, dtype: torch.dtype) -> list[str]:
    """The CPU kernel paths a weight can take (the kernels must be loaded), preferred
    first: the 2:4 kernel for 2:4 bf16 weights (AVX-512 VBMI+BF16 or AVX2), and the
    bitmap kernel, on the default ISA path."""
    isa_code = cpu_kernels.isa.default()
    bitmap = cpu_kernels.isa.NAMES[isa_code]
    if analysis.nm == NMPattern(2, 4) and cpu_layout24.eligible(_as_2d(analysis.shape), dtype):
        nm24_isa = cpu_layout24.kernel_isa(isa_code)
        if nm24_isa is not None:
            return [cpu_dispatch.NM24_PATHS[nm24_isa], bitmap]
    return [bitmap]


def forced_path() -> str | None:
    forced = os.environ.get("VLLM_SPARSE_PATH") or None
    if forced is not None and forced not in PATHS:
        raise ValueError(f"VLLM_SPARSE_PATH={forced!r} is not one of {PATHS}")
    return forced


def select_path(analysis: WeightAnalysis, dtype: torch.dtype, device: torch.device | str,
                max_batch: int | None = None) -> str:
    """Name of the fastest correct path for a weight on a device (``max_batch``: the
    engine's largest decode batch, where known)."""
    device = torch.device(device)
    if device.type == "cpu":
        return CPU_SPARSE if cpu_plan(analysis, dtype, max_batch) is not None else DENSE
    if device.type != "cuda" or dtype not in _KERNEL_DTYPES or len(analysis.shape) != 2:
        return DENSE
    forced = forced_path()
    if forced:
        if forced in CUDA_PATHS and _path_allowed(forced, analysis, dtype, device):
            return forced
    if analysis.sparsity < MIN_SPARSITY_FOR_SPARSE_PATH:
        return DENSE
    if analysis.nm is not None:
        if analysis.nm == NMPattern(2, 4) and semi_structured_supported(analysis.shape, dtype, device):
            return TORCH_SEMI_STRUCTURED
        if analysis.shape[1] % analysis.nm.m == 0:
            return TRITON_NM
    if analysis.sparsity >= MIN_SPARSITY_FOR_BITMAP:
        return TRITON_BITMAP
    return DENSE


def _path_allowed(path: str, analysis: WeightAnalysis, dtype, device) -> bool:
    if path == TORCH_SEMI_STRUCTURED:
        return analysis.nm == NMPattern(2, 4) and semi_structured_supported(analysis.shape, dtype, device)
    if path == TRITON_NM:
        return analysis.nm is not None
    return True


def dense_bytes(analysis: WeightAnalysis, dtype: torch.dtype) -> int:
    return _numel(analysis.shape) * dtype.itemsize


def stored_bytes_for_path(analysis: WeightAnalysis, dtype: torch.dtype, path: str) -> int:
    """Bytes a weight keeps in memory on ``path`` (without packing it)."""
    if path == DENSE:
        return dense_bytes(analysis, dtype)
    if path == CPU_SPARSE:
        shape = _as_2d(analysis.shape)
        plan = cpu_plan(analysis, dtype)
        if plan is not None and plan.isa in cpu_dispatch.NM24_PATHS.values():
            return cpu_layout24.Cpu24Layout.stored_bytes_for(shape)
        return cpu_stored_bytes_for(shape, round((1.0 - analysis.sparsity) * _numel(shape)), dtype)
    return compressed_bytes(analysis, dtype)


def compressed_bytes(analysis: WeightAnalysis, dtype: torch.dtype) -> int:
    """Bytes of the smallest of our compressed layouts that fits this weight."""
    shape = _as_2d(analysis.shape)
    nnz = round((1.0 - analysis.sparsity) * _numel(shape))
    best = BitmapLayout.stored_bytes_for(shape, nnz, dtype, DEFAULT_TILE_K)
    if analysis.nm is not None and shape[1] % analysis.nm.m == 0:
        best = min(best, NMLayout.stored_bytes_for(shape, analysis.nm, dtype))
    return best


@dataclass(frozen=True)
class PackedWeight:
    """A weight in the form its path reads. ``stored_bytes``: what it keeps in memory."""

    path: str
    shape: tuple[int, int]  # dense [out_features, in_features]
    dtype: torch.dtype
    dense: torch.Tensor | None = None  # DENSE: the weight; TORCH_SEMI_STRUCTURED: torch's sparse tensor
    layout: NMLayout | BitmapLayout | CpuSparseLayout | cpu_layout24.Cpu24Layout | None = None
    cpu_isa: int = 0  # CPU_SPARSE: the ISA path code and the largest M for the direct kernel
    max_direct_m: int = 0

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def kernel_name(self) -> str:
        """The path, with the instruction-set path for the CPU kernels (for tables and metrics)."""
        if self.path == CPU_SPARSE:
            if isinstance(self.layout, cpu_layout24.Cpu24Layout):
                return f"{CPU_SPARSE}/{cpu_dispatch.NM24_PATHS[self.cpu_isa]}"
            return f"{CPU_SPARSE}/{cpu_kernels.isa.NAMES[self.cpu_isa]}"
        return self.path

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def stored_bytes(self) -> int:
        if self.layout is not None:
            return self.layout.stored_bytes
        if self.path == TORCH_SEMI_STRUCTURED:
            total = 0
            for name in ("packed", "meta", "packed_t", "meta_t", "compressed_swizzled_bitmask"):
                t = getattr(self.dense, name, None)
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
            return total
        return self.dense.numel() * self.dense.element_size()

    def to_dense(self) -> torch.Tensor:
        if self.layout is not None:
            return self.layout.to_dense()
        if self.path == TORCH_SEMI_STRUCTURED:
            return self.dense.to_dense()
        return self.dense


def pack_for_path(weight: torch.Tensor, analysis: WeightAnalysis, path: str,
                  max_batch: int | None = None) -> PackedWeight:
    """Keep ``weight`` in the layout ``path`` reads; SparsePatternError if it does not fit.
    ``max_batch`` as given to ``select_path``."""
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; known: {PATHS}")
    if weight.dim() != 2:
        raise SparseLayoutError(f"linear weights are 2-D, got shape {tuple(weight.shape)}")
    if tuple(weight.shape) != tuple(analysis.shape):
        raise SparseLayoutError(f"weight shape {tuple(weight.shape)} differs from its analysis {analysis.shape}")
    shape = (int(weight.shape[0]), int(weight.shape[1]))
    if path == DENSE:
        return PackedWeight(path, shape, weight.dtype, dense=weight)
    if path == TRITON_NM:
        if analysis.nm is None:
            raise SparsePatternError(f"path {TRITON_NM} needs an N:M weight; this one is {analysis.pattern_name}")
        return PackedWeight(path, shape, weight.dtype, layout=NMLayout.pack(weight, analysis.nm))
    if path == TRITON_BITMAP:
        return PackedWeight(path, shape, weight.dtype, layout=BitmapLayout.pack(weight, DEFAULT_TILE_K))
    if path == CPU_SPARSE:
        plan = cpu_plan(analysis, weight.dtype, max_batch)
        if plan is None:
            raise ValueError(f"path {CPU_SPARSE} is not available for this weight (see the log for why)")
        nm24_isa = {name: code for code, name in cpu_dispatch.NM24_PATHS.items()}.get(plan.isa)
        if nm24_isa is not None:
            layout24 = cpu_layout24.Cpu24Layout.pack(weight).on_huge_pages()
            return PackedWeight(path, shape, weight.dtype, layout=layout24, cpu_isa=nm24_isa,
                                max_direct_m=plan.max_direct_m)
        layout = CpuSparseLayout.pack(weight).on_huge_pages()
        return PackedWeight(path, shape, weight.dtype, layout=layout, cpu_isa=cpu_kernels.isa.CODES[plan.isa],
                            max_direct_m=plan.max_direct_m)
    # TORCH_SEMI_STRUCTURED
    if not semi_structured_supported(shape, weight.dtype, weight.device):
        raise ValueError(
            f"torch semi-structured sparsity needs a CUDA sm_80+ device, fp16/bf16 and a shape that is a "
            f"multiple of 64 x 128; got {weight.device}, {weight.dtype}, {shape}"
        )
    violation = find_nm_violation(weight, NMPattern(2, 4))
    if violation is not None:
        raise SparsePatternError(f"weight breaks 2:4 (needed by {TORCH_SEMI_STRUCTURED}): {violation.describe()}")
    sparse = torch.sparse.to_sparse_semi_structured(weight)
    return PackedWeight(path, shape, weight.dtype, dense=sparse)


def sparse_linear(x: torch.Tensor, packed: PackedWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., in_features] -> [..., out_features] through the packed weight's path."""
    if x.shape[-1] != packed.in_features:
        raise ValueError(f"input has {x.shape[-1]} features, the weight expects {packed.in_features}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, packed.in_features)
    if packed.path == DENSE:
        y = F.linear(x2, packed.dense, bias)
    elif packed.path == TORCH_SEMI_STRUCTURED:
        y = F.linear(x2, packed.dense, bias)
    elif packed.path == TRITON_NM:
        lay = packed.layout
        y = torch.ops.vllm_sparse.nm_linear(x2, lay.values, lay.bitmap, lay.pattern.n, lay.pattern.m,
                                            packed.in_features, bias)
    elif packed.path == TRITON_BITMAP:
        lay = packed.layout
        y = torch.ops.vllm_sparse.bitmap_linear(x2, lay.values, lay.bitmap, lay.tile_offsets, lay.tile_k,
                                                packed.in_features, bias)
    elif packed.path == CPU_SPARSE:
        lay = packed.layout
        xw = x2 if x2.dtype == packed.dtype else x2.to(packed.dtype)
        if isinstance(lay, cpu_layout24.Cpu24Layout):
            y = torch.ops.vllm_sparse.cpu_nm24_linear(xw, lay.blocks, packed.out_features, packed.in_features,
                                                      packed.cpu_isa, packed.max_direct_m, bias)
        else:
            y = torch.ops.vllm_sparse.cpu_sparse_linear(xw, lay.values, lay.bitmap, lay.row_offsets,
                                                        packed.in_features, packed.cpu_isa, packed.max_direct_m, bias,
                                                        lay.sixteen_per_word)
        y = y if y.dtype == x2.dtype else y.to(x2.dtype)
    else:
        raise ValueError(f"unknown path {packed.path!r}")
    return y.reshape(*lead, packed.out_features)


def skip_gated_mlp(x: torch.Tensor, skip: torch.Tensor, gate: PackedWeight, up: PackedWeight,
                   down: PackedWeight) -> torch.Tensor:
    """down(SiLU(gate(x)) * up(x)) for x [..., hidden], skipping rows where ``skip`` is set.

    Contract: a skipped row does no work and its output row is exactly zero (so
    ``h + skip_gated_mlp(h, ...)`` leaves it unchanged). When the three weights share a
    path our fused kernel reads (dense, N:M with one pattern, bitmap with one tile
    width) this is one fused kernel launch in which an all-skipped row block reads no
    weights; otherwise (e.g. torch semi-structured weights) the active rows are
    gathered and run through ``sparse_linear`` three times.
    """
    hidden = x.shape[-1]
    inter = gate.out_features
    if gate.in_features != hidden or up.shape != gate.shape or down.shape != (hidden, inter):
        raise ValueError(
            f"MLP weights do not fit hidden={hidden}: gate {gate.shape}, up {up.shape}, down {down.shape}"
        )
    lead = x.shape[:-1]
    x2 = x.reshape(-1, hidden)
    flags = skip.reshape(-1)
    if flags.shape[0] != x2.shape[0]:
        raise ValueError(f"skip has {flags.shape[0]} flags for {x2.shape[0]} rows")
    fused = _fused_mlp_args(gate, up, down)
    if fused is not None:
        fmt, n, m, tile_k, tensors = fused
        y = torch.ops.vllm_sparse.skip_mlp(x2, flags, fmt, n, m, tile_k, inter, *tensors)
    else:
        y = torch.zeros_like(x2)
        active = (flags == 0).nonzero().squeeze(1)
        xa = x2.index_select(0, active)
        h = F.silu(sparse_linear(xa, gate)) * sparse_linear(xa, up)
        y.index_copy_(0, active, sparse_linear(h, down))
    return y.reshape(*lead, hidden)


def _fused_mlp_args(*weights: PackedWeight):
    paths = {w.path for w in weights}
    if len(paths) != 1:
        return None
    path = paths.pop()
    if path == DENSE:
        tensors = []
        for w in weights:
            tensors += [w.dense, None, None]
        return _custom_ops.FMT_DENSE, 2, 4, DEFAULT_TILE_K, tensors
    if path == TRITON_NM:
        patterns = {w.layout.pattern for w in weights}
        if len(patterns) != 1:
            return None
        p = patterns.pop()
        tensors = []
        for w in weights:
            tensors += [w.layout.values, w.layout.bitmap, None]
        return _custom_ops.FMT_NM, p.n, p.m, DEFAULT_TILE_K, tensors
    if path == TRITON_BITMAP:
        tiles = {w.layout.tile_k for w in weights}
        if len(tiles) != 1 or any(w.layout.tile_offsets.dtype != torch.int32 for w in weights):
            return None
        tensors = []
        for w in weights:
            tensors += [w.layout.values, w.layout.bitmap, w.layout.tile_offsets]
        return _custom_ops.FMT_BITMAP, 2, 4, tiles.pop(), tensors
    return None


# The ops must be registered before sparse_linear runs (it calls torch.ops.vllm_sparse).
from . import custom_ops as _custom_ops  # noqa: E402,F401
