"""One model through vLLM, in a child process: everything the quality report needs
from it, as token ids and logprobs (no text: the parent decodes with the reference's
tokenizer, so both sides are read the same way).

The parent writes a job (JSON) and runs ``python -m vllm_sparse.quality.engine_pass
JOB OUT``; the child loads the model once (eager mode, in-process engine), runs

* ``windows``: prompt logprobs, top ``topk`` by rank plus the actual next token;
* ``greedy_prompts``, ``cloze_prompts``, ``chat_prompts``: greedy continuations of
  ``greedy_tokens`` (EOS ignored), ``cloze_tokens`` and ``chat_tokens`` (stopping at
  EOS) tokens;

(``score: false`` or ``generate: false`` leave out the first or the second part)

and saves a dict of tensors and id lists with ``torch.save``. A fresh process per
model keeps engines apart (an FFN-skip profile, set through the environment before
the engine starts, applies to that model only) and a crash away from the caller.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from ..runtime import apply_offline_defaults, private_vllm_cache


def run_pass(job: dict, workdir: Path, name: str, ffn_skip: str | None = None, timeout: float = 1800) -> dict:
    """Runs ``job`` in a child process; returns what it saved. Raises RuntimeError
    with the end of the child's log when it fails."""
    workdir.mkdir(parents=True, exist_ok=True)
    job_path, out_path, log_path = workdir / f"{name}.job.json", workdir / f"{name}.pt", workdir / f"{name}.log"
    job_path.write_text(json.dumps(job))
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CACHE_ROOT": private_vllm_cache(workdir)}
    env.pop("VLLM_SPARSE_FFN_SKIP", None)
    if ffn_skip:
        env["VLLM_SPARSE_FFN_SKIP"] = str(Path(ffn_skip).resolve())
    with open(log_path, "w") as log:
        completed = subprocess.run([sys.executable, "-m", __name__, str(job_path), str(out_path)], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    if completed.returncode != 0 or not out_path.exists():
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"vLLM pass of {job['model']} failed (exit {completed.returncode}); log {log_path}:\n{tail}")
    return torch.load(out_path, weights_only=True)


def _greedy(llm, prompts: list[list[int]], max_tokens: int, ignore_eos: bool) -> list[list[int]]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    if not prompts:
        return []
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=ignore_eos, detokenize=False)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs]


def _prompt_logprobs(llm, windows: list[list[int]], topk: int) -> dict[str, torch.Tensor]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, prompt_logprobs=topk, temperature=0.0, detokenize=False)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=w) for w in windows], params, use_tqdm=False)
    ids, logprobs, target = [], [], []
    for window, output in zip(windows, outputs):
        for position, token in enumerate(window[1:], start=1):
            entries = output.prompt_logprobs[position]
            ranked = sorted((e.rank, tid, e.logprob) for tid, e in entries.items() if e.rank <= topk)[:topk]
            ids.append([tid for _, tid, _ in ranked])
            logprobs.append([lp for _, _, lp in ranked])
            target.append(entries[token].logprob)
    return {"topk_ids": torch.tensor(ids, dtype=torch.int32), "topk_logprobs": torch.tensor(logprobs),
            "target": torch.tensor(target)}


def main(job_path: str, out_path: str) -> None:
    apply_offline_defaults()
    job = json.loads(Path(job_path).read_text())
    from vllm import LLM

    start = time.perf_counter()
    llm = LLM(model=job["model"], dtype=job.get("dtype", "bfloat16"), enforce_eager=True, seed=0,
              max_model_len=job["max_model_len"], max_logprobs=job["topk"], quantization=job.get("quantization"))
    result = _prompt_logprobs(llm, job["windows"], job["topk"]) if job.get("score", True) else {}
    if job.get("generate", True):
        result["greedy"] = _greedy(llm, job["greedy_prompts"], job["greedy_tokens"], ignore_eos=True)
        result["cloze"] = _greedy(llm, job["cloze_prompts"], job["cloze_tokens"], ignore_eos=False)
        result["chat"] = _greedy(llm, job["chat_prompts"], job["chat_tokens"], ignore_eos=False)
    result["seconds"] = time.perf_counter() - start
    torch.save(result, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
