"""The demo's checkpoints: the pruning setting it serves and its dense twin."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from vllm_sparse.demo import DEFAULT_PATTERN, make_checkpoints


def _declared(model_dir) -> dict | None:
    config = json.loads((model_dir / "config.json").read_text())
    return config.get("quantization_config", {}).get("sparsity_config")


def test_default_is_readable_unstructured_stored_compressed(base_model, tmp_path):
    """50% unstructured by default (its answers stay readable, README "Commands"),
    stored as compressed-tensors sparse-bitmask; the twin holds the same zeros as an
    ordinary dense checkpoint with no declaration. (No calibration text: magnitude
    pruning, which is quick.)"""
    (tmp_path / "smollm2-135m").symlink_to(base_model.resolve())
    sparse_dir, twin_dir = make_checkpoints(tmp_path, calibration=None)
    assert DEFAULT_PATTERN == "50%"
    declared = _declared(sparse_dir)
    assert declared["format"] == "sparse-bitmask" and declared["sparsity_structure"] == "unstructured"
    assert _declared(twin_dir) is None
    twin = load_file(str(twin_dir / "model.safetensors"))
    weight = twin["model.layers.0.mlp.down_proj.weight"]
    assert abs((weight == 0).float().mean().item() - 0.5) < 0.01


def test_unknown_pattern_is_refused(tmp_path):
    with pytest.raises(ValueError, match="50%, 2:4"):
        make_checkpoints(tmp_path, calibration=None, pattern="70%")
