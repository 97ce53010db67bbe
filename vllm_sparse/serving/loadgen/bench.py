"""What ``vllm-sparse bench`` does: build the workload once, run it against one
endpoint (or two, one after the other, for a comparison), print and save the report."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import report
from .backends import GrpcBackend, OpenAIBackend, VllmGrpcBackend
from .runner import LoadPlan, run_load
from .workload import (
    DEFAULT_VOCAB_SIZE,
    GenerationParams,
    Prompt,
    cycle_prompts,
    prompts_from_corpus,
    prompts_from_lines,
    random_token_prompts,
)

# Random prompts made for a duration-bound run (then reused in order).
DURATION_PROMPTS = 1024


class EndpointUnavailable(ValueError):
    """The endpoint could not be set up at all (as opposed to failing requests)."""


BACKENDS = {"grpc": GrpcBackend, "vllm-grpc": VllmGrpcBackend, "openai": OpenAIBackend}
# Address schemes that name the protocol; a bare host:port takes the --backend given.
GRPC_SCHEMES = {"grpc://": "grpc", "vllm-grpc://": "vllm-grpc"}


@dataclass(frozen=True)
class Endpoint:
    backend: str  # a key of BACKENDS
    address: str  # host:port, or the base URL

    @classmethod
    def parse(cls, text: str, backend: str = "grpc") -> "Endpoint":
        """``http(s)://...`` is an OpenAI server, ``grpc://host:port`` our
        SparseServing, ``vllm-grpc://host:port`` vLLM's VllmEngine protocol; a bare
        ``host:port`` speaks ``backend``."""
        if text.startswith(("http://", "https://")):
            return cls("openai", text.rstrip("/"))
        for scheme, named in GRPC_SCHEMES.items():
            if text.startswith(scheme):
                return cls(named, text.removeprefix(scheme).rstrip("/"))
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; one of {', '.join(BACKENDS)}")
        if backend == "openai":
            return cls(backend, "http://" + text.rstrip("/"))
        return cls(backend, text.rstrip("/"))


@dataclass
class BenchOptions:
    endpoints: list[Endpoint]  # one; two for a comparison (A then B)
    plan: LoadPlan
    params: GenerationParams = field(default_factory=GenerationParams)
    prompts_file: Path | None = None
    prompt_words: int | None = None  # treat prompts_file as a corpus cut into chunks of this many words
    random_input_len: int | None = None
    vocab_size: int = DEFAULT_VOCAB_SIZE
    model: str | None = None
    token: str | None = None
    tls_ca: Path | None = None
    tls_server_name: str | None = None
    warmup_requests: int = 0
    progress: bool = True
    json_out: Path | None = None


def build_prompts(options: BenchOptions, seed_offset: int = 0) -> list[Prompt]:
    if options.random_input_len is not None:
        count = options.plan.num_requests or DURATION_PROMPTS
        return random_token_prompts(count, options.random_input_len, options.plan.seed + seed_offset,
                                    options.vocab_size)
    if options.prompts_file is None:
        raise ValueError("give --prompts FILE or --random-input-len L")
    if options.prompt_words is not None:
        return prompts_from_corpus(options.prompts_file, options.prompt_words)
    return prompts_from_lines(options.prompts_file)


def warmup_prompts(options: BenchOptions, prompts: list[Prompt]) -> list[Prompt]:
    """Prompts the measured run does not start with, so that warm-up does not fill
    the server's prefix cache with exactly what is measured next."""
    if options.random_input_len is not None:
        return build_prompts(options, seed_offset=1)[: max(options.warmup_requests, 1)]
    return list(reversed(prompts))


def make_backend(endpoint: Endpoint, options: BenchOptions):
    if endpoint.backend == "openai":
        return OpenAIBackend(endpoint.address, model=options.model, token=options.token)
    return BACKENDS[endpoint.backend](endpoint.address, token=options.token, tls_ca=options.tls_ca,
                                      tls_server_name=options.tls_server_name)


def describe_workload(options: BenchOptions) -> dict:
    plan, params = options.plan, options.params
    if options.random_input_len is not None:
        prompts = f"random {options.random_input_len} token ids (seed {plan.seed})"
    else:
        prompts = str(options.prompts_file) + (f" in chunks of {options.prompt_words} words" if options.prompt_words else "")
    return {"prompts": prompts, "num_requests": plan.num_requests, "duration_s": plan.duration,
            "concurrency": plan.concurrency, "request_rate": plan.request_rate, "seed": plan.seed,
            "max_tokens": params.max_tokens, "temperature": params.temperature, "ignore_eos": params.ignore_eos,
            "warmup_requests": options.warmup_requests}


async def run_endpoint(endpoint: Endpoint, options: BenchOptions, prompts: list[Prompt]) -> dict:
    backend = make_backend(endpoint, options)
    try:
        await backend.start()
    except Exception as exc:  # noqa: BLE001 - reported as one clear error
        await backend.close()
        raise EndpointUnavailable(f"{endpoint.backend} {endpoint.address}: {exc}") from exc
    try:
        if options.warmup_requests:
            warm = LoadPlan(num_requests=options.warmup_requests, concurrency=options.plan.concurrency or 1,
                            request_timeout=options.plan.request_timeout)
            await run_load(backend, cycle_prompts(warmup_prompts(options, prompts)), options.params, warm,
                           progress=options.progress, label="warm-up")
        result = await run_load(backend, cycle_prompts(prompts), options.params, options.plan,
                                progress=options.progress, label=f"{endpoint.backend} {endpoint.address}")
    finally:
        await backend.close()
    return report.summarize(result, backend=endpoint.backend, endpoint=endpoint.address,
                            model=getattr(backend, "model", None), workload=describe_workload(options))


def run_bench(options: BenchOptions, out=None) -> dict:
    """Run, print the table(s), write the JSON; returns what was written."""
    out = out or sys.stdout  # looked up now: tests and callers may have replaced it
    if len(options.endpoints) not in (1, 2):
        raise ValueError("one endpoint, or two to compare")
    prompts = build_prompts(options)
    summaries = []
    for endpoint in options.endpoints:
        summaries.append(asyncio.run(run_endpoint(endpoint, options, prompts)))
        print(report.format_summary(summaries[-1]) + "\n", file=out)
    if len(summaries) == 1:
        payload = summaries[0]
    else:
        ratios = report.compare(*summaries)
        print(report.format_comparison(*summaries, ratios), file=out)
        payload = {"a": summaries[0], "b": summaries[1], "ratios": ratios}
    if options.json_out is not None:
        report.write_json(options.json_out, payload)
    return payload
