"""The main job: what sparsity buys, on the default model.

Fetch SmolLM2-135M-Instruct, prune it with SparseGPT (calibrated on the model's own
chat answers, ``self-chat``, by default, or on a text file) to 50% unstructured (the
default: its answers stay readable) or 2:4, store it compressed (compressed-tensors
``sparse-bitmask`` or ``sparse-24-bitmask``) and, beside it, the same pruned weights
as an ordinary dense checkpoint. Serve the sparse one with vLLM's OpenAI server (the
plugin loads it with no flag, on the CPU sparse kernels where they win), ask it a
question through its chat template, show the layer table it logged; then measure
decode tokens/s and memory of the sparse checkpoint on vllm-sparse against its dense
twin on stock vLLM, side by side (vLLM's default compiled mode)."""

from __future__ import annotations

import re
from pathlib import Path

QUESTION = "What are three important things to know about the ocean?"
SELF_CHAT = "self-chat"  # pruning.calibration.SELF_CHAT, named here without importing torch
# The pruning settings the demo offers: (folder tag, compressed-tensors storage, N:M
# pattern or None for unstructured), all at 50% sparsity.
PATTERNS = {"50%": ("50pct", "sparse-bitmask", None), "2:4": ("2of4", "sparse-24-bitmask", (2, 4))}
DEFAULT_PATTERN = "50%"
_TABLE_START = "vllm-sparse layer table:"
# vLLM prefixes every logged line, e.g. "(EngineCore pid=7) INFO 11-23 10:00:00 [layer_report.py:25] ".
_LOG_PREFIX = re.compile(r"^.*?\[layer_report\.py:\d+\] ?")


def extract_layer_table(log_text: str) -> str:
    """The table the plugin logged at start-up, without vLLM's log-line prefixes
    and colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", log_text)
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if _TABLE_START in line]
    if not starts:
        return ""
    table = []
    for line in lines[starts[-1] + 1 :]:
        table.append(_LOG_PREFIX.sub("", line))
        if table[-1].startswith("total ("):
            break
    return "\n".join(table)


def make_checkpoints(workdir: Path, calibration: Path | str | None = SELF_CHAT,
                     pattern: str = DEFAULT_PATTERN) -> tuple[Path, Path]:
    """(sparse checkpoint, dense twin): the same pruned weights, compressed and plain.

    50% unstructured by default: calibrated on its own answers, SparseGPT 50% answers
    the demo's question readably, where 2:4 (the pattern the CPU kernels turn into the
    most speed on SmolLM2's small layers, benchmarks/results/cpu_kernels.md) stays on
    topic but repeats itself. Self-chat calibration because the demo talks to the model
    through its chat template: calibrated on novels, SparseGPT 2:4 answers chat prompts
    with nothing or with its system prompt (README, "Quality report")."""
    from .checkpoint.default_model import fetch_default_model
    from .pruning.plan import PruningPlan, SparseGPTConfig
    from .pruning.run import prune_model
    from .checkpoint.writer import save_sparse_checkpoint, strip_sparsity_declaration
    from .kernels import NMPattern

    if pattern not in PATTERNS:
        raise ValueError(f"the demo prunes to one of {', '.join(PATTERNS)}, not {pattern!r}")
    dense_dir = fetch_default_model(workdir / "smollm2-135m")
    self_chat = str(calibration) == SELF_CHAT
    if calibration is not None and (self_chat or Path(calibration).exists()):
        from .pruning.calibration import CalibrationConfig

        method, config = "sparsegpt", CalibrationConfig(calibration)
        tag = "selfchat" if self_chat else Path(calibration).stem
    else:
        print(f"no calibration text at {calibration}: pruning by magnitude (expect poor text)")
        method, config, tag = "magnitude", None, "magnitude"
    pattern_tag, storage, nm = PATTERNS[pattern]
    sparse_dir = workdir / f"smollm2-135m-{pattern_tag}-{tag}"
    twin_dir = workdir / f"smollm2-135m-{pattern_tag}-{tag}-dense"
    if (sparse_dir / "config.json").exists() and (twin_dir / "config.json").exists():
        return sparse_dir, twin_dir
    plan = PruningPlan(sparsity=0.5, pattern=NMPattern(*nm) if nm else None)
    print(f"pruning {dense_dir} to {pattern} with {method} (calibration: {calibration}) -> {sparse_dir}")
    pruned, recipe = prune_model(dense_dir, method, plan, calibration=config, sparsegpt=SparseGPTConfig())
    for out, kind in ((sparse_dir, storage), (twin_dir, "dense")):
        save_sparse_checkpoint(dense_dir, pruned, out, storage=kind, structure=plan.structure, recipe=recipe)
    strip_sparsity_declaration(twin_dir)
    return sparse_dir, twin_dir


def compare_speed(sparse_dir: Path, twin_dir: Path, workdir: Path) -> str:
    from .kernels.cpu import build, isa
    from .serving.decode_speed import EngineSpec, measure_side_by_side

    # Both engines alive at once, each in a fresh process, taking turns round by round:
    # engines measured one after another on this shared 2-core machine differed by
    # more than the effect measured.
    print("measuring decode speed: the dense twin on stock vLLM and the sparse checkpoint on vllm-sparse, "
          "side by side, rounds alternating ...")
    spec = {"dense": EngineSpec(str(twin_dir), batches=[1, 8], rounds=5),
            "sparse": EngineSpec(str(sparse_dir), batches=[1, 8], rounds=5)}
    both = measure_side_by_side({side: (spec[side], side == "sparse") for side in spec},
                                {side: workdir / f"{side}.log" for side in spec})
    dense, sparse = both["dense"], both["sparse"]
    path = isa.NAMES[isa.default()] if build.load() else f"none ({build.load_error()})"
    mib = 2**20
    lines = [f"decode, vLLM compiled mode, CPU ISA path {path}:",
             f"{'':28}{'dense twin (stock vLLM)':>26}{'sparse (vllm-sparse)':>24}{'ratio':>8}"]
    for batch in ("1", "8"):
        d, s = dense["tokens_per_s"][batch], sparse["tokens_per_s"][batch]
        rounds = " / ".join(" ".join(f"{v:.0f}" for v in side["round_tokens_per_s"][batch]) for side in (dense, sparse))
        lines.append(f"{'tokens/s, batch ' + batch:28}{d:>26.1f}{s:>24.1f}{s / d:>7.2f}x   (rounds: {rounds})")
    d_lin, s_lin = sparse.get("linear_dense_bytes", 0) / mib, sparse.get("linear_stored_bytes", 0) / mib
    lines.append(f"{'linear weights, MiB':28}{d_lin:>26.1f}{s_lin:>24.1f}{s_lin / max(d_lin, 1e-9):>7.2f}x")
    lines.append(f"{'process RSS after load, MiB':28}{dense['rss_mib']:>26.0f}{sparse['rss_mib']:>24.0f}"
                 f"{sparse['rss_mib'] / dense['rss_mib']:>7.2f}x")
    # Without the buffers vLLM's warm-up left in glibc's heap (both sides alike).
    d_rss, s_rss = dense["rss_trimmed_mib"], sparse["rss_trimmed_mib"]
    lines.append(f"{'  with freed heap returned':28}{d_rss:>26.0f}{s_rss:>24.0f}{s_rss / d_rss:>7.2f}x")
    return "\n".join(lines)


def run_demo(workdir: Path, port: int = 8011, calibration: Path | str | None = SELF_CHAT,
             pattern: str = DEFAULT_PATTERN) -> int:
    from .serving.server_process import OpenAIServer

    workdir.mkdir(parents=True, exist_ok=True)
    sparse_dir, twin_dir = make_checkpoints(workdir, calibration, pattern)
    print(f"serving {sparse_dir} with vLLM's OpenAI server on port {port} (log: {workdir / 'server.log'})")
    with OpenAIServer(sparse_dir, port, workdir / "server.log") as server:
        answer = server.chat(QUESTION)
        table = extract_layer_table(server.log_text())
    print(f"\nuser: {QUESTION}\nassistant: {answer}\n")
    print("layer table logged by the server at start-up:")
    print(table or "(not found in the server log)")
    print()
    print(compare_speed(sparse_dir, twin_dir, workdir))
    return 0 if table else 1
