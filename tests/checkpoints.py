"""Pruned test checkpoints, each written once under MODELS/test-checkpoints and
reused: the same weights stored dense (sparsity declared in config.json), in a
compressed-tensors sparse format, and as a plain dense checkpoint for stock vLLM."""

from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vllm_sparse.pruning.plan import PruningPlan, prune_state_dict
from vllm_sparse.checkpoint.writer import (
    WEIGHTS_FILE,
    load_state_dict,
    save_sparse_checkpoint,
    strip_sparsity_declaration,
)
from vllm_sparse.kernels import NMPattern

REPO = Path(__file__).resolve().parents[1]
# Made once and reused between runs: fetching and converting the model takes ~30 s.
MODELS = Path(os.environ.get("VLLM_SPARSE_TEST_MODELS", REPO / "models"))
NUM_LAYERS = 30  # SmolLM2-135M


@dataclass(frozen=True)
class Case:
    name: str
    plan: PruningPlan
    compressed_format: str


CASES = [
    Case("unstructured50", PruningPlan(sparsity=0.5), "sparse-bitmask"),
    Case("2of4", PruningPlan(sparsity=0.5, pattern=NMPattern(2, 4)), "sparse-24-bitmask"),
    Case("4of8", PruningPlan(sparsity=0.5, pattern=NMPattern(4, 8)), "sparse-bitmask"),
    # OWL-like: a different sparsity for every layer, from 30% to 70%.
    Case(
        "per_layer",
        PruningPlan(layer_sparsity=tuple(round(0.3 + 0.4 * i / (NUM_LAYERS - 1), 4) for i in range(NUM_LAYERS))),
        "sparse-bitmask",
    ),
]


@dataclass(frozen=True)
class CaseDirs:
    dense: Path  # dense-stored, sparsity declared in config.json
    compressed: Path  # compressed-tensors sparse format
    stock: Path  # the dense weights with no declaration: what stock vLLM serves


@contextmanager
def made_once(name: str):
    """Held while a checkpoint shared by several test modules is made: the suite runs
    in two worker processes (scripts/test.sh), and the second one to need it waits,
    then finds it made."""
    MODELS.mkdir(parents=True, exist_ok=True)
    with open(MODELS / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build_case(base_model: Path, root: Path, case: Case) -> CaseDirs:
    with made_once(f"case-{case.name}"):
        return _build_case(base_model, root, case)


def _build_case(base_model: Path, root: Path, case: Case) -> CaseDirs:
    dirs = CaseDirs(root / f"{case.name}-dense", root / f"{case.name}-{case.compressed_format}", root / f"{case.name}-stock")
    if all((d / "config.json").exists() for d in (dirs.dense, dirs.compressed, dirs.stock)):
        return dirs
    pruned = prune_state_dict(load_state_dict(base_model), case.plan)
    recipe = {"method": "magnitude", "pattern": case.plan.structure}
    for directory, storage in ((dirs.dense, "dense"), (dirs.compressed, case.compressed_format)):
        shutil.rmtree(directory, ignore_errors=True)
        save_sparse_checkpoint(base_model, pruned, directory, storage=storage, structure=case.plan.structure, recipe=recipe)
    shutil.rmtree(dirs.stock, ignore_errors=True)
    dirs.stock.mkdir(parents=True)
    for path in dirs.dense.iterdir():
        if path.name == WEIGHTS_FILE:
            os.symlink(path, dirs.stock / path.name)  # the very same bytes
        else:
            shutil.copy2(path, dirs.stock / path.name)
    strip_sparsity_declaration(dirs.stock)
    return dirs


def tiny_llama(directory: Path, num_key_value_heads: int = 2, intermediate_size: int = 256) -> Path:
    """A random Llama small enough to load in seconds that vLLM's CPU backend still
    serves (head size 64, 2 attention heads: TP=2 splits them), saved as
    transformers saves it, no tokenizer (prompts are token ids). Its LM head is
    scaled up so that greedy choices have clear margins."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=intermediate_size, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=num_key_value_heads,
                         max_position_embeddings=256, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    with torch.no_grad():
        model.lm_head.weight.mul_(10)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def layer_rows(table: str) -> list[list[str]]:
    """The per-layer rows of a vllm-sparse layer table, split into their columns."""
    return [line.split() for line in table.splitlines() if line.startswith("model.layers.")]
