"""The calibrate-skip command end to end on a tiny random Llama (with SmolLM2's
tokenizer), and a bad profile refused before vLLM is started."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from vllm_sparse.cli import main
from vllm_sparse.skip.policy import load_policy

DATA = Path("/work/shared/data")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@pytest.fixture(scope="module")
def tiny_dir(base_model, tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=10,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    out = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(config).save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(Path(base_model) / name, out / name)
    return out


def _corpus() -> Path:
    corpus = DATA / "persuasion.txt"
    if not corpus.exists():
        pytest.fail(f"{corpus} is missing (the shared corpora)")
    return corpus


def test_calibrate_skip_writes_a_profile_near_the_target(tiny_dir, tmp_path, capsys):
    out = tmp_path / "p.yaml"
    code = main(["calibrate-skip", str(tiny_dir), "--corpus", str(_corpus()), "--target-skip", "0.2",
                 "--out", str(out), "--window", "96", "--count", "2", "--warmup-tokens", "8"])
    assert code == 0
    policy = load_policy(out)
    assert policy.enabled and policy.warmup_tokens == 8 and 0 < policy.threshold < 1
    assert "realised there" in out.read_text()
    realised = float(capsys.readouterr().out.split("calibration corpus: ")[1].split("%")[0]) / 100
    assert abs(realised - 0.2) <= 0.01


def test_bad_target_and_bad_profile_are_clear_errors(tiny_dir, tmp_path, capsys):
    assert main(["calibrate-skip", str(tiny_dir), "--corpus", str(_corpus()), "--target-skip", "1.5",
                 "--out", str(tmp_path / "x.yaml"), "--window", "64", "--count", "1"]) == 2
    assert "target-skip" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("enabled: true\nskip_layer: 2\n")
    assert main(["perplexity", str(tiny_dir), "--corpus", str(_corpus()), "--ffn-skip", str(bad)]) == 2
    assert "unknown key(s) ['skip_layer']" in capsys.readouterr().err


def test_calibrate_skip_within_a_perplexity_budget(tiny_dir, tmp_path, capsys):
    """The profile written keeps the held-out perplexity within the budget (measured
    again here, independently of the command), and is the largest ratio of the trials
    that did."""
    from transformers import AutoTokenizer

    from vllm_sparse.quality.perplexity import corpus_windows
    from vllm_sparse.skip.budget import split_windows
    from vllm_sparse.skip.measure import skip_perplexity
    from vllm_sparse.skip.hf import load_hf_llama
    from vllm_sparse.skip.policy import SkipPolicy

    out = tmp_path / "budget.yaml"
    code = main(["calibrate-skip", str(tiny_dir), "--corpus", str(_corpus()), "--max-ppl-increase", "1",
                 "--out", str(out), "--window", "96", "--count", "2", "--warmup-tokens", "8"])
    assert code == 0
    printed = capsys.readouterr().out
    trials = [line for line in printed.splitlines() if line.startswith("target ")]
    assert len(trials) == 6

    def increase(line: str) -> float:
        return float(line.rsplit("(", 1)[1].split("%")[0])

    def held_out(line: str) -> float:
        return float(line.split("held-out skip ")[1].split("%")[0])

    within = [held_out(t) for t in trials if increase(t) <= 1.0]
    policy = load_policy(out)
    model = load_hf_llama(tiny_dir, torch.float32)
    windows = corpus_windows(AutoTokenizer.from_pretrained(tiny_dir), _corpus(), 96, 4)
    _, held = split_windows(windows)
    base, _ = skip_perplexity(model, SkipPolicy(enabled=False), held)
    ppl, ratio = skip_perplexity(model, policy, held)
    assert ppl <= base * 1.01
    assert round(100 * ratio, 1) == (max(within) if within else 0.0)
    assert f"perplexity {base:.3f} -> {ppl:.3f}" in printed


def test_a_budget_needs_held_out_windows_and_a_sane_percentage(tiny_dir, tmp_path, capsys):
    common = ["calibrate-skip", str(tiny_dir), "--corpus", str(_corpus()), "--out", str(tmp_path / "x.yaml"),
              "--window", "96"]
    assert main(common + ["--max-ppl-increase", "-3", "--count", "2"]) == 2
    assert "--max-ppl-increase must be a percentage" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one goal only
        main(common + ["--max-ppl-increase", "5", "--target-skip", "0.2"])
    assert main(common + ["--max-ppl-increase", "5", "--neuron-sparsity", "0.5", "--count", "2"]) == 2
    assert "--granularity neuron" in capsys.readouterr().err


def test_neuron_level_calibration_drops_the_target_share(tiny_dir, tmp_path):
    """calibrate-skip --neuron-sparsity 0.5: replayed on the calibration windows, the
    transformers path drops half the neurons of the rows past warm-up, skips no
    block, and the perplexity moves."""
    from transformers import AutoTokenizer

    from vllm_sparse.quality.perplexity import corpus_windows
    from vllm_sparse.skip.measure import measure_on
    from vllm_sparse.skip.hf import load_hf_llama
    from vllm_sparse.skip.policy import SkipPolicy

    out = tmp_path / "neuron.yaml"
    assert main(["calibrate-skip", str(tiny_dir), "--corpus", str(_corpus()), "--neuron-sparsity", "0.5",
                 "--out", str(out), "--window", "96", "--count", "2", "--warmup-tokens", "8"]) == 0
    policy = load_policy(out)
    assert policy.neuron_level and policy.threshold == 1.0 and len(policy.neuron_thresholds) == 10
    model = load_hf_llama(tiny_dir, torch.float32)
    windows = corpus_windows(AutoTokenizer.from_pretrained(tiny_dir), _corpus(), 96, 2)
    ppl, ratios = measure_on(model, policy, windows)
    assert ratios["block"] == 0 and abs(ratios["neuron"] - 0.5) < 0.01
    base, _ = measure_on(model, SkipPolicy(enabled=False), windows)
    assert ppl != base


def test_eval_skip_reports_both_granularities_with_a_budget_row(tiny_dir, tmp_path):
    import json

    out = tmp_path / "quality"
    assert main(["eval-skip", f"tiny={tiny_dir}", "--calib-corpus", str(_corpus()), "--eval-corpus",
                 str(DATA / "sensesensibility.txt"), "--granularity", "block,neuron", "--targets", "0,0.2",
                 "--max-ppl-increase", "50", "--window", "64", "--count", "2", "--prompts", "3",
                 "--new-tokens", "6", "--out", str(out)]) == 0
    rows = json.loads((out / "ffn_skip_quality.json").read_text())
    assert [(r["granularity"], r["target"] if r["budget"] is None else "budget") for r in rows] == [
        ("block", 0.0), ("block", 0.2), ("block", "budget"), ("neuron", 0.0), ("neuron", 0.2), ("neuron", "budget")]
    neuron = rows[4]
    assert neuron["realised_ratio"] == 0 and 0.1 < neuron["neuron_sparsity"] < 0.3
    assert rows[0]["greedy_agreement"] == 1.0 and rows[3]["greedy_agreement"] == 1.0  # nothing skipped
    assert (out / "ffn_skip_quality.png").stat().st_size > 0 and "neuron" in (out / "ffn_skip_quality.md").read_text()
