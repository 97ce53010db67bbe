"""Sparse checkpoints that are quantized as well (the published 2:4 families:
FP8 or INT8 W8A8 values stored ``sparse-24-bitmask``, a ``sparsity_config`` beside
compressed-tensors ``config_groups``), and quantized checkpoints that merely carry
a ``sparsity_config`` of format ``dense``. Stock vLLM refuses both since 2026.

Each layer goes to **vLLM's own** compressed-tensors scheme for its quantization
(W8A8 FP8, W8A8 INT8, ...), so vLLM's quantized kernels run it exactly as they run
the non-sparse twin. Only the storage is ours: a layer whose values come stored
sparse gets its parts gathered per shard and decompressed into the quantized values
the scheme's own weight loader expects; its scales pass through untouched. A layer
that is sparse but not quantized takes the sparse bf16/fp16/fp32 path of
``sparse_linear``; one that is neither, or quantized but not sparse, is left to
vLLM as is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ..checkpoint.compressed_tensors_format import MARLIN24, PACK_QUANTIZED, PART_NAMES, SPARSE_24_BITMASK
from ..checkpoint.errors import CheckpointError
from ..checkpoint.quantization_scheme import QuantizationLabels
from ..checkpoint.sparsity_spec import DENSE_FORMAT, SparsitySpec
from ..kernels import analyze_weight
from .layer_report import LayerReport
from .lm_head import head_method
from .scheme_wrapper import SchemeWrappingMethod
from .sparse_linear import ShardAssembler, SparseLinearMethod, call_loader, check_declared_pattern
from .sparse_marlin24 import Marlin24LinearMethod
from .vllm_internals import (
    LOGGER_NAME,
    CompressedTensorsConfig,
    CompressedTensorsLinearMethod,
    LinearBase,
    UnquantizedLinearMethod,
    register_weight_loader_v2_supported_method,
)

logger = logging.getLogger(LOGGER_NAME)


def quantized_config(config: dict, spec: SparsitySpec, shard_names_of) -> CompressedTensorsConfig:
    """vLLM's compressed-tensors config for the quantization, with our sparse storage
    under it (none needed when the declared format is ``dense``)."""
    quantization_only = {key: value for key, value in config.items() if key != "sparsity_config"}
    if config.get("format") == MARLIN24:
        # vLLM's W{4,8}A16 scheme reads pack-quantized; our loader turns marlin-24 into it.
        quantization_only["format"] = PACK_QUANTIZED
        sparse = SparseCompressedTensorsConfig.from_config(quantization_only)
        sparse.sparsity, sparse.marlin24 = spec, True
    elif spec.format == DENSE_FORMAT:
        logger.info("vllm-sparse: sparsity_config format 'dense' (nothing stored sparse): "
                    "serving with vLLM's compressed-tensors quantization schemes")
        return CompressedTensorsConfig.from_config(quantization_only)
    else:
        sparse = SparseCompressedTensorsConfig.from_config(quantization_only)
        sparse.sparsity, sparse.marlin24 = spec, False
    sparse.report = LayerReport(logger)
    sparse.shard_names_of = shard_names_of
    sparse.quantization_label = QuantizationLabels(config)
    return sparse


class SparseCompressedTensorsConfig(CompressedTensorsConfig):
    """vLLM's config, choosing per linear layer: ours where its values are stored
    sparse (or as marlin-24), vLLM's own method everywhere else."""

    sparsity: SparsitySpec
    marlin24: bool  # every quantized layer is stored marlin-24
    report: LayerReport
    shard_names_of: Callable[[str, dict], list[str]]
    quantization_label: Callable[[str], str]

    def get_quant_method(self, layer: torch.nn.Module, prefix: str):
        method = super().get_quant_method(layer, prefix)
        if not isinstance(layer, LinearBase):
            return method if method is not None else head_method(layer)  # None: unquantized
        shard_names = self.shard_names_of(prefix, self.packed_modules_mapping or {})
        if self.marlin24:
            if not isinstance(method, CompressedTensorsLinearMethod):
                return method  # not quantized (lm_head): vLLM's own path
            self.report.expect(prefix)
            weights = layer.scheme.quant_type.size_bits
            group = getattr(layer.scheme, "group_size", -1)
            return Marlin24LinearMethod(method, self.report, prefix, shard_names, weights,
                                        None if group in (None, -1) else group,
                                        self.quantization_label(shard_names[0]))
        if not any(self.sparsity.applies_to(name) for name in shard_names):
            return method  # quantized only, or neither: vLLM's own path
        self.report.expect(prefix)
        if isinstance(method, UnquantizedLinearMethod):  # sparse, not quantized
            return SparseLinearMethod(self.sparsity, self.report, prefix, shard_names)
        if isinstance(method, CompressedTensorsLinearMethod):
            return SparseQuantizedLinearMethod(method, self.sparsity, self.report, prefix, shard_names,
                                               self.quantization_label(shard_names[0]))
        raise CheckpointError(
            f"{prefix}: stored {self.sparsity.format} but its quantization method "
            f"{type(method).__name__} is not one whose values vllm-sparse can decompress")


@register_weight_loader_v2_supported_method
class SparseQuantizedLinearMethod(SchemeWrappingMethod):
    """vLLM's compressed-tensors linear method, fed from sparse-stored parts."""

    def __init__(self, inner: CompressedTensorsLinearMethod, spec: SparsitySpec, report: LayerReport, prefix: str,
                 shard_names: list[str], quantization: str) -> None:
        super().__init__(inner, report, prefix, shard_names, quantization)
        self.spec = spec

    def create_weights(self, layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
                       params_dtype, **extra_weight_attrs) -> None:
        shapes = self.create_scheme_weights(layer, input_size_per_partition, output_partition_sizes, input_size,
                                            output_size, params_dtype, **extra_weight_attrs)
        weight = layer.weight
        scheme_loader = weight.weight_loader

        scheme = type(layer.scheme).__name__

        def load_into_weight(loaded: torch.Tensor, shard_id) -> None:
            # The scheme's loader would cast silently: values of another dtype are
            # not this scheme's quantized values.
            if loaded.dtype != weight.dtype:
                name = self.shard_names[assembler.shard_index(shard_id)]
                raise CheckpointError(
                    f"{name}: stored values are {loaded.dtype}, but its quantization scheme ({scheme}, "
                    f"config.json quantization_config.config_groups) stores {weight.dtype}")
            call_loader(scheme_loader, weight, loaded, shard_id)

        part_names = PART_NAMES[self.spec.format]
        assembler = ShardAssembler(self.prefix, self.shard_names, shapes, part_names, self.spec.format,
                                   load_into_weight)
        assembler.partition_rows = list(output_partition_sizes)
        # The scheme's other tensors (scales, zero points) load through vLLM as they
        # are; each is counted per shard, so a missing one stops the load.
        self._loads: dict[str, set[int]] = {}
        for name, param in list(layer.named_parameters(recurse=False)):
            if name != "weight" and hasattr(param, "weight_loader"):
                param.weight_loader = self._counting(name, param.weight_loader, assembler)
                self._loads[name] = set()
        assembler.register_parts(layer, weight)

    def _counting(self, name: str, loader, assembler: ShardAssembler):
        def load(param, loaded, shard_id=None):
            index = assembler.shard_index(shard_id)
            self._loads[name].add(index)
            try:
                return call_loader(loader, param, loaded, shard_id)
            except (AssertionError, RuntimeError) as exc:  # vLLM's loaders assert shapes without a message
                fused = f" (fused from {len(assembler.shard_names)} checkpoint weights)" if len(assembler.shard_names) > 1 else ""
                raise CheckpointError(
                    f"{assembler.shard_names[index]}.{name}: shape {list(loaded.shape)} does not fit the layer's "
                    f"{name} of shape {list(param.shape)}{fused}" + (f": {exc}" if str(exc) else "")
                ) from None

        return load

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        assembler: ShardAssembler = layer.sparse_assembler
        assembler.finish(layer, self.prefix)
        missing = [f"{shard}.{name}" for name, shards in self._loads.items()
                   for index, shard in enumerate(assembler.shard_names) if index not in shards]
        if missing:
            raise CheckpointError(f"{self.prefix}: the checkpoint lacks {', '.join(missing)}, which its quantization "
                                  f"scheme ({type(layer.scheme).__name__}) needs")
        values = layer.weight.data
        check_declared_pattern(self.spec, values, assembler, what=" (its quantized values)")
        if values.dtype == torch.int8 and self.spec.format == SPARSE_24_BITMASK and assembler.kept_zeros:
            logger.warning(
                "%s: %d of the int8 values kept in 2:4 groups are 0. compressed-tensors up to 0.14.0.1 ranks a "
                "group by abs(), which wraps at -128, so it drops an int8 -128 and keeps a 0 in its place: "
                "wherever the unsparsified model had -128 there, this checkpoint serves 0 (quantizing with "
                "scales that keep values within +-127 avoids it)", self.prefix, assembler.kept_zeros)
        # Counted on the values as stored (int8, float8): a value quantized to zero
        # counts as zero.
        analysis = analyze_weight(values.to(torch.float32))
        self.finish_scheme(layer, analysis.shape, analysis.pattern_name, analysis.sparsity,
                           values.numel() * values.element_size())
