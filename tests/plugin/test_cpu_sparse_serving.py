"""Real vLLM serving pruned SmolLM2-135M on the CPU sparse kernels (the dispatcher's
default choice from the committed table), against stock vLLM on the dense twin.

The kernels accumulate in another order than oneDNN, so tokens may part where two
candidates are nearly tied: the bar is perplexity within 0.5% and identical greedy
tokens for at least 7 of 8 prompts x 32 tokens, eager and compiled (vLLM's default)."""

from __future__ import annotations

import pytest

from checkpoints import CASES, MODELS, REPO, build_case
from vllm_runner import run_engines
from vllm_sparse.demo import extract_layer_table
from vllm_sparse.quality.prompts import GREEDY_PROMPTS

pytestmark = pytest.mark.vllm

CORPUS = REPO.parent / "shared" / "data" / "sensesensibility.txt"
PROMPTS = list(GREEDY_PROMPTS)
MAX_TOKENS = 32
CHECKPOINTS = ("2of4", "unstructured50")
TABLE_MARKER = "vllm-sparse layer table:"


@pytest.fixture(scope="module")
def served(base_model, tmp_path_factory):
    from transformers import AutoTokenizer

    from vllm_sparse.quality.perplexity import corpus_windows

    if not CORPUS.exists():
        pytest.skip(f"corpus {CORPUS} not present")
    dirs = {c.name: build_case(base_model, MODELS / "test-checkpoints", c) for c in CASES if c.name in CHECKPOINTS}
    windows = corpus_windows(AutoTokenizer.from_pretrained(base_model), CORPUS, 512, 8)
    job = {"prompts": PROMPTS, "max_tokens": MAX_TOKENS, "perplexity_windows": windows}
    work = tmp_path_factory.mktemp("cpu-sparse")
    stock = run_engines([{**job, "model": str(dirs[n].stock)} for n in CHECKPOINTS], work / "stock", plugins=False)
    ours = run_engines(
        [{**job, "model": str(dirs[n].compressed)} for n in CHECKPOINTS]
        + [{"prompts": PROMPTS, "max_tokens": MAX_TOKENS, "model": str(dirs["2of4"].compressed),
            "enforce_eager": False}],
        work / "plugin",
    )
    log = (work / "plugin" / "runner.log").read_text()
    tables = [extract_layer_table(TABLE_MARKER + chunk) for chunk in log.split(TABLE_MARKER)[1:]]
    return dict(zip(CHECKPOINTS, stock)), dict(zip([*CHECKPOINTS, "2of4-compiled"], ours)), tables


def _rows(table: str) -> list[list[str]]:
    return [line.split() for line in table.splitlines() if line.startswith("model.layers.")]


def test_layers_run_the_cpu_kernels_and_keep_only_compressed_weights(served):
    _, _, tables = served
    assert len(tables) == 3
    for table in tables:
        rows = _rows(table)
        assert len(rows) == 120
        sparse = [r for r in rows if r[4].startswith("cpu_sparse/")]
        assert len(sparse) >= 60, f"only {len(sparse)} of 120 layers on the CPU kernels:\n{table}"
        for row in sparse:
            dense_mib, stored_mib = float(row[5]), float(row[6])
            assert stored_mib < 0.6 * dense_mib, row  # 2:4 / 50%: 56% of dense bf16, + the bitmap


@pytest.mark.parametrize("name", [*CHECKPOINTS, "2of4-compiled"])
def test_greedy_tokens_match_stock_vllm_on_the_dense_twin(served, name):
    stock, ours, _ = served
    result, reference = ours[name], stock[name.split("-")[0]]
    assert "error" not in result, result.get("error")
    same = sum(a == b for a, b in zip(result["tokens"], reference["tokens"]))
    worst = max(abs(a - b) for ours_lp, ref_lp in zip(result["logprobs"], reference["logprobs"])
                for a, b in zip(ours_lp, ref_lp))
    print(f"{name}: {same}/8 prompts token-identical, max |dlogprob| {worst:.4f}")
    assert same >= 7, f"{name}: only {same} of 8 prompts identical"


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_perplexity_within_half_a_percent(served, name):
    stock, ours, _ = served
    ppl, ref = ours[name]["perplexity"], stock[name]["perplexity"]
    print(f"{name}: perplexity {ppl:.3f} on the CPU kernels vs {ref:.3f} stock dense ({CORPUS.name}, 8 x 512)")
    assert ppl == pytest.approx(ref, rel=0.005)
