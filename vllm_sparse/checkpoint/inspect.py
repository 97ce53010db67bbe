"""``vllm-sparse inspect``: the per-layer table of a checkpoint, without serving it."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..kernels import DENSE, analyze_weight, dispatcher
from .compressed_tensors_format import (
    MARLIN24,
    PACK_QUANTIZED,
    SPARSE_FORMATS,
    declared_sparsity,
    decompress_state_dict,
)
from .layer_table import LayerRow
from .layer_names import prunable_layer_index
from .marlin24 import MARLIN24_PARTS, decompress_marlin24, marlin24_weight_shape
from .quantization_scheme import QuantizationLabels
from .writer import load_state_dict


def _quantization_config(model_dir: str | Path) -> dict | None:
    return json.loads((Path(model_dir) / "config.json").read_text()).get("quantization_config")


def _unpack_int_weights(tensors: dict[str, torch.Tensor], layout: str,
                        quantization: QuantizationLabels) -> dict[str, torch.Tensor]:
    """Integer weights stored packed (``marlin-24`` or ``pack-quantized``) as one
    int8 ``<module>.weight`` each, the other tensors as they are."""
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    out = dict(tensors)
    for name in [n for n in tensors if n.endswith(".weight_packed")]:
        module = name.removesuffix(".weight_packed")
        args = quantization.weights(module)
        bits = args.get("num_bits", 4)
        if layout == MARLIN24:
            parts = {part: out.pop(f"{module}.{part}") for part in MARLIN24_PARTS if f"{module}.{part}" in out}
            rows_cols = marlin24_weight_shape(tensors[name], bits)
            values, _ = decompress_marlin24(parts, *rows_cols, bits, args.get("group_size"), module)
        else:
            shape = out.pop(f"{module}.weight_shape")
            values = unpack_from_int32(out.pop(name), bits, torch.Size(shape.tolist())).to(torch.int8)
        out[f"{module}.weight"] = values
    return out


def inspect_checkpoint(model_dir: str | Path, device: str = "cpu") -> list[LayerRow]:
    """One row per decoder linear layer. Quantized layers are analysed on their
    stored values (a value quantized to 0 counts as a zero) and stay with vLLM's
    quantized GEMM when served."""
    config = _quantization_config(model_dir)
    spec, quantization = declared_sparsity(config), QuantizationLabels(config)
    tensors = load_state_dict(model_dir)
    if spec.format in SPARSE_FORMATS:
        tensors = decompress_state_dict(tensors, spec.format)
    layout = (config or {}).get("format")
    if layout in (MARLIN24, PACK_QUANTIZED):
        tensors = _unpack_int_weights(tensors, layout, quantization)
    linear = [name for name in tensors if prunable_layer_index(name) is not None]
    linear.sort(key=lambda name: (prunable_layer_index(name), name))
    rows = []
    for name in linear:
        weight = tensors[name]
        module = name.removesuffix(".weight")
        scheme = quantization(module)
        if scheme:
            analysis = analyze_weight(weight.to(torch.float32))
            bits = quantization.weights(module).get("num_bits", 8)
            path, dense = "vllm quantized", weight.numel() * bits // 8  # as vLLM holds them
            stored = dense
        else:
            analysis = analyze_weight(weight)
            path = dispatcher.select_path(analysis, weight.dtype, torch.device(device))
            dense = dispatcher.dense_bytes(analysis, weight.dtype)
            stored = dispatcher.stored_bytes_for_path(analysis, weight.dtype, path)
        rows.append(LayerRow(name=module, shape=analysis.shape, pattern=analysis.pattern_name,
                             sparsity=analysis.sparsity, kernel=path, dense_bytes=dense, stored_bytes=stored,
                             quantization=scheme))
    return rows
