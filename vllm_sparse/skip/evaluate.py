"""Quality of FFN skipping at several target skip ratios, on the transformers path.

For each model and target: calibrate on one corpus (``calibrate.py``), then on a
held-out corpus measure the realised skip ratio and the perplexity (windows scored
with skipping on, every token treated as generated), and the greedy agreement with
the unskipped model: ``prompts`` prompts of ``prompt_len`` corpus tokens, each
continued greedily for ``new_tokens`` tokens with and without skipping (prompt
tokens never skip, as in serving), and the share of positions where the two
continuations hold the same token.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..quality.perplexity import corpus_windows
from .budget import calibrate_within_budget
from .calibrate import calibrate, neuron_policy, record_similarities
from .hf import load_hf_llama, skipping
from .measure import measure_on
from .policy import SkipPolicy, save_policy


@torch.no_grad()
def prefill(model, prompts: torch.Tensor):
    """The prompt pass, shared by every policy: prompt tokens never skip (the
    default ``skip_prompt: false``), so it is the same with and without skipping."""
    out = model(prompts, use_cache=True)
    return out.past_key_values, out.logits[:, -1].argmax(-1)


@torch.no_grad()
def greedy(model, policy: SkipPolicy, prompts: torch.Tensor, new_tokens: int, prefilled=None) -> torch.Tensor:
    """Greedy continuations [B, new_tokens] of equal-length prompts [B, P], with a KV
    cache (each step's row decisions are the same as in a full-sequence pass)."""
    if policy.skip_prompt or prefilled is None:
        with skipping(model, policy, prompt_len=prompts.shape[1]):
            prefilled = prefill(model, prompts)
    cache, first = copy.deepcopy(prefilled[0]), prefilled[1]
    tokens = [first]
    with skipping(model, policy, prompt_len=prompts.shape[1]):
        for _ in range(new_tokens - 1):
            out = model(tokens[-1][:, None], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            tokens.append(out.logits[:, -1].argmax(-1))
    return torch.stack(tokens, dim=1)


def prompt_windows(tokenizer, corpus: str | Path, count: int, length: int, skip_tokens: int) -> torch.Tensor:
    """``count`` prompts of ``length`` tokens spread over the corpus after its first
    ``skip_tokens`` tokens (those are the perplexity windows)."""
    ids = tokenizer(Path(corpus).read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"][skip_tokens:]
    stride = (len(ids) - length) // count
    if stride < length:
        raise ValueError(f"{corpus}: too short for {count} prompts of {length} tokens")
    return torch.tensor([ids[i * stride: i * stride + length] for i in range(count)])


@dataclass
class Row:
    model: str
    granularity: str  # "block" or "neuron"
    target: float  # block: share of FFN blocks; neuron: share of neurons per token
    budget: float | None  # the perplexity budget (percent) this row's target was chosen by, if any
    threshold: float
    cold_start: int
    cold_end: int
    calibration_ratio: float
    realised_ratio: float  # held-out share of FFN blocks skipped
    neuron_sparsity: float  # held-out share of neurons dropped in the rows that may skip
    perplexity: float
    greedy_agreement: float

    @property
    def ffn_reads_saved(self) -> float:
        """Share of the FFN weight bytes a decode token does not read (estimated): a
        skipped block saves all three projections, a dropped neuron its up row and
        down column (the gate is read in full)."""
        return self.realised_ratio + (1 - self.realised_ratio) * self.neuron_sparsity * 2 / 3


def evaluate_model(name: str, model_dir: str | Path, targets: list[float], calib_corpus: str | Path,
                   eval_corpus: str | Path, *, granularity: str = "block", budget: float | None = None,
                   window: int = 256, count: int = 12, prompts: int = 50, prompt_len: int = 32,
                   new_tokens: int = 32, skip_layers: int = 3, warmup_tokens: int = 28,
                   profiles_dir: Path | None = None) -> list[Row]:
    """Rows at each target, and with ``budget`` one more at the largest target whose
    perplexity on held-out calibration windows rises at most ``budget`` percent."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_hf_llama(model_dir, torch.float32)
    calib = corpus_windows(tokenizer, calib_corpus, window, count)
    held_out = corpus_windows(tokenizer, eval_corpus, window, count)
    prompt_ids = prompt_windows(tokenizer, eval_corpus, prompts, prompt_len, window * count)
    sims = record_similarities(model, calib) if granularity == "block" else None
    prefilled = prefill(model, prompt_ids)
    reference = greedy(model, SkipPolicy(enabled=False), prompt_ids, new_tokens, prefilled)
    chosen: list[tuple[float, float | None, SkipPolicy, float]] = []  # (target, budget, policy, calibration ratio)
    for target in targets:
        if granularity == "block":
            cal = calibrate(model, calib, target, skip_layers=skip_layers, warmup_tokens=warmup_tokens,
                            similarities=sims)
            chosen.append((target, None, cal.policy, cal.realised_ratio))
        else:
            chosen.append((target, None, neuron_policy(model, calib, target, skip_layers=skip_layers,
                                                       warmup_tokens=warmup_tokens), target))
    if budget is not None:
        found = calibrate_within_budget(model, calib, budget, granularity=granularity, skip_layers=skip_layers,
                                        warmup_tokens=warmup_tokens)
        target = max((t.target for t in found.trials if t.perplexity <= found.perplexity
                      and t.held_out_ratio == found.held_out_ratio), default=0.0)
        chosen.append((target, budget, found.policy, found.held_out_ratio))
    rows = []
    for target, row_budget, policy, calibration_ratio in tqdm(chosen, desc=f"{name}: {granularity} targets"):
        if profiles_dir is not None:
            tag = f"budget{row_budget:g}" if row_budget is not None else f"{int(round(target * 100))}"
            save_policy(policy, profiles_dir / f"{name}_{granularity}_{tag}.yaml",
                        f"calibrated by vllm-sparse eval-skip on {calib_corpus}, {granularity} target {target}"
                        + (f" (within +{row_budget:g}% perplexity)" if row_budget is not None else ""))
        ppl, ratios = measure_on(model, policy, held_out)
        continuation = greedy(model, policy, prompt_ids, new_tokens, prefilled)
        agreement = (continuation == reference).float().mean().item()
        rows.append(Row(name, granularity, target, row_budget, policy.threshold, policy.cold_start, policy.cold_end,
                        calibration_ratio, ratios["block"], ratios["neuron"], ppl, agreement))
    return rows


def markdown_table(rows: list[Row]) -> str:
    head = ("| model | granularity | target | threshold | cold (start+end) | calibration | blocks skipped, held-out "
            "| neurons dropped, held-out | FFN reads saved (est.) | perplexity, held-out | greedy agreement |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r.model} | {r.granularity} | "
        + (f"{r.target:.0%} (+{r.budget:g}% ppl budget)" if r.budget is not None else f"{r.target:.0%}")
        + f" | {r.threshold:.4f} | {r.cold_start}+{r.cold_end} | {r.calibration_ratio:.1%} "
        f"| {r.realised_ratio:.1%} | {r.neuron_sparsity:.1%} | {r.ffn_reads_saved:.1%} | {r.perplexity:.2f} "
        f"| {r.greedy_agreement:.1%} |\n" for r in rows)
    return head + body


def plot(rows: list[Row], path: Path) -> Path:
    """Perplexity and greedy agreement against the share of FFN weight reads saved
    per decode token (what decode speed follows on a bandwidth-bound CPU), one line
    per model and granularity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ppl, ax_agree) = plt.subplots(1, 2, figsize=(11, 4))
    for key in dict.fromkeys((r.model, r.granularity) for r in rows):
        mine = sorted((r for r in rows if (r.model, r.granularity) == key), key=lambda r: r.ffn_reads_saved)
        x = [100 * r.ffn_reads_saved for r in mine]
        style = "o-" if key[1] == "block" else "s--"
        label = f"{key[0]}, {key[1]}"
        ax_ppl.plot(x, [r.perplexity for r in mine], style, label=label)
        ax_agree.plot(x, [100 * r.greedy_agreement for r in mine], style, label=label)
    ax_ppl.set(xlabel="FFN weight reads saved per decode token, estimated (%)", ylabel="perplexity (log scale)",
               title="Perplexity (held-out)", yscale="log")
    ax_agree.set(xlabel="FFN weight reads saved per decode token, estimated (%)",
                 ylabel="identical greedy tokens (%)", title="Greedy agreement with no skipping")
    for ax in (ax_ppl, ax_agree):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def rows_as_dicts(rows: list[Row]) -> list[dict]:
    return [{**asdict(r), "ffn_reads_saved": round(r.ffn_reads_saved, 4)} for r in rows]


def write_report(rows: list[Row], out: Path, command: str, settings: str) -> Path:
    """``out``/ffn_skip_quality.{md,json,png}: the table with machine, date and the
    command that reproduces it."""
    import datetime
    import json
    import os
    import platform

    out.mkdir(parents=True, exist_ok=True)
    (out / "ffn_skip_quality.json").write_text(json.dumps(rows_as_dicts(rows), indent=1))
    plot(rows, out / "ffn_skip_quality.png")
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    text = (f"# FFN skipping: quality at target skip ratios\n\n"
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, {gpu}; date {datetime.date.today()}; "
            f"transformers path (fp32), the same decision code vLLM runs.\n\n"
            f"Command: `{command}`\n\n{settings}\n\n{markdown_table(rows)}\n"
            f"![perplexity and greedy agreement against the FFN weight reads saved](ffn_skip_quality.png)\n")
    path = out / "ffn_skip_quality.md"
    path.write_text(text)
    return path
