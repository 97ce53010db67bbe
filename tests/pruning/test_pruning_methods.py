"""Wanda, SparseGPT, OWL and the layer-by-layer driver, on a tiny random
LlamaForCausalLM made here (hidden 64, 2 layers) with a tiny byte-level tokenizer:
never the real model, so the whole file runs in seconds."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_sparse.pruning.calibration import (
    LINEAR_NAMES,
    CalibrationConfig,
    calibration_tokens,
    load_llama,
)
from vllm_sparse.checkpoint.compressed_tensors_format import decompress_state_dict
from vllm_sparse.pruning.owl import outlier_ratio, owl_layer_sparsity
from vllm_sparse.checkpoint.layer_names import prunable_layer_index
from vllm_sparse.pruning.masks import magnitude_prune
from vllm_sparse.pruning.plan import OWLConfig, PruningPlan
from vllm_sparse.pruning.run import measure_outlier_ratios, prune_model
from vllm_sparse.pruning.sparsegpt import sparsegpt_prune
from vllm_sparse.pruning.wanda import wanda_prune
from vllm_sparse.checkpoint.writer import load_state_dict
from vllm_sparse.cli import main
from vllm_sparse.kernels import NMPattern, find_nm_violation

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TEXT = " ".join(
    random.Random(0).choice(["the", "a", "sense", "sensibility", "Elinor", "Marianne", "said", "was", "of", "and",
                             "letter", "house", "walk", "rain", "heart", "she", "he", "not", "very", "little"])
    for _ in range(6000)
)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random 2-layer Llama (hidden 64) saved in bf16 with a byte-level BPE tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TEXT], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(directory)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    # Llama-like outlier features: a few input channels much louder than the rest,
    # so activation-aware scores differ from plain magnitude.
    with torch.no_grad():
        for layer in model.model.layers:
            for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                norm.weight.copy_(torch.exp(torch.randn(64)))
    model.to(torch.bfloat16).save_pretrained(directory)
    (directory / "calibration.txt").write_text(TEXT)
    return directory


def calibration_of(model_dir: Path, samples: int = 8, seqlen: int = 64) -> CalibrationConfig:
    return CalibrationConfig(model_dir / "calibration.txt", samples=samples, seqlen=seqlen, batch_size=4)


def linear_inputs(model, tokens: torch.Tensor) -> dict[tuple[int, str], torch.Tensor]:
    """Every decoder linear layer's input rows for ``tokens``, by full forward passes."""
    seen: dict[tuple[int, str], list[torch.Tensor]] = {}
    handles = []
    for index, layer in enumerate(model.model.layers):
        for name in LINEAR_NAMES:
            handles.append(layer.get_submodule(name).register_forward_hook(
                lambda _m, args, _o, key=(index, name): seen.setdefault(key, []).append(args[0].reshape(-1, args[0].shape[-1]))
            ))
    with torch.no_grad():
        model(input_ids=tokens, use_cache=False)
    for handle in handles:
        handle.remove()
    return {key: torch.cat(chunks).double() for key, chunks in seen.items()}


def key_of(index: int, name: str) -> str:
    return f"model.layers.{index}.{name}.weight"


def test_wanda_mask_equals_brute_force_choice_layer_by_layer(tiny_model):
    calibration = calibration_of(tiny_model)
    pruned, recipe = prune_model(tiny_model, "wanda", PruningPlan(sparsity=0.5), calibration=calibration)
    assert recipe["method"] == "wanda"

    model, tokenizer = load_llama(tiny_model)
    tokens = calibration_tokens(tokenizer, calibration)
    # Layer 0 sees the dense model's activations; layer 1 those of the model whose
    # layer 0 is already pruned (the driver calibrates on the pruned model).
    for index in range(2):
        inputs = linear_inputs(model, tokens)
        for name in LINEAR_NAMES:
            weight = model.model.layers[index].get_submodule(name).weight.detach().double()
            x = inputs[(index, name)]
            norms = [sum(float(v) ** 2 for v in x[:, j]) ** 0.5 for j in range(x.shape[1])]
            drop = weight.shape[1] // 2
            expected = torch.zeros_like(weight, dtype=torch.bool)
            for row in range(weight.shape[0]):
                scores = [abs(float(weight[row, j])) * norms[j] for j in range(weight.shape[1])]
                for j in sorted(range(len(scores)), key=scores.__getitem__)[:drop]:
                    expected[row, j] = True
            got = pruned[key_of(index, name)] == 0
            assert torch.equal(got, expected), (index, name)
            # the activations matter: magnitude alone would choose differently
            assert not torch.equal(magnitude_prune(weight, 0.5) == 0, expected), (index, name)
            kept = ~expected
            assert torch.equal(pruned[key_of(index, name)].double()[kept], weight[kept])
        with torch.no_grad():
            for name in LINEAR_NAMES:
                model.model.layers[index].get_submodule(name).weight.copy_(pruned[key_of(index, name)].float())


def reconstruction_error(weight: torch.Tensor, pruned: torch.Tensor, x: torch.Tensor) -> float:
    return float(torch.linalg.norm((weight.double() - pruned.double()) @ x.T))


@pytest.mark.parametrize("pattern", [None, NMPattern(2, 4)], ids=["unstructured50", "2of4"])
def test_sparsegpt_reconstructs_better_than_magnitude_and_wanda(tiny_model, pattern):
    model, tokenizer = load_llama(tiny_model)
    inputs = linear_inputs(model, calibration_tokens(tokenizer, calibration_of(tiny_model, samples=16)))
    for (index, name), x in inputs.items():
        weight = model.model.layers[index].get_submodule(name).weight.detach()
        hessian = (x.T @ x / x.shape[0]).float()
        errors = {
            "magnitude": reconstruction_error(weight, magnitude_prune(weight, 0.5, pattern), x),
            "wanda": reconstruction_error(weight, wanda_prune(weight, x.square().sum(0).sqrt().float(), 0.5, pattern), x),
            "sparsegpt": reconstruction_error(weight, sparsegpt_prune(weight, hessian, 0.5, pattern, blocksize=32), x),
        }
        assert errors["sparsegpt"] < 0.9 * min(errors["magnitude"], errors["wanda"]), (index, name, errors)


def test_sparsegpt_keeps_exact_per_row_sparsity_and_positive_zeros():
    torch.manual_seed(1)
    x = torch.randn(256, 40)
    weight = torch.randn(12, 40)
    pruned = sparsegpt_prune(weight, x.T @ x / 256, 0.7, blocksize=16)
    assert ((pruned == 0).sum(dim=1) == int(40 * 0.7)).all()
    assert not torch.signbit(pruned[pruned == 0]).any()


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", [NMPattern(2, 4), NMPattern(4, 8)], ids=["2of4", "4of8"])
def test_nm_outputs_satisfy_the_pattern(tiny_model, method, pattern):
    state = load_state_dict(tiny_model)
    pruned, recipe = prune_model(
        tiny_model, method, PruningPlan(sparsity=0.5, pattern=pattern), calibration=calibration_of(tiny_model, 4)
    )
    assert recipe["pattern"] == str(pattern)
    assert pruned.keys() == state.keys()
    for name, tensor in pruned.items():
        assert tensor.dtype == state[name].dtype
        if prunable_layer_index(name) is None:
            assert torch.equal(tensor, state[name]), name
        else:
            assert find_nm_violation(tensor, pattern) is None, name
            # exactly N kept per group (no group left emptier than needed)
            assert float((tensor == 0).float().mean()) == pytest.approx(0.5, abs=0.01)


@settings(max_examples=60, deadline=None)
@given(
    ratios=st.lists(st.floats(0, 0.2, allow_nan=False), min_size=2, max_size=40),
    target=st.floats(0.3, 0.8),
    lam=st.floats(0.0, 0.15),
)
def test_owl_allocation_averages_to_target_within_lambda(ratios, target, lam):
    sparsity = owl_layer_sparsity(ratios, target, lam)
    assert len(sparsity) == len(ratios)
    assert sum(sparsity) / len(sparsity) == pytest.approx(target, abs=1e-9)
    assert all(target - lam - 1e-9 <= s <= target + lam + 1e-9 for s in sparsity)
    # fewer outliers -> more sparsity
    for i in range(len(ratios)):
        for j in range(len(ratios)):
            if ratios[i] < ratios[j]:
                assert sparsity[i] >= sparsity[j] - 1e-12


def test_owl_allocation_example_and_outlier_ratio():
    assert owl_layer_sparsity([0.01, 0.03, 0.02], 0.7, 0.08) == pytest.approx((0.78, 0.62, 0.70))
    assert owl_layer_sparsity([0.05, 0.05], 0.6, 0.08) == (0.6, 0.6)
    scores = torch.ones(100)
    scores[:3] = 100.0  # mean ~3.97: three scores above 5 x mean
    assert outlier_ratio([scores[:50], scores[50:]], m=5) == pytest.approx(0.03)


def test_owl_pruning_on_the_tiny_model(tiny_model):
    calibration = calibration_of(tiny_model, 4)
    model, tokenizer = load_llama(tiny_model)
    ratios = measure_outlier_ratios(model, calibration_tokens(tokenizer, calibration), m=3)
    assert len(ratios) == 2 and ratios[0] != ratios[1]
    pruned, recipe = prune_model(
        tiny_model, "wanda", PruningPlan(sparsity=0.7), calibration=calibration, allocation="owl",
        owl=OWLConfig(m=3, lam=0.08),
    )
    assert recipe["allocation"] == "owl" and recipe["owl"]["outlier_ratios"] == pytest.approx(ratios, abs=1e-6)
    low, high = (0.62, 0.78) if ratios[0] > ratios[1] else (0.78, 0.62)
    assert recipe["layer_sparsity"] == pytest.approx([low, high])
    for index, expected in enumerate((low, high)):
        weight = pruned[key_of(index, "mlp.down_proj")]
        assert float((weight == 0).float().mean()) == pytest.approx(int(128 * expected) / 128)


def run_cli(capsys, *args) -> tuple[int, str]:
    code = main(["prune", *map(str, args)])
    return code, capsys.readouterr().err


def test_bad_requests_raise_clear_errors(tiny_model, tmp_path, capsys):
    calibration = calibration_of(tiny_model)
    with pytest.raises(ValueError, match="means sparsity 0.5"):
        PruningPlan(sparsity=0.6, pattern=NMPattern(2, 4))
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            PruningPlan(sparsity=bad)
    with pytest.raises(ValueError, match="OWL allocation gives each layer its own sparsity"):
        prune_model(tiny_model, "wanda", PruningPlan(pattern=NMPattern(2, 4)), calibration=calibration, allocation="owl")
    with pytest.raises(ValueError, match="needs calibration text"):
        prune_model(tiny_model, "sparsegpt", PruningPlan())
    with pytest.raises(ValueError, match="unknown pruning method"):
        prune_model(tiny_model, "random", PruningPlan(), calibration=calibration)

    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match="calibration file is empty"):
        prune_model(tiny_model, "wanda", PruningPlan(), calibration=CalibrationConfig(empty))

    other = tmp_path / "mistral"
    other.mkdir()
    config = json.loads((tiny_model / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "architectures": ["MistralForCausalLM"]}))
    (other / "model.safetensors").write_bytes((tiny_model / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"MistralForCausalLM.*not supported.*LlamaForCausalLM"):
        prune_model(other, "wanda", PruningPlan(), calibration=calibration)

    # The same requests through the command line: exit status 2 and the message.
    out = tmp_path / "out"
    cases = [
        (("--pattern", "2:4", "--sparsity", "0.6"), "means sparsity 0.5"),
        (("--sparsity", "1.0"), r"[0, 1)"),
        (("--method", "wanda", "--calibration", empty), "calibration file is empty"),
        (("--method", "wanda", "--pattern", "2:4", "--allocation", "owl", "--calibration", calibration.path), "OWL"),
        (("--method", "sparsegpt"), "needs calibration text"),
    ]
    for args, message in cases:
        code, err = run_cli(capsys, tiny_model, out, *args)
        assert code == 2 and message in err, (args, err)
    code, err = run_cli(capsys, other, out, "--method", "wanda", "--calibration", calibration.path)
    assert code == 2 and "not supported" in err
    assert not out.exists()


def test_cli_writes_checkpoint_with_recipe(tiny_model, tmp_path, capsys):
    out = tmp_path / "sparsegpt-owl"
    code = main([
        "prune", str(tiny_model), str(out), "--method", "sparsegpt", "--sparsity", "0.6", "--allocation", "owl",
        "--owl-m", "3", "--owl-lambda", "0.05", "--calibration", str(tiny_model / "calibration.txt"),
        "--calibration-samples", "4", "--calibration-seqlen", "64", "--storage", "sparse-bitmask",
    ])
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    recipe = config["vllm_sparse"]
    assert recipe["method"] == "sparsegpt" and recipe["allocation"] == "owl"
    assert recipe["sparsity"] == 0.6 and recipe["pattern"] == "unstructured"
    assert recipe["calibration"] == {"file": "calibration.txt", "samples": 4, "seqlen": 64, "seed": 0}
    assert recipe["owl"]["m"] == 3 and recipe["owl"]["lambda"] == 0.05 and len(recipe["owl"]["outlier_ratios"]) == 2
    assert recipe["sparsegpt"] == {"blocksize": 128, "damp": 0.01}
    assert sum(recipe["layer_sparsity"]) / 2 == pytest.approx(0.6)
    assert config["quantization_config"]["sparsity_config"]["format"] == "sparse-bitmask"

    # The compressed weights decompress to layers at the recorded sparsities.
    weights = decompress_state_dict(load_state_dict(out), "sparse-bitmask")
    for index, sparsity in enumerate(recipe["layer_sparsity"]):
        weight = weights[key_of(index, "self_attn.q_proj")]
        assert float((weight == 0).float().mean()) == pytest.approx(int(64 * sparsity) / 64)


def test_cli_magnitude_with_layer_sparsity_still_works(tiny_model, tmp_path):
    out = tmp_path / "magnitude"
    assert main(["prune", str(tiny_model), str(out), "--layer-sparsity", "0.25,0.75", "--storage", "dense"]) == 0
    recipe = json.loads((out / "config.json").read_text())["vllm_sparse"]
    assert recipe["method"] == "magnitude" and recipe["layer_sparsity"] == [0.25, 0.75]
    weights = load_state_dict(out)
    assert float((weights[key_of(1, "mlp.up_proj")] == 0).float().mean()) == 0.75
