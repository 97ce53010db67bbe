"""Reading compressed-tensors' marlin-24 layout (W4A16, 2:4), which 0.14.0.1 can
write but not read: the values and scales must be exactly those of the same model
stored ``pack-quantized`` (tests/checkpoint/fixtures/ct014/quantized, both written
by 0.14.0.1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vllm_sparse.checkpoint.errors import CheckpointError
from vllm_sparse.checkpoint.inspect import inspect_checkpoint
from vllm_sparse.checkpoint.marlin24 import MARLIN24_PARTS, compress_marlin24, decompress_marlin24

QUANTIZED = Path(__file__).resolve().parent / "fixtures" / "ct014" / "quantized"


def _unpack_int4(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """pack-quantized int4: 8 values per int32 along the row, low nibble first, +8."""
    nibbles = torch.stack([(packed >> (4 * i)) & 0xF for i in range(8)], dim=-1).reshape(packed.shape[0], -1)
    return (nibbles[:, :cols] - 8).to(torch.int8)


def test_marlin24_values_and_scales_are_the_pack_quantized_twins():
    marlin = load_file(QUANTIZED / "w4a16_marlin24" / "model.safetensors")
    twin = load_file(QUANTIZED / "w4a16_plain" / "model.safetensors")
    config = json.loads((QUANTIZED / "w4a16_marlin24" / "config.json").read_text())["quantization_config"]
    assert config["format"] == "marlin-24" and config["sparsity_config"]["format"] == "dense"
    prefixes = [name.removesuffix(".weight_shape") for name in twin if name.endswith(".weight_shape")]
    assert len(prefixes) == 14
    for prefix in prefixes:
        rows, cols = twin[f"{prefix}.weight_shape"].tolist()
        parts = {part: marlin[f"{prefix}.{part}"] for part in MARLIN24_PARTS}
        values, scales = decompress_marlin24(parts, rows, cols, num_bits=4, group_size=128, name=prefix)
        assert torch.equal(values, _unpack_int4(twin[f"{prefix}.weight_packed"], cols)), prefix
        assert torch.equal(scales, twin[f"{prefix}.weight_scale"]), prefix
        groups = values.reshape(rows, cols // 4, 4)
        assert ((groups != 0).sum(-1) <= 2).all()  # 2:4 on the int4 values


def test_marlin24_tensor_of_the_wrong_size_is_named():
    marlin = load_file(QUANTIZED / "w4a16_marlin24" / "model.safetensors")
    prefix = "model.layers.0.mlp.down_proj"
    parts = {part: marlin[f"{prefix}.{part}"] for part in MARLIN24_PARTS}
    parts["weight_packed"] = parts["weight_packed"][:, :-8]
    with pytest.raises(CheckpointError, match=r"model.layers.0.mlp.down_proj.weight_packed: torch.int32 \[8, 248\]"):
        decompress_marlin24(parts, 128, 256, num_bits=4, group_size=128, name=prefix)
    parts = {part: marlin[f"{prefix}.{part}"] for part in MARLIN24_PARTS}
    parts["scale_packed"] = parts["scale_packed"][:1]
    with pytest.raises(CheckpointError, match="scale_packed"):
        decompress_marlin24(parts, 128, 256, num_bits=4, group_size=128, name=prefix)


def test_our_marlin24_writer_gives_back_the_bytes_ct014_wrote():
    """Read every marlin-24 weight of the fixture and write it again: the same bytes."""
    marlin = load_file(QUANTIZED / "w4a16_marlin24" / "model.safetensors")
    twin = load_file(QUANTIZED / "w4a16_plain" / "model.safetensors")
    for name in (n for n in twin if n.endswith(".weight_shape")):
        prefix = name.removesuffix(".weight_shape")
        rows, cols = twin[name].tolist()
        parts = {part: marlin[f"{prefix}.{part}"] for part in MARLIN24_PARTS}
        values, scales = decompress_marlin24(parts, rows, cols, num_bits=4, group_size=128, name=prefix)
        for part, tensor in compress_marlin24(values, scales, 4, 128, prefix).items():
            assert tensor.dtype == parts[part].dtype and tensor.shape == parts[part].shape, (prefix, part)
            assert torch.equal(tensor, parts[part]), (prefix, part)


@pytest.mark.parametrize("group_size, cols", [(128, 512), (None, 576), (128, 1536)])
def test_marlin24_write_then_read_is_exact(group_size, cols):
    """Several groups per row take the grouped scale permutation (the fixture has none)."""
    torch.manual_seed(cols)
    rows = 64
    groups = torch.randint(-8, 8, (rows, cols // 4, 4), dtype=torch.int8)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, torch.rand(groups.shape).argsort(-1)[..., :2], True)
    values = (groups * keep).reshape(rows, cols)
    scales = (torch.rand(rows, 1 if group_size is None else cols // group_size) + 0.01).to(torch.float16)
    parts = compress_marlin24(values, scales, 4, group_size, "w")
    back, back_scales = decompress_marlin24(parts, rows, cols, 4, group_size, "w")
    assert torch.equal(back, values) and torch.equal(back_scales, scales)


def test_marlin24_writer_refuses_what_the_layout_cannot_hold():
    values = torch.zeros(32, 64, dtype=torch.int8)
    values[3, :4] = torch.tensor([1, 2, 3, 0], dtype=torch.int8)
    with pytest.raises(CheckpointError, match="w: 3 non-zeros in a group of 4"):
        compress_marlin24(values, torch.ones(32, 1), 4, None, "w")
    with pytest.raises(CheckpointError, match=r"outside \[-8, 7\]"):
        compress_marlin24(torch.full((32, 64), 9, dtype=torch.int8), torch.ones(32, 1), 4, None, "w")
    with pytest.raises(CheckpointError, match="rows a multiple of 32"):
        compress_marlin24(torch.zeros(48, 64, dtype=torch.int8), torch.ones(48, 1), 4, None, "w")


def test_inspect_reads_marlin24_and_pack_quantized_alike():
    marlin = inspect_checkpoint(QUANTIZED / "w4a16_marlin24")
    plain = inspect_checkpoint(QUANTIZED / "w4a16_plain")
    assert len(marlin) == len(plain) == 14
    for ours, twin in zip(marlin, plain):
        assert (ours.name, ours.shape, ours.pattern, ours.sparsity) == (twin.name, twin.shape, twin.pattern, twin.sparsity)
        assert ours.pattern == "2:4" and ours.quantization == "W4A16 int4"
        assert ours.stored_bytes == ours.shape[0] * ours.shape[1] // 2  # int4, as vLLM holds it
