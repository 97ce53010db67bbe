"""The ``vllm-sparse`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DEFAULT_MODEL_DIR = Path("models/smollm2-135m")


def _cmd_fetch_model(args: argparse.Namespace) -> int:
    from .checkpoint.default_model import fetch_default_model

    print(fetch_default_model(args.out))
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    from .checkpoint.pruning import PruningPlan, parse_layer_sparsity, prune_state_dict
    from .checkpoint.writer import load_state_dict, save_sparse_checkpoint
    from .kernels import NMPattern

    pattern = None if args.pattern == "unstructured" else NMPattern.parse(args.pattern)
    sparsity = args.sparsity if pattern is None or args.sparsity is not None else 1 - pattern.density
    plan = PruningPlan(
        sparsity=0.5 if sparsity is None else sparsity,
        pattern=pattern,
        layer_sparsity=parse_layer_sparsity(args.layer_sparsity),
    )
    pruned = prune_state_dict(load_state_dict(args.model), plan)
    recipe = {"method": "magnitude", "pattern": plan.structure, "sparsity": plan.sparsity}
    if plan.layer_sparsity:
        recipe["layer_sparsity"] = list(plan.layer_sparsity)
    out = save_sparse_checkpoint(args.model, pruned, args.out, storage=args.storage, structure=plan.structure, recipe=recipe)
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


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(Path(args.workdir), port=args.port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm-sparse", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    fetch = commands.add_parser("fetch-model", help="write SmolLM2-135M-Instruct as a local HF directory")
    fetch.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR)
    fetch.set_defaults(run=_cmd_fetch_model)

    prune = commands.add_parser("prune", help="magnitude-prune a dense checkpoint")
    prune.add_argument("model", type=Path)
    prune.add_argument("out", type=Path)
    prune.add_argument("--pattern", default="unstructured", choices=["unstructured", "2:4", "4:8"])
    prune.add_argument("--sparsity", type=float, default=None, help="share of zeros (unstructured; default 0.5)")
    prune.add_argument("--layer-sparsity", default=None, help="comma-separated sparsity per decoder layer")
    prune.add_argument(
        "--storage", default="sparse-bitmask", choices=["dense", "sparse-bitmask", "sparse-24-bitmask"],
        help="dense keeps the zeros; the others are compressed-tensors sparse formats",
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
    ppl.set_defaults(run=_cmd_perplexity)

    demo = commands.add_parser("demo", help="fetch, prune 2:4, serve with vLLM, query, show the layer table")
    demo.add_argument("--workdir", default="models")
    demo.add_argument("--port", type=int, default=8011)
    demo.set_defaults(run=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"vllm-sparse {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
