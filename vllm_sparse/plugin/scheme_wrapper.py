"""The common frame of our linear methods that sit under one of vLLM's own
compressed-tensors schemes: the scheme creates the layer's parameters, runs its
GEMM and post-processes its weights; the subclass only feeds the scheme's weight
from what the checkpoint stores (sparse parts, marlin-24 tiles)."""

from __future__ import annotations

import torch

from ..checkpoint.layer_table import LayerRow
from .layer_report import LayerReport
from .sparse_linear import layer_shard_names, shard_shapes
from .vllm_internals import CompressedTensorsLinearMethod, LinearMethodBase, cpu_wna16_gemm_missing

# Where vLLM's CPU library has no 4-bit GEMM, its W4A16 kernel would be chosen and fail
# at the first forward, taking the engine down mid-request: refused at load instead.
NO_CPU_WNA16 = ("vLLM's W4A16 kernel on this CPU calls torch.ops._C.cpu_gemm_wna16, which the CPU library "
                "vLLM loaded here lacks (vLLM's AVX2 build has no 4-bit GEMM; its AVX-512 build has one): "
                "stock vLLM cannot run this checkpoint's plain pack-quantized twin here either")


class SchemeWrappingMethod(LinearMethodBase):
    def __init__(self, inner: CompressedTensorsLinearMethod, report: LayerReport, prefix: str,
                 shard_names: list[str], quantization: str) -> None:
        self.inner = inner
        self.report = report
        self.prefix = prefix
        self.shard_names = shard_names
        self.quantization = quantization  # the layer table's label, e.g. "W8A8 int8"

    def create_scheme_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                              params_dtype, **extra_weight_attrs) -> list[tuple[int, int]]:
        """The scheme's own parameters; returns each checkpoint shard's [rows, cols]."""
        self.inner.create_weights(layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                                  params_dtype, **extra_weight_attrs)
        self.shard_names = layer_shard_names(layer, self.prefix, self.shard_names, output_partition_sizes)
        return shard_shapes(layer, output_size, input_size, len(self.shard_names))

    def finish_scheme(self, layer: torch.nn.Module, shape: tuple[int, int], pattern: str, sparsity: float,
                      stored_bytes: int) -> None:
        """The scheme's own post-processing, then the layer's row in the table."""
        scheme = type(layer.scheme).__name__.removeprefix("CompressedTensors")
        if cpu_wna16_gemm_missing(getattr(layer.scheme, "kernel", None)):
            raise RuntimeError(f"{self.prefix}: {NO_CPU_WNA16}")
        self.inner.process_weights_after_loading(layer)
        self.report.add(LayerRow(name=self.prefix, shape=shape, pattern=pattern, sparsity=sparsity,
                                 kernel=f"vllm {scheme}", dense_bytes=stored_bytes, stored_bytes=stored_bytes,
                                 quantization=self.quantization))

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return self.inner.apply(layer, x, bias)
