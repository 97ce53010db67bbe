"""Sparse checkpoints that are quantized as well, written by compressed-tensors
0.14.0.1 itself (tests/checkpoint/fixtures/ct014/quantized, made by
``make_ct014_fixtures.py write-quantized``): a tiny Llama, 2:4-pruned, INT8 or FP8
W8A8 (per-channel weights, dynamic per-token activations) stored
``sparse-24-bitmask``, W4A16 (int4, group 128) stored ``marlin-24``, the same
quantized values stored plainly (the twins stock vLLM serves), and the plain INT8
one with a leftover ``sparsity_config`` of format ``dense``; and SmolLM2-135M
written the same ways by 0.14.0.1 live. Each is served through ``LLM`` and
through the OpenAI server; stock vLLM refuses every checkpoint with a
sparsity_config. Each broken input stops the real server, naming the tensor."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from checkpoints import MODELS
from net import free_port
from vllm_runner import NO_WNA16_REFUSAL, run_engines, vllm_cpu_has_wna16
from vllm_sparse.serving.server_process import OpenAIServer, ServerFailed
from vllm_sparse.checkpoint.compressed_tensors_format import decompress_weight, weight_part_names

QUANTIZED = Path(__file__).resolve().parents[1] / "checkpoint" / "fixtures" / "ct014" / "quantized"
PROMPTS = [[(7 * i + 3 * j) % 120 + 5 for j in range(16)] for i in range(8)]
MAX_TOKENS = 32
STOCK_REFUSAL = "Sparsity support has been removed from compressed-tensors"


def _check_decompressed_values_equal_the_twins(folder: Path, kind: str) -> None:
    """Every linear layer of ``{kind}_2of4`` is stored sparse-24-bitmask, and its
    decompressed values and scales are those of ``{kind}_plain``."""
    sparse = load_file(folder / f"{kind}_2of4" / "model.safetensors")
    plain = load_file(folder / f"{kind}_plain" / "model.safetensors")
    prefixes = weight_part_names(sparse, "sparse-24-bitmask")
    linear = {name.removesuffix(".weight") for name in plain if name.endswith("_proj.weight")}
    assert set(prefixes) == linear and linear
    for prefix, parts in prefixes.items():
        values = decompress_weight({part: sparse[f"{prefix}.{part}"] for part in parts}, "sparse-24-bitmask", prefix)
        twin = plain[f"{prefix}.weight"]
        assert values.dtype == twin.dtype == (torch.int8 if kind == "int8" else torch.float8_e4m3fn)
        assert torch.equal(values.view(torch.int8), twin.view(torch.int8)), prefix
        assert torch.equal(sparse[f"{prefix}.weight_scale"], plain[f"{prefix}.weight_scale"])


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_decompressed_values_are_the_twins_quantized_values(kind):
    _check_decompressed_values_equal_the_twins(QUANTIZED, kind)


def _job(name: str) -> dict:
    """A fixture by name, or a checkpoint by path."""
    return {"model": str(QUANTIZED / name), "prompts": PROMPTS, "max_tokens": MAX_TOKENS,
            "skip_tokenizer_init": True, "max_model_len": 256}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("quantized")
    sparse = ["int8_2of4", "int8_sparsity_dense", "fp8_2of4", "w4a16_marlin24", "int8_2of4_minus128"]
    stock_names = ["int8_2of4", "int8_sparsity_dense", "fp8_2of4", "w4a16_marlin24", "int8_plain", "fp8_plain",
                   *(["w4a16_plain"] if vllm_cpu_has_wna16() else [])]
    ours = run_engines([_job(n) for n in sparse], work / "ours")
    stock = run_engines([_job(n) for n in stock_names], work / "stock", plugins=False)
    return dict(zip(sparse, ours)), dict(zip(stock_names, stock)), (work / "ours" / "runner.log").read_text()


def _max_dlogprob(a: dict, b: dict) -> float:
    return max(abs(x - y) for la, lb in zip(a["logprobs"], b["logprobs"]) for x, y in zip(la, lb))


@pytest.mark.vllm
def test_stock_vllm_refuses_what_carries_a_sparsity_config(served):
    _, stock, _ = served
    for name in ("int8_2of4", "int8_sparsity_dense", "fp8_2of4", "w4a16_marlin24"):
        assert "error" in stock[name], (name, stock[name])
    for name in ("int8_2of4", "int8_sparsity_dense", "fp8_2of4"):
        assert STOCK_REFUSAL in stock[name]["error"], (name, stock[name])
    assert "tokens" in stock["int8_plain"]


@pytest.mark.vllm
@pytest.mark.parametrize("name", ["int8_2of4", "int8_sparsity_dense"])
def test_int8_served_token_for_token_like_stock_on_the_plain_twin(served, name):
    ours, stock, _ = served
    assert "error" not in ours[name], ours[name]
    reference = stock["int8_plain"]
    print(f"{name}: max |dlogprob| {_max_dlogprob(ours[name], reference):.2e} against stock vLLM on int8_plain "
          f"({len(PROMPTS)} prompts x {MAX_TOKENS} tokens)")
    assert ours[name]["tokens"] == reference["tokens"]
    assert _max_dlogprob(ours[name], reference) < 1e-3


@pytest.mark.vllm
def test_layer_table_names_vllms_scheme_for_each_sparse_layer(served):
    _, _, log = served
    table = log[log.index("vllm-sparse layer table"):]
    rows = [line for line in table.splitlines() if "model.layers." in line]
    assert len(rows) >= 8 and all("2:4" in row and "W8A8 int8" in row and "vllm W8A8Int8" in row for row in rows[:8]), rows[:8]


@pytest.mark.vllm
def test_marlin24_w4a16_served_like_stock_serves_the_pack_quantized_twin(served):
    """marlin-24 (vLLM dropped its Marlin 2:4 kernel) runs on vLLM's own W4A16 scheme
    once our loader has turned its tensors into pack-quantized ones."""
    ours, stock, log = served
    if not vllm_cpu_has_wna16():  # vLLM has no 4-bit GEMM on this CPU: refused at load, saying so
        assert NO_WNA16_REFUSAL in ours["w4a16_marlin24"].get("error", ""), ours["w4a16_marlin24"]
        return
    assert "error" not in ours["w4a16_marlin24"], ours["w4a16_marlin24"]
    delta = _max_dlogprob(ours["w4a16_marlin24"], stock["w4a16_plain"])
    print(f"w4a16_marlin24: max |dlogprob| {delta:.2e} against stock vLLM on w4a16_plain")
    assert ours["w4a16_marlin24"]["tokens"] == stock["w4a16_plain"]["tokens"]
    assert delta < 1e-3
    assert "W4A16 int4" in log and "vllm WNA16" in log


@pytest.mark.vllm
def test_int8_minus128_dropped_by_compressed_tensors_is_reported(served):
    """0.14.0.1's sparse-24 compressor drops int8 -128 (it ranks by abs(), which
    wraps): the checkpoint then holds 0 where its unsparsified twin has -128. It is
    served as stored, with a warning naming each layer and the count."""
    ours, _, log = served
    assert "tokens" in ours["int8_2of4_minus128"], ours["int8_2of4_minus128"]
    twin = load_file(QUANTIZED / "int8_plain_minus128" / "model.safetensors")
    dropped = sum(int((t == -128).sum()) for name, t in twin.items() if name.endswith("_proj.weight"))
    warned = [line for line in log.splitlines() if "wraps at -128" in line]
    counts = [int(re.search(r"(\d+) of the int8 values", line).group(1)) for line in warned]
    assert warned and sum(counts) >= dropped > 0, (dropped, warned[:2])
    assert not any("wraps at -128" in line for line in log[:log.index("int8_2of4_minus128")].splitlines())


@pytest.mark.vllm
def test_fp8_served_as_stock_serves_the_plain_twin(served):
    """FP8 W8A8 runs on vLLM's CPU backend only where its FP8 kernel exists (AMX
    hosts); then tokens must match the twin's, and elsewhere our refusal must be
    vLLM's own, not a sparse-storage error."""
    ours, stock, _ = served
    reference = stock["fp8_plain"]
    if "error" in reference:  # no FP8 kernel on this CPU: the same refusal, from vLLM's scheme
        print(f"stock vLLM on fp8_plain: {reference['error'][:300]}")
        assert ours["fp8_2of4"].get("error", "").split(":")[0] == reference["error"].split(":")[0], ours["fp8_2of4"]
        return
    assert ours["fp8_2of4"]["tokens"] == reference["tokens"]
    assert _max_dlogprob(ours["fp8_2of4"], reference) < 1e-3


# ---------------------------------------------------------------- through vLLM's OpenAI server

SERVER_ARGS = ["--skip-tokenizer-init", "--max-model-len", "256"]  # no tokenizer; a 256-position model
# Each checkpoint the plugin serves -> the plain twin stock vLLM serves.
TWINS = {"int8_2of4": "int8_plain", "fp8_2of4": "fp8_plain", "w4a16_marlin24": "w4a16_plain",
         "int8_sparsity_dense": "int8_plain"}


def _completion_ids(server: OpenAIServer, prompt: list[int]) -> list[int]:
    body = {"model": server.model, "prompt": prompt, "max_tokens": 16, "temperature": 0.0, "ignore_eos": True,
            "return_token_ids": True}
    return list(server.post("/v1/completions", body)["choices"][0]["token_ids"])


# Through the server, one layout per vLLM scheme whose twin stock vLLM serves on every
# CPU (W8A8 int8, and W4A16 from marlin-24); each layout's tokens, FP8 and the dense
# storage included, are checked through the engine above.
SERVED_LAYOUTS = ("int8_2of4", "w4a16_marlin24")


@pytest.mark.vllm
@pytest.mark.parametrize("name", SERVED_LAYOUTS)
def test_openai_server_serves_each_scheme_like_stock_serves_the_twin(served, tmp_path, name):
    """Greedy is deterministic: the server's first 16 tokens are the first 16 that
    stock vLLM generated on the plain twin (``served``)."""
    _, stock, _ = served
    if TWINS[name] not in stock:  # W4A16 where vLLM has no 4-bit CPU GEMM: the server refuses to start
        server = OpenAIServer(QUANTIZED / name, free_port(), tmp_path / "ours.log", extra_args=SERVER_ARGS)
        with pytest.raises(ServerFailed):
            server.start()
        assert NO_WNA16_REFUSAL in (tmp_path / "ours.log").read_text()
        return
    reference = stock[TWINS[name]]
    assert "error" not in reference, reference["error"]
    with OpenAIServer(QUANTIZED / name, free_port(), tmp_path / "ours.log", extra_args=SERVER_ARGS) as ours:
        generated = [_completion_ids(ours, prompt) for prompt in PROMPTS[:4]]
    assert generated == [tokens[:16] for tokens in reference["tokens"][:4]]


def _broken_copy(target: Path, edit, source: str = "int8_2of4") -> Path:
    shutil.copytree(QUANTIZED / source, target)
    tensors = load_file(target / "model.safetensors")
    edit(tensors)
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    return target


def _three_of_four(tensors) -> None:
    bitmask = tensors["model.layers.1.mlp.up_proj.bitmask"]
    bitmask[5, 0] |= 0x0F  # columns 0..3 of row 5: all four flagged


def _marlin_truncated(tensors) -> None:
    name = "model.layers.1.mlp.up_proj.weight_packed"
    tensors[name] = tensors[name][:, :-8].contiguous()


def _scale_one_row_short(tensors) -> None:
    name = "model.layers.1.mlp.down_proj.weight_scale"
    tensors[name] = tensors[name][:127]


# (source checkpoint, edit, what the error must say)
BROKEN = {
    "values-break-2of4": ("int8_2of4", _three_of_four,
                          ("model.layers.1.mlp.up_proj.bitmask", "flags exactly 2 of every 4")),
    "missing-scale": ("int8_2of4", lambda t: t.pop("model.layers.1.mlp.down_proj.weight_scale"),
                      ("lacks model.layers.1.mlp.down_proj.weight_scale",)),
    # vLLM's own loader would stop with a bare AssertionError.
    "mis-shaped-scale": ("int8_2of4", _scale_one_row_short,
                         ("model.layers.1.mlp.down_proj.weight_scale: shape [127, 1] does not fit", "[128, 1]")),
    "values-of-another-dtype": ("int8_2of4", lambda t: t.update({"model.layers.0.mlp.up_proj.compressed":
                                t["model.layers.0.mlp.up_proj.compressed"].to(torch.bfloat16)}),
                                ("model.layers.0.mlp.up_proj: stored values are torch.bfloat16", "stores torch.int8")),
    "marlin24-wrong-size": ("w4a16_marlin24", _marlin_truncated,
                            ("model.layers.1.mlp.up_proj.weight_packed: torch.int32 [4, 504]",
                             "marlin-24 needs int32 [4, 512]")),
}


@pytest.mark.vllm
def test_broken_quantized_checkpoints_stop_the_engine_naming_the_tensor(tmp_path):
    """For each: vLLM's engine refuses to start, and its error names the tensor (the
    engines start one after another in one process; that the OpenAI server then exits
    non-zero with the error in its log is tested in test_bad_checkpoints.py)."""
    cases = {case: _broken_copy(tmp_path / case, edit, source) for case, (source, edit, _) in BROKEN.items()}
    results = run_engines([_job(str(path)) for path in cases.values()], tmp_path / "engines")
    problems = [f"{case}: {result.get('error', 'the engine started')[:1000]}"
                for (case, (_, _, texts)), result in zip(BROKEN.items(), results)
                if not all(text in result.get("error", "") for text in texts)]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- SmolLM2-135M, written by 0.14.0.1 live

CT014_PYTHON = Path(__file__).resolve().parents[2] / ".venv-ct014" / "bin" / "python"
TEXT_PROMPTS = ["The capital of France is", "Once upon a time", "The best way to learn a language is",
                "In 1969, the first", "Water boils at", "My favourite book is", "The sun rises in the",
                "A healthy breakfast includes"]


# Served through engines: each layout but FP8. vLLM's CPU FP8 GEMM (torch._scaled_mm)
# runs where it exists (AMX hosts) on oneDNN's reference matmul: one SmolLM2 engine took
# 2.5-3 min for 1 prompt x 4 tokens on a 2-core Xeon with AMX (2026-12-06). FP8 is served
# token for token on the tiny model above; SmolLM2's FP8 values are checked below.
SMOLLM2_TWINS = {name: twin for name, twin in TWINS.items() if not name.startswith("fp8")}
SMOLLM2 = MODELS / "test-checkpoints" / "ct014-smollm2"


@pytest.fixture(scope="module")
def smollm2_checkpoints(base_model) -> Path:
    """SmolLM2-135M 2:4-pruned and written by 0.14.0.1 in each layout (~1 min; kept
    for later runs)."""
    if not CT014_PYTHON.exists():
        pytest.skip(".venv-ct014 is absent (scripts/ct014_venv.sh creates it)")
    if not all((SMOLLM2 / name / "config.json").exists() for name in (*TWINS, *TWINS.values())):
        script = Path(__file__).resolve().parents[1] / "checkpoint" / "make_ct014_fixtures.py"
        made = subprocess.run([str(CT014_PYTHON), str(script), "write-quantized-model", str(base_model),
                               str(SMOLLM2), "int8", "fp8", "w4a16", "dense"], capture_output=True, text=True,
                              timeout=900)
        assert made.returncode == 0, made.stderr[-3000:]
    return SMOLLM2


@pytest.fixture(scope="module")
def smollm2_served(smollm2_checkpoints, tmp_path_factory):
    """The plugin's engines on SMOLLM2_TWINS' checkpoints and stock vLLM's on their twins
    (~1 min in all)."""
    def job(name: str) -> dict:
        return {"model": str(smollm2_checkpoints / name), "prompts": TEXT_PROMPTS, "max_tokens": MAX_TOKENS}

    work = tmp_path_factory.mktemp("smollm2")
    twins = sorted(set(SMOLLM2_TWINS.values()) - (set() if vllm_cpu_has_wna16() else {"w4a16_plain"}))
    ours = run_engines([job(name) for name in SMOLLM2_TWINS], work / "ours")
    stock = run_engines([job(name) for name in twins], work / "stock", plugins=False)
    return dict(zip(SMOLLM2_TWINS, ours)), dict(zip(twins, stock))


@pytest.mark.parametrize("kind", ["int8", "fp8"])
def test_smollm2_decompressed_values_are_the_twins(smollm2_checkpoints, kind):
    _check_decompressed_values_equal_the_twins(smollm2_checkpoints, kind)


@pytest.mark.vllm
@pytest.mark.parametrize("name", list(SMOLLM2_TWINS))
def test_smollm2_written_by_ct014_serves_like_stock_on_the_twin(smollm2_served, name):
    ours, stock = smollm2_served
    if SMOLLM2_TWINS[name] not in stock:  # W4A16 where vLLM has no 4-bit CPU GEMM
        assert NO_WNA16_REFUSAL in ours[name].get("error", ""), ours[name]
        return
    reference = stock[SMOLLM2_TWINS[name]]
    if "error" in reference:
        # vLLM's own kernel refuses the twin on this CPU (W4A16 on an AMX host: its
        # kernel wants whole groups of 128 along K, and SmolLM2's hidden size is 576):
        # ours must fail the same way, not in our loader.
        print(f"stock vLLM on {SMOLLM2_TWINS[name]}: {reference['error'][:300]}")
        assert ours[name].get("error") == reference["error"], ours[name]
        return
    assert "error" not in ours[name], ours[name]["error"]
    print(f"SmolLM2-135M {name}: max |dlogprob| {_max_dlogprob(ours[name], reference):.2e} against stock on "
          f"{SMOLLM2_TWINS[name]} ({len(TEXT_PROMPTS)} prompts x {MAX_TOKENS} tokens)")
    assert ours[name]["tokens"] == reference["tokens"]
    assert _max_dlogprob(ours[name], reference) < 1e-3
