"""``vllm-sparse prune --quantize``: round-to-nearest W8A8 (INT8, FP8) and W4A16
(int4, groups of 128) over the pruned weights, written in the layouts
compressed-tensors 0.14.0.1 writes (sparse-24-bitmask for W8A8, marlin-24 for
W4A16), byte for byte, and served by the plugin like stock vLLM serves the plain
twin."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from checkpoints import tiny_llama
from vllm_runner import NO_WNA16_REFUSAL, run_engines, vllm_cpu_has_wna16
from vllm_sparse.checkpoint.compressed_tensors_format import compress_weight, decompress_weight
from vllm_sparse.checkpoint.writer import load_state_dict
from vllm_sparse.cli import main
from vllm_sparse.kernels import NMPattern
from vllm_sparse.pruning.plan import PruningPlan, prune_state_dict
from vllm_sparse.pruning.quantize import SCHEMES, quantize_state_dict, quantize_weight, weight_scales

REPO = Path(__file__).resolve().parents[2]
CT014_PYTHON = REPO / ".venv-ct014" / "bin" / "python"
CT014_SCRIPT = REPO / "tests" / "checkpoint" / "make_ct014_fixtures.py"
PROMPTS = [[(7 * i + 3 * j) % 120 + 5 for j in range(16)] for i in range(8)]
# How each scheme stores 2:4 weights compressed (stock vLLM reads neither).
COMPRESSED = {"int8-dynamic": "sparse-24-bitmask", "fp8-dynamic": "sparse-24-bitmask", "w4a16": "marlin-24"}


@pytest.mark.parametrize("name", ["int8-dynamic", "fp8-dynamic"])
def test_values_stay_in_range_and_dequantize_close(name):
    scheme = SCHEMES[name]
    torch.manual_seed(0)
    weight = (torch.randn(64, 96) * torch.logspace(-3, 1, 64).unsqueeze(1)).to(torch.bfloat16)
    scale = weight_scales(weight, scheme)
    values = quantize_weight(weight, scale, scheme)
    assert values.dtype == scheme.dtype and scale.shape == (64, 1) and scale.dtype == torch.bfloat16
    wide = values.to(torch.float32)
    assert wide.abs().max() <= scheme.largest  # int8 -128 never appears
    # Each row's largest magnitude lands within one step of the top of the range.
    assert (wide.abs().amax(dim=1) >= scheme.largest * 0.97).all()
    error = (wide * scale.float() - weight.float()).abs() / weight.float().abs().amax(dim=1, keepdim=True)
    assert error.max() < (0.5 / 127 + 0.01 if name == "int8-dynamic" else 0.07)


def test_w4a16_groups_of_128_in_float16_or_one_scale_per_row():
    torch.manual_seed(0)
    weight = (torch.randn(32, 256) * torch.logspace(-3, 0, 32).unsqueeze(1)).to(torch.bfloat16)
    quantized, scheme = quantize_state_dict({"model.layers.0.mlp.down_proj.weight": weight}, SCHEMES["w4a16"])
    values, scale = quantized["model.layers.0.mlp.down_proj.weight"], quantized["model.layers.0.mlp.down_proj.weight_scale"]
    assert scheme.group_size == 128 and scale.shape == (32, 2) and scale.dtype == torch.bfloat16
    assert torch.equal(scale.to(torch.float16).to(torch.bfloat16), scale)  # marlin-24 stores them float16
    assert values.dtype == torch.int8 and values.abs().max() <= 7  # -8 never appears
    grouped = values.reshape(32, 2, 128).float() * scale.float().unsqueeze(-1)
    error = (grouped.reshape(32, 256) - weight.float()).abs().reshape(32, 2, 128).amax(-1)
    assert (error <= scale.float() * 0.5 * 1.01 + 1e-6).all()  # half a step, float16 rounding aside
    # Quantized in float16 (as the marlin-24 compressor does), not in the weight's bfloat16.
    assert torch.equal(values, quantize_weight(weight.to(torch.float16), scale, scheme))
    # A width that is not a multiple of 128 (SmolLM2: 576): one scale per row for the whole model.
    _, scheme = quantize_state_dict({"model.layers.0.mlp.down_proj.weight": weight,
                                     "model.layers.0.mlp.up_proj.weight": weight[:, :96]}, SCHEMES["w4a16"])
    assert scheme.group_size is None and scheme.config_group()["weights"]["strategy"] == "channel"


@pytest.mark.parametrize("args, message", [
    (["--storage", "sparse-24-bitmask"], "4-bit weights are stored marlin-24 (2:4) or dense"),
    (["--pattern", "unstructured", "--storage", "marlin-24"], "marlin-24 stores 2:4 weights"),
])
def test_w4a16_storage_that_no_format_holds_is_refused_before_pruning(tmp_path, capsys, args, message):
    argv = ["prune", str(tmp_path / "no-such-model"), str(tmp_path / "out"), "--pattern", "2:4", "--quantize", "w4a16"]
    assert main(argv + args) == 2
    assert message in capsys.readouterr().err


def test_our_2of4_compressor_keeps_int8_minus_128():
    """0.14.0.1 ranks a group by abs() in int8, where abs(-128) wraps, and drops it."""
    values = torch.tensor([[-128, 0, 0, 65, 3, -7, 0, 0]], dtype=torch.int8)
    parts = compress_weight(values, "sparse-24-bitmask")
    assert parts["compressed"].tolist() == [[-128, 65, 3, -7]]
    assert torch.equal(decompress_weight(parts, "sparse-24-bitmask", "w"), values)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A tiny Llama (as transformers writes it), pruned 2:4 and quantized by the CLI.
    Its MLP is 512 wide, so down_proj has 4 groups of 128 per row (marlin-24 then
    permutes the scales)."""
    root = tmp_path_factory.mktemp("quantize")
    tiny_llama(root / "dense", num_key_value_heads=1, intermediate_size=512)
    pruned = prune_state_dict(load_state_dict(root / "dense"), PruningPlan(0.5, NMPattern(2, 4)))
    save_file({k: v.contiguous() for k, v in pruned.items()}, root / "pruned.safetensors")
    out = {}
    for name in SCHEMES:
        for storage in (COMPRESSED[name], "dense"):
            target = root / f"{name}-{storage}"
            assert main(["prune", str(root / "dense"), str(target), "--pattern", "2:4", "--storage", storage,
                         "--quantize", name]) == 0
            out[name, storage] = target
        # The plain twin stock vLLM serves: the same quantized values, no sparsity_config.
        twin = root / f"{name}-twin"
        twin.mkdir()
        for file in out[name, "dense"].iterdir():
            (twin / file.name).write_bytes(file.read_bytes())
        config = json.loads((twin / "config.json").read_text())
        del config["quantization_config"]["sparsity_config"]
        (twin / "config.json").write_text(json.dumps(config))
        out[name, "twin"] = twin
    out["pruned"] = root / "pruned.safetensors"
    # marlin-24 keeps only a permuted copy of the scales; the plain twin has them as they are.
    twin = load_file(out["w4a16", "dense"] / "model.safetensors")
    save_file({k: v for k, v in twin.items() if k.endswith(".weight_scale")}, root / "w4a16-scales.safetensors")
    out["w4a16-scales"] = root / "w4a16-scales.safetensors"
    return out


def test_written_layout_matches_the_published_one(written):
    config = json.loads((written["int8-dynamic", "sparse-24-bitmask"] / "config.json").read_text())
    block = config["quantization_config"]
    assert block["format"] == "int-quantized" and block["sparsity_config"]["format"] == "sparse-24-bitmask"
    group = block["config_groups"]["group_0"]
    assert group["weights"]["strategy"] == "channel" and group["input_activations"]["dynamic"] is True
    tensors = load_file(written["int8-dynamic", "sparse-24-bitmask"] / "model.safetensors")
    assert tensors["model.layers.0.mlp.down_proj.compressed"].dtype == torch.int8
    assert tensors["model.layers.0.mlp.down_proj.weight_scale"].shape == (128, 1)


def test_written_w4a16_layout_matches_the_published_one(written):
    block = json.loads((written["w4a16", "marlin-24"] / "config.json").read_text())["quantization_config"]
    assert block["format"] == "marlin-24" and block["sparsity_config"]["format"] == "dense"
    assert block["sparsity_config"]["sparsity_structure"] == "2:4"
    weights = block["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["strategy"], weights["group_size"]) == (4, "group", 128)
    assert block["config_groups"]["group_0"]["input_activations"] is None
    tensors = load_file(written["w4a16", "marlin-24"] / "model.safetensors")
    assert {"model.layers.0.mlp.down_proj." + p for p in ("weight_packed", "meta", "scale_packed")} <= set(tensors)
    assert not any(name.endswith(".weight_scale") for name in tensors)
    plain = json.loads((written["w4a16", "dense"] / "config.json").read_text())["quantization_config"]
    assert plain["format"] == "pack-quantized" and plain["sparsity_config"]["format"] == "dense"


@pytest.mark.skipif(not CT014_PYTHON.exists(), reason=".venv-ct014 is absent (scripts/ct014_venv.sh creates it)")
@pytest.mark.parametrize("name", list(SCHEMES))
def test_byte_identical_to_what_ct014_writes_for_the_same_values(written, name):
    scales = [str(written["w4a16-scales"])] if name == "w4a16" else []
    run = subprocess.run([str(CT014_PYTHON), str(CT014_SCRIPT), "verify-quantized",
                          str(written[name, COMPRESSED[name]]), str(written["pruned"]), *scales],
                         capture_output=True, text=True, timeout=300)
    report = json.loads(run.stdout.strip().splitlines()[-1])
    # W8A8: 14 layers x (values, bitmask, shape, scale) + 7 others; W4A16: 14 x 3 + 7.
    checked = 49 if name == "w4a16" else 63
    assert run.returncode == 0 and report["problems"] == [] and report["checked"] == checked, run.stdout + run.stderr


@pytest.mark.vllm
def test_plugin_serves_what_our_writer_writes_like_stock_serves_the_twin(written, tmp_path):
    def job(model: Path) -> dict:
        return {"model": str(model), "prompts": PROMPTS, "max_tokens": 24, "skip_tokenizer_init": True,
                "max_model_len": 256}

    names = list(SCHEMES)
    ours = dict(zip(names, run_engines([job(written[n, COMPRESSED[n]]) for n in names], tmp_path / "ours")))
    if not vllm_cpu_has_wna16():  # no 4-bit GEMM in vLLM on this CPU: refused at load, saying so
        assert NO_WNA16_REFUSAL in ours["w4a16"].get("error", ""), ours["w4a16"]
        names.remove("w4a16")
    stock = run_engines([job(written[n, "twin"]) for n in names], tmp_path / "stock", plugins=False)
    for name, theirs in zip(names, stock):
        mine = ours[name]
        assert "error" not in mine and "error" not in theirs, (name, mine.get("error"), theirs.get("error"))
        assert mine["tokens"] == theirs["tokens"], name
        delta = max(abs(a - b) for la, lb in zip(mine["logprobs"], theirs["logprobs"]) for a, b in zip(la, lb))
        print(f"{name} ({COMPRESSED[name]}): tokens identical to stock on the twin, max |dlogprob| {delta:.2e}")
        assert delta < 1e-3, (name, delta)
