"""The LM head of a sparse model on CPUs: dense, but read by our GEMV at decode.

The LM head is never pruned (layer_names.py says why) and, in a small model, is the
largest single weight a decode step reads: Llama-3.2-1B-shaped models with a 49152 x
2048 tied head move ~201 MB for it every step, ~22% of a 70%-sparse step's weight
bytes. vLLM's CPU path multiplies it with a oneDNN GEMM prepacked for 32 rows (AVX-512
BF16) or with F.linear (AVX2, where oneDNN takes no bf16); at the few rows of a decode
step our dense GEMV (``vllm_sparse::cpu_dense_linear``, weights on 2 MiB pages) reads
it faster (benchmarks/results/dense_gemv.md, dense_gemv_avx2.md). Up to which M is
measured per shape and host class (``cpu.dispatch.dense_gemv_max_m``); above it, where
the table says vLLM's GEMM wins at M = 1 already, on host classes without records (or
with the kernels off, a lower ISA path forced, or ``VLLM_SPARSE_PATH=dense``) and for
other dtypes, vLLM's own path runs, unchanged.
"""

from __future__ import annotations

import logging

import torch

from ..kernels import cpu as cpu_kernels
from ..kernels.cpu import dispatch, isa
from ..kernels.cpu.hugepages import on_huge_pages
from ..kernels.dispatcher import DENSE, forced_path
from .vllm_internals import LOGGER_NAME, ParallelLMHead, UnquantizedEmbeddingMethod, current_platform
from .worker_metrics import record_head_gemv

logger = logging.getLogger(LOGGER_NAME)
HEAD_LOG = "vllm-sparse: LM head %s (%d x %d) runs the dense GEMV up to M = %d, weight on 2 MiB pages"


def gemv_max_m(weight: torch.Tensor) -> int:
    """Rows up to which our GEMV runs this head weight here; 0: never."""
    if weight.dtype != torch.bfloat16 or weight.dim() != 2 or weight.is_meta:
        return 0
    if forced_path() == DENSE:  # every layer on vLLM's own GEMM (tests compare bit for bit)
        return 0
    if not cpu_kernels.dense_gemv_available():
        return 0
    # Records measured against what vLLM runs for the head on this host class (oneDNN
    # with AVX-512 BF16, on the tile unit with AMX; F.linear on AVX2): a lower path
    # forced on a bigger CPU has none that apply, and keeps vLLM's.
    if isa.default() != isa.best():
        return 0
    return dispatch.dense_gemv_max_m(tuple(weight.shape), isa.host_class())


class CpuHeadMethod(UnquantizedEmbeddingMethod):
    """vLLM's unquantized LM head method, with our GEMV for decode-sized inputs."""

    max_m = 0  # rows up to which our GEMV runs, set once the weight is loaded
    isa_code = None  # the ISA path it runs on, looked up once (not per decode step)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        weight = layer.weight
        self.max_m = gemv_max_m(weight)
        record_head_gemv(self.max_m)
        if self.max_m:
            self.isa_code = isa.default()
            # A tied head shares this parameter with the token embedding: both then
            # read the one copy on huge pages; the old storage is freed.
            weight.data = on_huge_pages(weight.data)
            logger.info(HEAD_LOG, getattr(layer, "prefix", "lm_head"), *weight.shape, self.max_m)
        super().process_weights_after_loading(layer)  # vLLM's GEMM, for larger batches

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() == 2 and x.shape[0] <= self.max_m and x.dtype == torch.bfloat16:
            return cpu_kernels.dense_linear(x, layer.weight, bias, self.isa_code)
        return super().apply(layer, x, bias)


def head_method(layer: torch.nn.Module) -> CpuHeadMethod | None:
    """Our method for an LM head served on CPU, None for any other layer (vLLM picks)."""
    if isinstance(layer, ParallelLMHead) and current_platform.is_cpu():
        return CpuHeadMethod()
    return None
