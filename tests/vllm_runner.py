"""Runs vLLM engines in a child process and returns what they produced.

Each call starts one fresh Python process that loads the given models one after
another (vLLM in-process mode, eager), so the cost of importing vLLM is paid once
per call, and a crash in vLLM never takes pytest down with it. Setting
``plugins=False`` runs stock vLLM: ``VLLM_PLUGINS=""`` disables every plugin.

Usage as a script: ``python tests/vllm_runner.py JOB.json RESULT.json``.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import subprocess
import sys
from pathlib import Path

from vllm_sparse.runtime import private_vllm_cache

RUNNER = Path(__file__).resolve()
_RESOLVE: dict = {}  # ffn_skip_op.OpSkip.resolve as the plugin has it, once a job has replaced it


def run_engines(jobs: list[dict], workdir: Path, *, plugins: bool = True, timeout: float = 900,
                env: dict | None = None) -> list[dict]:
    """``jobs``: dicts with ``model``, optional ``quantization``, ``prompts``,
    ``max_tokens``, ``logprobs``, ``perplexity_windows``, ``enforce_eager`` (default
    True), ``max_num_batched_tokens`` (a compiled engine's defaults to
    ``max_model_len``), ``max_model_len``, ``skip_tokenizer_init``
    (then prompts are lists of token ids), ``tensor_parallel_size``,
    ``pipeline_parallel_size``; FFN-skip keys: ``ffn_skip`` (a profile path,
    ``ffn_python_step`` (run the Python skip step, not the C++ op),
    put in ``VLLM_SPARSE_FFN_SKIP`` before the engine starts; it must be set in the
    first job of a call for any job of that call to skip, since plugins register
    once per process) and ``ffn_trace`` (return the per-layer decisions). Returns one result per job:
    ``{"tokens": [[...]], "logprobs": [[...]], "perplexity": float|None}`` (plus
    ``ffn_totals`` {layer: [skipped, computed]}, ``ffn_neuron_totals`` {layer:
    [dropped, kept]} and, with ``ffn_trace``, ``ffn_trace``
    [[layer, position, skipped], ...] when ``ffn_skip`` is given) or
    ``{"error": "..."}`` when the engine failed to start. ``env``: extra environment
    variables for the child (e.g. ``VLLM_SPARSE_PATH``); a job's own ``env``: set
    for that job's engine alone (in-process engine: read while it loads)."""
    workdir.mkdir(parents=True, exist_ok=True)
    job_path, result_path = workdir / "jobs.json", workdir / "results.json"
    job_path.write_text(json.dumps(jobs))
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_CACHE_ROOT": private_vllm_cache(workdir),
        **(env or {}),
    }
    if not plugins:
        env["VLLM_PLUGINS"] = ""
    completed = subprocess.run(
        [sys.executable, str(RUNNER), str(job_path), str(result_path)],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    (workdir / "runner.log").write_text(completed.stdout + completed.stderr)
    if completed.returncode != 0:
        raise RuntimeError(f"vLLM runner failed ({completed.returncode}); log: {workdir / 'runner.log'}\n"
                           + completed.stderr[-4000:])
    return json.loads(result_path.read_text())


def _run_job(job: dict) -> dict:
    if "ffn_skip" in job:  # read by the plugin when the engine builds the model
        os.environ["VLLM_SPARSE_FFN_SKIP"] = job["ffn_skip"] or ""
    from vllm import LLM, SamplingParams

    one_op_models = None
    if "ffn_skip" in job:
        from vllm_sparse.plugin import ffn_skip_op

        one_op_models = len(ffn_skip_op.MODELS)
        # The Python step, as where the op cannot run (CUDA, quantized, sharded layers).
        _RESOLVE.setdefault("op", ffn_skip_op.OpSkip.resolve)
        refuse = lambda mlps: (None, "the test asks for the Python step")  # noqa: E731
        ffn_skip_op.OpSkip.resolve = staticmethod(refuse if job.get("ffn_python_step") else _RESOLVE["op"])
    eager = job.get("enforce_eager", True)
    max_model_len = job.get("max_model_len", 1024)
    # A compiled engine warms up with one forward of max_num_batched_tokens tokens, 4096
    # by vLLM's CPU default for LLM; these jobs' prompts fit in max_model_len. On an
    # AVX2-only EPYC stock vLLM's bf16 warm-up of SmolLM2 took 81 s at 4096.
    batched = job.get("max_num_batched_tokens", None if eager else max_model_len)
    try:
        llm = LLM(
            model=job["model"], quantization=job.get("quantization"), dtype=job.get("dtype", "bfloat16"),
            enforce_eager=eager, max_model_len=max_model_len, seed=0,
            skip_tokenizer_init=job.get("skip_tokenizer_init", False),
            tensor_parallel_size=job.get("tensor_parallel_size", 1),
            pipeline_parallel_size=job.get("pipeline_parallel_size", 1),
            **({"max_num_batched_tokens": batched} if batched else {}),
        )
    except Exception as exc:  # report start-up failures to the test, which checks them
        return {"error": f"{type(exc).__name__}: {exc}"}
    result: dict = {}
    if "ffn_skip" in job:
        from vllm_sparse.plugin import ffn_skip, worker_metrics

        if job.get("ffn_trace"):
            ffn_skip.enable_trace()
        before = worker_metrics.ffn_block_totals()
        neurons_before = worker_metrics.ffn_neuron_totals()
        result["ffn_skip_one_op"] = len(ffn_skip_op.MODELS) > one_op_models  # the C++ skip step runs
    if job.get("prompts"):
        text = not job.get("skip_tokenizer_init", False)
        params = SamplingParams(max_tokens=job.get("max_tokens", 32), temperature=0.0, logprobs=0, ignore_eos=True,
                                detokenize=text)
        # A prompt given as a list of ints is token ids (models without a tokenizer).
        prompts = [{"prompt_token_ids": p} if isinstance(p, list) else p for p in job["prompts"]]
        outputs = llm.generate(prompts, params, use_tqdm=False)
        result["tokens"] = [list(o.outputs[0].token_ids) for o in outputs]
        result["logprobs"] = [
            [step[token].logprob for step, token in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]
            for o in outputs
        ]
        result["texts"] = [o.outputs[0].text for o in outputs]
        result["prompt_tokens"] = [list(o.prompt_token_ids) for o in outputs]
    if "ffn_skip" in job:
        result["ffn_totals"] = _since(before, worker_metrics.ffn_block_totals())
        result["ffn_neuron_totals"] = _since(neurons_before, worker_metrics.ffn_neuron_totals())
        if job.get("ffn_trace"):
            result["ffn_trace"] = [
                [layer, int(p), bool(s)] for layer, positions, skipped in ffn_skip.take_trace()
                for p, s in zip(positions.tolist(), skipped.tolist())
            ]
    if job.get("perplexity_windows"):
        from vllm_sparse.quality.perplexity import vllm_perplexity

        result["perplexity"] = vllm_perplexity(llm, job["perplexity_windows"])
    del llm
    gc.collect()
    return result


def _since(before: dict, after: dict) -> dict:
    """Per-layer count pairs added between two snapshots."""
    return {layer: [a - before.get(layer, (0, 0))[0], b - before.get(layer, (0, 0))[1]]
            for layer, (a, b) in after.items()}


def _run_job_in_its_env(job: dict) -> dict:
    # Only the job's own names are put back (not the whole environment, as
    # mock.patch.dict would): VLLM_SPARSE_FFN_SKIP, set by an FFN-skip job, must outlive it.
    saved = {name: os.environ.get(name) for name in job.get("env", {})}
    os.environ.update(job.get("env", {}))
    try:
        return _run_job(job)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def main(job_path: str, result_path: str) -> None:
    jobs = json.loads(Path(job_path).read_text())
    results = [_run_job_in_its_env(job) for job in jobs]
    Path(result_path).write_text(json.dumps(results))


# What the plugin's refusal of W4A16 layers says on such hosts (plugin/scheme_wrapper.py).
NO_WNA16_REFUSAL = "vLLM's AVX2 build has no 4-bit GEMM"


@functools.cache
def vllm_cpu_has_wna16() -> bool:
    """Whether the CPU library vLLM loads on this host has its 4-bit GEMM
    (``_C::cpu_gemm_wna16``): its AVX-512 build does, its AVX2 build does not, and
    there the W4A16 kernel fails at the first forward, taking the engine process down
    (so tests leave W4A16 jobs out of shared engine processes on such hosts)."""
    return _probe("from vllm import _custom_ops\nprint(hasattr(torch.ops._C, 'cpu_gemm_wna16'))")


@functools.cache
def vllm_cpu_onednn_takes_bf16() -> bool:
    """Whether vLLM's oneDNN GEMM takes bf16 weights on this host (it refuses them on
    CPUs without AVX-512, where vLLM runs F.linear instead)."""
    return _probe("from vllm import _custom_ops as ops\n"
                  "try:\n    ops.create_onednn_mm(torch.zeros(64, 64, dtype=torch.bfloat16).t(), 32)\n"
                  "except RuntimeError:\n    print(False)\nelse:\n    print(True)")


def _probe(code: str) -> bool:
    """What a fresh Python process with vLLM's CPU library loaded prints last (True/False)."""
    out = subprocess.run([sys.executable, "-c", "import torch\n" + code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1] == "True"


if __name__ == "__main__":
    main(*sys.argv[1:3])
