"""Perplexity of a sparse model served through vLLM + the plugin (the project's own
command) agrees with transformers on the same weights.

Within 2% of transformers in fp32 (the exact arithmetic's nearest stand-in; on CPUs
without AVX-512 torch's bf16 GEMM is also ~8x slower than its fp32 one): the
magnitude-pruned 2:4 SmolLM2 is degenerate (perplexity ~1370), so small differences in
rounding move it, and vLLM's own pipeline differs from transformers' there. On a
2-core AVX2-only EPYC (2026-12-07): transformers fp32 1368.58 (bf16 1373.57), stock
vLLM on the dense twin 1356.96 (0.85% below fp32), the plugin on the compressed
checkpoint 1359.60 (0.66% below fp32, 0.2% from stock vLLM). Agreement with stock vLLM
itself is held to 0.5% in test_cpu_sparse_serving.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from checkpoints import CASES, MODELS, REPO, build_case
from vllm_sparse.runtime import private_vllm_cache

pytestmark = pytest.mark.vllm

CORPUS = REPO.parent / "shared" / "data" / "persuasion.txt"
WINDOW, COUNT = 512, 8


@pytest.mark.skipif(not CORPUS.exists(), reason=f"corpus {CORPUS} not present")
def test_served_perplexity_matches_transformers(base_model, tmp_path):
    from transformers import AutoTokenizer, LlamaForCausalLM

    from vllm_sparse.quality.perplexity import corpus_windows, transformers_perplexity

    dirs = build_case(base_model, MODELS / "test-checkpoints", next(c for c in CASES if c.name == "2of4"))
    command = [
        sys.executable, "-m", "vllm_sparse.cli", "perplexity", str(dirs.compressed),
        "--corpus", str(CORPUS), "--window", str(WINDOW), "--count", str(COUNT),
    ]
    env = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CACHE_ROOT": private_vllm_cache(tmp_path)}
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **env})
    assert completed.returncode == 0, completed.stderr[-3000:]
    served = float(re.search(r"perplexity ([0-9.]+)", completed.stdout).group(1))

    tokenizer = AutoTokenizer.from_pretrained(dirs.stock)
    model = LlamaForCausalLM.from_pretrained(dirs.stock, dtype=torch.float32).eval()
    reference = transformers_perplexity(model, corpus_windows(tokenizer, CORPUS, WINDOW, COUNT))
    print(f"perplexity on {CORPUS.name}: served {served:.3f}, transformers fp32 {reference:.3f}")
    assert served == pytest.approx(reference, rel=0.02)
