"""Byte compatibility of our sparse-bitmask / sparse-24-bitmask reader and writer
with compressed-tensors 0.14.0.1, in both directions, plus validation.

The fixtures under fixtures/ct014 were written by compressed-tensors 0.14.0.1
itself (tests/checkpoint/make_ct014_fixtures.py, run in .venv-ct014); these tests
need only the project venv. ``test_ct014_reads_our_files`` additionally runs
0.14.0.1 live when .venv-ct014 exists (scripts/ct014_venv.sh creates it).
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save, save_file

from vllm_sparse.checkpoint.compressed_tensors_format import (
    DENSE_FORMAT,
    PART_NAMES,
    SPARSE_FORMATS,
    compress_state_dict,
    compress_weight,
    decompress_state_dict,
    decompress_weight,
    parse_sparsity_config,
    quantization_config_dict,
    sparsity_config_dict,
    weight_part_names,
)
from vllm_sparse.checkpoint.targets import target_matcher
from vllm_sparse.checkpoint.errors import CheckpointError
from vllm_sparse.checkpoint.sparsity_spec import SparsitySpec

HERE = Path(__file__).resolve().parent
FIXTURES = HERE / "fixtures" / "ct014"
REPO = HERE.parent.parent
CT014_PYTHON = REPO / ".venv-ct014" / "bin" / "python"

MODEL_CASES = [f"{d}_{s}" for d in ("bf16", "fp16", "fp32") for s in ("unstructured", "2of4")]
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_same_tensors(ours: dict, theirs: dict) -> None:
    """Same names, dtypes, shapes and bytes (NaN payloads and -0.0 included)."""
    assert sorted(ours) == sorted(theirs)
    for name, want in theirs.items():
        have = ours[name]
        assert have.dtype == want.dtype, name
        assert have.shape == want.shape, name
        assert torch.equal(
            have.contiguous().flatten().view(torch.uint8), want.contiguous().flatten().view(torch.uint8)
        ), name


def llama_module_classes(names) -> dict[str, tuple[str, ...]]:
    """Class names of the fixture Llama's modules, as 0.14.0.1 saw them."""
    classes = {}
    for n in names:
        module = n.rsplit(".", 1)[0]
        if module.endswith("_proj") or module == "lm_head":
            classes[module] = ("Linear", "Module")
        elif module.endswith("embed_tokens"):
            classes[module] = ("Embedding", "Module")
        else:
            classes[module] = ("LlamaRMSNorm", "Module")
    return classes


def load_case(case: str):
    d = FIXTURES / case
    block = json.loads((d / "config.json").read_text())["quantization_config"]
    return d, block, load_file(d / "dense.safetensors")


# ------------------------------------------------------- 0.14.0.1 model fixtures


@pytest.mark.parametrize("case", MODEL_CASES)
def test_we_decompress_ct014_files_bit_exact(case):
    d, block, dense = load_case(case)
    spec = parse_sparsity_config(block)
    theirs = load_file(d / "model.safetensors")
    # The fixture really is compressed: every targeted Linear has parts, no .weight.
    groups = weight_part_names(theirs, spec.format)
    assert len(groups) == 14 and all(parts == set(PART_NAMES[spec.format]) for parts in groups.values())
    assert_same_tensors(decompress_state_dict(theirs, spec.format), dense)


@pytest.mark.parametrize("case", MODEL_CASES)
def test_we_compress_like_ct014_byte_for_byte(case):
    d, block, dense = load_case(case)
    spec = parse_sparsity_config(block)
    targets = target_matcher(spec.targets, spec.ignore, llama_module_classes(dense))
    ours = compress_state_dict(dense, spec.format, targets)
    theirs = load_file(d / "model.safetensors")
    assert_same_tensors(ours, theirs)
    # Even the serialized file is identical (transformers writes {"format": "pt"}).
    assert save(ours, metadata={"format": "pt"}) == (d / "model.safetensors").read_bytes()


@pytest.mark.parametrize("case", MODEL_CASES)
def test_config_block_matches_ct014(case):
    _, block, _ = load_case(case)
    spec = parse_sparsity_config(block)
    fmt = "sparse-24-bitmask" if case.endswith("2of4") else "sparse-bitmask"
    assert spec == SparsitySpec(
        format=fmt,
        structure="2:4" if fmt == "sparse-24-bitmask" else "unstructured",
        targets=("Linear",),
        ignore=("lm_head",),
        global_sparsity=0.5,
    )
    ours = quantization_config_dict(
        fmt, sparsity_structure=spec.structure, global_sparsity=0.5, targets=["Linear"], ignore=["lm_head"]
    )
    assert ours == block
    # Same text as 0.14.0.1's json.dump(indent=2, sort_keys=True) would give.
    assert json.dumps(ours, indent=2, sort_keys=True) == json.dumps(block, indent=2, sort_keys=True)
    assert list(ours) == sorted(ours)
    assert ours["version"] == "0.14.0.1"
    assert ours["sparsity_config"]["registry_requires_subclass"] is False


# -------------------------------------------------------- 0.14.0.1 edge fixtures


@pytest.mark.parametrize("dtype", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("fmt", SPARSE_FORMATS)
def test_edge_cases_both_directions(dtype, fmt):
    d = FIXTURES / "edge" / dtype
    inputs = load_file(d / "input.safetensors")
    theirs = load_file(d / f"{fmt}.safetensors")
    their_dense = load_file(d / f"{fmt}.decompressed.safetensors")
    if fmt == "sparse-24-bitmask":
        inputs = {k: v for k, v in inputs.items() if k not in ("odd.weight", "vector.weight")}
    # 0.14.0.1 compressed every *.weight here (no targets), lossy 2:4 included.
    ours = compress_state_dict(inputs, fmt, lambda _: True, allow_pruning=True)
    assert_same_tensors(ours, theirs)
    assert_same_tensors(decompress_state_dict(theirs, fmt), their_dense)


def test_edge_fixture_semantics():
    """What the edge fixtures show about 0.14.0.1 (documented in the module)."""
    d = FIXTURES / "edge" / "fp32"
    inputs = load_file(d / "input.safetensors")
    bm = load_file(d / "sparse-bitmask.decompressed.safetensors")
    # -0.0 is dropped by sparse-bitmask and comes back as +0.0; NaN/inf survive.
    odd = inputs["odd.weight"]
    assert torch.signbit(odd[0, 1]) and not torch.signbit(bm["odd.weight"][0, 1])
    assert torch.isnan(bm["odd.weight"][2, 12]) and torch.isinf(bm["odd.weight"][3, 3])
    # 2:4 keeps -0.0 bits when topk picks them, keeps zeros in sparse groups and
    # prunes groups with more than 2 non-zeros.
    c24 = load_file(d / "sparse-24-bitmask.safetensors")
    assert c24["ties.shape"].tolist() == [[3], [16]] and c24["ties.shape"].dtype == torch.int64
    assert c24["zeros.compressed"].shape == (3, 4) and not c24["zeros.compressed"].any()
    back = load_file(d / "sparse-24-bitmask.decompressed.safetensors")["ties.weight"].reshape(-1, 4)
    assert back[5].tolist() == [3.0, 0.0, 2.0, 0.0]  # [3, 1, 2, 0]: the 1 is pruned
    assert back[6].tolist() == [0.0, 0.0, 3.0, 4.0]
    with pytest.raises(CheckpointError, match=r"ties.weight: not 2:4 sparse: row 0, columns 12..15 hold 4"):
        compress_weight(inputs["ties.weight"], "sparse-24-bitmask", name="ties.weight")


# ------------------------------------------------------------ live 0.14.0.1 check


def _random_pruned_like(dense: dict, fmt: str, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in dense.items():
        w = torch.randn(t.shape, generator=g).to(t.dtype)
        if name.endswith("_proj.weight"):
            if fmt == "sparse-24-bitmask":
                # 0..2 non-zeros per group, so some groups store zeros.
                keep = torch.rand(w.shape, generator=g).reshape(-1, 4).argsort(dim=1) < torch.randint(
                    0, 3, (w.numel() // 4, 1), generator=g
                )
                w = w * keep.reshape(w.shape)
            else:
                w = w * (torch.rand(w.shape, generator=g) < 0.3)
            w[w == 0] = 0.0  # no -0.0: sparse-bitmask would turn it into +0.0
        out[name] = w.contiguous()
    return out


@pytest.mark.skipif(
    not CT014_PYTHON.exists(),
    reason=".venv-ct014 is absent (create it with scripts/ct014_venv.sh to run compressed-tensors 0.14.0.1 live)",
)
def test_ct014_reads_our_files(tmp_path):
    dirs = []
    for i, case in enumerate(["bf16_2of4", "fp16_unstructured", "fp32_2of4", "bf16_unstructured"]):
        src, block, dense = load_case(case)
        spec = parse_sparsity_config(block)
        weights = _random_pruned_like(dense, spec.format, seed=100 + i)
        targets = target_matcher(["Linear"], ["lm_head"], llama_module_classes(weights))
        config = json.loads((src / "config.json").read_text())
        config["quantization_config"] = quantization_config_dict(
            spec.format,
            sparsity_structure=spec.structure,
            global_sparsity=0.3,
            targets=["Linear"],
            ignore=["lm_head"],
        )
        d = tmp_path / case
        d.mkdir()
        (d / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        save_file(compress_state_dict(weights, spec.format, targets), d / "model.safetensors", metadata={"format": "pt"})
        save_file(weights, d / "dense.safetensors")
        dirs.append(str(d))
    proc = subprocess.run(
        [str(CT014_PYTHON), str(HERE / "make_ct014_fixtures.py"), "verify", *dirs],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HOME": str(tmp_path)},
    )
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert proc.returncode == 0 and len(reports) == len(dirs), proc.stdout + proc.stderr[-3000:]
    for r in reports:
        assert r["problems"] == [] and r["checked"] > 20, r


# ----------------------------------------------------------------- round trips


@st.composite
def dense_weights(draw, two_four: bool):
    dtype = draw(st.sampled_from(DTYPES))
    rows = draw(st.integers(1, 9))
    cols = 4 * draw(st.integers(1, 12)) if two_four else draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 10 ** draw(st.integers(-3, 3))
    if two_four:
        nnz = torch.randint(0, 3, (rows * cols // 4, 1), generator=g)
        keep = torch.rand(rows * cols // 4, 4, generator=g).argsort(dim=1) < nnz
    else:
        keep = torch.rand(rows, cols, generator=g) < draw(st.floats(0.0, 1.0))
    w = (w * keep.reshape(rows, cols)).to(dtype)
    w[w == 0] = 0  # +0.0 only (underflow to zero in fp16/bf16 included)
    if draw(st.booleans()) and w.dim() == 2 and not two_four:
        w = w.flatten()  # sparse-bitmask also takes 1-D
    return w


def bits_equal(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(BITS[a.dtype]), b.view(BITS[b.dtype]))


@PROPS
@given(dense_weights(two_four=False))
def test_bitmask_round_trip(w):
    parts = compress_weight(w, "sparse-bitmask")
    cols = w.shape[-1]
    assert parts["shape"].dtype == torch.int64 and parts["shape"].tolist() == list(w.shape)
    assert parts["bitmask"].dtype == torch.uint8 and parts["bitmask"].shape[-1] == math.ceil(cols / 8)
    assert parts["compressed"].dim() == 1 and parts["compressed"].numel() == int((w != 0).sum())
    assert bool((parts["compressed"] != 0).all())
    assert bits_equal(decompress_weight(parts, "sparse-bitmask", "m"), w)


@PROPS
@given(dense_weights(two_four=True))
def test_24_round_trip(w):
    parts = compress_weight(w, "sparse-24-bitmask")
    rows, cols = w.shape
    assert parts["shape"].dtype == torch.int64 and parts["shape"].tolist() == [[rows], [cols]]
    assert parts["compressed"].shape == (rows, cols // 2)
    assert parts["bitmask"].shape == (rows, math.ceil(cols / 8))
    assert bits_equal(decompress_weight(parts, "sparse-24-bitmask", "m"), w)


def test_bitmask_bit_order_and_padding():
    w = torch.zeros(2, 10)
    w[0, 0] = w[0, 3] = w[0, 9] = 1.0
    w[1, 8] = 2.0
    parts = compress_weight(w, "sparse-bitmask")
    # column c -> bit c % 8 (LSB first) of byte c // 8; rows padded to whole bytes
    assert parts["bitmask"].tolist() == [[0b00001001, 0b00000010], [0, 0b00000001]]
    assert parts["row_offsets"].tolist() == [0, 3] and parts["row_offsets"].dtype == torch.int64


def test_bitmask_negative_zero_becomes_positive_zero():
    w = torch.tensor([[-0.0, 1.0, 0.0, 2.0]])
    back = decompress_weight(compress_weight(w, "sparse-bitmask"), "sparse-bitmask", "m")
    assert back.tolist() == [[0.0, 1.0, 0.0, 2.0]] and not torch.signbit(back[0, 0])


# ------------------------------------------------------------------- rejections


@st.composite
def compressed_weights(draw, fmt: str):
    w = draw(dense_weights(two_four=fmt == "sparse-24-bitmask"))
    if w.dim() == 1:
        w = w.reshape(1, -1)
    return w, compress_weight(w, fmt)


def _set_bit(bitmask: torch.Tensor, row: int, col: int) -> torch.Tensor:
    out = bitmask.clone()
    out[row, col // 8] |= 1 << (col % 8)
    return out


@PROPS
@given(st.data(), st.sampled_from(SPARSE_FORMATS))
def test_rejects_popcount_mismatch(data, fmt):
    w, parts = data.draw(compressed_weights(fmt))
    values = parts["compressed"]
    if fmt == "sparse-bitmask":
        drop = data.draw(st.booleans()) and values.numel() > 0
        parts["compressed"] = values[:-1] if drop else torch.cat([values, values.new_ones(1)])
        pattern = r"m\.bitmask: \d+ bits set but m\.compressed holds \d+ values"
    else:
        parts["compressed"] = values[:, :-1] if values.shape[1] > 1 else torch.cat([values, values], 1)
        pattern = r"m\.compressed: has shape .* needs"
    with pytest.raises(CheckpointError, match=pattern):
        decompress_weight(parts, fmt, "m")


@PROPS
@given(st.data())
def test_rejects_24_group_with_three_flags(data):
    w, parts = data.draw(compressed_weights("sparse-24-bitmask"))
    rows, cols = w.shape
    r = data.draw(st.integers(0, rows - 1))
    g = data.draw(st.integers(0, cols // 4 - 1))
    mask = torch.from_numpy(
        np.unpackbits(parts["bitmask"].numpy(), axis=-1, count=cols, bitorder="little")
    ).bool()
    free = [c for c in range(4 * g, 4 * g + 4) if not mask[r, c]]
    parts["bitmask"] = _set_bit(parts["bitmask"], r, data.draw(st.sampled_from(free)))
    with pytest.raises(CheckpointError, match=rf"m\.bitmask: row {r}, columns {4 * g}\.\.{4 * g + 3} flag 3 entries"):
        decompress_weight(parts, "sparse-24-bitmask", "m")


@PROPS
@given(st.data(), st.sampled_from(SPARSE_FORMATS))
def test_rejects_shape_mismatch(data, fmt):
    w, parts = data.draw(compressed_weights(fmt))
    rows, cols = w.shape
    new = data.draw(
        st.tuples(st.integers(1, 12), st.integers(1, 60)).filter(
            lambda s: s != (rows, cols) and (s[0] != rows or math.ceil(s[1] / 8) != math.ceil(cols / 8) or fmt == "sparse-24-bitmask")
        )
    )
    shape = torch.tensor(list(new), dtype=torch.int64)
    parts["shape"] = shape.reshape(-1, 1) if fmt == "sparse-24-bitmask" else shape
    with pytest.raises(CheckpointError, match=r"m\.(bitmask|compressed|shape)"):
        decompress_weight(parts, fmt, "m")


def test_rejects_shape_width_within_padding():
    # cols 10 -> 12 keeps ceil(cols/8) == 2 bytes: caught by popcount or padding bits.
    w = torch.zeros(2, 12)
    w[:, 11] = 1.0
    parts = compress_weight(w, "sparse-bitmask")
    parts["shape"] = torch.tensor([2, 10])
    with pytest.raises(CheckpointError, match=r"m\.bitmask: padding bits beyond column 9 are set"):
        decompress_weight(parts, "sparse-bitmask", "m")


@PROPS
@given(st.data())
def test_rejects_inconsistent_row_offsets(data):
    w, parts = data.draw(compressed_weights("sparse-bitmask"))
    offsets = parts["row_offsets"].clone()
    i = data.draw(st.integers(0, offsets.numel() - 1))
    offsets[i] += data.draw(st.sampled_from([-1, 1, 7]))
    parts["row_offsets"] = offsets
    with pytest.raises(CheckpointError, match=rf"m\.row_offsets: entry \[{i}\] is"):
        decompress_weight(parts, "sparse-bitmask", "m")


@PROPS
@given(st.text(max_size=30).filter(lambda s: s not in (DENSE_FORMAT, *SPARSE_FORMATS)))
def test_rejects_unknown_format_string(fmt):
    block = {"quant_method": "compressed-tensors", "sparsity_config": {"format": fmt}}
    with pytest.raises(CheckpointError) as exc:
        parse_sparsity_config(block)
    msg = str(exc.value)
    assert msg.startswith("quantization_config.sparsity_config.format:")
    assert "'sparse-bitmask'" in msg and "'sparse-24-bitmask'" in msg
    with pytest.raises(CheckpointError, match="supported: sparse-bitmask, sparse-24-bitmask"):
        decompress_weight({}, fmt, "m")


def test_rejects_missing_and_extra_parts():
    parts = compress_weight(torch.eye(4), "sparse-bitmask")
    with pytest.raises(CheckpointError, match=r"m: sparse-bitmask weight has missing m\.row_offsets"):
        decompress_weight({k: v for k, v in parts.items() if k != "row_offsets"}, "sparse-bitmask", "m")
    with pytest.raises(CheckpointError, match=r"unexpected m\.row_offsets"):
        decompress_weight(parts, "sparse-24-bitmask", "m")
    # In a whole checkpoint, a foreign part next to a group is an error too.
    tensors = {f"layer.{k}": v for k, v in parts.items()}
    with pytest.raises(CheckpointError, match=r"unexpected layer\.row_offsets"):
        decompress_state_dict(tensors, "sparse-24-bitmask")


@pytest.mark.parametrize(
    "part, bad, pattern",
    [
        ("bitmask", lambda t: t.to(torch.int8), r"m\.bitmask: dtype torch\.int8, expected torch\.uint8"),
        ("shape", lambda t: t.float(), r"m\.shape: dtype torch\.float32"),
        ("row_offsets", lambda t: t.float(), r"m\.row_offsets: dtype torch\.float32"),
        ("compressed", lambda t: t.to(torch.int32), r"m\.compressed: dtype torch\.int32 is not supported"),
        ("shape", lambda t: t.reshape(1, 2), r"m\.shape: has shape \[1, 2\]"),
        ("bitmask", lambda t: t[:, :1], r"m\.bitmask: has shape \[4, 1\]"),
    ],
)
def test_rejects_wrong_dtypes_and_shapes(part, bad, pattern):
    parts = compress_weight(torch.eye(4, 12), "sparse-bitmask")
    parts[part] = bad(parts[part])
    with pytest.raises(CheckpointError, match=pattern):
        decompress_weight(parts, "sparse-bitmask", "m")


def test_24_shape_part_must_be_2x1_or_2():
    parts = compress_weight(torch.tensor([[1.0, 0, 0, 2]]), "sparse-24-bitmask")
    parts["shape"] = torch.tensor([1, 4, 1])
    with pytest.raises(CheckpointError, match=r"m\.shape: has shape \[3\], expected \[2, 1\]"):
        decompress_weight(parts, "sparse-24-bitmask", "m")
    parts["shape"] = torch.tensor([1, 4])  # flat is what 0.14.0.1's reader tolerates too
    assert decompress_weight(parts, "sparse-24-bitmask", "m").tolist() == [[1.0, 0, 0, 2]]


def test_compress_refusals():
    with pytest.raises(CheckpointError, match=r"w: not 2:4 sparse: row 1, columns 4..7 hold 3"):
        compress_weight(torch.tensor([[1.0, 1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 2, 3, 0]]), "sparse-24-bitmask", name="w")
    with pytest.raises(CheckpointError, match="multiple of 4"):
        compress_weight(torch.zeros(2, 6), "sparse-24-bitmask")
    with pytest.raises(CheckpointError, match="2-D"):
        compress_weight(torch.zeros(8), "sparse-24-bitmask")
    with pytest.raises(CheckpointError, match="dtype torch.int32 is not supported"):
        compress_weight(torch.zeros(2, 8, dtype=torch.int32), "sparse-bitmask")
    with pytest.raises(CheckpointError, match="unknown compressed-tensors sparse format 'marlin-24'"):
        compress_weight(torch.zeros(2, 8), "marlin-24")


# -------------------------------------------------------- state dicts and config


def test_state_dict_rules():
    sd = {
        "a.weight": torch.tensor([[0.0, 1.0, 0.0, 2.0]]),
        "a.bias": torch.ones(1),
        "skip.weight": torch.tensor([[3.0, 0.0, 0.0, 0.0]]),
        "norm.weight": torch.ones(4),
    }
    out = compress_state_dict(sd, "sparse-bitmask", lambda m: m in ("a", "norm"))
    assert sorted(out) == sorted(
        ["a.bias", "skip.weight"] + [f"{m}.{p}" for m in ("a", "norm") for p in PART_NAMES["sparse-bitmask"]]
    )
    assert weight_part_names(out) == {m: set(PART_NAMES["sparse-bitmask"]) for m in ("a", "norm")}
    back = decompress_state_dict(out, "sparse-bitmask")
    assert sorted(back) == sorted(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    assert compress_state_dict(sd, DENSE_FORMAT, lambda m: True) == sd
    with pytest.raises(CheckpointError, match=r"a\.weight: present both dense and as compressed"):
        decompress_state_dict({**out, "a.weight": sd["a.weight"]}, "sparse-bitmask")
    with pytest.raises(CheckpointError, match=r"a\.shape: compressing a\.weight produces a name already"):
        compress_state_dict({**sd, "a.shape": torch.ones(1)}, "sparse-bitmask", lambda m: m == "a")


def test_target_matcher_follows_ct014_rules():
    classes = {"model.layers.0.q_proj": ("Linear", "Module"), "lm_head": ("Linear",), "v": ("LinearBase",)}
    m = target_matcher(["Linear"], ["lm_head"], classes)
    assert m("model.layers.0.q_proj") and m("v") and not m("lm_head") and not m("model.norm")
    r = target_matcher(["re:.*proj$", "exact"], ["re:model.layers.1"])
    assert r("model.layers.0.q_proj") and r("exact") and not r("model.layers.1.q_proj")
    assert not r("exactly")  # exact names are exact
    assert target_matcher(["re:proj"], None)("proj_x") and not target_matcher(["re:proj"], None)("x.proj")  # re.match


def test_our_names_match_compressed_tensors_017():
    from compressed_tensors.config import CompressionFormat

    assert {CompressionFormat.dense.value, CompressionFormat.sparse_bitmask.value,
            CompressionFormat.sparse_24_bitmask.value} == {DENSE_FORMAT, *SPARSE_FORMATS}


def test_sparsity_config_dict_and_parse():
    sc = sparsity_config_dict(
        "sparse-bitmask", sparsity_structure="Unstructured", global_sparsity=0.3125, targets=None, ignore=None
    )
    assert sc == {
        "format": "sparse-bitmask",
        "global_sparsity": 0.3125,
        "ignore": None,
        "registry_requires_subclass": False,
        "sparsity_structure": "Unstructured",  # written as given, like 0.14.0.1
        "targets": None,
    }
    spec = parse_sparsity_config({"quant_method": "compressed-tensors", "sparsity_config": sc})
    # null targets: 0.14.0.1 matches no module; structure normalised for NMPattern
    assert (spec.structure, spec.targets, spec.ignore, spec.nm_pattern) == ("unstructured", (), (), None)
    assert spec.extra == {"registry_requires_subclass": False}

    # N:M other than 2:4 is legal with sparse-bitmask and dense storage
    block = quantization_config_dict("dense", sparsity_structure="4:8", global_sparsity=0.5, targets=["Linear"], ignore=[])
    assert block["sparsity_config"]["format"] == "dense"
    spec = parse_sparsity_config(block)
    assert spec.format == DENSE_FORMAT and str(spec.nm_pattern) == "4:8" and spec.targets == ("Linear",)
    assert parse_sparsity_config({"quant_method": "compressed-tensors", "sparsity_config": {}}) == SparsitySpec()

    with pytest.raises(CheckpointError, match="requires sparsity_structure '2:4'"):
        sparsity_config_dict("sparse-24-bitmask", sparsity_structure="4:8", global_sparsity=0.5, targets=None, ignore=None)
    bad = {"quant_method": "compressed-tensors", "sparsity_config": {"format": "sparse-24-bitmask", "sparsity_structure": "4:8"}}
    with pytest.raises(CheckpointError, match=r"quantization_config\.sparsity_config\.sparsity_structure: sparse-24-bitmask requires"):
        parse_sparsity_config(bad)
    bad["sparsity_config"] = {"format": "sparse-bitmask", "sparsity_structure": "blocky"}
    with pytest.raises(CheckpointError, match=r"sparsity_structure: 'blocky' is not a sparsity structure"):
        parse_sparsity_config(bad)
    with pytest.raises(CheckpointError, match=r"quantization_config\.quant_method"):
        parse_sparsity_config({"quant_method": "gptq"})
    with pytest.raises(CheckpointError, match=r"quantization_config\.sparsity_config\.global_sparsity"):
        parse_sparsity_config({"quant_method": "compressed-tensors", "sparsity_config": {"format": "sparse-bitmask", "global_sparsity": 2}})
    with pytest.raises(CheckpointError, match=r"quantization_config\.sparsity_config\.targets"):
        parse_sparsity_config({"quant_method": "compressed-tensors", "sparsity_config": {"format": "sparse-bitmask", "targets": "Linear"}})
