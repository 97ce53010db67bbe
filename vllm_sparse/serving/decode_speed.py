"""Decode tokens/s and memory of one vLLM engine, measured in a process of its own.

Used by the demo and ``benchmarks/cpu_e2e.py`` to put a sparse checkpoint beside its
dense twin: each engine runs in a fresh Python process with the model in that process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so its RSS after load is its own, and stock vLLM
is run with every plugin off (``VLLM_PLUGINS=""``).

Decode tokens/s, per batch size: batch x (long - short) tokens over the time of a
``long``-token generation minus that of a ``short``-token one (same prompts, greedy,
``ignore_eos``), so prefill and per-request overhead cancel; median over rounds.

    python -m vllm_sparse.serving.decode_speed SPEC.json RESULT.json
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..runtime import private_vllm_cache


@dataclass
class EngineSpec:
    model: str
    mode: str = "compiled"  # vLLM's default (torch.compile), or "eager"
    batches: list[int] = field(default_factory=lambda: [1, 8])
    short: int = 8
    long: int = 40
    rounds: int = 3
    prompt_tokens: int = 32


def _measure(spec: EngineSpec) -> dict:
    import psutil
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=spec.model, dtype="bfloat16", enforce_eager=spec.mode == "eager", max_model_len=512, seed=0,
              max_num_seqs=max(spec.batches))
    result: dict = {"rss_mib": round(psutil.Process().memory_info().rss / 2**20, 1), "tokens_per_s": {}}
    rng = random.Random(0)
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(100, 20000) for _ in range(spec.prompt_tokens)])
               for _ in range(max(spec.batches))]

    def timed(batch: int, tokens: int) -> float:
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        start = time.perf_counter()
        llm.generate(prompts[:batch], params, use_tqdm=False)
        return time.perf_counter() - start

    for batch in spec.batches:
        timed(batch, spec.short)  # warm-up: compiled mode compiles this batch's shapes
        rates = []
        for _ in range(spec.rounds):
            t_short, t_long = timed(batch, spec.short), timed(batch, spec.long)
            rates.append(batch * (spec.long - spec.short) / max(t_long - t_short, 1e-9))
        result["tokens_per_s"][str(batch)] = round(statistics.median(rates), 2)

    from ..checkpoint.layer_table import format_layer_table
    from ..plugin.run_files import read_layer_table

    _, rows = read_layer_table()  # written by the plugin into VLLM_SPARSE_RUN_DIR
    if rows:
        result["layer_table"] = format_layer_table(rows)
        result["linear_dense_bytes"] = sum(r.dense_bytes for r in rows)
        result["linear_stored_bytes"] = sum(r.stored_bytes for r in rows)
    return result


def measure_engine(spec: EngineSpec, plugins: bool, log_path: Path | None = None, timeout: float = 1800) -> dict:
    """Run ``spec`` in a fresh process (plugins on: vllm-sparse; off: stock vLLM)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "spec.json").write_text(json.dumps(asdict(spec)))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_HOST_IP": "127.0.0.1", "VLLM_CPU_KVCACHE_SPACE": "1",
               "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CACHE_ROOT": private_vllm_cache(work),
               "VLLM_SPARSE_RUN_DIR": str(work)}
        if not plugins:
            env["VLLM_PLUGINS"] = ""
        done = subprocess.run([sys.executable, "-m", __name__, str(work / "spec.json"), str(work / "result.json")],
                              env=env, capture_output=True, text=True, timeout=timeout)
        if log_path is not None:
            Path(log_path).write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise RuntimeError(f"engine for {spec.model} ({spec.mode}) failed:\n{done.stderr[-3000:]}")
        return json.loads((work / "result.json").read_text())


if __name__ == "__main__":
    spec_file, result_file = sys.argv[1:3]
    Path(result_file).write_text(json.dumps(_measure(EngineSpec(**json.loads(Path(spec_file).read_text())))))
