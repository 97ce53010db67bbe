"""Write the compressed-tensors 0.14.0.1 reference fixtures, or check our files
with 0.14.0.1. Runs ONLY inside .venv-ct014 (see scripts/ct014_venv.sh):

    .venv-ct014/bin/python tests/checkpoint/make_ct014_fixtures.py write [OUT_DIR]
    .venv-ct014/bin/python tests/checkpoint/make_ct014_fixtures.py verify MODEL_DIR...

``write`` (default OUT_DIR: tests/checkpoint/fixtures/ct014) produces:

* ``<dtype>_<structure>/`` for dtype in bf16/fp16/fp32 and structure in
  unstructured/2of4: a tiny seeded random ``LlamaForCausalLM`` (transformers 4.x),
  magnitude-pruned (50% per weight, or 2 of every 4), saved the way llm-compressor
  saves a sparse model: ``ModelCompressor.from_pretrained_model`` ->
  ``compress_model`` (in place) -> ``save_pretrained`` -> ``update_config``.
  Files: ``dense.safetensors`` (the pruned dense state dict before compression),
  ``model.safetensors`` (what 0.14.0.1 wrote) and ``config.json`` (with the
  ``quantization_config`` block 0.14.0.1 wrote).
* ``edge/<dtype>/``: hand-made tensors that exercise corner cases of the two
  compressors directly (cols not a multiple of 8, -0.0, NaN/inf, 1-D and all-zero
  weights, 2:4 groups with ties, fewer than 2 or more than 2 non-zeros).
  ``input.safetensors``, ``<format>.safetensors`` (0.14.0.1's compress of every
  ``*.weight`` in input) and ``<format>.decompressed.safetensors`` (0.14.0.1's
  decompress of that).

``write-quantized`` (default OUT_DIR: tests/checkpoint/fixtures/ct014/quantized)
produces the layouts published sparse + quantized checkpoints use, from one tiny
seeded Llama (head size 64 so that vLLM's CPU attention takes it; vocabulary 128,
no tokenizer: prompts are token ids), 2:4-pruned, with per-channel symmetric
round-to-nearest weight scales (absmax / 127 or / 448) and dynamic per-token
activations, compressed by 0.14.0.1's ``ModelCompressor.compress_model``:

* ``int8_2of4`` / ``fp8_2of4``: ``format: int-quantized`` / ``float-quantized``
  config groups plus ``sparsity_config {format: sparse-24-bitmask}``;
* ``int8_plain`` / ``fp8_plain``: the same quantized values, no sparsity (what
  stock vLLM serves: the twins);
* ``int8_sparsity_dense``: ``int8_plain`` with a ``sparsity_config`` of format
  ``dense`` left in its config (stock vLLM refuses it);
* ``int8_2of4_minus128`` / ``int8_plain_minus128``: scales without headroom, so
  some values quantize to -128, which 0.14.0.1's sparse-24 compressor drops;
* ``w4a16_marlin24`` / ``w4a16_plain``: int4 group-128 weights in ``marlin-24``
  (sparsity_config ``dense``, 2:4) and the same values in ``pack-quantized``
  (float16 models: the Marlin compressor quantizes in float16).

``write-quantized-model MODEL_DIR OUT_DIR KIND...`` (KIND: int8, fp8, w4a16,
dense) does the same to a real model (SmolLM2-135M): ``OUT_DIR/<kind>_2of4`` and
``OUT_DIR/<kind>_plain``, ``w4a16_marlin24`` / ``w4a16_plain`` (one scale per row),
``int8_sparsity_dense``, with its tokenizer files.

``verify-quantized MODEL_DIR PRUNED.safetensors [SCALES.safetensors]`` compresses
the pruned bf16 weights with 0.14.0.1, using MODEL_DIR's quantization config and
weight scales (written by OUR writer; from SCALES for marlin-24, which keeps only
a permuted copy), and compares tensors and config block with MODEL_DIR's.

``verify`` loads each MODEL_DIR (config.json with a quantization_config block +
model.safetensors, written by OUR code) with 0.14.0.1's ``ModelCompressor`` into a
fresh model, and compares every tensor bit for bit with MODEL_DIR/dense.safetensors.
Prints one JSON line per directory; exit status 0 only when everything matched.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "fixtures" / "ct014"

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
STRUCTURES = {"unstructured": "sparse-bitmask", "2of4": "sparse-24-bitmask"}

# Small, but with in_features 36 and 52: multiples of 4 (2:4 needs that) and not
# of 8, so every bitmask row ends in a padded byte.
LLAMA_CONFIG = dict(
    vocab_size=48,
    hidden_size=36,
    intermediate_size=52,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=64,
    tie_word_embeddings=False,
)


def _require_ct014() -> None:
    import compressed_tensors

    if compressed_tensors.__version__ != "0.14.0.1":
        sys.exit(
            f"needs compressed-tensors 0.14.0.1 (scripts/ct014_venv.sh), "
            f"found {compressed_tensors.__version__}"
        )


def _prune(weight: torch.Tensor, structure: str) -> torch.Tensor:
    w = weight.clone()
    if structure == "2of4":
        groups = w.view(-1, 4)
        drop = groups.abs().float().argsort(dim=1)[:, :2]
        groups.scatter_(1, drop, 0)
    else:
        k = w.numel() // 2
        order = w.abs().float().flatten().argsort()
        w.view(-1)[order[:k]] = 0
    return w


def _tiny_llama(dtype: torch.dtype, structure: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA_CONFIG))
    # Random norms too, so a dense tensor that slipped through unchanged is visible.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
    model = model.to(dtype)
    zeros = total = 0
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":
                module.weight.copy_(_prune(module.weight, structure))
                zeros += int((module.weight == 0).sum())
                total += module.weight.numel()
    return model, zeros / total


def write_models(out: Path) -> None:
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.config import SparsityCompressionConfig

    for dname, dtype in DTYPES.items():
        for sname, fmt in STRUCTURES.items():
            model, sparsity = _tiny_llama(dtype, sname)
            dense = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
            config = SparsityCompressionConfig.load_from_registry(
                fmt,
                targets=["Linear"],
                ignore=["lm_head"],
                global_sparsity=sparsity,
                sparsity_structure="2:4" if sname == "2of4" else "unstructured",
            )
            compressor = ModelCompressor.from_pretrained_model(
                model, sparsity_config_or_format=config
            )
            # The state-dict path must agree with the in-place path used for saving.
            via_state_dict = compressor.compress(model)
            compressor.compress_model(model)
            d = out / f"{dname}_{sname}"
            if d.exists():
                shutil.rmtree(d)
            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(tmp, safe_serialization=True)
                compressor.update_config(tmp)
                d.mkdir(parents=True)
                shutil.copy(Path(tmp) / "config.json", d / "config.json")
                shutil.copy(Path(tmp) / "model.safetensors", d / "model.safetensors")
            written = load_file(d / "model.safetensors")
            assert written.keys() == via_state_dict.keys(), (
                sorted(written.keys() ^ via_state_dict.keys())
            )
            for k, v in written.items():
                assert v.dtype == via_state_dict[k].dtype and torch.equal(
                    v, via_state_dict[k]
                ), k
            save_file(dense, d / "dense.safetensors")
            print(f"wrote {d.relative_to(out)}: sparsity {sparsity:.4f}")


def _edge_inputs(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(99)
    inf, nan = float("inf"), float("nan")

    odd = torch.randn(5, 13, generator=g)
    odd[torch.rand(5, 13, generator=g) < 0.6] = 0
    odd[0, 1], odd[2, 12], odd[3, 3], odd[4, 0] = -0.0, nan, inf, -inf

    # 2:4 corner cases, one group of 4 per line (cols are a multiple of 4).
    groups = torch.tensor(
        [
            [0.0, 0.0, 0.0, 0.0],  # no non-zero: two zeros are kept
            [0.0, 0.5, 0.0, 0.0],  # one non-zero
            [0.0, -0.0, 0.0, 0.0],  # -0.0 only
            [1.0, -1.0, 1.0, -1.0],  # four-way tie (lossy)
            [0.25, 0.0, -0.25, 0.0],  # exactly 2, equal magnitude
            [3.0, 1.0, 2.0, 0.0],  # three non-zeros (lossy)
            [1.0, 2.0, 3.0, 4.0],  # four non-zeros (lossy)
            [0.0, 0.0, 2.0, -2.0],  # exactly 2, at the end
            [-0.0, 0.0, 7.0, 0.0],  # one non-zero and a -0.0
            [0.5, 0.5, 0.0, 0.5],  # three-way tie (lossy)
            [0.0, 0.0, 0.0, 1.0],
            [2.0, 0.0, 0.0, 0.0],
        ]
    )
    ties = groups.reshape(3, 16)

    valid24 = _prune(torch.randn(6, 12, generator=g), "2of4")

    return {
        "odd.weight": odd,
        "ties.weight": ties,
        "valid24.weight": valid24,
        "one_row.weight": _prune(torch.randn(1, 20, generator=g), "2of4"),
        "zeros.weight": torch.zeros(3, 8),
        "vector.weight": torch.tensor([0.0, 1.5, 0, 0, -2.0, 0, 0, 0, 0, 3.0, 0]),
        "not_a_weight.bias": torch.randn(7, generator=g),
    }


def write_edge(out: Path) -> None:
    from compressed_tensors.compressors import BaseCompressor
    from compressed_tensors.config import SparsityCompressionConfig

    for dname, dtype in DTYPES.items():
        d = out / "edge" / dname
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        inputs = {k: v.to(dtype).contiguous() for k, v in _edge_inputs(dtype).items()}
        save_file(inputs, d / "input.safetensors")
        for fmt in STRUCTURES.values():
            chosen = dict(inputs)
            if fmt == "sparse-24-bitmask":
                # 0.14.0.1 asserts 2-D for 2:4, and groups must not cross rows.
                chosen = {k: v for k, v in inputs.items() if k not in ("odd.weight", "vector.weight")}
            compressor = BaseCompressor.load_from_registry(
                fmt, config=SparsityCompressionConfig.load_from_registry(fmt)
            )
            compressed = compressor.compress(chosen)
            save_file(compressed, d / f"{fmt}.safetensors")
            decompressed = dict(compressor.decompress_from_state_dict(compressed))
            save_file(
                {k: v.contiguous() for k, v in decompressed.items()},
                d / f"{fmt}.decompressed.safetensors",
            )
        print(f"wrote edge/{dname}")


def verify(model_dir: Path) -> int:
    from compressed_tensors.compressors import ModelCompressor
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    qcfg = config.quantization_config
    del config.quantization_config
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=config.torch_dtype)
    with torch.no_grad():  # poison: every weight must come from the checkpoint
        for p in model.parameters():
            p.fill_(123.0)
    compressor = ModelCompressor.from_compression_config(qcfg)
    compressor.decompress(str(model_dir), model)
    expected = load_file(model_dir / "dense.safetensors")
    got = model.state_dict()
    problems = []
    for name, want in expected.items():
        have = got.get(name)
        if have is None:
            problems.append(f"{name}: missing")
        elif have.dtype != want.dtype or have.shape != want.shape:
            problems.append(f"{name}: {have.dtype}{tuple(have.shape)} != {want.dtype}{tuple(want.shape)}")
        elif not torch.equal(have.contiguous().view(torch.uint8), want.contiguous().view(torch.uint8)):
            problems.append(f"{name}: values differ")
    print(json.dumps({
        "dir": str(model_dir),
        "sparsity_format": compressor.sparsity_config.format if compressor.sparsity_config else None,
        "checked": len(expected),
        "problems": problems,
    }))
    return 1 if problems else 0


QUANTIZED_LLAMA = dict(
    vocab_size=128,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)
# (config-group format, value type, largest representable magnitude)
QUANT_KINDS = {"int8": ("int-quantized", "int", 127.0), "fp8": ("float-quantized", "float", 448.0)}


def _prune_2of4(model) -> None:
    """Every linear weight but the LM head pruned 2:4 by magnitude, in place."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and name != "lm_head":
                module.weight.copy_(_prune(module.weight, "2of4"))


def _quantize_for(model, kind: str, headroom: float):
    """Attach the W8A8 dynamic scheme of ``kind`` to ``model`` (pruned already) and
    set its weight scales: absmax / largest x ``headroom``."""
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        apply_quantization_config,
    )

    fmt, value_type, largest = QUANT_KINDS[kind]
    scheme = QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(num_bits=8, type=value_type, symmetric=True, strategy="channel"),
        input_activations=QuantizationArgs(num_bits=8, type=value_type, symmetric=True, strategy="token",
                                           dynamic=True),
    )
    config = QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"], format=fmt)
    apply_quantization_config(model, config)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "weight_scale"):
                absmax = module.weight.abs().amax(dim=1, keepdim=True).float().clamp(min=1e-8)
                module.weight_scale.copy_((absmax / largest * headroom).to(module.weight_scale.dtype))
    return config


def _save_compressed(model, config, sparse: bool, target: Path) -> None:
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.config import SparsityCompressionConfig

    sparsity = None
    if sparse:
        sparsity = SparsityCompressionConfig.load_from_registry(
            "sparse-24-bitmask", targets=["Linear"], ignore=["lm_head"], sparsity_structure="2:4",
            global_sparsity=0.5)
    compressor = ModelCompressor(quantization_config=config, sparsity_config=sparsity)
    compressor.compress_model(model)
    shutil.rmtree(target, ignore_errors=True)
    model.save_pretrained(target, safe_serialization=True)
    compressor.update_config(target)


def write_quantized_model(model_dir: Path, out: Path, kinds: list[str]) -> None:
    """A real model (SmolLM2-135M) 2:4-pruned by magnitude and quantized, for each
    of ``kinds``: int8 / fp8 (``<kind>_2of4`` and its twin ``<kind>_plain``), w4a16
    (``w4a16_marlin24`` and ``w4a16_plain``, float16, one scale per row: its widths
    are not multiples of 128), dense (``int8_sparsity_dense``: int8_plain with a
    leftover ``dense`` sparsity config), each with the model's tokenizer files."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
    _prune_2of4(base)  # once: each variant below gets a copy

    def pruned(dtype: torch.dtype):
        return copy.deepcopy(base).to(dtype)

    def with_tokenizer(target: Path) -> None:
        for path in model_dir.iterdir():
            if path.is_file() and (path.name.startswith("tokenizer") or path.name.endswith(".txt")
                                   or path.name == "special_tokens_map.json"):
                shutil.copy2(path, target / path.name)

    for kind in kinds:
        if kind == "w4a16":
            for variant in ("marlin24", "plain"):
                _save_w4a16(pruned(torch.float16), variant == "marlin24", out / f"w4a16_{variant}", group_size=None)
                with_tokenizer(out / f"w4a16_{variant}")
        elif kind == "dense":
            if not (out / "int8_plain" / "config.json").exists():
                raise SystemExit("dense: write int8 first (its int8_plain gets the leftover sparsity config)")
            _add_dense_sparsity_config(out / "int8_plain", out / "int8_sparsity_dense")
        else:
            for variant in ("2of4", "plain"):
                model = pruned(torch.bfloat16)
                _save_compressed(model, _quantize_for(model, kind, headroom=1.02), variant == "2of4",
                                 out / f"{kind}_{variant}")
                with_tokenizer(out / f"{kind}_{variant}")


def _quantized_tiny_llama(kind: str, headroom: float):
    """The pruned tiny Llama with its quantization scheme attached and its weight
    scales set (what a calibration pass would leave behind): absmax / largest x
    ``headroom``. With headroom 1 the bf16 scale can round down, so a row's largest
    negative weight quantizes to int8 -128, which 0.14.0.1's sparse-24 compressor
    then drops (it ranks by ``abs()``, which wraps at -128)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**QUANTIZED_LLAMA)).to(torch.bfloat16).eval()
    _prune_2of4(model)
    return model, _quantize_for(model, kind, headroom)


def _save_w4a16(model, marlin: bool, target: Path, group_size: int | None = 128) -> None:
    """``model`` (float16, 2:4-pruned) as W4A16, int4 symmetric, group 128 or one
    scale per row (``group_size`` None): ``marlin-24`` (with a ``dense`` 2:4
    sparsity config, as the published W4A16 2:4 checkpoints carry) or its twin in
    ``pack-quantized``. float16, because the Marlin 2:4 compressor quantizes in
    float16 whatever the model's dtype: the twin then holds the very same values."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.config import SparsityCompressionConfig
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        apply_quantization_config,
    )

    strategy = "channel" if group_size is None else "group"
    weights = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy=strategy, group_size=group_size)
    config = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=weights)},
                                ignore=["lm_head"], format="marlin-24" if marlin else "pack-quantized")
    apply_quantization_config(model, config)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "weight_scale"):
                w = module.weight.float()
                absmax = w.reshape(w.shape[0], -1, group_size or w.shape[1]).abs().amax(dim=2).clamp(min=1e-8)
                module.weight_scale.copy_((absmax / 7 * 1.02).to(module.weight_scale.dtype))
    sparsity = None
    if marlin:
        sparsity = SparsityCompressionConfig.load_from_registry(
            "dense", targets=["Linear"], ignore=["lm_head"], sparsity_structure="2:4", global_sparsity=0.5)
    compressor = ModelCompressor(quantization_config=config, sparsity_config=sparsity)
    compressor.compress_model(model)
    shutil.rmtree(target, ignore_errors=True)
    model.save_pretrained(target, safe_serialization=True)
    compressor.update_config(target)


def _tiny_w4a16_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**QUANTIZED_LLAMA)).to(torch.bfloat16).to(torch.float16).eval()
    _prune_2of4(model)
    return model


def _add_dense_sparsity_config(source: Path, target: Path) -> None:
    """A copy of a plain quantized checkpoint that carries leftover sparsity
    metadata (``sparsity_config`` of format ``dense``)."""
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config["quantization_config"]["sparsity_config"] = {
        "format": "dense", "global_sparsity": 0.5, "sparsity_structure": "2:4", "targets": ["Linear"],
        "ignore": ["lm_head"], "registry_requires_subclass": False}
    (target / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_quantized(out: Path) -> None:
    # 2% headroom keeps every value within +-127 (clean twins); the "_minus128"
    # pair keeps the exact absmax scales of a naive calibration and so shows the loss.
    plans = [(kind, variant, 1.02, "") for kind in QUANT_KINDS for variant in ("2of4", "plain")]
    plans += [("int8", variant, 1.0, "_minus128") for variant in ("2of4", "plain")]
    for kind, variant, headroom, suffix in plans:
        model, config = _quantized_tiny_llama(kind, headroom)
        _save_compressed(model, config, variant == "2of4", out / f"{kind}_{variant}{suffix}")
    for variant in ("marlin24", "plain"):
        _save_w4a16(_tiny_w4a16_model(), variant == "marlin24", out / f"w4a16_{variant}")
    _add_dense_sparsity_config(out / "int8_plain", out / "int8_sparsity_dense")


def verify_quantized(model_dir: Path, pruned_file: Path, scales_file: Path | None = None) -> int:
    """Compress ``pruned_file`` (the pruned bf16 weights) with 0.14.0.1, using the
    quantization config and the weight scales of ``model_dir`` (written by OUR
    writer; or of ``scales_file``), and compare every tensor bit for bit and the
    config block with ours."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.config import SparsityCompressionConfig
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config
    from transformers import LlamaConfig, LlamaForCausalLM

    config = json.loads((model_dir / "config.json").read_text())
    ours_block = config.pop("quantization_config")
    config.pop("vllm_sparse", None)
    model = LlamaForCausalLM(LlamaConfig(**config)).to(torch.bfloat16).eval()
    model.load_state_dict(load_file(pruned_file), strict=False)
    ours = load_file(model_dir / "model.safetensors")
    scales = load_file(scales_file) if scales_file else ours
    quantization = QuantizationConfig.model_validate(
        {key: ours_block[key] for key in ("config_groups", "format", "ignore", "kv_cache_scheme")})
    apply_quantization_config(model, quantization)
    with torch.no_grad():
        for name, module in model.named_modules():
            if hasattr(module, "weight_scale"):
                module.weight_scale.copy_(scales[f"{name}.weight_scale"])
    sparsity = SparsityCompressionConfig.model_validate(ours_block["sparsity_config"])
    compressor = ModelCompressor(quantization_config=quantization, sparsity_config=sparsity)
    compressor.compress_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        compressor.update_config(tmp)
        theirs = load_file(Path(tmp) / "model.safetensors")
        theirs_block = json.loads((Path(tmp) / "config.json").read_text())["quantization_config"]
    problems = [f"{name}: missing in ours" for name in sorted(set(theirs) - set(ours))]
    problems += [f"{name}: not written by 0.14.0.1" for name in sorted(set(ours) - set(theirs))]
    for name in sorted(set(ours) & set(theirs)):
        a, b = ours[name], theirs[name]
        if a.dtype != b.dtype or a.shape != b.shape:
            problems.append(f"{name}: ours {a.dtype}{tuple(a.shape)} != {b.dtype}{tuple(b.shape)}")
        elif not torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)):
            problems.append(f"{name}: bytes differ")
    if ours_block != theirs_block:
        problems.append(f"config block differs: ours {json.dumps(ours_block, sort_keys=True)} "
                        f"0.14.0.1 {json.dumps(theirs_block, sort_keys=True)}")
    print(json.dumps({"dir": str(model_dir), "checked": len(ours), "problems": problems}))
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    _require_ct014()
    cmd = argv[0] if argv else "write"
    if cmd == "write":
        out = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT
        write_models(out)
        write_edge(out)
        return 0
    if cmd == "write-quantized":
        write_quantized(Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT / "quantized")
        return 0
    if cmd == "write-quantized-model" and len(argv) >= 4:
        write_quantized_model(Path(argv[1]), Path(argv[2]), argv[3:])
        return 0
    if cmd == "verify-quantized" and len(argv) in (3, 4):
        return verify_quantized(*(Path(arg) for arg in argv[1:]))
    if cmd == "verify" and len(argv) > 1:
        return max(verify(Path(d)) for d in argv[1:])
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
