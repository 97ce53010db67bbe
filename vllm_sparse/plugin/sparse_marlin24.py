"""compressed-tensors ``marlin-24`` checkpoints (W4A16 or W8A16, 2:4), laid out
for the Marlin 2:4 GPU kernel that vLLM removed: served by vLLM's own W{4,8}A16
scheme (``CompressedTensorsWNA16``, format ``pack-quantized``), which runs on CPU
(``CPUWNA16LinearKernel``) and GPU alike. Each shard's ``weight_packed`` /
``meta`` / ``scale_packed`` are read back into integer values and scales
(``checkpoint.marlin24``), packed the way ``pack-quantized`` stores them
(compressed-tensors' own ``pack_to_int32``), and handed to the scheme's own loaders
for ``weight_packed``, ``weight_scale`` and ``weight_shape``."""

from __future__ import annotations

import torch
from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

from ..checkpoint.compressed_tensors_format import MARLIN24
from ..checkpoint.errors import CheckpointError
from ..checkpoint.marlin24 import MARLIN24_PARTS, decompress_marlin24
from .layer_report import LayerReport
from .scheme_wrapper import SchemeWrappingMethod
from .sparse_linear import ShardAssembler, call_loader
from .vllm_internals import CompressedTensorsLinearMethod, register_weight_loader_v2_supported_method


@register_weight_loader_v2_supported_method
class Marlin24LinearMethod(SchemeWrappingMethod):
    def __init__(self, inner: CompressedTensorsLinearMethod, report: LayerReport, prefix: str,
                 shard_names: list[str], num_bits: int, group_size: int | None, quantization: str) -> None:
        super().__init__(inner, report, prefix, shard_names, quantization)
        self.num_bits = num_bits
        self.group_size = group_size

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs) -> None:
        shapes = self.create_scheme_weights(layer, input_size_per_partition, output_partition_sizes, input_size,
                                            output_size, params_dtype, **extra_weight_attrs)
        packed, scale, shape = layer.weight_packed, layer.weight_scale, layer.weight_shape
        loaders = {param: param.weight_loader for param in (packed, scale, shape)}
        scales_found: dict[str, torch.Tensor] = {}
        self._zeros = self._total = self._worst_group = 0

        def decompress(parts, name, rows_cols):
            values, scales = decompress_marlin24(parts, *rows_cols, self.num_bits, self.group_size, name)
            scales_found[name] = scales
            return values

        def load_values(values: torch.Tensor, shard_id) -> None:
            name = self.shard_names[assembler.shard_index(shard_id)]
            nonzero = values != 0
            self._zeros += int((~nonzero).sum())
            self._total += values.numel()
            self._worst_group = max(self._worst_group, int(nonzero.reshape(values.shape[0], -1, 4).sum(-1).max()))
            call_loader(loaders[packed], packed, pack_to_int32(values, self.num_bits), shard_id)
            call_loader(loaders[scale], scale, scales_found.pop(name).to(scale.dtype), shard_id)
            call_loader(loaders[shape], shape, torch.tensor(values.shape, dtype=torch.int64), shard_id)

        assembler = ShardAssembler(self.prefix, self.shard_names, shapes, MARLIN24_PARTS, MARLIN24, load_values,
                                   decompress=decompress)
        assembler.partition_rows = list(output_partition_sizes)
        # weight_packed is both a marlin-24 part and the scheme's own parameter name:
        # the part's placeholder replaces the parameter until loading is over.
        layer.sparse_scheme_weight = packed
        del layer.weight_packed
        assembler.register_parts(layer)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        assembler: ShardAssembler = layer.sparse_assembler
        assembler.finish(layer, self.prefix)
        layer.register_parameter("weight_packed", layer.sparse_scheme_weight)
        del layer.sparse_scheme_weight
        if self._worst_group > 2:
            raise CheckpointError(f"{self.prefix}: marlin-24 values with {self._worst_group} non-zeros in a group of 4")
        rows, cols = sum(assembler.partition_rows), layer.weight_packed.shape[1] * 32 // self.num_bits
        self.finish_scheme(layer, (rows, cols), "2:4", self._zeros / self._total, layer.weight_packed.numel() * 4)
