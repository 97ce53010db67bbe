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

from ..quality.perplexity import corpus_windows, perplexity_from_nll
from .calibrate import calibrate, record_similarities
from .hf import load_hf_llama, skipping
from .policy import SkipPolicy, save_policy


@torch.no_grad()
def skip_perplexity(model, policy: SkipPolicy, windows: list[list[int]]) -> tuple[float, float]:
    """(perplexity, realised skip ratio) over the windows."""
    total_nll, tokens = 0.0, 0
    with skipping(model, policy) as s:
        for window in windows:
            ids = torch.tensor([window])
            logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
            total_nll -= logprobs.gather(1, ids[0, 1:, None]).sum().item()
            tokens += len(window) - 1
    return perplexity_from_nll(total_nll, tokens), s.skip_ratio


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
    target: float
    threshold: float
    cold_start: int
    cold_end: int
    calibration_ratio: float
    realised_ratio: float
    perplexity: float
    greedy_agreement: float


def evaluate_model(name: str, model_dir: str | Path, targets: list[float], calib_corpus: str | Path,
                   eval_corpus: str | Path, *, window: int = 256, count: int = 12, prompts: int = 50,
                   prompt_len: int = 32, new_tokens: int = 32, skip_layers: int = 3, warmup_tokens: int = 28,
                   profiles_dir: Path | None = None) -> list[Row]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_hf_llama(model_dir, torch.float32)
    calib = corpus_windows(tokenizer, calib_corpus, window, count)
    held_out = corpus_windows(tokenizer, eval_corpus, window, count)
    prompt_ids = prompt_windows(tokenizer, eval_corpus, prompts, prompt_len, window * count)
    sims = record_similarities(model, calib)
    prefilled = prefill(model, prompt_ids)
    reference = greedy(model, SkipPolicy(enabled=False), prompt_ids, new_tokens, prefilled)
    rows = []
    for target in tqdm(targets, desc=f"{name}: targets"):
        cal = calibrate(model, calib, target, skip_layers=skip_layers, warmup_tokens=warmup_tokens,
                        similarities=sims)
        if profiles_dir is not None:
            save_policy(cal.policy, profiles_dir / f"{name}_{int(round(target * 100))}.yaml",
                        f"calibrated by vllm-sparse eval-skip on {calib_corpus}, target {target}")
        ppl, ratio = skip_perplexity(model, cal.policy, held_out)
        continuation = greedy(model, cal.policy, prompt_ids, new_tokens, prefilled)
        agreement = (continuation == reference).float().mean().item()
        p = cal.policy
        rows.append(Row(name, target, p.threshold, p.cold_start, p.cold_end, cal.realised_ratio, ratio, ppl, agreement))
    return rows


def markdown_table(rows: list[Row]) -> str:
    head = ("| model | target | threshold | cold (start+end) | skip ratio, calibration | skip ratio, held-out "
            "| perplexity, held-out | greedy agreement |\n|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r.model} | {r.target:.0%} | {r.threshold:.4f} | {r.cold_start}+{r.cold_end} | {r.calibration_ratio:.1%} "
        f"| {r.realised_ratio:.1%} | {r.perplexity:.2f} | {r.greedy_agreement:.1%} |\n" for r in rows)
    return head + body


def plot(rows: list[Row], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ppl, ax_agree) = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(r.model for r in rows):
        mine = [r for r in rows if r.model == name]
        x = [100 * r.realised_ratio for r in mine]
        ax_ppl.plot(x, [r.perplexity for r in mine], marker="o", label=name)
        ax_agree.plot(x, [100 * r.greedy_agreement for r in mine], marker="o", label=name)
    ax_ppl.set(xlabel="realised FFN skip ratio, held-out (%)", ylabel="perplexity (log scale)",
               title="Perplexity (held-out)", yscale="log")
    ax_agree.set(xlabel="realised FFN skip ratio, held-out (%)", ylabel="identical greedy tokens (%)",
                 title="Greedy agreement with no skipping")
    for ax in (ax_ppl, ax_agree):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def rows_as_dicts(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]


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
            f"![perplexity and greedy agreement against realised skip ratio](ffn_skip_quality.png)\n")
    path = out / "ffn_skip_quality.md"
    path.write_text(text)
    return path
