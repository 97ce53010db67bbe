"""One decode step's linear layers, in sequence, on the CPU sparse kernels against
vLLM's dense GEMM, in one process: what a model's step costs in its linear layers,
without the rest of the engine.

    python benchmarks/cpu_decode_step.py                      # Llama ~1B, 2:4 and 70%, M = 1 and 8
    python benchmarks/cpu_decode_step.py --patterns 2:4 --ms 1,2,4,8

The model is the Llama-1B-shaped one of ``benchmarks/cpu_e2e.py`` (16 layers of fused
qkv 3072x2048, o 2048x2048, gate_up 16384x2048, down 2048x8192; random bf16 weights,
pruned as ``benchmarks/cpu_kernels.py`` prunes them). Each layer runs as the plugin
would run it: packed by ``dispatcher.pack_for_path`` on the plan from the committed
table (``dispatcher.cpu_plan`` with the engine's largest batch, ``--max-batch``) and
run by ``dispatcher.sparse_linear``, on the 2:4 or the bitmap kernel of the default
ISA path, or dense (vLLM's oneDNN GEMM on a prepacked weight) where the plan
keeps it dense. A step = the 64 layers once, each weight read once (1.9 GB dense,
cold from memory as in serving); dense and sparse steps alternate, order reversed
every step; medians. Results: Markdown + JSON ({"machine", "records"}).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_kernels as bench  # noqa: E402  (the kernel benchmark's pruning and baseline)

from vllm_sparse.kernels import cpu as cpu_kernels  # noqa: E402
from vllm_sparse.kernels import dispatcher  # noqa: E402
from vllm_sparse.kernels.cpu import isa  # noqa: E402
from vllm_sparse.kernels.patterns import analyze_weight  # noqa: E402

LLAMA1B_LAYER = [(3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192)]
LAYERS = 16


def sparse_layer(weight: torch.Tensor, max_batch: int):
    """(run(x), kernel path name) as the plugin would run this weight (packed by
    ``dispatcher.pack_for_path`` on its ``cpu_plan``), or None for dense."""
    analysis = analyze_weight(weight)
    if dispatcher.cpu_plan(analysis, weight.dtype, max_batch) is None:
        return None
    packed = dispatcher.pack_for_path(weight, analysis, dispatcher.CPU_SPARSE, max_batch)
    return (lambda x: dispatcher.sparse_linear(x, packed)), packed.kernel_name.split("/")[-1]


def measure(pattern: str, ms: list[int], steps: int, max_batch: int, gen: torch.Generator) -> list[dict]:
    code = isa.default()
    layers = []
    for shape in LLAMA1B_LAYER * LAYERS:
        weight = bench.prune(torch.randn(*shape, generator=gen) * 0.02, pattern, gen)[0].bfloat16()
        layers.append((weight, sparse_layer(weight, max_batch)))
    plans = {f"{n}x{k}": (s[1] if s else "dense") for (n, k), (_, s) in zip(LLAMA1B_LAYER, layers)}
    records = []
    for m in ms:
        x = {k: torch.randn(m, k, generator=gen).bfloat16() for k in {k for _, k in LLAMA1B_LAYER}}
        dense = [bench.dense_linear(w, x[w.shape[1]]) for w, _ in layers]
        sparse = [(lambda run=s[0], xk=x[w.shape[1]]: run(xk)) if s else bench.dense_linear(w, x[w.shape[1]])
                  for w, s in layers]
        times = {"dense": [], "sparse": []}
        per_shape = {side: [[] for _ in LLAMA1B_LAYER] for side in times}
        for f in dense[:4] + sparse[:4]:
            f()
        for step in range(steps):
            for side, fns in (("dense", dense), ("sparse", sparse))[:: 1 if step % 2 else -1]:
                start = time.perf_counter()
                for i, f in enumerate(fns):
                    t = time.perf_counter()
                    f()
                    per_shape[side][i % len(LLAMA1B_LAYER)].append(time.perf_counter() - t)
                times[side].append(time.perf_counter() - start)
        dense_s, sparse_s = statistics.median(times["dense"]), statistics.median(times["sparse"])
        records.append({
            "model": "llama1b", "pattern": pattern, "m": m, "isa": isa.NAMES[code], "max_batch": max_batch,
            "plans": plans, "dense_step_ms": round(dense_s * 1e3, 2), "sparse_step_ms": round(sparse_s * 1e3, 2),
            "speedup": round(dense_s / sparse_s, 3),
            "speedup_by_shape": {f"{n}x{k}": round(statistics.median(per_shape["dense"][i]) /
                                                 statistics.median(per_shape["sparse"][i]), 3)
                                 for i, (n, k) in enumerate(LLAMA1B_LAYER)},
        })
        print(json.dumps(records[-1]), flush=True)
    return records


def markdown(machine: dict, records: list[dict]) -> str:
    lines = [
        "# One decode step's linear layers: CPU sparse kernels vs vLLM's dense GEMM",
        "",
        f"Machine: {machine['cpu']}, {machine['threads']} threads, ISA path {records[0]['isa']}; torch "
        f"{machine['torch']}; {machine['date']}. Read bandwidth (same run): {machine['read_gbps']:.1f} GB/s. "
        f"Command: `{machine['command']}`.",
        "",
        "A step = the 64 linear layers of the Llama-1B-shaped model once (each weight read once); dense and "
        "sparse steps alternate; medians. Per shape: the median over its 16 layers' calls.",
        "",
        "| pattern | M | plans (qkv, o, gate_up, down) | dense step ms | sparse step ms | speedup | by shape |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        by_shape = ", ".join(f"{s} {v:.2f}x" for s, v in r["speedup_by_shape"].items())
        lines.append(f"| {r['pattern']} | {r['m']} | {', '.join(r['plans'].values())} | {r['dense_step_ms']:.1f} | "
                     f"{r['sparse_step_ms']:.1f} | {r['speedup']:.2f}x | {by_shape} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patterns", default="2:4,70%")
    ap.add_argument("--ms", default="1,8")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--max-batch", type=int, default=8, help="the engine's largest decode batch (max_num_seqs)")
    ap.add_argument("--out", default="benchmarks/results/cpu_decode_step")
    args = ap.parse_args()
    if not cpu_kernels.build.load():
        raise SystemExit(f"CPU kernels unavailable: {cpu_kernels.build.load_error()}")
    gen = torch.Generator().manual_seed(0)
    read_gbps = bench.read_bandwidth()
    ms = [int(m) for m in args.ms.split(",")]
    records = [r for pattern in args.patterns.split(",") for r in measure(pattern, ms, args.steps, args.max_batch, gen)]
    machine = {**isa.cpu_description(), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "date": datetime.date.today().isoformat(), "read_gbps": round(read_gbps, 2),
               "baseline": bench.BASELINE, "command": "python " + " ".join(sys.argv)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "records": records}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(machine, records))
    print(f"wrote {out.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
