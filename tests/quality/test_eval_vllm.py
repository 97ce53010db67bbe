"""`vllm-sparse eval` through real vLLM: SmolLM2 against itself agrees exactly;
against a copy with noisy weights, KL rises and the agreements fall; the report
files are written."""

from __future__ import annotations

import json
import os

import pytest
import torch

from checkpoints import REPO

pytestmark = pytest.mark.vllm

CORPUS = REPO.parent / "shared" / "data" / "sensesensibility.txt"


@pytest.mark.skipif(not CORPUS.exists(), reason=f"corpus {CORPUS} not present")
def test_self_is_identical_and_noise_moves_every_measure(base_model, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    from vllm_sparse.checkpoint.writer import WEIGHTS_FILE
    from vllm_sparse.quality.report import EvalSettings, ModelSpec, run_eval

    noisy = tmp_path / "noisy"
    noisy.mkdir()
    for item in base_model.iterdir():
        if item.name != WEIGHTS_FILE:
            (noisy / item.name).write_bytes(item.read_bytes())
    generator = torch.Generator().manual_seed(0)
    state = load_file(str(base_model / WEIGHTS_FILE))
    for name, tensor in state.items():
        if name.endswith("proj.weight"):  # every decoder linear layer: 10% relative noise
            noise = torch.randn(tensor.shape, generator=generator) * tensor.float().std() * 0.1
            state[name] = (tensor.float() + noise).to(tensor.dtype)
    save_file(state, str(noisy / WEIGHTS_FILE), metadata={"format": "pt"})

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    # fp32: this checks the evaluation, not a dtype, and on CPUs without AVX-512 vLLM's
    # bf16 runs through torch's slow bf16 GEMM (on an AVX2-only EPYC the three bf16
    # passes took 344 s, most of it prefilling the cloze contexts).
    settings = EvalSettings(window=256, count=2, greedy_prompts=4, greedy_tokens=16, cloze_items=12,
                            chat_tokens=24, chat_prompts=("Why is the sky blue?", "How do plants make their food?"),
                            dtype="float32")
    out = tmp_path / "report"
    same, perturbed = run_eval([ModelSpec("same", base_model), ModelSpec("noisy", noisy)], base_model, CORPUS, out,
                               settings)
    print(json.dumps({"same": same.kl, "noisy": perturbed.kl, "noisy_top1": perturbed.top1_agreement}))

    assert same.kl == {"mean": 0.0, "median": 0.0, "p99": 0.0}
    assert same.top1_agreement == 1.0 and same.greedy_agreement == 1.0 and same.chat_agreement == 1.0
    assert same.perplexity == same.reference_perplexity
    assert same.cloze_recall == same.reference_cloze_recall and same.chat_overlap == 1.0

    assert perturbed.kl["mean"] > 0.01 and perturbed.kl["p99"] > perturbed.kl["median"] > 0
    assert perturbed.top1_agreement < 0.97
    assert perturbed.greedy_agreement < 1.0 and perturbed.greedy_common_prefix < settings.greedy_tokens
    assert perturbed.perplexity != perturbed.reference_perplexity
    assert 0.5 < perturbed.topk_coverage <= 1.0

    data = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in data["models"]] == ["same", "noisy"]
    assert len(data["reference_chat_answers"]) == 2 and all(data["reference_chat_answers"])
    assert "| noisy |" in (out / "report.md").read_text()
    assert (out / "kl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.environ.get("VLLM_SPARSE_FFN_SKIP") is None
