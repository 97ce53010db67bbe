"""The ``vllm-sparse`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from .demo import DEFAULT_PATTERN as DEMO_DEFAULT_PATTERN, PATTERNS as DEMO_PATTERNS  # torch only when it runs

DEFAULT_MODEL_DIR = Path("models/smollm2-135m")


def _cmd_fetch_model(args: argparse.Namespace) -> int:
    from .checkpoint.default_model import fetch_default_model

    print(fetch_default_model(args.out))
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from .pruning.plan import OWLConfig, PruningPlan, SparseGPTConfig, check_request, parse_layer_sparsity
    from .pruning.run import prune_model
    from .checkpoint.writer import save_sparse_checkpoint, storage_layout
    from .kernels import NMPattern

    pattern = None if args.pattern == "unstructured" else NMPattern.parse(args.pattern)
    sparsity = args.sparsity if pattern is None or args.sparsity is not None else 1 - pattern.density
    plan = PruningPlan(
        sparsity=0.5 if sparsity is None else sparsity,
        pattern=pattern,
        layer_sparsity=parse_layer_sparsity(args.layer_sparsity),
    )
    calibration = None
    if args.calibration is not None:
        from .pruning.calibration import CalibrationConfig

        calibration = CalibrationConfig(args.calibration, args.calibration_samples, args.calibration_seqlen)
    check_request(args.method, plan, args.allocation, calibration)
    scheme = None
    if args.quantize:
        from .pruning.quantize import SCHEMES, quantize_state_dict

        scheme = SCHEMES[args.quantize]
        storage_layout(args.storage, scheme.config_group(), plan.structure)  # refuse before pruning
    else:
        storage_layout(args.storage, None, plan.structure)
    pruned, recipe = prune_model(
        args.model, args.method, plan, calibration=calibration, allocation=args.allocation,
        owl=OWLConfig(m=args.owl_m, lam=args.owl_lambda),
        sparsegpt=SparseGPTConfig(blocksize=args.sparsegpt_blocksize, damp=args.sparsegpt_damp),
    )
    quantization = None
    if scheme is not None:
        pruned, scheme = quantize_state_dict(pruned, scheme)
        quantization = scheme.config_group()
        recipe["quantization"] = scheme.name
    out = save_sparse_checkpoint(args.model, pruned, args.out, storage=args.storage, structure=plan.structure,
                                 recipe=recipe, quantization=quantization)
    print(out)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .checkpoint.inspect import inspect_checkpoint
    from .checkpoint.layer_table import format_layer_table

    print(format_layer_table(inspect_checkpoint(args.checkpoint, device=args.device)))
    return 0


def _cmd_perplexity(args: argparse.Namespace) -> int:
    from .quality.perplexity import corpus_windows, vllm_perplexity
    from .runtime import apply_offline_defaults

    apply_offline_defaults()
    _apply_ffn_skip(args.ffn_skip)
    from vllm import LLM

    llm = LLM(
        model=args.model,
        dtype=args.dtype,
        enforce_eager=True,
        max_model_len=args.window + 8,
        quantization=args.quantization,
        seed=0,
    )
    windows = corpus_windows(llm.get_tokenizer(), args.corpus, args.window, args.count)
    print(f"perplexity {vllm_perplexity(llm, windows):.4f} over {len(windows)} x {args.window} tokens of {args.corpus}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serving.grpc_settings import GrpcSettings
    from .serving.launch import serve

    token = Path(args.grpc_token_file).read_text().strip() if args.grpc_token_file else None
    settings = GrpcSettings(
        host=args.grpc_host, port=args.grpc_port, tls_cert=args.grpc_tls_cert, tls_key=args.grpc_tls_key,
        token=token, max_inflight=args.grpc_max_inflight, shutdown_drain_seconds=args.grpc_shutdown_drain,
        shutdown_grace_seconds=args.grpc_shutdown_grace,
    )
    return serve(args.model, args.vllm_args, settings, ffn_skip_profile=args.ffn_skip)


def _apply_ffn_skip(profile: str | None) -> None:
    """--ffn-skip: check the profile now (a clear error before vLLM starts), then
    hand it to the plugin through the environment (inherited by vLLM's processes)."""
    if profile is None:
        return
    import os

    from .skip.policy import ENV_VAR, load_policy

    load_policy(profile)
    os.environ[ENV_VAR] = str(Path(profile).resolve())


def _cmd_eval(args: argparse.Namespace) -> int:
    from .quality.report import EvalSettings, parse_model_specs, run_eval
    from .runtime import apply_offline_defaults

    apply_offline_defaults()
    if args.ffn_skip is not None:
        from .skip.policy import load_policy

        load_policy(args.ffn_skip)  # a bad profile: a clear error before any engine starts
    settings = EvalSettings(window=args.window, count=args.count, topk=args.topk, greedy_prompts=args.greedy_prompts,
                            greedy_tokens=args.new_tokens, cloze_items=args.cloze_items, chat_tokens=args.chat_tokens)
    # Bad input raises EvalInputError (a ValueError) before any engine starts: exit 2.
    reports = run_eval(parse_model_specs(args.model, args.ffn_skip), args.reference, args.corpus, args.out, settings,
                       quantization=args.quantization)
    print((args.out / "report.md").read_text())
    print(f"report: {args.out / 'report.md'}, {args.out / 'report.json'}, {args.out / 'kl.png'}")
    return 0 if reports else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.workdir), port=args.port, calibration=args.calibration, pattern=args.pattern)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .serving.loadgen.bench import BenchOptions, Endpoint, run_bench
    from .serving.loadgen.runner import LoadPlan
    from .serving.loadgen.workload import GenerationParams

    if args.compare:
        endpoints = [Endpoint.parse(text, args.backend) for text in args.compare]
    elif args.backend in ("grpc", "vllm-grpc"):
        if not args.target:
            raise ValueError(f"--backend {args.backend} needs --target HOST:PORT")
        endpoints = [Endpoint.parse(args.target, args.backend)]
    else:
        if not args.base_url:
            raise ValueError("--backend openai needs --base-url http://HOST:PORT")
        endpoints = [Endpoint.parse(args.base_url, "openai")]
    if (args.prompts is None) == (args.random_input_len is None):
        raise ValueError("give exactly one of --prompts FILE and --random-input-len L")
    num_requests = args.num_requests if args.num_requests is not None or args.duration is not None else 100
    options = BenchOptions(
        endpoints=endpoints,
        plan=LoadPlan(num_requests=num_requests, duration=args.duration, concurrency=args.concurrency,
                      request_rate=args.request_rate, seed=args.seed, request_timeout=args.request_timeout),
        params=GenerationParams(max_tokens=args.max_tokens, temperature=args.temperature, ignore_eos=args.ignore_eos),
        prompts_file=args.prompts, prompt_words=args.prompt_words, random_input_len=args.random_input_len,
        vocab_size=args.vocab_size, model=args.model, token=args.token, tls_ca=args.tls_ca,
        tls_server_name=args.tls_server_name, warmup_requests=args.warmup_requests,
        progress=not args.no_progress, json_out=args.json_out,
    )
    run_bench(options)
    return 0


def _cmd_calibrate_skip(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoTokenizer

    from .quality.perplexity import corpus_windows
    from .skip.hf import load_hf_llama

    if args.target_skip is None and args.max_ppl_increase is None and args.neuron_sparsity is None:
        raise ValueError("give --target-skip, --max-ppl-increase or --neuron-sparsity")
    if args.max_ppl_increase is not None and args.neuron_sparsity is not None:
        raise ValueError("--max-ppl-increase chooses the share itself; for neurons give --granularity neuron "
                         "instead of --neuron-sparsity")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = load_hf_llama(args.model, torch.float32)
    if args.max_ppl_increase is not None:
        return _calibrate_within_budget(args, model, corpus_windows(tokenizer, args.corpus, args.window,
                                                                    2 * args.count))
    from .skip.calibrate import calibrate, neuron_thresholds

    windows = corpus_windows(tokenizer, args.corpus, args.window, args.count)
    result = calibrate(model, windows, args.target_skip or 0.0, skip_layers=args.skip_layers,
                       warmup_tokens=args.warmup_tokens)
    policy = result.policy
    comment = (f"calibrated by vllm-sparse calibrate-skip on {args.corpus} ({len(windows)} x {args.window} tokens)\n"
               f"model {args.model}; " + (f"target skip ratio {args.target_skip}; realised there "
                                          f"{result.realised_ratio:.4f} (open-loop replay {result.open_loop_ratio:.4f})"
                                          if args.target_skip is not None else "block skipping off (threshold 1.0)"))
    if args.neuron_sparsity is not None:
        thresholds = neuron_thresholds(model, windows, args.neuron_sparsity, args.warmup_tokens)
        policy = replace(policy, enabled=True, neuron_thresholds=thresholds)
        comment += f"\nneuron-level: {args.neuron_sparsity:.0%} of the FFN neurons dropped per token (thresholds per layer)"
    _save_profile(args, policy, comment)
    if args.target_skip is not None:
        print(f"skip ratio on the calibration corpus: {result.realised_ratio:.2%} (target {args.target_skip:.0%})")
    return 0


def _save_profile(args: argparse.Namespace, policy, comment: str) -> None:
    from .skip.policy import save_policy

    save_policy(policy, args.out, comment)
    print(f"{args.out}: {policy}")


def _calibrate_within_budget(args: argparse.Namespace, model, windows: list[list[int]]) -> int:
    from .skip.budget import calibrate_within_budget

    result = calibrate_within_budget(model, windows, args.max_ppl_increase, granularity=args.granularity,
                                     skip_layers=args.skip_layers, warmup_tokens=args.warmup_tokens)
    for t in result.trials:
        print(f"target {t.target:.1%}: held-out skip {t.held_out_ratio:.1%}, perplexity {t.perplexity:.3f} "
              f"({100 * (t.perplexity / result.base_perplexity - 1):+.1f}%)")
    comment = (f"calibrated by vllm-sparse calibrate-skip --max-ppl-increase {args.max_ppl_increase:g} "
               f"--granularity {args.granularity} on {args.corpus} "
               f"({len(windows) // 2} x {args.window} tokens, {len(windows) - len(windows) // 2} more held out)\n"
               f"model {args.model}; held-out skip ratio {result.held_out_ratio:.4f}, perplexity "
               f"{result.base_perplexity:.3f} -> {result.perplexity:.3f} ({result.increase:+.2f}%)")
    _save_profile(args, result.policy, comment)
    print(f"held-out skip ratio within +{args.max_ppl_increase:g}% perplexity: {result.held_out_ratio:.2%} "
          f"(perplexity {result.base_perplexity:.3f} -> {result.perplexity:.3f}, {result.increase:+.2f}%)")
    return 0


def _cmd_eval_skip(args: argparse.Namespace) -> int:
    import json

    from .skip.evaluate import evaluate_model, markdown_table, rows_as_dicts, write_report

    targets = [float(t) for t in args.targets.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in args.model:
        name, _, path = spec.rpartition("=")
        for granularity in args.granularity.split(","):
            rows += evaluate_model(name or Path(path).name, path, targets, args.calib_corpus, args.eval_corpus,
                                   granularity=granularity, budget=args.max_ppl_increase, window=args.window,
                                   count=args.count, prompts=args.prompts, new_tokens=args.new_tokens,
                                   profiles_dir=out / "profiles")
            # Written after each pass, so a long run leaves what it has measured.
            (out / "ffn_skip_quality.json").write_text(json.dumps(rows_as_dicts(rows), indent=1))
    settings = (f"Calibrated on {args.calib_corpus.name}, measured on {args.eval_corpus.name}: {args.count} windows "
                f"x {args.window} tokens each (every token as generated); greedy agreement over {args.prompts} "
                f"prompts x {args.new_tokens} new tokens (32-token prompts, which never skip). k = 3, "
                "warm-up 28 tokens; cold regions chosen by calibration.")
    write_report(rows, out, "vllm-sparse " + " ".join(sys.argv[1:]), settings)
    print(markdown_table(rows))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm-sparse", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    fetch = commands.add_parser("fetch-model", help="write SmolLM2-135M-Instruct as a local HF directory")
    fetch.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR)
    fetch.set_defaults(run=_cmd_fetch_model)

    prune = commands.add_parser("prune", help="prune a dense checkpoint (magnitude, Wanda, SparseGPT; OWL allocation)")
    prune.add_argument("model", type=Path)
    prune.add_argument("out", type=Path)
    prune.add_argument("--method", default="magnitude", choices=["magnitude", "wanda", "sparsegpt"])
    prune.add_argument("--pattern", default="unstructured", choices=["unstructured", "2:4", "4:8"])
    prune.add_argument("--sparsity", type=float, default=None, help="share of zeros (unstructured; default 0.5)")
    prune.add_argument("--allocation", default="uniform", choices=["uniform", "owl"],
                       help="owl: a sparsity per decoder layer from outlier ratios, averaging to --sparsity")
    prune.add_argument("--owl-m", type=float, default=5.0, help="outlier threshold: M x the layer's mean Wanda score")
    prune.add_argument("--owl-lambda", type=float, default=0.08, help="layer sparsities within sparsity +- lambda")
    prune.add_argument("--layer-sparsity", default=None, help="comma-separated sparsity per decoder layer")
    prune.add_argument("--calibration", type=Path, default=None,
                       help="text file of calibration data (needed by wanda, sparsegpt and owl), or self-chat: "
                            "the dense model's own answers to seed prompts through its chat template")
    prune.add_argument("--calibration-samples", type=int, default=32, help="random windows of the text")
    prune.add_argument("--calibration-seqlen", type=int, default=256, help="tokens per window")
    prune.add_argument("--quantize", choices=["int8-dynamic", "fp8-dynamic", "w4a16"], default=None,
                       help="also quantize the pruned linear weights, round to nearest: int8-dynamic / fp8-dynamic "
                            "are W8A8 with per-channel weight scales and activations quantized per token at run time; "
                            "w4a16 is int4 weights in groups of 128 (per channel where a width is not a multiple of "
                            "128), stored marlin-24 (2:4) or pack-quantized (--storage dense)")
    prune.add_argument("--sparsegpt-blocksize", type=int, default=128)
    prune.add_argument("--sparsegpt-damp", type=float, default=0.01, help="Hessian dampening, relative to its mean diagonal")
    prune.add_argument(
        "--storage", default="sparse-bitmask", choices=["dense", "sparse-bitmask", "sparse-24-bitmask", "marlin-24"],
        help="dense keeps the zeros; sparse-bitmask and sparse-24-bitmask are compressed-tensors sparse formats; "
             "marlin-24 is for 2:4 weights with --quantize w4a16",
    )
    prune.set_defaults(run=_cmd_prune)

    inspect = commands.add_parser("inspect", help="print the per-layer sparsity table of a checkpoint")
    inspect.add_argument("checkpoint", type=Path)
    inspect.add_argument("--device", default="cpu", help="device whose kernel choice to show (cpu, cuda)")
    inspect.set_defaults(run=_cmd_inspect)

    ppl = commands.add_parser("perplexity", help="perplexity of a model served by vLLM on a text file")
    ppl.add_argument("model")
    ppl.add_argument("--corpus", type=Path, required=True)
    ppl.add_argument("--window", type=int, default=512)
    ppl.add_argument("--count", type=int, default=8)
    ppl.add_argument("--dtype", default="bfloat16")
    ppl.add_argument("--quantization", default=None, help="e.g. vllm-sparse for an undeclared pruned checkpoint")
    ppl.add_argument("--ffn-skip", default=None, help="FFN-skip profile (sets VLLM_SPARSE_FFN_SKIP; prompt tokens "
                     "are scored as a prompt, so they skip only with skip_prompt: true)")
    ppl.set_defaults(run=_cmd_perplexity)

    serve = commands.add_parser(
        "serve", help="vLLM's OpenAI HTTP server plus our gRPC server on one engine",
        description="Any argument not listed here is passed to vLLM's OpenAI server unchanged "
        "(e.g. --port 8000 --max-model-len 2048 --enforce-eager).",
    )
    serve.add_argument("model")
    serve.add_argument("--grpc-host", default="127.0.0.1")
    serve.add_argument("--grpc-port", type=int, default=50051)
    serve.add_argument("--grpc-tls-cert", type=Path, default=None, help="PEM certificate chain (TLS)")
    serve.add_argument("--grpc-tls-key", type=Path, default=None, help="PEM private key (TLS)")
    serve.add_argument("--grpc-token-file", default=None, help="file holding the bearer token clients must send")
    serve.add_argument("--grpc-max-inflight", type=int, default=256, help="streams before RESOURCE_EXHAUSTED")
    serve.add_argument("--grpc-shutdown-drain", type=float, default=1.0,
                       help="seconds health reports NOT_SERVING before the server stops taking calls")
    serve.add_argument("--grpc-shutdown-grace", type=float, default=5.0, help="seconds in-flight streams may finish")
    serve.add_argument("--ffn-skip", default=None, metavar="PROFILE",
                       help="FFN-skip profile (YAML, see configs/); with CUDA graphs on, add --enforce-eager")
    serve.set_defaults(run=_cmd_serve, vllm_args=[])

    cal = commands.add_parser("calibrate-skip", help="choose an FFN-skip profile: by a target share of FFN blocks, "
                                                     "a share of neurons, or a perplexity budget")
    cal.add_argument("model")
    cal.add_argument("--corpus", type=Path, required=True)
    goal = cal.add_mutually_exclusive_group()
    goal.add_argument("--target-skip", type=float, help="share of FFN blocks to skip, e.g. 0.25")
    goal.add_argument("--max-ppl-increase", type=float,
                      help="percent: the largest skip ratio whose perplexity on held-out windows of the corpus "
                           "rises at most this much, e.g. 5")
    cal.add_argument("--out", type=Path, required=True, help="profile to write, e.g. configs/ffn_skip_25.yaml")
    cal.add_argument("--neuron-sparsity", type=float,
                     help="neuron-level skipping: share of FFN neurons to drop per token, e.g. 0.5 (alone, or "
                          "with --target-skip)")
    cal.add_argument("--granularity", choices=("block", "neuron"), default="block",
                     help="with --max-ppl-increase: skip whole FFN blocks, or neurons within them")
    cal.add_argument("--window", type=int, default=256)
    cal.add_argument("--count", type=int, default=4,
                     help="corpus windows to calibrate on (--max-ppl-increase holds out as many more)")
    cal.add_argument("--skip-layers", type=int, default=3, help="k: layers skipped after a trigger")
    cal.add_argument("--warmup-tokens", type=int, default=28)
    cal.set_defaults(run=_cmd_calibrate_skip)

    ev = commands.add_parser("eval-skip", help="skip ratio, perplexity and greedy agreement at several targets")
    ev.add_argument("model", nargs="+", help="model directory, or NAME=DIR")
    ev.add_argument("--calib-corpus", type=Path, required=True)
    ev.add_argument("--eval-corpus", type=Path, required=True)
    ev.add_argument("--targets", default="0,0.1,0.25,0.4",
                    help="block: shares of FFN blocks; neuron: shares of neurons per token")
    ev.add_argument("--granularity", default="block", help="block, neuron, or both: block,neuron")
    ev.add_argument("--max-ppl-increase", type=float, default=None,
                    help="one more row per model and granularity: the largest target within this held-out "
                         "perplexity increase (percent), as calibrate-skip --max-ppl-increase finds it")
    ev.add_argument("--window", type=int, default=256)
    ev.add_argument("--count", type=int, default=3, help="windows per corpus (calibration and held-out)")
    ev.add_argument("--prompts", type=int, default=50)
    ev.add_argument("--new-tokens", type=int, default=32)
    ev.add_argument("--out", default="benchmarks/results/ffn_skip_quality")
    ev.set_defaults(run=_cmd_eval_skip)

    ev2 = commands.add_parser(
        "eval", help="quality of checkpoints against their dense reference through vLLM: perplexity, KL, top-1, "
                     "greedy, cloze and chat agreement")
    ev2.add_argument("model", nargs="+", help="checkpoint folder, or NAME=DIR; several share one reference pass")
    ev2.add_argument("--reference", type=Path, required=True, help="the dense model the checkpoints come from")
    ev2.add_argument("--corpus", type=Path, required=True, help="held-out text (not the calibration text)")
    ev2.add_argument("--ffn-skip", default=None, metavar="PROFILE", help="evaluate the models with this FFN-skip "
                     "profile on (the reference never skips)")
    ev2.add_argument("--out", type=Path, default=Path("eval-report"), help="folder for report.md, report.json, kl.png")
    ev2.add_argument("--window", type=int, default=512)
    ev2.add_argument("--count", type=int, default=8, help="scoring windows")
    ev2.add_argument("--topk", type=int, default=50, help="logprobs per position for the KL (vLLM's top-K)")
    ev2.add_argument("--greedy-prompts", type=int, default=16)
    ev2.add_argument("--new-tokens", type=int, default=32, help="greedy tokens per corpus prompt")
    ev2.add_argument("--cloze-items", type=int, default=64)
    ev2.add_argument("--chat-tokens", type=int, default=64)
    ev2.add_argument("--quantization", default=None, help="e.g. vllm-sparse for undeclared pruned checkpoints")
    ev2.set_defaults(run=_cmd_eval)

    demo = commands.add_parser("demo", help="fetch, prune, serve sparse with vLLM, chat, compare speed and memory "
                                            "with the dense twin")
    demo.add_argument("--workdir", default="models")
    demo.add_argument("--port", type=int, default=8011)
    demo.add_argument("--calibration", default="self-chat",
                      help="SparseGPT calibration: self-chat (the model's own chat answers, the default) or a text "
                           "file (magnitude pruning when the file is absent)")
    demo.add_argument("--pattern", default=DEMO_DEFAULT_PATTERN, choices=list(DEMO_PATTERNS),
                      help="50%% unstructured (the default: readable answers) or 2:4 (more speed, poorer text)")
    demo.set_defaults(run=_cmd_demo)

    bench = commands.add_parser(
        "bench", help="load-test the gRPC or OpenAI endpoint: throughput, TTFT / ITL / E2E percentiles",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Load-test a serving endpoint and report request and token throughput and latency\n"
        "percentiles (mean, p50, p90, p99) of completed requests; failed requests are counted by kind.\n\n"
        "  TTFT  send -> first message carrying a token\n"
        "  ITL   gap between successive token messages / tokens in the later message (one sample per token)\n"
        "  E2E   send -> last message of the stream\n"
        "Throughput = completed requests (or their tokens) / wall time from the first send until the\n"
        "last request is done. Input/output tokens are the server's counts (gRPC prompt_tokens /\n"
        "completion_tokens, OpenAI usage); without them, token-id prompts' length and token messages.",
    )
    bench.add_argument("--backend", choices=["grpc", "vllm-grpc", "openai"], default="grpc",
                       help="grpc: our SparseServing protocol; vllm-grpc: vLLM's own VllmEngine protocol (ours or "
                            "stock vLLM's gRPC launcher); openai: /v1/completions over HTTP")
    bench.add_argument("--target", help="gRPC server HOST:PORT")
    bench.add_argument("--base-url", help="OpenAI server, e.g. http://127.0.0.1:8000 (POST /v1/completions, streamed)")
    bench.add_argument("--compare", nargs=2, metavar=("A", "B"),
                       help="run the same workload on A, then on B, and print B/A ratios; http(s)://... is an "
                            "OpenAI server, grpc://HOST:PORT SparseServing, vllm-grpc://HOST:PORT vLLM's protocol, "
                            "a bare HOST:PORT the --backend")
    bench.add_argument("--model", help="OpenAI model name (default: the server's first model)")
    bench.add_argument("--token", help="bearer token (metadata / header authorization: Bearer TOKEN)")
    bench.add_argument("--tls-ca", type=Path, help="gRPC over TLS, trusting this root certificate (PEM)")
    bench.add_argument("--tls-server-name", help="name to check the gRPC server's certificate against")
    load = bench.add_argument_group("load")
    load.add_argument("--concurrency", type=int, default=None,
                      help="requests in flight (default 1); with --request-rate, a cap")
    load.add_argument("--request-rate", type=float, default=None,
                      help="Poisson arrivals (exponential gaps, seeded) at this many requests/s; inf: all at once")
    load.add_argument("--num-requests", type=int, default=None, help="requests to send (default 100)")
    load.add_argument("--duration", type=float, default=None, help="seconds to keep sending (then wait for those in flight)")
    load.add_argument("--warmup-requests", type=int, default=0, help="requests sent first and not measured")
    load.add_argument("--request-timeout", type=float, default=600.0, help="seconds; a request past it counts as an error")
    load.add_argument("--seed", type=int, default=0, help="seeds random prompts and arrival times")
    work = bench.add_argument_group("workload")
    work.add_argument("--prompts", type=Path, help="text file: one prompt per line (or a corpus, with --prompt-words)")
    work.add_argument("--prompt-words", type=int, default=None, help="cut --prompts into chunks of this many words")
    work.add_argument("--random-input-len", type=int, default=None,
                      help="random prompts of this many token ids (prompt_token_ids / a token-id list prompt)")
    work.add_argument("--vocab-size", type=int, default=32000, help="random token ids are drawn from [100, this)")
    work.add_argument("--max-tokens", type=int, default=128)
    work.add_argument("--temperature", type=float, default=0.0)
    work.add_argument("--ignore-eos", action="store_true", help="generate max-tokens tokens whatever comes")
    bench.add_argument("--json-out", type=Path, help="write the summary (or the comparison) as JSON")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.set_defaults(run=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "serve":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "serve":
        args.vllm_args = unknown
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"vllm-sparse {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
