from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vllm_sparse.checkpoint.errors import CheckpointError
from vllm_sparse.checkpoint.layer_table import LayerRow, format_layer_table
from vllm_sparse.checkpoint.validation import checkpoint_tensor_names, read_safetensors_header


def test_header_check_accepts_whole_files_and_names_truncated_ones(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({"a": torch.zeros(64, 64), "b": torch.ones(3)}, path)
    assert set(read_safetensors_header(path)) >= {"a", "b"}
    assert checkpoint_tensor_names(tmp_path) == {"a": path, "b": path}
    data = path.read_bytes()
    for cut in (4, 40, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=f"{path}: truncated safetensors file"):
            read_safetensors_header(path)


def test_table_lists_rows_and_weighted_totals():
    rows = [
        LayerRow("model.layers.0.mlp.down_proj", (4, 8), "2:4", 0.5, "dense", 64, 64),
        LayerRow("model.layers.0.mlp.up_proj", (8, 4), "unstructured", 0.25, "bitmap", 64, 40),
    ]
    table = format_layer_table(rows).splitlines()
    assert table[0].split()[:5] == ["layer", "shape", "pattern", "sparsity", "kernel"]
    assert table[2].split() == ["model.layers.0.mlp.down_proj", "4x8", "2:4", "50.0%", "dense", "0.00", "0.00"]
    assert table[-1].split()[:4] == ["total", "(2", "layers)", "37.5%"]


def test_inspect_shows_each_layers_quantization_scheme(capsys):
    from vllm_sparse.cli import main

    fixtures = Path(__file__).resolve().parent / "fixtures" / "ct014" / "quantized"
    for name, label in (("int8_2of4", "W8A8 int8"), ("fp8_2of4", "W8A8 fp8")):
        assert main(["inspect", str(fixtures / name)]) == 0
        rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("model.layers.")]
        assert len(rows) == 14 and all(" 2:4 " in row and label in row and "50.0%" in row for row in rows), rows
