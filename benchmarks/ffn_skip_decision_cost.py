"""What the FFN-skip decision costs inside vLLM, part by part, per decode step.

    python benchmarks/ffn_skip_decision_cost.py [--batch 1 8] [--tokens 48]

One engine with the 25% profile (vLLM in-process mode, eager, bf16). Timers wrap the
decision's parts (``SkipRun.plan``, ``observe``, ``_similarity``, the Prometheus
counters) and the whole MLP call with the decision in it, for one generation of
``--tokens`` tokens after 40-token prompts. The timers themselves add about a
microsecond a call. Where the step's other time goes (attention, MLP, outside the
layers) is in ``ffn_skip_throughput.py``'s breakdown.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

PARTS = {  # (module, attribute) -> label
    ("vllm_sparse.skip.decision", "SkipRun.plan"): "plan (which rows skip)",
    ("vllm_sparse.skip.decision", "SkipRun._similarity"): "similarity (checked rows)",
    ("vllm_sparse.skip.decision", "SkipRun.observe"): "countdown update",
    ("vllm_sparse.plugin.ffn_skip", "record_ffn_blocks"): "Prometheus counters",
    ("vllm_sparse.plugin.ffn_skip", "_ModelSkip.step"): "whole MLP call, decision included",
}


def _wrap(totals: dict, counts: dict) -> None:
    import importlib

    for (module_name, path), label in PARTS.items():
        owner = importlib.import_module(module_name)
        *outer, name = path.split(".")
        for part in outer:
            owner = getattr(owner, part)
        original = getattr(owner, name)

        def timed(*args, _original=original, _label=label, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_label] += time.perf_counter() - start
                counts[_label] += 1

        setattr(owner, name, timed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models/smollm2-135m"))
    parser.add_argument("--profile", type=Path, default=ROOT / "configs/ffn_skip_25.yaml")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    for key, value in {"HF_HUB_OFFLINE": "1", "VLLM_HOST_IP": "127.0.0.1", "VLLM_CPU_KVCACHE_SPACE": "1",
                       "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}.items():
        os.environ.setdefault(key, value)
    import ffn_skip_throughput as throughput  # the same engine, prompts and timing

    totals: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    _wrap(totals, counts)  # before the engine builds the model: its hooks look these up at call time
    llm = throughput._engine(args.model, args.profile.resolve())
    print(f"| batch | part | calls per step | us per call | ms per step |\n|---|---|---|---|---|")
    for batch in args.batch:
        prompts = throughput._prompts(llm, batch)
        throughput._generate_time(llm, prompts, 8)  # warm-up
        totals.clear()
        counts.clear()
        wall = throughput._generate_time(llm, prompts, args.tokens)
        for label in PARTS.values():
            calls = counts[label]
            if calls:
                print(f"| {batch} | {label} | {calls / args.tokens:.1f} | {1e6 * totals[label] / calls:.1f} "
                      f"| {1e3 * totals[label] / args.tokens:.2f} |")
        print(f"| {batch} | whole step (generate wall / steps) | | | {1e3 * wall / args.tokens:.2f} |")


if __name__ == "__main__":
    main()
