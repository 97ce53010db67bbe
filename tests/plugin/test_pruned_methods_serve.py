"""End to end: SmolLM2-135M pruned by Wanda 2:4 (a small calibration set), written
compressed (sparse-24-bitmask) and dense, served by real vLLM with the plugin: both
storages must give the same greedy tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vllm_runner import run_engines
from vllm_sparse.pruning.calibration import CalibrationConfig
from vllm_sparse.pruning.plan import PruningPlan
from vllm_sparse.pruning.run import prune_model
from vllm_sparse.checkpoint.writer import save_sparse_checkpoint
from vllm_sparse.kernels import NMPattern, find_nm_violation
from vllm_sparse.quality.prompts import GREEDY_PROMPTS

pytestmark = pytest.mark.vllm

REPO = Path(__file__).resolve().parents[2]
CALIBRATION = REPO.parent / "shared" / "data" / "persuasion.txt"
PROMPTS = list(GREEDY_PROMPTS)
MAX_TOKENS = 32


def test_wanda_2of4_compressed_and_dense_serve_identically(base_model, tmp_path):
    calibration = CalibrationConfig(CALIBRATION, samples=4, seqlen=128)
    pattern = NMPattern(2, 4)
    pruned, recipe = prune_model(base_model, "wanda", PruningPlan(sparsity=0.5, pattern=pattern), calibration=calibration)
    layer_weights = [t for name, t in pruned.items() if ".layers." in name and name.endswith("_proj.weight")]
    assert len(layer_weights) == 30 * 7 and all(find_nm_violation(w, pattern) is None for w in layer_weights)

    compressed, dense = tmp_path / "wanda-2of4-sparse-24-bitmask", tmp_path / "wanda-2of4-dense"
    save_sparse_checkpoint(base_model, pruned, compressed, storage="sparse-24-bitmask", structure="2:4", recipe=recipe)
    save_sparse_checkpoint(base_model, pruned, dense, storage="dense", structure="2:4", recipe=recipe)
    del pruned, layer_weights
    assert json.loads((compressed / "config.json").read_text())["vllm_sparse"]["method"] == "wanda"
    # compressed storage really is smaller than the dense-stored twin
    assert (compressed / "model.safetensors").stat().st_size < 0.85 * (dense / "model.safetensors").stat().st_size

    job = {"prompts": PROMPTS, "max_tokens": MAX_TOKENS}
    results = run_engines(
        [{**job, "model": str(compressed)}, {**job, "model": str(dense)}], tmp_path / "engines", plugins=True
    )
    for result in results:
        assert "error" not in result, result.get("error")
    from_compressed, from_dense = results
    assert from_compressed["tokens"] == from_dense["tokens"]
    assert all(len(tokens) == MAX_TOKENS for tokens in from_compressed["tokens"])
