"""The linear method vLLM runs for every linear layer of a sparse checkpoint.

Loading: each layer owns the ordinary dense ``weight`` parameter that stock vLLM
creates, plus, for compressed-tensors sparse formats, one placeholder parameter per
stored part (``compressed``, ``bitmask``, ...). Parts arriving from the checkpoint
are gathered per shard (q/k/v, gate/up); once a shard is complete it is validated,
decompressed and handed to vLLM's own weight loader, which handles fusing and tensor
parallel slicing exactly as for a dense checkpoint. Dense-stored shards go straight
through. ``process_weights_after_loading`` then refuses any layer with a shard
missing (nothing half-loaded is served), checks a declared N:M pattern, detects the
layer's real pattern and asks the kernel dispatcher for its path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..checkpoint.compressed_tensors_format import PART_NAMES, decompress_weight
from ..checkpoint.sparsity_spec import SparsitySpec
from ..checkpoint.errors import CheckpointError
from ..checkpoint.layer_table import LayerRow
from ..kernels import DENSE, analyze_weight, dispatcher, find_nm_violation
from .layer_report import LayerReport
from .vllm_internals import (
    LinearMethodBase,
    QKVParallelLinear,
    UnquantizedLinearMethod,
    max_decode_batch,
    register_weight_loader_v2_supported_method,
)

_QKV_SHARD_INDEX = {"q": 0, "k": 1, "v": 2}


class ShardAssembler:
    """Gathers one layer's checkpoint tensors, shard by shard."""

    def __init__(
        self,
        layer_name: str,
        shard_names: list[str],
        shard_shapes: list[tuple[int, int]],
        part_names: tuple[str, ...],
        storage_format: str,
        load_dense: Callable[[torch.Tensor, object], None],
        decompress: Callable[[dict[str, torch.Tensor], str, tuple[int, int]], torch.Tensor] | None = None,
    ) -> None:
        """``decompress(parts, shard name, shard shape)`` replaces the
        compressed-tensors sparse formats' decompression (marlin-24)."""
        self.layer_name = layer_name
        self.shard_names = shard_names
        self.shard_shapes = shard_shapes
        self.part_names = part_names
        self.storage_format = storage_format
        self._load_dense = load_dense
        self._decompress = decompress
        self._parts: dict[int, dict[str, torch.Tensor]] = {}
        self._done: set[int] = set()
        self.kept_zeros = 0  # stored values that are 0 (a 2:4 group kept fewer than 2 non-zeros)

    def shard_index(self, shard_id) -> int:
        if shard_id is None:
            return 0
        return _QKV_SHARD_INDEX[shard_id] if isinstance(shard_id, str) else int(shard_id)

    def load_dense(self, loaded: torch.Tensor, shard_id) -> None:
        index = self.shard_index(shard_id)
        name = f"{self.shard_names[index]}.weight"
        self._check_shape(index, tuple(loaded.shape), name)
        self._mark_done(index)
        self._load_dense(loaded, shard_id)

    def load_part(self, part: str, loaded: torch.Tensor, shard_id) -> None:
        index = self.shard_index(shard_id)
        parts = self._parts.setdefault(index, {})
        name = f"{self.shard_names[index]}.{part}"
        if part in parts:
            raise CheckpointError(f"{name}: tensor appears twice in the checkpoint")
        parts[part] = loaded
        if len(parts) < len(self.part_names):
            return
        del self._parts[index]
        if self._decompress is not None:
            dense = self._decompress(parts, self.shard_names[index], self.shard_shapes[index])
        else:
            dense = decompress_weight(parts, self.storage_format, name=self.shard_names[index])
            self.kept_zeros += int((parts["compressed"] == 0).sum())
        self._check_shape(index, tuple(dense.shape), f"{self.shard_names[index]} (decompressed from {sorted(parts)})")
        self._mark_done(index)
        self._load_dense(dense, shard_id)

    def _check_shape(self, index: int, shape: tuple[int, ...], what: str) -> None:
        expected = self.shard_shapes[index]
        if shape != expected:
            raise CheckpointError(
                f"{what}: shape {list(shape)} does not match the model config (config.json), "
                f"which needs {list(expected)}"
            )

    def _mark_done(self, index: int) -> None:
        if index in self._done:
            raise CheckpointError(f"{self.shard_names[index]}: weight stored twice in the checkpoint")
        self._done.add(index)

    def register_parts(self, layer: torch.nn.Module, weight: torch.nn.Parameter | None = None) -> None:
        """Route the layer's checkpoint tensors through this assembler: one
        placeholder parameter per stored part, and the dense ``weight`` (when the
        format may also store it so) as it is."""
        layer.sparse_assembler = self
        if weight is not None:
            weight.weight_loader = lambda param, loaded, shard_id=None: self.load_dense(loaded, shard_id)
        for part in self.part_names:
            placeholder = torch.nn.Parameter(torch.empty(0, dtype=torch.uint8), requires_grad=False)
            placeholder.weight_loader = (
                lambda param, loaded, shard_id=None, part=part: self.load_part(part, loaded, shard_id)
            )
            layer.register_parameter(part, placeholder)

    def finish(self, layer: torch.nn.Module, prefix: str) -> None:
        """Loading is over: refuse a layer with a shard missing (nothing half-loaded
        is served), then take the placeholders and this assembler off the layer."""
        missing = self.missing()
        if missing:
            raise CheckpointError(f"{prefix}: incomplete weights: " + "; ".join(missing))
        for part in self.part_names:
            delattr(layer, part)
        del layer.sparse_assembler
        # The loader closure holds the dense weight, and vLLM may keep the
        # placeholder parameters (whose loaders hold the assembler) alive: cut the
        # chain, or a packed layer's dense weight would never be freed.
        self._load_dense = None

    def missing(self) -> list[str]:
        """Descriptions of every shard not (completely) loaded."""
        problems = []
        for index, shard in enumerate(self.shard_names):
            if index in self._done:
                continue
            have = sorted(self._parts.get(index, {}))
            if have:
                need = sorted(set(self.part_names) - set(have))
                problems.append(f"{shard}: has {have} but lacks {need}")
            else:
                problems.append(f"{shard}: no weight in the checkpoint")
        return problems


def layer_shard_names(layer: torch.nn.Module, prefix: str, known: list[str], output_partition_sizes: list[int]) -> list[str]:
    """The checkpoint names of a layer's shards (q/k/v, gate/up when fused): the
    names the config's packed-modules mapping gave, or numbered ones when they do
    not match the layer."""
    fused = isinstance(layer, QKVParallelLinear) or len(output_partition_sizes) > 1
    count = len(output_partition_sizes) if fused else 1
    if len(known) == count:
        return known
    return [f"{prefix}[{i}]" for i in range(count)] if count > 1 else [prefix]


def call_loader(loader, param: torch.nn.Parameter, loaded: torch.Tensor, shard_id) -> None:
    """vLLM's weight loaders take a shard id only for fused layers."""
    if shard_id is None:
        loader(param, loaded)
    else:
        loader(param, loaded, shard_id)


def shard_shapes(layer: torch.nn.Module, output_size: int, input_size: int, count: int) -> list[tuple[int, int]]:
    """The checkpoint shape of each shard (before tensor-parallel slicing)."""
    if isinstance(layer, QKVParallelLinear):
        # Not output_sizes: with more ranks than KV heads, vLLM replicates the KV
        # heads and counts every replica there.
        q = layer.total_num_heads * layer.head_size
        k = layer.total_num_kv_heads * layer.head_size
        return [(q, input_size), (k, input_size), (layer.total_num_kv_heads * layer.v_head_size, input_size)]
    sizes = getattr(layer, "output_sizes", None)
    if count > 1 and sizes is not None and len(sizes) == count:
        return [(int(size), input_size) for size in sizes]
    return [(output_size, input_size)]


def check_declared_pattern(spec: SparsitySpec, weight: torch.Tensor, assembler: ShardAssembler,
                           what: str = ".weight") -> None:
    """Refuse a layer whose targeted shards break the N:M pattern config.json
    declares. With tensor parallelism each shard holds only its slice of rows."""
    pattern = spec.nm_pattern
    if pattern is None:
        return
    start = 0
    for name, rows in zip(assembler.shard_names, assembler.partition_rows):
        if spec.applies_to(name):
            values = weight[start : start + rows]
            if values.element_size() == 1:  # int8 / float8 values: counted through fp32
                values = values.to(torch.float32)
            violation = find_nm_violation(values, pattern)
            if violation is not None:
                raise CheckpointError(
                    f"{name}{what}: declared {pattern} sparse in config.json "
                    f"(quantization_config.sparsity_config.sparsity_structure) but {violation.describe()}"
                )
        start += rows


@register_weight_loader_v2_supported_method
class SparseLinearMethod(LinearMethodBase):
    def __init__(self, spec: SparsitySpec, report: LayerReport, prefix: str, shard_names: list[str]) -> None:
        self.spec = spec
        self.report = report
        self.prefix = prefix
        self.shard_names = shard_names
        self.dense_method = UnquantizedLinearMethod()
        # Read while the model is built (vLLM's config is current then): the CPU
        # dispatcher holds a layer's sparse path to no loss up to this decode batch.
        self.max_batch = max_decode_batch()

    def create_weights(
        self,
        layer: torch.nn.Module,
        input_size_per_partition: int,
        output_partition_sizes: list[int],
        input_size: int,
        output_size: int,
        params_dtype: torch.dtype,
        **extra_weight_attrs,
    ) -> None:
        vllm_loader = extra_weight_attrs["weight_loader"]
        self.dense_method.create_weights(
            layer, input_size_per_partition, output_partition_sizes, input_size, output_size,
            params_dtype, **extra_weight_attrs,
        )
        weight = layer.weight
        self.shard_names = layer_shard_names(layer, self.prefix, self.shard_names, output_partition_sizes)

        def load_into_weight(loaded: torch.Tensor, shard_id) -> None:
            call_loader(vllm_loader, weight, loaded, shard_id)

        part_names = PART_NAMES.get(self.spec.format, ())
        assembler = ShardAssembler(
            self.prefix,
            self.shard_names,
            shard_shapes(layer, output_size, input_size, len(self.shard_names)),
            part_names,
            self.spec.format,
            load_into_weight,
        )
        assembler.partition_rows = list(output_partition_sizes)
        assembler.register_parts(layer, weight)

    def process_weights_after_loading(self, layer: torch.nn.Module) -> None:
        assembler: ShardAssembler = layer.sparse_assembler
        assembler.finish(layer, self.prefix)

        weight = layer.weight.data
        check_declared_pattern(self.spec, weight, assembler)
        analysis = analyze_weight(weight)
        path = dispatcher.select_path(analysis, weight.dtype, weight.device, self.max_batch)
        layer.sparse_path = path
        dense_bytes = dispatcher.dense_bytes(analysis, weight.dtype)
        kernel = path
        if path == DENSE:
            stored = dense_bytes
            self.dense_method.process_weights_after_loading(layer)
        else:
            # Only the compressed form stays: the dense tensor is freed here.
            layer.sparse_weight = dispatcher.pack_for_path(weight, analysis, path, self.max_batch)
            stored = layer.sparse_weight.stored_bytes
            kernel = layer.sparse_weight.kernel_name
            del layer.weight
        del weight
        self.report.add(
            LayerRow(
                name=self.prefix,
                shape=analysis.shape,
                pattern=analysis.pattern_name,
                sparsity=analysis.sparsity,
                kernel=kernel,
                dense_bytes=dense_bytes,
                stored_bytes=stored,
            )
        )

    def apply(self, layer: torch.nn.Module, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        if layer.sparse_path == DENSE:
            return self.dense_method.apply(layer, x, bias)
        return dispatcher.sparse_linear(x, layer.sparse_weight, bias)
