"""The LM head's dense GEMV (``vllm_sparse::cpu_dense_linear``) against the GEMM vLLM's
CPU worker runs for it (oneDNN on a prepacked weight; ``F.linear`` on AVX2-only CPUs,
where oneDNN takes no bf16), side by side in one process.

    python benchmarks/dense_gemv.py [--rounds 9] [--out benchmarks/results/dense_gemv]
    python benchmarks/dense_gemv.py --write-table      # also refresh the plugin's table

Shapes: LM heads [vocab, hidden] of SmolLM2-135M (49152 x 576), the Llama-1B-shaped
model of cpu_e2e.py (49152 x 2048), Llama-3.2-1B (128256 x 2048), Llama-2-7B (32000 x
4096); M = 1, 2, 4, 8, 16 rows (decode batch). bf16, random weights, each checked
against the fp32 product first. Calls of the three variants alternate round by round
(ours on 2 MiB pages, as the plugin serves it; ours on the ordinary 4 KiB pages;
vLLM's GEMM), each round the median of 3 calls, then the median over rounds.
speedup = vLLM's time / ours time. gbps = weight bytes / time; read_gbps: a 512 MiB
read in the same run (cpu_kernels.py's ``read_bandwidth``), the limit.
``--write-table``: the speed-ups become ``vllm_sparse/kernels/cpu/dense_gemv_table.json``,
from which the plugin decides, per LM head shape, up to which M our GEMV runs.
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
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cpu_kernels import BASELINE, read_bandwidth  # noqa: E402  (benchmarks/)
from cpu_kernels import dense_linear as baseline_linear  # noqa: E402

SHAPES = [(49152, 576), (49152, 2048), (128256, 2048), (32000, 4096)]
MS = [1, 2, 4, 8, 16]


def _median_call(fn, calls: int = 3) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(n: int, k: int, ms: list[int], rounds: int) -> list[dict]:
    from vllm_sparse.kernels import cpu as cpu_kernels
    from vllm_sparse.kernels.cpu.hugepages import on_huge_pages

    gen = torch.Generator().manual_seed(n + k)
    plain = (torch.randn(n, k, generator=gen) * 0.02).bfloat16()
    huge = on_huge_pages(plain)
    records = []
    for m in ms:
        x = torch.randn(m, k, generator=gen).bfloat16()
        exact = F.linear(x.float(), plain.float())
        error = ((cpu_kernels.dense_linear(x, huge).float() - exact).abs().max() / exact.abs().max()).item()
        assert error < 2**-7, f"{n}x{k} M={m}: relative error {error:.2e}"
        runs = {"ours_huge": lambda: cpu_kernels.dense_linear(x, huge),
                "ours_4k": lambda: cpu_kernels.dense_linear(x, plain), "baseline": baseline_linear(plain, x)}
        for fn in runs.values():
            fn()
        times = {name: [] for name in runs}
        for _ in range(rounds):
            for name, fn in runs.items():
                times[name].append(_median_call(fn))
        t = {name: statistics.median(v) for name, v in times.items()}
        gb = n * k * 2 / 1e9
        records.append({"shape": f"{n}x{k}", "m": m, **{f"{name}_ms": round(v * 1e3, 3) for name, v in t.items()},
                        "speedup": round(t["baseline"] / t["ours_huge"], 3),
                        "speedup_4k": round(t["baseline"] / t["ours_4k"], 3),
                        "gbps": round(gb / t["ours_huge"], 1), "baseline_gbps": round(gb / t["baseline"], 1)})
        print(records[-1], flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--shapes", default=",".join(f"{n}x{k}" for n, k in SHAPES))
    parser.add_argument("--ms", default=",".join(map(str, MS)))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/dense_gemv")
    parser.add_argument("--write-table", action="store_true")
    args = parser.parse_args()
    from vllm_sparse.kernels.cpu import build, dense_gemv_available, dispatch, isa

    if not dense_gemv_available():
        sys.exit(f"the dense GEMV cannot run here (needs AVX2 + FMA or AVX-512 BF16): {build.load_error() or 'no such CPU'}")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    ms = [int(v) for v in args.ms.split(",")]
    machine = {**isa.cpu_description(), "isa_path": isa.NAMES[isa.default()],
               "host_class": isa.host_class(), "threads": torch.get_num_threads(),
               "baseline": BASELINE, "date": datetime.date.today().isoformat(),
               "command": "python " + " ".join(sys.argv)}
    read_before = read_bandwidth()
    records = [r for n, k in shapes for r in measure(n, k, ms, args.rounds)]
    machine["read_gbps"] = [round(read_before, 1), round(read_bandwidth(), 1)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "records": records}, indent=1) + "\n")
    lines = ["# Dense bf16 GEMV (the LM head) against vLLM's CPU GEMM", "",
             f"Machine: {machine['cpu']}, {machine['threads']} threads, ISA path {machine['isa_path']}; "
             f"{machine['date']}. Baseline: `{BASELINE}` (what vLLM runs for the head here). Command: "
             f"`{machine['command']}`. Read bandwidth in the same run: {machine['read_gbps'][0]} GB/s before, "
             f"{machine['read_gbps'][1]} GB/s after. Calls alternating in one process; medians.", "",
             "| shape | M | vLLM's ms | ours ms (2 MiB pages) | ours ms (4 KiB pages) | speed-up | "
             "speed-up on 4 KiB pages | ours GB/s | vLLM's GB/s |", "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['m']} | {r['baseline_ms']} | {r['ours_huge_ms']} | {r['ours_4k_ms']} | "
              f"{r['speedup']}x | {r['speedup_4k']}x | {r['gbps']} | {r['baseline_gbps']} |" for r in records]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.write_table:
        # Records by host class ("isa"): this run's replace its class's, others' are kept.
        table = [{"isa": machine["host_class"], "dtype": "bf16", "shape": r["shape"], "m": r["m"],
                  "speedup": r["speedup"]} for r in records]
        path = dispatch.DENSE_GEMV_TABLE_PATH
        old = json.loads(path.read_text()) if path.exists() else {"records": []}
        kept = [r for r in old["records"] if r["isa"] != machine["host_class"]]
        runs = {**old.get("runs", {}), machine["host_class"]: machine}
        path.write_text(json.dumps({"machine": machine, "runs": runs, "records": kept + table}, indent=1) + "\n")
        print(f"wrote {dispatch.DENSE_GEMV_TABLE_PATH}")


if __name__ == "__main__":
    main()
