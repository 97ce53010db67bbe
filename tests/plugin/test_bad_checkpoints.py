"""Broken checkpoints never get served: vLLM's engine (plugin installed) refuses each
at start-up with an error naming the file, tensor or key at fault, and vLLM's OpenAI
server (normal multi-process mode) exits non-zero before accepting a request with
that error in its log. The server is started on one case of each stage that refuses
(the API server's config check, the engine core's weight loading); the engine is
started on every case, all in one process (a server start costs ~30 s of CPU, an
engine start in a process that has imported vLLM a few)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from checkpoints import CASES, MODELS, build_case
from server_refusal import start_side_by_side
from vllm_runner import run_engines

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


def _truncate(checkpoint: Path) -> None:
    weights = checkpoint / "model.safetensors"
    with weights.open("r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)


def _unknown_format(config: dict) -> None:
    config["quantization_config"]["sparsity_config"].update(format="sparse-32-bitmask")


# name -> (test case, stored form copied, edit of the copy)
BROKEN = {
    "three-nonzeros": ("2of4", "dense", lambda path: _edit_tensors(path, _third_nonzero)),
    "popcount": ("unstructured50", "compressed", lambda path: _edit_tensors(path, _one_more_bit)),
    "config-shape": ("4of8", "compressed",
                     lambda path: _edit_config(path, lambda config: config.update(intermediate_size=1280))),
    "truncated": ("2of4", "compressed", _truncate),
    "unknown-format": ("2of4", "compressed", lambda path: _edit_config(path, _unknown_format)),
    "missing-part": ("2of4", "compressed", lambda path: _edit_tensors(
        path, lambda tensors: tensors.pop("model.layers.5.mlp.down_proj.bitmask"))),
}
# One case per stage that refuses: the server must exit with the error in its log.
THROUGH_THE_SERVER = ("unknown-format", "three-nonzeros")


@pytest.fixture(scope="module")
def refusals(cases, tmp_path_factory):
    """name -> (the engine's start-up error, how the server start ended or None, the
    broken checkpoint)."""
    work = tmp_path_factory.mktemp("refused")
    broken = {}
    for name, (case, storage, edit) in BROKEN.items():
        broken[name] = _copy(getattr(cases[case], storage), work / name)
        edit(broken[name])
    engines = run_engines([{"model": str(path), "prompts": ["Hello"], "max_tokens": 2} for path in broken.values()],
                          work / "engines")
    servers = start_side_by_side({name: broken[name] for name in THROUGH_THE_SERVER}, work)
    return {name: (result.get("error", ""), servers.get(name), path)
            for (name, path), result in zip(broken.items(), engines)}


def _assert_refused(refusals, name: str, *expected: str) -> str:
    """Every ``expected`` text is in the engine's error (and, where the server was
    started on the case, the server exited non-zero with them in its log); returns the
    engine's error."""
    error, server, _ = refusals[name]
    assert error, f"{name}: the engine started"
    for text in expected:
        assert text in error, f"{text!r} not in the engine's error: {error[:2000]}"
    if server is not None:
        server.assert_refused(*expected)
    return error


def test_declared_2of4_with_three_nonzeros_in_a_group(refusals):
    _assert_refused(refusals, "three-nonzeros", f"{TWO_OF_FOUR_WEIGHT}: declared 2:4",
                    "row 7, columns 8..11 hold 3 non-zeros")


def test_bitmask_popcount_differs_from_stored_values(refusals):
    prefix = POPCOUNT_PREFIX
    _assert_refused(refusals, "popcount", f"{prefix}.bitmask:", "bits set but", f"{prefix}.compressed holds")


def test_truncated_safetensors_file(refusals):
    checkpoint = refusals["truncated"][2]
    _assert_refused(refusals, "truncated", f"{checkpoint / 'model.safetensors'}: truncated safetensors file")


def test_unknown_sparsity_format(refusals):
    _assert_refused(refusals, "unknown-format", "quantization_config.sparsity_config.format", "'sparse-32-bitmask'")


def test_config_shape_disagrees_with_weights(refusals):
    error = _assert_refused(refusals, "config-shape", "does not match the model config (config.json)")
    # whichever MLP weight is read first is named, with both shapes
    assert re.search(r"model\.layers\.0\.mlp\.(gate|up|down)_proj \(decompressed from .*\): shape \[", error)
    assert "[576, 1280]" in error or "[1280, 576]" in error


def test_compressed_weight_missing_a_part(refusals):
    _assert_refused(refusals, "missing-part", "model.layers.5.mlp.down_proj", "bitmask")
