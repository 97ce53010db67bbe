"""Weights on 2 MiB pages against 4 KiB pages, for the CPU decode kernels, in one process.

    python benchmarks/huge_pages.py [--rounds 20] [--out benchmarks/results/huge_pages]

Cases (one token row, bf16, several copies of the weight so they stream from memory):
the 2:4 kernel at 14336 x 4096 (``cpu_nm24_linear``), and the neuron-level one-row
MLP at 2048 x 8192 with half the neurons dropped (``cpu_skip_mlp``). Each case runs the
same weights as an ordinary tensor ("4k") and as ``on_huge_pages`` copies them
("huge"), calls alternating; medians. Speed-up = 4k time / huge time.
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


def _alternate(runs: dict, rounds: int, per_call: int) -> dict:
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / per_call)
    return {name: statistics.median(v) for name, v in times.items()}


def nm24_case(rounds: int) -> dict:
    from vllm_sparse.kernels.cpu import layout24
    from vllm_sparse.kernels.cpu.hugepages import on_huge_pages

    gen = torch.Generator().manual_seed(0)
    n, k, copies = 14336, 4096, 4
    w = torch.randn(n, k, generator=gen)
    groups = w.abs().view(n, -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, -1).indices, True)
    blocks = layout24.Cpu24Layout.pack((w * keep.view(n, k)).bfloat16()).blocks
    plain = [blocks.clone() for _ in range(copies)]
    huge = [on_huge_pages(b) for b in plain]
    code = layout24.kernel_isa()
    x = torch.randn(1, k, generator=gen).bfloat16()

    def run(weights):
        return lambda: [torch.ops.vllm_sparse.cpu_nm24_linear(x, b, n, k, code, 16, None) for b in weights]

    t = _alternate({"4k": run(plain), "huge": run(huge)}, rounds, copies)
    return {"case": "2:4 kernel, 14336x4096, M=1", "bytes": blocks.nbytes, **{f"{k}_ms": round(v * 1e3, 3)
                                                                           for k, v in t.items()},
            "speedup": round(t["4k"] / t["huge"], 3), "gbps_4k": round(blocks.nbytes / t["4k"] / 1e9, 1),
            "gbps_huge": round(blocks.nbytes / t["huge"] / 1e9, 1)}


def neuron_case(rounds: int) -> dict:
    from vllm_sparse.kernels.cpu.skip_mlp import Projection, neuron_weights, new_counts, skip_mlp, skip_params

    gen = torch.Generator().manual_seed(0)
    hidden, inter, copies = 2048, 8192, 3
    huge, plain = [], []
    for _ in range(copies):
        gate_up = (torch.randn(2 * inter, hidden, generator=gen) * 0.02).bfloat16()
        down = (torch.randn(hidden, inter, generator=gen) * 0.02).bfloat16()
        gate, up_down = neuron_weights(gate_up, down)  # on huge pages where the kernel allows
        huge.append((gate, up_down))
        plain.append((gate.clone(), up_down.clone()))
    x = torch.randn(1, hidden, generator=gen).bfloat16()
    act = F.silu(F.linear(x, huge[0][0])).abs().float().flatten()
    params = skip_params(hot=True, check=False, threshold=1.0, skip_layers=1,
                         neuron_threshold=float(act.kthvalue(act.numel() // 2).values))
    state = (torch.ones(1, dtype=torch.int8), torch.zeros(1, dtype=torch.int32), new_counts(),
             torch.zeros(1, dtype=torch.uint8))
    unused = Projection.dense(torch.zeros(1, 1))  # one row that drops neurons runs the neuron kernel only

    def run(weights):
        return lambda: [skip_mlp(x, x, *state, unused, unused, params, w) for w in weights]

    t = _alternate({"4k": run(plain), "huge": run(huge)}, rounds, copies)
    return {"case": "neuron-level MLP, 2048x8192, 50% dropped, M=1", **{f"{k}_ms": round(v * 1e3, 3)
                                                                         for k, v in t.items()},
            "speedup": round(t["4k"] / t["huge"], 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/huge_pages")
    args = parser.parse_args()
    from vllm_sparse.kernels.cpu import build, isa

    if not build.load():
        sys.exit(f"CPU kernels unavailable: {build.load_error()}")
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    machine = {**isa.cpu_description(), "isa_path": isa.NAMES[isa.default()], "threads": torch.get_num_threads(),
               "transparent_hugepage": thp.read_text().strip() if thp.exists() else "unknown",
               "date": datetime.date.today().isoformat(), "command": "python " + " ".join(sys.argv)}
    records = [nm24_case(args.rounds), neuron_case(args.rounds)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "records": records}, indent=1) + "\n")
    lines = ["# CPU decode kernels: weights on 2 MiB pages vs 4 KiB pages", "",
             f"Machine: {machine['cpu']}, {machine['threads']} threads, ISA path {machine['isa_path']}, "
             f"transparent huge pages `{machine['transparent_hugepage']}`; {machine['date']}. "
             f"Command: `{machine['command']}`. Calls alternating in one process; medians.", "",
             "| case | 4 KiB pages ms | 2 MiB pages ms | speed-up |", "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['4k_ms']} | {r['huge_ms']} | {r['speedup']}x |" for r in records]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
