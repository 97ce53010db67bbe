"""The quality table of the README: SmolLM2-135M pruned every way we offer, each
checkpoint against the dense model through vLLM (``vllm-sparse eval``), one
reference pass for all.

    python benchmarks/quality_report.py [--work /tmp/quality-work] [--out benchmarks/results/quality_report]

Calibration on ``persuasion.txt`` (or ``self-chat``), evaluation on the held-out
``sensesensibility.txt``. Checkpoints are kept in ``--work`` and reused when they
exist (pruning them all takes about 15 minutes on 2 cores; the evaluation about 9).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data"

from vllm_sparse.pruning.calibration import SELF_CHAT, CalibrationConfig  # noqa: E402
from vllm_sparse.checkpoint.default_model import fetch_default_model  # noqa: E402
from vllm_sparse.pruning.plan import PruningPlan, SparseGPTConfig  # noqa: E402
from vllm_sparse.pruning.run import prune_model  # noqa: E402
from vllm_sparse.checkpoint.writer import save_sparse_checkpoint  # noqa: E402
from vllm_sparse.kernels import NMPattern  # noqa: E402
from vllm_sparse.quality.report import EvalSettings, ModelSpec, run_eval  # noqa: E402

# name: (method, pattern, sparsity, allocation, calibration)
SETTINGS = {
    "magnitude-50": ("magnitude", None, 0.5, "uniform", None),
    "wanda-50": ("wanda", None, 0.5, "uniform", "persuasion"),
    "sparsegpt-50": ("sparsegpt", None, 0.5, "uniform", "persuasion"),
    "magnitude-2:4": ("magnitude", "2:4", 0.5, "uniform", None),
    "wanda-2:4": ("wanda", "2:4", 0.5, "uniform", "persuasion"),
    "sparsegpt-2:4": ("sparsegpt", "2:4", 0.5, "uniform", "persuasion"),
    "magnitude-4:8": ("magnitude", "4:8", 0.5, "uniform", None),
    "wanda-4:8": ("wanda", "4:8", 0.5, "uniform", "persuasion"),
    "sparsegpt-4:8": ("sparsegpt", "4:8", 0.5, "uniform", "persuasion"),
    "sparsegpt-70": ("sparsegpt", None, 0.7, "uniform", "persuasion"),
    "sparsegpt-70-owl": ("sparsegpt", None, 0.7, "owl", "persuasion"),
    "sparsegpt-50-selfchat": ("sparsegpt", None, 0.5, "uniform", SELF_CHAT),
    "sparsegpt-2:4-selfchat": ("sparsegpt", "2:4", 0.5, "uniform", SELF_CHAT),
}


def make_checkpoint(dense: Path, work: Path, name: str) -> Path:
    out = work / name.replace(":", "of")
    if (out / "config.json").exists():
        return out
    method, pattern, sparsity, allocation, calibration = SETTINGS[name]
    nm = NMPattern.parse(pattern) if pattern else None
    plan = PruningPlan(sparsity=sparsity, pattern=nm)
    config = None
    if calibration is not None:
        config = CalibrationConfig(SELF_CHAT if calibration == SELF_CHAT else DATA / f"{calibration}.txt")
    pruned, recipe = prune_model(dense, method, plan, calibration=config, allocation=allocation,
                                 sparsegpt=SparseGPTConfig())
    storage = "sparse-24-bitmask" if pattern == "2:4" else "sparse-bitmask"
    save_sparse_checkpoint(dense, pruned, out, storage=storage, structure=plan.structure, recipe=recipe)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/quality-work"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "quality_report")
    parser.add_argument("--only", nargs="*", default=None, help="a subset of the settings")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(REPO)  # the report names paths relative to the repository
    dense = fetch_default_model(Path("models") / "smollm2-135m")
    names = args.only or list(SETTINGS)
    specs = [ModelSpec(name, make_checkpoint(dense, args.work, name)) for name in names]
    specs.append(ModelSpec("ffn-skip-25", dense, "configs/ffn_skip_25.yaml"))
    run_eval(specs, dense, Path(os.path.relpath(DATA / "sensesensibility.txt")), args.out, EvalSettings())
    note = (f"\nMachine: {platform.processor() or platform.machine()}, 2 cores; "
            f"{datetime.date.today().isoformat()}; command: `python benchmarks/quality_report.py`.\n")
    with open(args.out / "report.md", "a") as md:
        md.write(note)
    print((args.out / "report.md").read_text())


if __name__ == "__main__":
    main()
