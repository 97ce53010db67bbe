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
from server_refusal import expect_refused, start_side_by_side

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


# The three broken checkpoints below are refused only while the engine loads the
# weights (the others fail in the API server's config check, in seconds): their
# servers start side by side, once for the module.
TWO_OF_FOUR_WEIGHT = "model.layers.3.mlp.up_proj.weight"
POPCOUNT_PREFIX = "model.layers.2.self_attn.o_proj"


def _third_nonzero(tensors) -> None:
    row = tensors[TWO_OF_FOUR_WEIGHT][7]
    zero_columns = (row[8:12] == 0).nonzero().flatten()
    row[8 + int(zero_columns[0])] = 0.125


def _one_more_bit(tensors) -> None:
    row0 = tensors[f"{POPCOUNT_PREFIX}.bitmask"][0]
    byte = int((row0 != 0xFF).nonzero()[0])
    free_bit = next(b for b in range(8) if not (int(row0[byte]) >> b) & 1)
    row0[byte] = int(row0[byte]) | (1 << free_bit)


@pytest.fixture(scope="module")
def load_time_refusals(cases, tmp_path_factory):
    work = tmp_path_factory.mktemp("refused-at-load")
    broken = {"three-nonzeros": _copy(cases["2of4"].dense, work / "three-nonzeros"),
              "popcount": _copy(cases["unstructured50"].compressed, work / "popcount"),
              "config-shape": _copy(cases["4of8"].compressed, work / "config-shape")}
    _edit_tensors(broken["three-nonzeros"], _third_nonzero)
    _edit_tensors(broken["popcount"], _one_more_bit)
    _edit_config(broken["config-shape"], lambda config: config.update(intermediate_size=1280))
    return start_side_by_side(broken, work)


def test_declared_2of4_with_three_nonzeros_in_a_group(load_time_refusals):
    load_time_refusals["three-nonzeros"].assert_refused(f"{TWO_OF_FOUR_WEIGHT}: declared 2:4",
                                                        "row 7, columns 8..11 hold 3 non-zeros")


def test_bitmask_popcount_differs_from_stored_values(load_time_refusals):
    prefix = POPCOUNT_PREFIX
    load_time_refusals["popcount"].assert_refused(f"{prefix}.bitmask:", "bits set but", f"{prefix}.compressed holds")


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


def test_config_shape_disagrees_with_weights(load_time_refusals):
    log = load_time_refusals["config-shape"].assert_refused("does not match the model config (config.json)")
    # whichever MLP weight is read first is named, with both shapes
    assert re.search(r"model\.layers\.0\.mlp\.(gate|up|down)_proj \(decompressed from .*\): shape \[", log)
    assert "[576, 1280]" in log or "[1280, 576]" in log


def test_compressed_weight_missing_a_part(cases, tmp_path):
    broken = _copy(cases["2of4"].compressed, tmp_path / "ckpt")
    _edit_tensors(broken, lambda tensors: tensors.pop("model.layers.5.mlp.down_proj.bitmask"))
    expect_refused(broken, tmp_path, "model.layers.5.mlp.down_proj", "bitmask")
