"""``vllm-sparse eval``: how far each checkpoint is from its dense reference, through
vLLM (the path users serve), in one report.

One vLLM pass of the reference, then one per checkpoint (each in its own process,
``engine_pass``), over the same inputs built once with the reference's tokenizer:

* scoring windows of the corpus: perplexity of both, per-token KL(reference || model)
  of the next-token distribution (``measures``: top-K plus a tail bucket) with its
  mean, median and 99th percentile, and top-1 agreement;
* prompts cut from the corpus after the scoring windows, continued greedily: the
  share of positions with the same token and the mean length before the first
  difference;
* cloze items built from the corpus (``cloze``): recall of each model, and the share
  of the reference's correct answers the model keeps;
* chat prompts through the chat template (``chat_prompts``): agreement of the greedy
  answers with the reference's, and the answers themselves.

Everything is checked before any engine starts: model folders, tokenizers (same
vocabulary as the reference), corpus.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import measures
from .chat_prompts import EVAL_CHAT_PROMPTS
from .cloze import ClozeItem, build_cloze_items, cloze_correct
from .perplexity import corpus_windows


class EvalInputError(ValueError):
    """Bad input to the report, found before any engine started."""


@dataclass(frozen=True)
class EvalSettings:
    window: int = 512
    count: int = 8
    topk: int = 50
    greedy_prompts: int = 16
    prompt_len: int = 64
    greedy_tokens: int = 32
    cloze_items: int = 64
    cloze_context_tokens: int = 192
    cloze_tokens: int = 4
    chat_tokens: int = 64
    chat_prompts: tuple[str, ...] = EVAL_CHAT_PROMPTS
    dtype: str = "bfloat16"

    @property
    def max_model_len(self) -> int:
        return max(self.window, self.prompt_len + self.greedy_tokens, self.cloze_context_tokens + 8, 512) + 64


@dataclass
class ModelReport:
    name: str
    path: str
    ffn_skip: str | None
    perplexity: float
    reference_perplexity: float
    kl: dict[str, float]
    topk_coverage: float
    top1_agreement: float
    greedy_agreement: float
    greedy_common_prefix: float
    cloze_recall: float
    reference_cloze_recall: float
    cloze_kept: float
    chat_agreement: float
    chat_common_prefix: float
    chat_identical: float
    chat_overlap: float
    seconds: float
    chat_answers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    path: Path
    ffn_skip: str | None = None  # an FFN-skip profile to serve this model with


def parse_model_specs(specs: list[str], ffn_skip: str | None = None) -> list[ModelSpec]:
    """``NAME=DIR`` or ``DIR`` (named after its folder)."""
    parsed = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = Path(spec).name, spec
        parsed.append(ModelSpec(name, Path(path), ffn_skip))
    names = [m.name for m in parsed]
    if len(set(names)) != len(names):
        raise EvalInputError(f"model names must differ, got {names}")
    return parsed


def _check_model_dir(path: Path, role: str) -> None:
    if not (path / "config.json").is_file():
        raise EvalInputError(f"{role} {path}: not a model folder (no config.json)")


def load_checked_tokenizer(reference: Path, models: list[ModelSpec]):
    """The reference's tokenizer, once every model is shown to share its vocabulary
    (ids must mean the same tokens on both sides of every comparison)."""
    from transformers import AutoConfig, AutoTokenizer

    def tokenizer_of(path: Path, role: str):
        _check_model_dir(path, role)
        try:
            return AutoTokenizer.from_pretrained(path)
        except Exception as exc:  # noqa: BLE001 - any failure: the folder's tokenizer is unusable
            raise EvalInputError(f"{role} {path}: cannot load its tokenizer ({type(exc).__name__}: {exc})") from exc

    tokenizer = tokenizer_of(reference, "reference")
    vocab = tokenizer.get_vocab()
    vocab_size = AutoConfig.from_pretrained(reference).vocab_size
    for name, path in ((m.name, m.path) for m in models):
        other = tokenizer_of(path, f"model {name}")
        if other.get_vocab() != vocab:
            raise EvalInputError(f"model {name} ({path}) has a different tokenizer vocabulary from the reference "
                                 f"{reference}: token ids would not mean the same tokens")
        if AutoConfig.from_pretrained(path).vocab_size != vocab_size:
            raise EvalInputError(f"model {name} ({path}): vocab_size differs from the reference's {vocab_size}")
    return tokenizer


def chat_prompt_ids(tokenizer, prompt: str) -> list[int]:
    """A user turn through the model's chat template, ready for the answer."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def build_inputs(tokenizer, corpus: Path, settings: EvalSettings) -> tuple[dict, list[ClozeItem]]:
    """The job every pass runs (token ids only) and the cloze items it scores."""
    if not corpus.is_file():
        raise EvalInputError(f"{corpus}: corpus file not found")
    text = corpus.read_text(encoding="utf-8")
    if not text.strip():
        raise EvalInputError(f"{corpus}: the corpus is empty")
    try:
        windows = corpus_windows(tokenizer, corpus, settings.window, settings.count)
    except ValueError as exc:
        raise EvalInputError(str(exc)) from exc
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][len(windows) * settings.window:]
    stride = (len(ids) - settings.prompt_len) // max(settings.greedy_prompts, 1)
    if stride < settings.prompt_len:
        raise EvalInputError(f"{corpus}: too short for {settings.greedy_prompts} prompts of {settings.prompt_len} "
                             f"tokens after the {len(windows)} scoring windows")
    greedy = [ids[i * stride: i * stride + settings.prompt_len] for i in range(settings.greedy_prompts)]
    try:
        items = build_cloze_items(text, settings.cloze_items)
    except ValueError as exc:
        raise EvalInputError(f"{corpus}: {exc}") from exc
    cloze = [tokenizer(item.context, add_special_tokens=False)["input_ids"][-settings.cloze_context_tokens:]
             for item in items]
    chat = [chat_prompt_ids(tokenizer, p) for p in settings.chat_prompts]
    job = {"windows": windows, "topk": settings.topk, "greedy_prompts": greedy,
           "greedy_tokens": settings.greedy_tokens, "cloze_prompts": cloze, "cloze_tokens": settings.cloze_tokens,
           "chat_prompts": chat, "chat_tokens": settings.chat_tokens, "max_model_len": settings.max_model_len,
           "dtype": settings.dtype}
    return job, items


def skip_every_token(profile: str | Path, out: Path) -> Path:
    """A copy of an FFN-skip profile with ``skip_prompt: true``. A profile skips only
    generated tokens, while the scoring windows reach vLLM as prompts: scored with the
    profile as it is, perplexity, KL and top-1 would be the dense model's. With this
    copy every scored token is decided as a generated one would be (warm-up and cold
    layers as in the profile), as ``eval-skip`` scores them on the transformers path."""
    import yaml

    data = yaml.safe_load(Path(profile).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise EvalInputError(f"{profile}: an FFN-skip profile is a YAML mapping")
    out.write_text(yaml.safe_dump({**data, "skip_prompt": True}))
    return out


def topk_of(result: dict) -> measures.TopK:
    return measures.TopK(result["topk_ids"].numpy(), result["topk_logprobs"].double().numpy(),
                         result["target"].double().numpy())


def cloze_answers(items: list[ClozeItem], continuations: list[list[int]], tokenizer) -> list[bool]:
    return [cloze_correct(item, tokenizer.decode(ids)) for item, ids in zip(items, continuations)]


def compare(spec: ModelSpec, reference: dict, model: dict, items: list[ClozeItem],
            tokenizer) -> tuple[ModelReport, np.ndarray]:
    ref_top, top = topk_of(reference), topk_of(model)
    kl, coverage = measures.next_token_kl(ref_top, top)
    greedy = measures.sequence_agreement(reference["greedy"], model["greedy"])
    chat = measures.sequence_agreement(reference["chat"], model["chat"])
    ref_cloze = reference["cloze_correct"]
    my_cloze = cloze_answers(items, model["cloze"], tokenizer)
    kept = sum(a and b for a, b in zip(ref_cloze, my_cloze)) / max(sum(ref_cloze), 1)
    report = ModelReport(
        name=spec.name, path=str(spec.path), ffn_skip=spec.ffn_skip,
        perplexity=measures.perplexity(top), reference_perplexity=measures.perplexity(ref_top),
        kl=measures.summarise_kl(kl), topk_coverage=float(coverage.mean()),
        top1_agreement=measures.top1_agreement(ref_top, top),
        greedy_agreement=greedy[0], greedy_common_prefix=greedy[1],
        cloze_recall=float(np.mean(my_cloze)), reference_cloze_recall=float(np.mean(ref_cloze)), cloze_kept=kept,
        chat_agreement=chat[0], chat_common_prefix=chat[1], chat_identical=chat[2],
        chat_overlap=measures.token_overlap(reference["chat"], model["chat"]), seconds=float(model["seconds"]),
        chat_answers=[tokenizer.decode(t, skip_special_tokens=True) for t in model["chat"]],
    )
    return report, kl


def run_eval(models: list[ModelSpec], reference: Path, corpus: Path, out: Path,
             settings: EvalSettings = EvalSettings(), quantization: str | None = None) -> list[ModelReport]:
    from tqdm.auto import tqdm

    from .engine_pass import run_pass

    if not models:
        raise EvalInputError("give at least one model to compare with the reference")
    for spec in models:  # (the CLI also checks the profile's content)
        if spec.ffn_skip is not None and not Path(spec.ffn_skip).is_file():
            raise EvalInputError(f"{spec.ffn_skip}: FFN-skip profile not found")
    tokenizer = load_checked_tokenizer(reference, models)
    job, items = build_inputs(tokenizer, corpus, settings)
    out.mkdir(parents=True, exist_ok=True)
    reports, kls = [], {}
    with tempfile.TemporaryDirectory(prefix="vllm-sparse-eval-") as scratch, \
            tqdm(total=len(models) + 1, desc="vLLM passes", unit="model") as bar:
        bar.set_postfix_str("reference")
        ref = run_pass({**job, "model": str(reference)}, Path(scratch), "reference")
        ref["cloze_correct"] = cloze_answers(items, ref["cloze"], tokenizer)  # scored once for every model
        bar.update()
        for index, spec in enumerate(models):
            bar.set_postfix_str(spec.name)
            model_job = {**job, "model": str(spec.path), "quantization": quantization}
            if spec.ffn_skip is None:
                result = run_pass(model_job, Path(scratch), f"model{index}")
            else:  # scored as generated tokens, generated as served: two passes
                scoring_profile = skip_every_token(spec.ffn_skip, Path(scratch) / f"model{index}-score.yaml")
                result = run_pass({**model_job, "generate": False}, Path(scratch), f"model{index}-score",
                                  ffn_skip=str(scoring_profile))
                generated = run_pass({**model_job, "score": False}, Path(scratch), f"model{index}",
                                     ffn_skip=spec.ffn_skip)
                result = {**result, **generated, "seconds": result["seconds"] + generated["seconds"]}
            report, kl = compare(spec, ref, result, items, tokenizer)
            reports.append(report)
            kls[spec.name] = kl
            bar.update()
    reference_answers = [tokenizer.decode(t, skip_special_tokens=True) for t in ref["chat"]]
    write_report(out, reports, kls, reference, corpus, settings, reference_answers)
    return reports


def markdown(reports: list[ModelReport], reference: Path, corpus: Path, settings: EvalSettings,
             reference_answers: list[str]) -> str:
    lines = [
        f"# Quality against {reference}", "",
        f"Corpus `{corpus}`: {settings.count} windows x {settings.window} tokens scored; {settings.greedy_prompts} "
        f"prompts x {settings.greedy_tokens} greedy tokens; {settings.cloze_items} cloze items; "
        f"{len(settings.chat_prompts)} chat prompts x up to {settings.chat_tokens} tokens. KL(reference || model) "
        f"per token over the reference's top-{settings.topk} plus a tail bucket (see `vllm_sparse/quality/measures.py`).",
        "",
        "| model | perplexity (ref) | KL mean | KL median | KL p99 | top-1 agree | greedy agree | greedy prefix "
        "| cloze recall (ref) | cloze kept | chat agree | chat prefix | chat overlap |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        lines.append(
            f"| {r.name} | {r.perplexity:.2f} ({r.reference_perplexity:.2f}) | {r.kl['mean']:.4f} | "
            f"{r.kl['median']:.4f} | {r.kl['p99']:.3f} | {r.top1_agreement:.1%} | {r.greedy_agreement:.1%} | "
            f"{r.greedy_common_prefix:.1f} | {r.cloze_recall:.1%} ({r.reference_cloze_recall:.1%}) | "
            f"{r.cloze_kept:.1%} | {r.chat_agreement:.1%} | {r.chat_common_prefix:.1f} | {r.chat_overlap:.1%} |")
    lines += ["", "Columns: KL in nats per token; top-1 agree: same most likely next token; greedy agree / chat "
              "agree: share of positions with the same greedy token (corpus prompts / chat answers), prefix: mean "
              "tokens before the first difference; cloze recall: last words recalled from context (kept: share "
              "of the reference's correct ones the model also gets); chat overlap: token-multiset F1 of each "
              "answer against the reference's. FFN-skip rows: "
              + (", ".join(f"{r.name} ({r.ffn_skip})" for r in reports if r.ffn_skip) or "none") + "."]
    lines += ["", f"Top-{settings.topk} mass of the reference (mean): "
              + ", ".join(f"{r.name} {r.topk_coverage:.3f}" for r in reports), ""]
    lines += ["## First chat prompt", "", f"**user:** {settings.chat_prompts[0]}", "",
              f"- reference: {reference_answers[0]!r}"]
    lines += [f"- {r.name}: {r.chat_answers[0]!r}" for r in reports]
    return "\n".join(lines) + "\n"


def plot_kl(kls: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    colours = plt.cm.tab20(np.linspace(0, 1, 20))
    for index, (name, kl) in enumerate(kls.items()):
        values = np.sort(np.maximum(kl, 1e-4))
        ax.plot(values, np.arange(1, len(values) + 1) / len(values), color=colours[(2 * index) % 20 + index // 10],
                linestyle=("-", "--", ":")[index // 7 % 3], label=f"{name} (mean {kl.mean():.3f})")
    ax.set(xscale="log", xlabel="per-token KL(reference || model), nats (values below 1e-4 drawn at 1e-4)",
           ylabel="share of tokens at or below", title="Next-token KL divergence against the reference")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(out: Path, reports: list[ModelReport], kls: dict[str, np.ndarray], reference: Path, corpus: Path,
                 settings: EvalSettings, reference_answers: list[str]) -> None:
    summary = {"reference": str(reference), "corpus": str(corpus),
               "settings": {k: v for k, v in asdict(settings).items()},
               "reference_chat_answers": reference_answers, "models": [asdict(r) for r in reports]}
    (out / "report.json").write_text(json.dumps(summary, indent=1))
    (out / "report.md").write_text(markdown(reports, reference, corpus, settings, reference_answers))
    plot_kl(kls, out / "kl.png")
