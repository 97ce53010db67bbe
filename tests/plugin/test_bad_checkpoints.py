"""Broken checkpoints never get served: vLLM's OpenAI server (normal multi-process
mode, plugin installed) exits non-zero before accepting a request, and its log names
the file, tensor or key at fault."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from checkpoints import CASES, MODELS, build_case
from server_refusal import expect_refused

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def cases(base_model):
    root = MODELS / "test-checkpoints"
    return {case.name: build_case(base_model, root, case) for case in CASES}


def _copy(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, symlinks=False)
    return target


def _edit_tensors(checkpoint: Path, edit) -> None:
    path = checkpoint / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _edit_config(checkpoint: Path, edit) -> None:
    path = checkpoint / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def test_declared_2of4_with_three_nonzeros_in_a_group(cases, tmp_path):
    broken = _copy(cases["2of4"].dense, tmp_path / "ckpt")
    name = "model.layers.3.mlp.up_proj.weight"

    def add_third_nonzero(tensors):
        row = tensors[name][7]
        zero_columns = (row[8:12] == 0).nonzero().flatten()
        row[8 + int(zero_columns[0])] = 0.125

    _edit_tensors(broken, add_third_nonzero)
    expect_refused(broken, tmp_path, f"{name}: declared 2:4", "row 7, columns 8..11 hold 3 non-zeros")


def test_bitmask_popcount_differs_from_stored_values(cases, tmp_path):
    broken = _copy(cases["unstructured50"].compressed, tmp_path / "ckpt")
    prefix = "model.layers.2.self_attn.o_proj"

    def set_one_more_bit(tensors):
        bitmask = tensors[f"{prefix}.bitmask"]
        row0 = bitmask[0]
        byte = int((row0 != 0xFF).nonzero()[0])
        free_bit = next(b for b in range(8) if not (int(row0[byte]) >> b) & 1)
        row0[byte] = int(row0[byte]) | (1 << free_bit)

    _edit_tensors(broken, set_one_more_bit)
    expect_refused(broken, tmp_path, f"{prefix}.bitmask:", "bits set but", f"{prefix}.compressed holds")


def test_truncated_safetensors_file(cases, tmp_path):
    broken = _copy(cases["2of4"].compressed, tmp_path / "ckpt")
    weights = broken / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    expect_refused(broken, tmp_path, f"{weights}: truncated safetensors file")


def test_unknown_sparsity_format(cases, tmp_path):
    broken = _copy(cases["2of4"].compressed, tmp_path / "ckpt")
    _edit_config(broken, lambda config: config["quantization_config"]["sparsity_config"].update(format="sparse-32-bitmask"))
    expect_refused(broken, tmp_path, "quantization_config.sparsity_config.format", "'sparse-32-bitmask'")


def test_config_shape_disagrees_with_weights(cases, tmp_path):
    broken = _copy(cases["4of8"].compressed, tmp_path / "ckpt")
    _edit_config(broken, lambda config: config.update(intermediate_size=1280))
    log = expect_refused(broken, tmp_path, "does not match the model config (config.json)")
    # whichever MLP weight is read first is named, with both shapes
    assert re.search(r"model\.layers\.0\.mlp\.(gate|up|down)_proj \(decompressed from .*\): shape \[", log)
    assert "[576, 1280]" in log or "[1280, 576]" in log


def test_compressed_weight_missing_a_part(cases, tmp_path):
    broken = _copy(cases["2of4"].compressed, tmp_path / "ckpt")
    _edit_tensors(broken, lambda tensors: tensors.pop("model.layers.5.mlp.down_proj.bitmask"))
    expect_refused(broken, tmp_path, "model.layers.5.mlp.down_proj", "bitmask")
