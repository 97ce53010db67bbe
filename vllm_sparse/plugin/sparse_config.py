"""vLLM quantization config ``vllm-sparse``: how vLLM finds our sparse linear method.

A checkpoint is served through it when
- its config.json has a compressed-tensors ``quantization_config`` carrying a
  ``sparsity_config`` (formats ``dense``, ``sparse-bitmask``, ``sparse-24-bitmask``),
  which is what llm-compressor, compressed-tensors and ``vllm-sparse prune`` write:
  no flag needed. With ``config_groups`` beside it (quantized as well), vLLM's own
  compressed-tensors config serves it, with our sparse storage under it
  (``sparse_quantized``); or
- the user passes ``--quantization vllm-sparse`` for a plain dense-stored pruned
  checkpoint (e.g. straight out of a Wanda or SparseGPT script): every linear layer
  is then scanned at load time and its pattern detected.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from ..checkpoint.compressed_tensors_format import (
    PART_NAMES,
    SPARSE_FORMATS,
    declared_sparsity,
    weight_part_names,
)
from ..checkpoint.sparsity_spec import SparsitySpec
from ..checkpoint.errors import CheckpointError
from ..checkpoint.validation import checkpoint_tensor_names
from .layer_report import LayerReport
from .lm_head import head_method
from .sparse_linear import SparseLinearMethod
from .vllm_internals import (
    LOGGER_NAME,
    LinearBase,
    QuantizationConfig,
    register_quantization_config,
)

QUANTIZATION_NAME = "vllm-sparse"
COMPRESSED_TENSORS = "compressed-tensors"

logger = logging.getLogger(LOGGER_NAME)


def claims_checkpoint(hf_quant_cfg: dict[str, Any] | None) -> bool:
    """True for configs we serve without a flag: our own name, or compressed-tensors
    with a sparsity config (quantized or not; stock vLLM refuses any)."""
    if not hf_quant_cfg:
        return False
    method = hf_quant_cfg.get("quant_method")
    if method == QUANTIZATION_NAME:
        return True
    return method == COMPRESSED_TENSORS and bool(hf_quant_cfg.get("sparsity_config"))


@register_quantization_config(QUANTIZATION_NAME)
class SparseConfig(QuantizationConfig):
    def __init__(self, spec: SparsitySpec | None = None) -> None:
        super().__init__()
        self.spec = spec or SparsitySpec.detect_all()
        self.report = LayerReport(logger)

    def __repr__(self) -> str:
        return f"SparseConfig({self.spec})"

    def get_name(self) -> str:
        return QUANTIZATION_NAME

    def get_supported_act_dtypes(self) -> list[torch.dtype]:
        return [torch.bfloat16, torch.float16, torch.float32]

    @classmethod
    def get_min_capability(cls) -> int:
        return 75  # Turing: what our Triton kernels are compiled for at the least

    @staticmethod
    def get_config_filenames() -> list[str]:
        return []  # everything we need is in config.json (or nothing at all)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "SparseConfig":
        if not config:
            return cls()
        spec = declared_sparsity(config)
        if config.get("config_groups"):  # quantized as well: vLLM's schemes, our storage
            from .sparse_quantized import quantized_config

            return quantized_config(config, spec, shard_names_of=_shard_names)
        return cls(spec)

    @classmethod
    def override_quantization_method(cls, hf_quant_cfg, user_quant, hf_config=None):
        if user_quant == QUANTIZATION_NAME or claims_checkpoint(hf_quant_cfg):
            return QUANTIZATION_NAME
        return None

    def maybe_update_config(self, model_name: str, hf_config=None, revision=None) -> None:
        # Runs in the API server process before the engine starts: fail fast on a
        # truncated file or a compressed weight that lacks one of its parts.
        if not os.path.isdir(model_name):
            return
        names = checkpoint_tensor_names(model_name)
        if self.spec.format in SPARSE_FORMATS:
            expected = set(PART_NAMES[self.spec.format])
            for prefix, parts in weight_part_names(names).items():
                if parts != expected:
                    file = names[f"{prefix}.{min(parts)}"]
                    raise CheckpointError(
                        f"{file}: weight {prefix} has parts {sorted(parts)} but format "
                        f"{self.spec.format} needs {sorted(expected)}"
                    )

    def get_quant_method(self, layer: torch.nn.Module, prefix: str):
        if not isinstance(layer, LinearBase):
            return head_method(layer)
        shard_names = _shard_names(prefix, getattr(self, "packed_modules_mapping", {}) or {})
        self.report.expect(prefix)
        return SparseLinearMethod(self.spec, self.report, prefix, shard_names)


def _shard_names(prefix: str, packed_modules_mapping: dict[str, list[str]]) -> list[str]:
    """Checkpoint module names of a layer's shards, in shard order (one for an
    unfused layer): ``...qkv_proj`` -> ``...q_proj, ...k_proj, ...v_proj``."""
    parent, _, leaf = prefix.rpartition(".")
    members = packed_modules_mapping.get(leaf)
    if not members:
        return [prefix]
    return [f"{parent}.{member}" if parent else member for member in members]
