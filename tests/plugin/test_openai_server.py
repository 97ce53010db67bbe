"""vLLM's OpenAI HTTP server, in its normal multi-process mode (API server, engine
core and worker processes), serves a compressed-tensors 2:4 checkpoint through the
plugin with no extra flag."""

from __future__ import annotations


import pytest

from net import free_port
from checkpoints import CASES, MODELS, build_case
from vllm_sparse.demo import extract_layer_table
from vllm_sparse.serving.server_process import OpenAIServer

pytestmark = pytest.mark.vllm


def test_completion_from_compressed_2of4_checkpoint(base_model, tmp_path):
    case = next(c for c in CASES if c.name == "2of4")
    checkpoint = build_case(base_model, MODELS / "test-checkpoints", case).compressed
    with OpenAIServer(checkpoint, free_port(), tmp_path / "server.log", env={"VLLM_PLUGINS": "vllm_sparse"}) as server:
        response = server.post(
            "/v1/completions",
            {"model": str(checkpoint), "prompt": "The capital of France is", "max_tokens": 16,
             "temperature": 0.0, "ignore_eos": True},
        )
        log = server.log_text()
    choice = response["choices"][0]
    assert response["usage"]["completion_tokens"] == 16
    assert choice["text"].strip()
    # The engine ran our linear method on every layer, recognising 2:4 everywhere.
    table = extract_layer_table(log)
    rows = [line.split() for line in table.splitlines() if line.startswith("model.layers.")]
    assert len(rows) == 120
    assert {row[2] for row in rows} == {"2:4"}
    assert "vllm-sparse" in log  # the quantization method vLLM reported
