"""Decode tokens/s and memory of vLLM engines, each measured in a process of its own.

Used by the demo and ``benchmarks/cpu_e2e.py`` to put a sparse checkpoint beside its
dense twin: each engine runs in a fresh Python process with the model in that process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so its RSS after load is its own, and stock vLLM
is run with every plugin off (``VLLM_PLUGINS=""``). The engines of a comparison are
alive together and take turns, round by round (``measure_side_by_side``): on a shared
machine whose speed drifts by tens of percent from one minute to the next, engines
measured one after another differed by more than the effect measured.

Decode tokens/s, per batch size: batch x (long - short) tokens over the time of a
``long``-token generation minus that of a ``short``-token one (same prompts, greedy,
``ignore_eos``), so prefill and per-request overhead cancel; median over rounds.
Prefill, where ``prefill_tokens`` is set: the time of one request with a prompt that
long and one output token (time to first token, in-process: no server), median over
rounds.

    python -m vllm_sparse.serving.decode_speed SPEC.json    (the engine process; stdin: commands)
"""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..runtime import private_vllm_cache, release_freed_memory


@dataclass
class EngineSpec:
    model: str
    mode: str = "compiled"  # vLLM's default (torch.compile), or "eager"
    batches: list[int] = field(default_factory=lambda: [1, 8])
    short: int = 8
    long: int = 40
    rounds: int = 3
    prompt_tokens: int = 32
    prefill_tokens: int = 0  # > 0: also time a prompt this long to its first token
    env: dict[str, str] = field(default_factory=dict)  # set in the engine's process (e.g. a kernel switch)


MARK = "@@decode-speed "  # our replies on the engine process's stdout, among vLLM's log lines


def _serve(spec: EngineSpec) -> None:
    """The engine process: load, report RSS, then answer one command per stdin line
    (``warm`` / ``round`` for a batch size, ``finish``)."""
    import psutil

    from ..kernels.cpu import host_class

    host_class.enter()  # a benchmark running as a smaller host class: before vLLM picks its kernels
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=spec.model, dtype="bfloat16", enforce_eager=spec.mode == "eager", max_model_len=512, seed=0,
              max_num_seqs=max(spec.batches))
    rng = random.Random(0)
    prompts = [TokensPrompt(prompt_token_ids=[rng.randrange(100, 20000) for _ in range(spec.prompt_tokens)])
               for _ in range(max(spec.batches))]
    long_prompt = TokensPrompt(prompt_token_ids=[rng.randrange(100, 20000) for _ in range(spec.prefill_tokens)])

    def timed(batch: int, tokens: int) -> float:
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        start = time.perf_counter()
        llm.generate(prompts[:batch], params, use_tqdm=False)
        return time.perf_counter() - start

    def reply(message: dict) -> None:
        print(MARK + json.dumps(message), flush=True)

    def rss_mib() -> float:
        return round(psutil.Process().memory_info().rss / 2**20, 1)

    # RSS after load as a user sees it, then with the freed heap handed back: vLLM's
    # warm-up run leaves freed buffers in glibc's heap, which it keeps (30-170 MiB on
    # SmolLM2, more where the warm-up made bigger buffers), so only the second compares
    # the weights two engines hold. The trim happens in every engine alike.
    after_load = rss_mib()
    release_freed_memory()
    reply({"rss_mib": after_load, "rss_trimmed_mib": rss_mib()})
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "warm":  # compiled mode compiles this batch's shapes
            timed(command["batch"], spec.short)
            reply({})
        elif command["op"] == "round":
            batch = command["batch"]
            t_short, t_long = timed(batch, spec.short), timed(batch, spec.long)
            reply({"tokens_per_s": batch * (spec.long - spec.short) / max(t_long - t_short, 1e-9)})
        elif command["op"] == "prefill":
            params = SamplingParams(max_tokens=1, temperature=0.0)
            start = time.perf_counter()
            llm.generate([long_prompt], params, use_tqdm=False)
            reply({"prefill_s": time.perf_counter() - start})
        elif command["op"] == "finish":
            reply(_layer_bytes())
            return


def _layer_bytes() -> dict:
    from ..checkpoint.layer_table import format_layer_table
    from ..plugin.run_files import read_layer_table

    _, rows = read_layer_table()  # written by the plugin into VLLM_SPARSE_RUN_DIR
    if not rows:
        return {}
    return {"layer_table": format_layer_table(rows), "linear_dense_bytes": sum(r.dense_bytes for r in rows),
            "linear_stored_bytes": sum(r.stored_bytes for r in rows)}


class EngineProcess:
    """One engine in a fresh process of its own (plugins on: vllm-sparse; off: stock
    vLLM), driven one command at a time; ``ready`` holds its RSS after load."""

    def __init__(self, spec: EngineSpec, plugins: bool, log_path: Path | None = None, timeout: float = 1800):
        self.spec = spec
        self.timeout = timeout
        self._work = tempfile.TemporaryDirectory()
        work = Path(self._work.name)
        (work / "spec.json").write_text(json.dumps(asdict(spec)))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_HOST_IP": "127.0.0.1", "VLLM_CPU_KVCACHE_SPACE": "1",
               "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CACHE_ROOT": private_vllm_cache(work),
               "VLLM_SPARSE_RUN_DIR": str(work)}
        if not plugins:
            env["VLLM_PLUGINS"] = ""
        env.update(spec.env)
        self._log_path = Path(log_path) if log_path is not None else work / "engine.log"
        self._log = self._log_path.open("w")
        self._process = subprocess.Popen([sys.executable, "-m", __name__, str(work / "spec.json")], env=env,
                                         text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)
        self.ready = self._reply()

    def _reply(self) -> dict:
        watchdog = threading.Timer(self.timeout, self._process.kill)  # a hung engine ends the wait
        watchdog.start()
        try:
            for line in self._process.stdout:
                if line.startswith(MARK):
                    return json.loads(line[len(MARK):])
                self._log.write(line)
        finally:
            watchdog.cancel()
        self._log.flush()
        log_tail = self._log_path.read_text()[-3000:]
        self.close()
        raise RuntimeError(f"engine for {self.spec.model} ({self.spec.mode}) failed or timed out:\n{log_tail}")

    def ask(self, **command) -> dict:
        self._process.stdin.write(json.dumps(command) + "\n")
        self._process.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._log.close()
        self._work.cleanup()


def measure_engine(spec: EngineSpec, plugins: bool, log_path: Path | None = None, timeout: float = 1800) -> dict:
    """Decode tokens/s (median over ``spec.rounds`` per batch) and RSS of ``spec`` alone."""
    return measure_side_by_side({"engine": (spec, plugins)}, {"engine": log_path}, timeout)["engine"]


def _alternating(running: dict[str, "EngineProcess"], rounds: int, measure) -> dict[str, list[float]]:
    """``measure(engine)`` for every engine, ``rounds`` times, the order reversed each round."""
    order = list(running)
    values: dict[str, list[float]] = {name: [] for name in running}
    for index in range(rounds):
        for name in order if index % 2 == 0 else order[::-1]:
            values[name].append(measure(running[name]))
    return values


def measure_side_by_side(engines: dict[str, tuple[EngineSpec, bool]], log_paths: dict[str, Path | None] | None = None,
                         timeout: float = 1800) -> dict[str, dict]:
    """Several engines (name -> (spec, plugins)) alive together, each in its own
    process, started one after another; per batch size their rounds alternate, the
    order reversed each round, so a drift in the machine's speed weighs on all alike.
    Per engine: RSS after load (and after a heap trim: ``rss_trimmed_mib``),
    ``tokens_per_s`` (median over rounds), every round's figure in
    ``round_tokens_per_s``, ``prefill_s`` and ``round_prefill_s`` where the spec asks
    for prefill (rounds alternating the same way), and the layer table's bytes
    (plugins on)."""
    log_paths = log_paths or {}
    running: dict[str, EngineProcess] = {}
    try:
        for name, (spec, plugins) in engines.items():
            running[name] = EngineProcess(spec, plugins, log_paths.get(name), timeout)
        results = {name: {"rss_mib": engine.ready["rss_mib"], "rss_trimmed_mib": engine.ready["rss_trimmed_mib"],
                          "tokens_per_s": {}, "round_tokens_per_s": {}}
                   for name, engine in running.items()}
        specs = [spec for spec, _ in engines.values()]
        for batch in specs[0].batches:
            for engine in running.values():
                engine.ask(op="warm", batch=batch)
            rates = _alternating(running, specs[0].rounds,
                                 lambda engine: engine.ask(op="round", batch=batch)["tokens_per_s"])
            for name, values in rates.items():
                results[name]["tokens_per_s"][str(batch)] = round(statistics.median(values), 2)
                results[name]["round_tokens_per_s"][str(batch)] = [round(v, 2) for v in values]
        if specs[0].prefill_tokens:
            for engine in running.values():
                engine.ask(op="prefill")  # compiled mode: this prompt length's first run
            times = _alternating(running, specs[0].rounds, lambda engine: engine.ask(op="prefill")["prefill_s"])
            for name, values in times.items():
                results[name]["prefill_s"] = round(statistics.median(values), 4)
                results[name]["round_prefill_s"] = [round(v, 4) for v in values]
        for name, engine in running.items():
            results[name].update(engine.ask(op="finish"))
        return results
    finally:
        for engine in running.values():
            engine.close()


if __name__ == "__main__":
    _serve(EngineSpec(**json.loads(Path(sys.argv[1]).read_text())))
