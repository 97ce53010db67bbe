"""Files a serving run shares between vLLM's worker processes and the API server.

``vllm-sparse serve`` points ``VLLM_SPARSE_RUN_DIR`` at a fresh folder; the worker
of tensor-parallel rank 0 writes the per-layer table there once the model is loaded,
and the gRPC server reads it for GetModelInfo and GetMetrics."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from ..checkpoint.layer_table import LayerRow

RUN_DIR_ENV = "VLLM_SPARSE_RUN_DIR"
LAYER_TABLE_FILE = "layer_table.json"


def run_dir() -> Path | None:
    value = os.environ.get(RUN_DIR_ENV)
    return Path(value) if value else None


def write_layer_table(rows: list[LayerRow], quantization: str) -> None:
    directory = run_dir()
    if directory is None or not _is_first_rank():
        return
    payload = {"quantization": quantization, "layers": [asdict(row) for row in rows]}
    temporary = directory / (LAYER_TABLE_FILE + ".tmp")
    temporary.write_text(json.dumps(payload))
    temporary.replace(directory / LAYER_TABLE_FILE)  # readers never see half a file


def read_layer_table() -> tuple[str, list[LayerRow]]:
    """(quantization method, rows); ("", []) when no sparse-aware layer was loaded."""
    directory = run_dir()
    path = directory / LAYER_TABLE_FILE if directory else None
    if path is None or not path.exists():
        return "", []
    payload = json.loads(path.read_text())
    rows = [LayerRow(**{**row, "shape": tuple(row["shape"])}) for row in payload["layers"]]
    return payload["quantization"], rows


def _is_first_rank() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0
