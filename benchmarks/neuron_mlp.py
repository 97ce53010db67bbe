"""Neuron-level skipping's one-row MLP kernel against vLLM's dense MLP, in one process.

    python benchmarks/neuron_mlp.py [--sparsity 0.25,0.5] [--out benchmarks/results/neuron_mlp]

For each MLP shape (Llama ~1B: hidden 2048, intermediate 8192; SmolLM2-135M: 576,
1536), random bf16 weights in several copies (together far larger than the caches,
as in serving, where every layer's weights stream from memory), one token row:

* dense: ``vllm_sparse::cpu_skip_mlp`` with vLLM's prepacked oneDNN GEMM (what an
  engine with skipping off runs per layer, in the same op);
* neuron: the same op with the layer's neuron threshold set to drop ``sparsity`` of
  the neurons (the one-row kernel, AVX-512 BF16);
* read: ``cpu_stream_read`` over the same weight bytes, the bandwidth limit.

Calls alternate (dense, neuron, read) for 20 rounds; medians. Speed-up = dense /
neuron; GB/s = bytes the path must read / time. Needs vLLM (its oneDNN op).
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
SHAPES = {"llama1b": (2048, 8192), "smollm2": (576, 1536)}
COPIES_BYTES = 400 << 20  # weights per shape in all copies together


def measure(hidden: int, inter: int, sparsity: float, rounds: int) -> dict:
    import vllm._custom_ops as ops

    from vllm_sparse.kernels.cpu.skip_mlp import Projection, neuron_weights, new_counts, skip_mlp, skip_params

    gen = torch.Generator().manual_seed(0)
    copies = max(2, COPIES_BYTES // (3 * hidden * inter * 2))
    layers = []
    for _ in range(copies):
        gate_up = (torch.randn(2 * inter, hidden, generator=gen) * 0.02).bfloat16()
        down = (torch.randn(hidden, inter, generator=gen) * 0.02).bfloat16()
        handlers = ops.create_onednn_mm(gate_up.t(), 32), ops.create_onednn_mm(down.t(), 32)
        layers.append((Projection.onednn(handlers[0].handler_tensor, 2 * inter),
                       Projection.onednn(handlers[1].handler_tensor, hidden), neuron_weights(gate_up, down),
                       handlers, gate_up, down))
    x = torch.randn(1, hidden, generator=gen).bfloat16()
    act = F.silu(F.linear(x, layers[0][4][:inter])).abs().float().flatten()
    threshold = float(act.kthvalue(max(1, int(sparsity * act.numel()))).values)
    state = (torch.ones(1, dtype=torch.int8), torch.zeros(1, dtype=torch.int32), new_counts(),
             torch.zeros(1, dtype=torch.uint8))
    dense_params = skip_params(hot=True, check=False, threshold=1.0, skip_layers=1)
    neuron_params = skip_params(hot=True, check=False, threshold=1.0, skip_layers=1, neuron_threshold=threshold)

    def dense():
        for gu, dn, _, *_ in layers:
            skip_mlp(x, x, *state, gu, dn, dense_params)

    def neuron():
        for gu, dn, layout, *_ in layers:
            skip_mlp(x, x, *state, gu, dn, neuron_params, layout)

    def read():
        for *_, gate_up, down in layers:
            torch.ops.vllm_sparse.cpu_stream_read(gate_up)
            torch.ops.vllm_sparse.cpu_stream_read(down)

    times = {"dense": [], "neuron": [], "read": []}
    for _ in range(rounds):
        for name, fn in (("dense", dense), ("neuron", neuron), ("read", read)):
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / copies)
    t = {name: statistics.median(v) for name, v in times.items()}
    mlp_bytes = 3 * hidden * inter * 2
    neuron_bytes = hidden * inter * 2 * (1 + 2 * (1 - sparsity))  # gate in full, active up rows + down columns
    return {"shape": f"{hidden}x{inter}", "sparsity": sparsity, "m": 1, "copies": copies,
            "dense_ms": round(1e3 * t["dense"], 3), "neuron_ms": round(1e3 * t["neuron"], 3),
            "speedup": round(t["dense"] / t["neuron"], 3), "dense_gbps": round(mlp_bytes / t["dense"] / 1e9, 1),
            "neuron_gbps": round(neuron_bytes / t["neuron"] / 1e9, 1), "read_gbps": round(mlp_bytes / t["read"] / 1e9, 1),
            "bound": round(mlp_bytes / neuron_bytes, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", default="0.25,0.5")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/neuron_mlp")
    args = parser.parse_args()
    from vllm_sparse.kernels.cpu import build, isa

    if not build.load():
        sys.exit(f"CPU kernels unavailable: {build.load_error()}")
    records = [measure(h, i, float(s), args.rounds) for h, i in SHAPES.values() for s in args.sparsity.split(",")]
    machine = {**isa.cpu_description(), "isa_path": isa.NAMES[isa.default()], "threads": torch.get_num_threads(),
               "torch": torch.__version__, "date": datetime.date.today().isoformat(),
               "command": "python " + " ".join(sys.argv), "baseline": "vllm._C.onednn_mm (prepacked), same op"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"machine": machine, "records": records}, indent=1) + "\n")
    lines = ["# Neuron-level one-row MLP kernel vs vLLM's dense MLP", "",
             f"Machine: {machine['cpu']}, {machine['threads']} threads, ISA path {machine['isa_path']}, torch "
             f"{machine['torch']}; {machine['date']}. Command: `{machine['command']}`. One token row; calls "
             "alternating in one process; medians. bound = dense bytes / bytes the neuron kernel reads.", "",
             "| MLP (hidden x intermediate) | neurons dropped | dense ms | neuron ms | speed-up | bound | dense GB/s "
             "| neuron GB/s | read GB/s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['shape']} | {r['sparsity']:.0%} | {r['dense_ms']} | {r['neuron_ms']} | {r['speedup']}x "
                     f"| {r['bound']}x | {r['dense_gbps']} | {r['neuron_gbps']} | {r['read_gbps']} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
