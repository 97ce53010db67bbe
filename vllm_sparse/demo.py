"""The main job: fetch the default model, prune it 2:4 (SparseGPT, calibrated on a
text file when one is given; magnitude otherwise), store it in the
compressed-tensors ``sparse-24-bitmask`` format, serve it with vLLM's OpenAI server
(the plugin loads it with no flag), ask it something and show the layer table the
server logged."""

from __future__ import annotations

import re
from pathlib import Path

PROMPT = "The three most important things to know about the ocean are"
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


def run_demo(workdir: Path, port: int = 8011, calibration: Path | None = None) -> int:
    from .checkpoint.default_model import fetch_default_model
    from .checkpoint.pruning import PruningPlan, SparseGPTConfig, prune_model
    from .checkpoint.writer import save_sparse_checkpoint
    from .kernels import NMPattern
    from .serving.server_process import OpenAIServer

    workdir.mkdir(parents=True, exist_ok=True)
    dense_dir = fetch_default_model(workdir / "smollm2-135m")
    sparse_dir = workdir / "smollm2-135m-2of4"
    plan = PruningPlan(sparsity=0.5, pattern=NMPattern(2, 4))
    if calibration is not None and calibration.exists():
        from .checkpoint.calibration import CalibrationConfig

        # SparseGPT keeps a 2:4 SmolLM2 readable; magnitude 2:4 turns it into repetition.
        method, config = "sparsegpt", CalibrationConfig(calibration, 8, 256)
    else:
        print(f"no calibration text at {calibration}: pruning by magnitude (expect poor text)")
        method, config = "magnitude", None
    print(f"pruning {dense_dir} to 2:4 with {method} -> {sparse_dir}")
    pruned, recipe = prune_model(dense_dir, method, plan, calibration=config, sparsegpt=SparseGPTConfig())
    save_sparse_checkpoint(dense_dir, pruned, sparse_dir, storage="sparse-24-bitmask", structure=plan.structure,
                           recipe=recipe)
    print(f"serving {sparse_dir} with vLLM's OpenAI server on port {port} (log: {workdir / 'server.log'})")
    with OpenAIServer(sparse_dir, port, workdir / "server.log") as server:
        answer = server.complete(PROMPT, max_tokens=32)
        table = extract_layer_table(server.log_text())
    print(f"\nprompt: {PROMPT}\nanswer: {answer}\n")
    print("layer table logged by the server at start-up:")
    print(table or "(not found in the server log)")
    return 0 if table else 1
