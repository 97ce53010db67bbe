"""The large-M path's two GEMMs of the AVX-512 BF16 path side by side in one process:
panels (csrc/gemm_tile_bf16.cpp: 32 weight rows transposed by column pair, activations
broadcast) and row tiles (csrc/gemm_rowtile_bf16.cpp: 12 weight rows as decompressed,
weights broadcast against 8 activation rows per vector), each against vLLM's dense
GEMM, as ``VLLM_SPARSE_CPU_TILE_GEMM=panels`` / ``rows`` force them.

    python benchmarks/large_m_ab.py                      # Llama-3-8B and Llama-1B shapes
    python benchmarks/large_m_ab.py --shapes llama8b --ms 64 --patterns 2:4

The large-M path is forced (max_direct_m = 0); bf16; 2:4 on both of its layouts
(the bitmap and the blocked 2:4 records), unstructured on the bitmap layout. Calls
alternate dense / panels / rows on copies of the weight larger than the last-level
cache (medians), as in ``cpu_kernels.py``. Results: Markdown + JSON
({"machine", "records"}) under benchmarks/results/large_m_ab.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_kernels as bench  # noqa: E402  (the sibling benchmark: pruning, packing, baseline)

GEMMS = ("panels", "rows")
FAMILIES = {"llama8b": bench.LLAMA8B, "llama1b": bench.LLAMA1B, "smollm2": bench.SMOLLM2}


def forced(gemm: str, fn):
    def call():
        os.environ["VLLM_SPARSE_CPU_TILE_GEMM"] = gemm
        try:
            return fn()
        finally:
            del os.environ["VLLM_SPARSE_CPU_TILE_GEMM"]
    return call


def time_three(dense, panels, rows, min_reps: int, budget_s: float) -> tuple[float, float, float]:
    """Median times of the three sides, calls alternating. Panels and rows run over the
    same copies of the weight, rows half the copies further on than panels: rows
    right after panels on the same copy found it in L3 (a smaller weight's compressed
    bytes fit there), which made rows look faster than they are."""
    sides = [dense, panels, rows]
    offsets = [0, 0, len(rows) // 2]
    for side in sides:
        side[0]()
    times = [[], [], []]
    start, i = time.perf_counter(), 0
    while i < min_reps or (time.perf_counter() - start < budget_s and i < 200):
        for side, offset, out in zip(sides, offsets, times):
            t = time.perf_counter()
            side[(i + offset) % len(side)]()
            out.append(time.perf_counter() - t)
        i += 1
    return tuple(statistics.median(t) for t in times)


def run_case(shape, pattern, ms, gen, budget_s, log) -> list[dict]:
    weight, sparsity = bench.prune(torch.randn(*shape, generator=gen), pattern, gen)
    weight = weight.bfloat16()
    copies = max(2, -(-bench.CACHE_SPAN_BYTES // (weight.numel() * 2)))
    dense_copies = [weight.clone() for _ in range(copies)]  # cold like the sparse side
    codes = [bench.isa.AVX512_BF16]
    if pattern == "2:4" and bench.layout24.eligible(shape, torch.bfloat16):
        codes.append(bench.NM24_OFFSET + bench.isa.AVX512_BF16)
    records = []
    for code in codes:
        layouts = [bench.pack_for(code)(weight) for _ in range(copies)]
        for m in ms:
            x = torch.randn(m, shape[1], generator=gen).bfloat16()
            for gemm in GEMMS:
                forced(gemm, lambda: bench.check(layouts[0], weight, x, code, 0))()
            runs = {g: [forced(g, lambda lay=lay: bench.run_kernel(lay, x, code, 0)) for lay in layouts] for g in GEMMS}
            dense_s, panels_s, rows_s = time_three([bench.dense_linear(w, x) for w in dense_copies], runs["panels"],
                                                   runs["rows"], 5, budget_s)
            row = {"shape": f"{shape[0]}x{shape[1]}", "pattern": pattern, "sparsity": round(sparsity, 3),
                   "layout": "2:4 records" if bench.is_nm24(code) else "bitmap", "m": m,
                   "dense_ms": round(dense_s * 1e3, 4), "panels": round(dense_s / panels_s, 3),
                   "rows": round(dense_s / rows_s, 3), "rows_over_panels": round(panels_s / rows_s, 3)}
            log(row)
            records.append(row)
    return records


def markdown(machine: dict, records: list[dict]) -> str:
    lines = [
        "# Large-M path: row tiles against panels (AVX-512 BF16)", "",
        f"Machine: {machine['cpu']}, {machine['threads']} threads, path avx512_bf16, torch {machine['torch']}; "
        f"{machine['date']}. Baseline: {machine['baseline']}. Command: `{machine['command']}`.", "",
        "panels, rows = dense time / time of the large-M path with that GEMM forced, same run, calls "
        "alternating; rows / panels = panels time / rows time. Dispatch rule (csrc/ops.cpp `tile_gemm`): "
        "rows up to M = 128 where at most an eighth of the 8-row vectors' lanes idle, else panels.", "",
        "| shape | pattern | layout | M | dense ms | panels | rows | rows / panels |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['shape']} | {r['pattern']} | {r['layout']} | {r['m']} | {r['dense_ms']:.3f} | "
                     f"{r['panels']:.3f}x | {r['rows']:.3f}x | {r['rows_over_panels']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="llama8b,llama1b")
    ap.add_argument("--patterns", default="2:4,50%,70%")
    ap.add_argument("--ms", default="16,24,32,40,64,128,512")
    ap.add_argument("--budget", type=float, default=0.4, help="seconds of timing per case (min 5 calls each)")
    ap.add_argument("--out", default="benchmarks/results/large_m_ab")
    args = ap.parse_args()
    if not bench.cpu_kernels.build.load():
        raise SystemExit(f"CPU kernels unavailable: {bench.cpu_kernels.build.load_error()}")
    if bench.isa.AVX512_BF16 not in bench.isa.supported():
        raise SystemExit("this CPU has no AVX-512 BF16 path: the large-M path runs torch's GEMM here")
    shapes = [shape for name in args.shapes.split(",") for shape in FAMILIES[name]]
    ms = [int(m) for m in args.ms.split(",")]
    gen = torch.Generator().manual_seed(0)
    t0 = time.time()

    def log(r):
        print(f"[{time.time() - t0:6.0f}s] {r['shape']:>10} {r['pattern']:>4} {r['layout']:>11} M={r['m']:<3} "
              f"panels {r['panels']:.3f}x rows {r['rows']:.3f}x", flush=True)

    records = [r for shape in shapes for pattern in args.patterns.split(",")
               for r in run_case(shape, pattern, ms, gen, args.budget, log)]
    machine = {**bench.isa.cpu_description(), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "date": datetime.date.today().isoformat(), "baseline": bench.BASELINE,
               "command": "python " + " ".join(sys.argv)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "records": records}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(machine, records))
    print(f"wrote {out.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
