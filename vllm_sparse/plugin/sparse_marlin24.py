"""compressed-tensors ``marlin-24`` checkpoints (W4A16 or W8A16, 2:4), laid out
for the Marlin 2:4 GPU kernel that vLLM removed: served by vLLM's own W{4,8}A16
scheme (``CompressedTensorsWNA16``, format ``pack-quantized``), which runs on CPU
(``CPUWNA16LinearKernel``) and GPU alike. Each shard's ``weight_packed`` /
``meta`` / ``scale_packed`` are read back into integer values and scales
(``checkpoint.marlin24``), packed the way ``pack-quantized`` stores them (8 int4 or
4 int8 per int32 along a row, offset to unsigned), and handed to the scheme's
own loaders for ``weight_packed``, ``weight_scale`` and ``weight_shape``."""

from __future__ import annotations

import torch

from ..checkpoint.errors import CheckpointError
from ..checkpoint.layer_table import LayerRow
from ..checkpoint.marlin24 import MARLIN24_PARTS, decompress_marlin24
from .layer_report import LayerReport
from .sparse_linear import ShardAssembler, shard_count, shard_shapes
from .vllm_internals import CompressedTensorsLinearMethod, LinearMethodBase, register_weight_loader_v2_supported_method

MARLIN24 = "marlin-24"
PACK_QUANTIZED = "pack-quantized"


def pack_rows(values: torch.Tensor, num_bits: int) -> torch.Tensor:
    """Signed integer values [rows, cols] -> int32 [rows, cols * bits / 32], low
    bits first, each value offset by 2^(bits-1): compressed-tensors' pack-quantized."""
    per_word = 32 // num_bits
    unsigned = (values.to(torch.int64) + (1 << (num_bits - 1))).reshape(values.shape[0], -1, per_word)
    words = torch.zeros(unsigned.shape[:2], dtype=torch.int64)
    for i in range(per_word):
        words |= unsigned[:, :, i] << (num_bits * i)
    return (words - ((words >> 31) << 32)).to(torch.int32)  # the same 32 bits, as a signed int32


@register_weight_loader_v2_supported_method
class Marlin24LinearMethod(LinearMethodBase):
    def __init__(self, inner: CompressedTensorsLinearMethod, report: LayerReport, prefix: str,
                 shard_names: list[str], num_bits: int, group_size: int | None, quantization: str) -> None:
        self.inner = inner
        self.report = report
        self.prefix = prefix
        self.shard_names = shard_names
        self.num_bits = num_bits
        self.group_size = group_size
        self.quantization = quantization

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs) -> None:
        self.inner.create_weights(layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                                  params_dtype, **extra_weight_attrs)
        packed, scale, shape = layer.weight_packed, layer.weight_scale, layer.weight_shape
        loaders = {"weight_packed": packed.weight_loader, "weight_scale": scale.weight_loader,
                   "weight_shape": shape.weight_loader}
        count = shard_count(layer, output_partition_sizes)
        if len(self.shard_names) != count:
            self.shard_names = [f"{self.prefix}[{i}]" for i in range(count)] if count > 1 else [self.prefix]
        scales_found: dict[str, torch.Tensor] = {}
        self._zeros = self._total = self._worst_group = 0

        def decompress(parts, name, rows_cols):
            values, scales = decompress_marlin24(parts, *rows_cols, self.num_bits, self.group_size, name)
            scales_found[name] = scales
            return values

        def load(loaded, shard_id, param, name):
            if shard_id is None:
                loaders[name](param, loaded)
            else:
                loaders[name](param, loaded, shard_id)

        def load_values(values: torch.Tensor, shard_id) -> None:
            name = self.shard_names[assembler.shard_index(shard_id)]
            nonzero = values != 0
            self._zeros += int((~nonzero).sum())
            self._total += values.numel()
            self._worst_group = max(self._worst_group, int(nonzero.reshape(values.shape[0], -1, 4).sum(-1).max()))
            load(pack_rows(values, self.num_bits), shard_id, packed, "weight_packed")
            load(scales_found.pop(name).to(scale.dtype), shard_id, scale, "weight_scale")
            load(torch.tensor(values.shape, dtype=torch.int64), shard_id, shape, "weight_shape")

        assembler = ShardAssembler(self.prefix, self.shard_names, shard_shapes(layer, output_size, input_size, count),
                                   MARLIN24_PARTS, MARLIN24, load_values, decompress=decompress)
        assembler.partition_rows = list(output_partition_sizes)
        # weight_packed is both a marlin-24 part and the scheme's own parameter name:
        # the part's placeholder replaces the parameter until loading is over.
        layer.sparse_scheme_weight = packed
        del layer.weight_packed
        layer.sparse_assembler = assembler
        for part in MARLIN24_PARTS:
            placeholder = torch.nn.Parameter(torch.empty(0, dtype=torch.uint8), requires_grad=False)
            placeholder.weight_loader = (
                lambda param, loaded, shard_id=None, part=part: assembler.load_part(part, loaded, shard_id))
            layer.register_parameter(part, placeholder)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        assembler: ShardAssembler = layer.sparse_assembler
        missing = assembler.missing()
        if missing:
            raise CheckpointError(f"{self.prefix}: incomplete weights: " + "; ".join(missing))
        for part in MARLIN24_PARTS:
            delattr(layer, part)
        del layer.sparse_assembler
        layer.register_parameter("weight_packed", layer.sparse_scheme_weight)
        del layer.sparse_scheme_weight
        if self._worst_group > 2:
            raise CheckpointError(f"{self.prefix}: marlin-24 values with {self._worst_group} non-zeros in a group of 4")
        rows, cols = sum(assembler.partition_rows), layer.weight_packed.shape[1] * 32 // self.num_bits
        stored = layer.weight_packed.numel() * 4
        self.inner.process_weights_after_loading(layer)
        self.report.add(LayerRow(
            name=self.prefix, shape=(rows, cols), pattern="2:4", sparsity=self._zeros / self._total,
            kernel=f"vllm {type(layer.scheme).__name__.removeprefix('CompressedTensors')}",
            dense_bytes=stored, stored_bytes=stored, quantization=self.quantization))

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return self.inner.apply(layer, x, bias)
