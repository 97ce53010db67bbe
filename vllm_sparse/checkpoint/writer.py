"""Write a pruned checkpoint: the source model's files with new weights, stored
dense (zeros kept) or in a compressed-tensors sparse format, and a config.json whose
``quantization_config`` declares the sparsity so the plugin needs no flag."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .compressed_tensors_format import (
    MARLIN24,
    PACK_QUANTIZED,
    SPARSE_FORMATS,
    compress_state_dict,
    nonzero_mask,
    quantization_config_dict,
    quantized_format,
)
from .layer_names import prunable_layer_index
from .marlin24 import compress_marlin24
from .sparsity_spec import DENSE_FORMAT

# marlin-24 is for 2:4 weights quantized to 4 bits only (the W4A16 layout).
STORAGE_FORMATS = (DENSE_FORMAT, *SPARSE_FORMATS, MARLIN24)
WEIGHTS_FILE = "model.safetensors"
# Pruning covers the decoder's linear layers; everything else is left dense.
IGNORE = ["lm_head", "re:.*embed_tokens.*"]


def load_state_dict(model_dir: str | Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        tensors.update(load_file(path))
    if not tensors:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors files")
    return tensors


def global_sparsity(state_dict: dict[str, torch.Tensor]) -> float:
    """Share of zeros over the prunable weights."""
    total = zeros = 0
    for name, tensor in state_dict.items():
        if prunable_layer_index(name) is not None:
            total += tensor.numel()
            zeros += tensor.numel() - int(nonzero_mask(tensor).sum())
    return zeros / total if total else 0.0


def storage_layout(storage: str, quantization: dict | None, structure: str) -> str:
    """How the weights will be laid out (``storage`` itself, or the quantized
    format it implies); refuses combinations no format holds."""
    if storage not in STORAGE_FORMATS:
        raise ValueError(f"unknown storage format {storage!r}; choose one of {', '.join(STORAGE_FORMATS)}")
    if quantization is None:
        if storage == MARLIN24:
            raise ValueError("marlin-24 stores quantized weights: add --quantize w4a16")
        return storage
    layout = quantized_format(quantization, storage)
    if storage == MARLIN24 and (quantization["weights"]["num_bits"] != 4 or structure != "2:4"):
        raise ValueError("marlin-24 stores 2:4 weights quantized to 4 bits (--pattern 2:4 --quantize w4a16)")
    if layout == PACK_QUANTIZED and storage != DENSE_FORMAT:
        raise ValueError(f"4-bit weights are stored {MARLIN24} (2:4) or {DENSE_FORMAT} ({PACK_QUANTIZED}), "
                         f"not {storage}")
    return layout


def save_sparse_checkpoint(
    source_dir: str | Path,
    state_dict: dict[str, torch.Tensor],
    out_dir: str | Path,
    *,
    storage: str,
    structure: str,
    recipe: dict | None = None,
    quantization: dict | None = None,
) -> Path:
    """Write ``state_dict`` (already pruned) as a checkpoint beside a copy of the
    source model's config and tokenizer files. ``recipe`` (method and parameters)
    is recorded in config.json under ``vllm_sparse``. A quantized ``state_dict``
    (int8 / float8 values with their ``weight_scale``) comes with ``quantization``,
    its config group (``quantization_group_dict``); 8-bit values are stored sparse
    like any weight, the scales as they are; 4-bit values are stored ``marlin-24``
    (storage "marlin-24", 2:4 only) or packed plainly (storage "dense":
    ``pack-quantized``, the layout stock vLLM reads)."""
    layout = storage_layout(storage, quantization, structure)
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in source_dir.iterdir():
        if path.is_file() and path.suffix != ".safetensors" and not path.name.endswith(".index.json"):
            shutil.copy2(path, out_dir / path.name)

    if layout in (MARLIN24, PACK_QUANTIZED):
        tensors = _pack_4bit(state_dict, layout, quantization)
    elif storage == DENSE_FORMAT:
        tensors = dict(state_dict)
    else:
        tensors = compress_state_dict(
            state_dict, storage, lambda module: prunable_layer_index(f"{module}.weight") is not None
        )
    save_file({name: t.contiguous() for name, t in tensors.items()}, out_dir / WEIGHTS_FILE, metadata={"format": "pt"})

    config_path = out_dir / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"] = quantization_config_dict(
        storage,
        sparsity_structure=structure,
        global_sparsity=global_sparsity(state_dict),
        targets=["Linear"],
        ignore=IGNORE,
        quantization=quantization,
    )
    if recipe:
        config["vllm_sparse"] = recipe
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


def _pack_4bit(state_dict: dict[str, torch.Tensor], layout: str, quantization: dict) -> dict[str, torch.Tensor]:
    """Each quantized weight (int values beside a ``weight_scale``) as compressed-
    tensors stores it in ``layout``; everything else as it is."""
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    num_bits, group_size = quantization["weights"]["num_bits"], quantization["weights"]["group_size"]
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        module = name.removesuffix(".weight")
        if name.endswith(".weight_scale") and name.removesuffix("_scale") in state_dict:
            continue  # goes with its weight below
        if name == module or f"{module}.weight_scale" not in state_dict:
            out[name] = tensor
            continue
        scale = state_dict[f"{module}.weight_scale"]
        if layout == MARLIN24:  # keeps its own permuted copy of the scales
            parts = compress_marlin24(tensor, scale, num_bits, group_size, module)
        else:
            parts = {"weight_packed": pack_to_int32(tensor, num_bits), "weight_scale": scale,
                     "weight_shape": torch.tensor(tensor.shape, dtype=torch.int64)}
        out.update({f"{module}.{part}": value for part, value in parts.items()})
    return out


def strip_sparsity_declaration(model_dir: str | Path) -> None:
    """Remove the sparsity declaration from a dense-stored checkpoint, leaving an
    ordinary dense checkpoint that stock vLLM serves (the baseline in comparisons)."""
    config_path = Path(model_dir) / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("quantization_config", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
