"""Real vLLM serving pruned SmolLM2-135M on the CPU sparse kernels (the dispatcher's
default choice from the committed table), against stock vLLM on the dense twin.

The kernels accumulate in another order than oneDNN, so tokens may part where two
candidates are nearly tied: the bar is perplexity within 0.5% and identical greedy
tokens for at least 3 of 8 prompts x 32 tokens each, eager and compiled, and 9 of the
16 in all (measured on the AVX-512 VBMI/BF16 host: 7 (eager) and 5 (compiled) of 8;
with the bitmap kernel it was 6 and 7; on an AVX2-only EPYC 3 and 6; each kernel
output is within one bf16 ulp of the exact result, see tests/kernels; divergences
come at near-ties, logprobs ~1e-3 apart), eager against stock eager and compiled
(vLLM's default) against stock compiled (stock compiled and stock eager themselves
agree on only about half the prompts in bf16). Served in fp32
(every layer forced onto the kernels), the same checkpoint must give stock's fp32
tokens for at least 7 of 8 prompts: the bf16 divergences are rounding. The checkpoint
is Wanda-pruned 2:4: magnitude-pruned SmolLM2 is so degenerate (perplexity in the
hundreds) that near-ties between tokens are everywhere. (Unstructured layers take the
same bitmap kernel as one 2:4 path does; the dispatcher's choice for them is tested
in tests/kernels.) The tied LM head runs our dense GEMV where the table says it wins."""

from __future__ import annotations

import pytest

from checkpoints import MODELS, REPO, layer_rows
from vllm_runner import run_engines
from vllm_sparse.demo import extract_layer_table
from vllm_sparse.quality.prompts import GREEDY_PROMPTS

pytestmark = pytest.mark.vllm

CORPUS = REPO.parent / "shared" / "data" / "sensesensibility.txt"
PROMPTS = list(GREEDY_PROMPTS)
MAX_TOKENS = 32
CHECKPOINTS = ("2of4",)
TABLE_MARKER = "vllm-sparse layer table:"
CALIBRATION = REPO.parent / "shared" / "data" / "persuasion.txt"


def wanda_checkpoint(base_model, name: str):
    """(compressed checkpoint, stock dense twin), made once under MODELS."""
    from vllm_sparse.pruning.calibration import CalibrationConfig
    from vllm_sparse.pruning.plan import PruningPlan
    from vllm_sparse.pruning.run import prune_model
    from vllm_sparse.checkpoint.writer import save_sparse_checkpoint, strip_sparsity_declaration
    from vllm_sparse.kernels import NMPattern

    root = MODELS / "test-checkpoints"
    compressed, stock = root / f"wanda-{name}-compressed", root / f"wanda-{name}-stock"
    if (compressed / "config.json").exists() and (stock / "config.json").exists():
        return compressed, stock
    plan = PruningPlan(sparsity=0.5, pattern=NMPattern(2, 4) if name == "2of4" else None)
    pruned, recipe = prune_model(base_model, "wanda", plan, calibration=CalibrationConfig(CALIBRATION, 8, 256))
    storage = "sparse-24-bitmask" if name == "2of4" else "sparse-bitmask"
    save_sparse_checkpoint(base_model, pruned, compressed, storage=storage, structure=plan.structure, recipe=recipe)
    save_sparse_checkpoint(base_model, pruned, stock, storage="dense", structure=plan.structure, recipe=recipe)
    strip_sparsity_declaration(stock)
    return compressed, stock


@pytest.fixture(scope="module")
def served(base_model, tmp_path_factory):
    from transformers import AutoTokenizer

    from vllm_sparse.quality.perplexity import corpus_windows

    if not CORPUS.exists() or not CALIBRATION.exists():
        pytest.skip(f"corpora {CORPUS} / {CALIBRATION} not present")
    dirs = {name: wanda_checkpoint(base_model, name) for name in CHECKPOINTS}
    windows = corpus_windows(AutoTokenizer.from_pretrained(base_model), CORPUS, 512, 8)
    job = {"prompts": PROMPTS, "max_tokens": MAX_TOKENS, "perplexity_windows": windows}
    compiled = {"prompts": PROMPTS, "max_tokens": MAX_TOKENS, "enforce_eager": False}
    fp32 = {"prompts": PROMPTS, "max_tokens": MAX_TOKENS, "dtype": "float32"}
    work = tmp_path_factory.mktemp("cpu-sparse")
    stock = run_engines([{**job, "model": str(dirs[n][1])} for n in CHECKPOINTS]
                        + [{**compiled, "model": str(dirs["2of4"][1])}, {**fp32, "model": str(dirs["2of4"][1])}],
                        work / "stock", plugins=False)
    ours = run_engines([{**job, "model": str(dirs[n][0])} for n in CHECKPOINTS]
                       + [{**compiled, "model": str(dirs["2of4"][0])},
                          {**fp32, "model": str(dirs["2of4"][0]), "env": {"VLLM_SPARSE_PATH": "cpu_sparse"}}],
                       work / "plugin")
    log = (work / "plugin" / "runner.log").read_text()
    tables = [extract_layer_table(TABLE_MARKER + chunk) for chunk in log.split(TABLE_MARKER)[1:]]
    names = [*CHECKPOINTS, "2of4-compiled", "2of4-fp32"]
    return dict(zip(names, stock)), dict(zip(names, ours)), tables, log


def test_layers_take_the_measured_path_and_keep_only_compressed_weights(served):
    """Each layer's kernel is what the committed table says for its shape and sparsity
    on this CPU's host class, and a sparse layer stores ~56% of dense or less; 2:4 runs
    on the CPU kernels in most of the layers wherever the table sends them there (an
    AVX-512 BF16 host and an AVX2-only one send them all; an AMX host keeps the 576x1536
    down projections dense, where its oneDNN GEMM wins at M = 8)."""
    import torch

    from vllm_sparse.kernels.cpu import build
    from vllm_sparse.kernels.dispatcher import cpu_plan
    from vllm_sparse.kernels.patterns import NMPattern, WeightAnalysis

    _, _, tables, _ = served
    assert len(tables) == 3 and build.load()
    for name, table in zip([*CHECKPOINTS, "2of4-compiled"], tables[:2]):
        rows = layer_rows(table)
        assert len(rows) == 120
        for row in rows:
            shape = tuple(int(v) for v in row[1].split("x"))
            nm = NMPattern(*(int(v) for v in row[2].split(":"))) if ":" in row[2] else None
            plan = cpu_plan(WeightAnalysis(shape, float(row[3].rstrip("%")) / 100, nm), torch.bfloat16)
            assert row[4] == ("dense" if plan is None else f"cpu_sparse/{plan.isa}"), (name, row)
            if row[4] != "dense":
                assert float(row[6]) < 0.6 * float(row[5]), row  # stored MiB vs dense MiB
        if name.startswith("2of4"):
            assert sum(row[4].startswith("cpu_sparse/") for row in rows) >= len(rows) // 2, table


def test_the_compiled_engine_hands_its_warm_up_heap_back(served):
    """Once, after the compiled engine's warm-up (the eager ones have none), with
    RSS no higher after than before."""
    import re

    releases = re.findall(r"compiled warm-up over; freed heap handed back, RSS (\d+) -> (\d+) MiB", served[3])
    assert len(releases) == 1, releases
    before, after = (int(v) for v in releases[0])
    print(f"compiled engine after its warm-up: RSS {before} -> {after} MiB")
    assert after <= before


def test_lm_head_takes_the_dense_gemv_where_the_cpu_has_it(served):
    """The tied 49152 x 576 head: our GEMV where the table says it wins on this host
    class (AVX-512 BF16 and AVX2-only CPUs are measured), in both bf16 engines; else
    vLLM's."""
    import torch

    from vllm_sparse.plugin.lm_head import gemv_max_m

    log = served[3]
    lines = [line for line in log.splitlines() if "LM head" in line and "dense GEMV" in line]
    max_m = gemv_max_m(torch.empty(49152, 576, dtype=torch.bfloat16))
    if max_m:
        assert len(lines) == 2 and all(f"49152 x 576) runs the dense GEMV up to M = {max_m}," in line
                                       for line in lines), lines
    else:
        assert not lines, lines


def test_greedy_tokens_match_stock_vllm_on_the_dense_twin(served):
    stock, ours, _, _ = served
    identical = {}
    for name in [*CHECKPOINTS, "2of4-compiled"]:
        result, reference = ours[name], stock[name]
        assert "error" not in result, result.get("error")
        same, worst = _agreement(result, reference)
        print(f"{name}: {same}/8 prompts token-identical, max |dlogprob| before divergence {worst:.4f}")
        identical[name] = same
    # Greedy decoding of a bf16 135M model parts at near-ties from accumulation order
    # alone. Measured (2026-12-06): an EPYC (AVX-512 BF16) host passed at >= 5 of 8;
    # on a Xeon with AMX, prefill on the AMX path gave 4 and 6 of 8 (rows path: 6 and
    # 7), although its layer outputs differ from oneDNN's in 0.00-0.01% of elements at
    # M = 160 on SmolLM2's shapes, as the rows path's do; on a 2-core AVX2-only EPYC
    # (2026-12-07) 3 and 6 of 8 in two CI runs, where the AVX2 2:4 kernel's outputs and
    # F.linear's both equal the exact products rounded to bf16 on SmolLM2's shapes at
    # M = 1-40.
    # Perplexity (above) and the fp32 run (below, >= 7 of 8) hold on every host; a
    # wrong kernel parts every prompt within a few tokens.
    assert min(identical.values()) >= 3, identical
    assert sum(identical.values()) >= 9, identical


def test_in_fp32_greedy_tokens_match_stock_vllm(served):
    """The same 2:4 checkpoint served in fp32, every linear layer forced onto the CPU
    kernels (``VLLM_SPARSE_PATH=cpu_sparse``: the table measures bf16 only), against
    stock vLLM in fp32 on the dense twin: with bf16's rounding gone, the near-ties
    that part the bf16 runs are gone too, and at least 7 of 8 prompts x 32 tokens are
    identical (the kernels compute the same sums, in another order)."""
    from vllm_sparse.kernels.cpu import isa

    stock, ours, tables, _ = served
    rows = layer_rows(tables[2])
    assert len(rows) == 120 and all(row[4] == f"cpu_sparse/{isa.NAMES[isa.default()]}" for row in rows), rows
    result, reference = ours["2of4-fp32"], stock["2of4-fp32"]
    assert "error" not in result, result.get("error")
    same, worst = _agreement(result, reference)
    print(f"fp32: {same}/8 prompts token-identical, max |dlogprob| before divergence {worst:.2e}")
    assert same >= 7, (same, result["tokens"], reference["tokens"])


def _agreement(result: dict, reference: dict) -> tuple[int, float]:
    """Prompts whose greedy tokens are identical, and the largest |dlogprob| of the
    same token up to each prompt's first differing token."""
    same, worst = 0, 0.0
    for a, b, la, lb in zip(result["tokens"], reference["tokens"], result["logprobs"], reference["logprobs"]):
        n = next((i for i, (p, q) in enumerate(zip(a, b)) if p != q), len(a))
        same += n == len(a) == len(b)
        worst = max([worst] + [abs(p - q) for p, q in zip(la[:n], lb[:n])])
    return same, worst


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_perplexity_within_half_a_percent(served, name):
    stock, ours, _, _ = served
    ppl, ref = ours[name]["perplexity"], stock[name]["perplexity"]
    print(f"{name}: perplexity {ppl:.3f} on the CPU kernels vs {ref:.3f} stock dense ({CORPUS.name}, 8 x 512)")
    assert ppl == pytest.approx(ref, rel=0.005)


def test_side_by_side_speed_measurement(base_model, tmp_path):
    """The demo's and the end-to-end benchmark's measurement: the dense twin (stock
    vLLM) and the 2:4 checkpoint (vllm-sparse) alive together, each in its own
    process, taking turns round by round. Each side's RSS (also with its freed heap
    handed back), its rate per batch (the
    median of its rounds), its prefill time and the sparse side's layer bytes come
    back; an engine that cannot load fails with its log instead of hanging. A spec's
    variables reach its engine's process alone (the benchmark's --ab-env)."""
    import statistics

    from vllm_sparse.serving.decode_speed import EngineSpec, measure_side_by_side

    compressed, stock = wanda_checkpoint(base_model, "2of4")

    def spec(model, env=None):
        return EngineSpec(str(model), mode="eager", batches=[1, 2], short=2, long=6, rounds=3, prefill_tokens=64,
                          env=env or {})

    both = measure_side_by_side({"dense": (spec(stock), False),
                                 "sparse": (spec(compressed, {"VLLM_LOGGING_LEVEL": "DEBUG"}), True)},
                                {"dense": tmp_path / "dense.log", "sparse": tmp_path / "sparse.log"})
    assert " DEBUG " in (tmp_path / "sparse.log").read_text()
    assert " DEBUG " not in (tmp_path / "dense.log").read_text()
    for side in both.values():
        assert side["rss_mib"] > 100
        assert 100 < side["rss_trimmed_mib"] <= side["rss_mib"] + 16  # the same process, its freed heap handed back
        for batch in ("1", "2"):
            rounds = side["round_tokens_per_s"][batch]
            assert len(rounds) == 3 and min(rounds) > 0
            assert side["tokens_per_s"][batch] == pytest.approx(statistics.median(rounds), abs=0.01)
        assert len(side["round_prefill_s"]) == 3 and min(side["round_prefill_s"]) > 0
        assert side["prefill_s"] == pytest.approx(statistics.median(side["round_prefill_s"]), abs=1e-4)
    assert "layer_table" not in both["dense"]  # stock vLLM: no plugin, no table
    # 2:4 stores 56% of dense; a layer the table keeps dense stores all of it.
    assert 0 < both["sparse"]["linear_stored_bytes"] < 0.8 * both["sparse"]["linear_dense_bytes"]
    with pytest.raises(RuntimeError, match="failed or timed out"):
        measure_side_by_side({"missing": (spec(tmp_path / "no-such-model"), False)})
