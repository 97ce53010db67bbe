"""Calibration for the pruning methods that look at activations (Wanda, SparseGPT,
OWL): text -> token batches, and a layer-by-layer walk through a Llama model.

The walk never runs the whole model on the calibration batch. It captures what
decoder layer 0 receives (embeddings plus the rotary/mask arguments), then for each
layer in turn: hooks the layer's linear layers to accumulate activation statistics,
lets the caller prune the layer, and re-runs the pruned layer to produce the next
layer's inputs. Memory stays near one layer's activations for the batch, and every
layer is calibrated on what the *pruned* model feeds it, as in the Wanda and
SparseGPT papers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
# The linear layers of a Llama decoder layer, by their name inside the layer.
LINEAR_NAMES = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)


# ``--calibration self-chat``: text the dense model writes itself (self_chat.py).
SELF_CHAT = "self-chat"


@dataclass(frozen=True)
class CalibrationConfig:
    path: Path | str  # a text file, or SELF_CHAT
    samples: int = 32
    seqlen: int = 256
    seed: int = 0
    batch_size: int = 8  # sequences per forward call: bounds the activation memory

    def __post_init__(self) -> None:
        if self.samples < 1 or self.seqlen < 2:
            raise ValueError(f"calibration needs at least 1 sample of 2 tokens, got {self.samples} x {self.seqlen}")

    @property
    def self_chat(self) -> bool:
        return str(self.path) == SELF_CHAT

    def check(self) -> None:
        """Fail early (before loading a model) on a missing or empty text file."""
        if not self.self_chat:
            read_calibration_text(self.path)

    def recipe(self) -> dict:
        source = {"source": SELF_CHAT} if self.self_chat else {"file": Path(self.path).name}
        return {**source, "samples": self.samples, "seqlen": self.seqlen, "seed": self.seed}


def check_architecture(model_dir: str | Path) -> None:
    """Refuse models the layer walk does not know (it relies on Llama's layer layout)."""
    config_path = Path(model_dir) / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path}: no config.json")
    architectures = json.loads(config_path.read_text()).get("architectures") or []
    if not any(arch in SUPPORTED_ARCHITECTURES for arch in architectures):
        raise ValueError(
            f"{model_dir}: architecture {architectures or 'unknown'} is not supported by the calibrated "
            f"pruning methods; supported: {', '.join(SUPPORTED_ARCHITECTURES)} (Llama family). "
            "Magnitude pruning (--method magnitude, uniform allocation) works on any checkpoint."
        )


def load_llama(model_dir: str | Path):
    """The model in float32 (pruning arithmetic wants it) and its tokenizer."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    check_architecture(model_dir)
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    model.config.use_cache = False
    return model, AutoTokenizer.from_pretrained(model_dir)


def read_calibration_text(path: str | Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: calibration file not found")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"{path}: the calibration file is empty; give a text file of the kind the model will see")
    return text


def calibration_tokens(tokenizer, config: CalibrationConfig, model=None) -> torch.Tensor:
    """``samples`` windows of ``seqlen`` tokens at seeded random offsets of the text
    (random windows, as the papers draw from C4, rather than the first pages only).
    For ``self-chat`` the text is the dense ``model``'s own chat answers."""
    if config.self_chat:
        from .self_chat import self_chat_ids

        if model is None:
            raise ValueError("self-chat calibration needs the dense model to write its text")
        ids = torch.tensor(self_chat_ids(model, tokenizer, config.seqlen, config.seed), dtype=torch.long)
        source = "self-chat text"
    else:
        source = str(config.path)
        ids = torch.tensor(tokenizer(read_calibration_text(config.path), add_special_tokens=False)["input_ids"],
                           dtype=torch.long)
    if len(ids) < config.seqlen:
        raise ValueError(
            f"{source}: {len(ids)} tokens, fewer than one calibration sample of {config.seqlen}; "
            "use a longer file or a smaller --calibration-seqlen"
        )
    generator = torch.Generator().manual_seed(config.seed)
    starts = torch.randint(0, len(ids) - config.seqlen + 1, (config.samples,), generator=generator)
    return torch.stack([ids[s : s + config.seqlen] for s in starts.tolist()])


class _Captured(Exception):
    """Raised by the layer-0 hook to stop the forward pass once the inputs are seen."""


@dataclass
class LayerInputs:
    """What one decoder layer receives for the calibration batch, in chunks."""

    hidden: list[torch.Tensor]  # [batch, seqlen, hidden] per chunk
    kwargs: list[dict]  # position embeddings, mask, ... per chunk


@torch.no_grad()
def capture_layer0_inputs(model, tokens: torch.Tensor, batch_size: int) -> LayerInputs:
    captured = LayerInputs([], [])

    def hook(_module, args, kwargs):
        captured.hidden.append(args[0] if args else kwargs.pop("hidden_states"))
        captured.kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _Captured

    handle = model.model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for chunk in tokens.split(batch_size):
            try:
                model(input_ids=chunk, use_cache=False)
            except _Captured:
                pass
    finally:
        handle.remove()
    return captured


@torch.no_grad()
def run_layer(layer: nn.Module, inputs: LayerInputs) -> LayerInputs:
    """The layer's outputs: the next layer's inputs (same rotary/mask arguments)."""
    outputs = []
    for hidden, kwargs in zip(inputs.hidden, inputs.kwargs):
        out = layer(hidden, **kwargs)
        outputs.append(out[0] if isinstance(out, tuple) else out)
    return LayerInputs(outputs, inputs.kwargs)


def linear_layers(layer: nn.Module) -> dict[str, nn.Linear]:
    return {name: layer.get_submodule(name) for name in LINEAR_NAMES}


class ActivationStats:
    """Per linear layer: the number of input rows seen, the sum of squares of each
    input column (Wanda's ||X_j||^2) and, when asked, the Gram matrix X^T X
    (SparseGPT's Hessian, up to a factor)."""

    def __init__(self, hessian: bool) -> None:
        self.hessian = hessian
        self.rows: dict[str, int] = {}
        self.sumsq: dict[str, torch.Tensor] = {}
        self.gram: dict[str, torch.Tensor] = {}
        # q/k/v (and gate/up) see the very same input tensor: compute its statistics once.
        self._last: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None

    def add(self, name: str, x: torch.Tensor) -> None:
        if self._last is not None and self._last[0] is x:
            _, sumsq, gram = self._last
        else:
            flat = x.reshape(-1, x.shape[-1]).float()
            sumsq = flat.square().sum(dim=0)
            gram = flat.T @ flat if self.hessian else None
            self._last = (x, sumsq, gram)
        rows = x.numel() // x.shape[-1]
        self.rows[name] = self.rows.get(name, 0) + rows
        self.sumsq[name] = self.sumsq[name] + sumsq if name in self.sumsq else sumsq.clone()
        if gram is not None:
            self.gram[name] = self.gram[name] + gram if name in self.gram else gram.clone()

    def column_norms(self, name: str) -> torch.Tensor:
        return self.sumsq[name].sqrt()

    def hessian_of(self, name: str) -> torch.Tensor:
        # Averaged over rows so dampening (relative to the mean diagonal) is scale-free.
        return self.gram[name] / max(self.rows[name], 1)


@contextmanager
def collecting(layer: nn.Module, stats: ActivationStats) -> Iterator[ActivationStats]:
    handles = [
        module.register_forward_hook(lambda _m, args, _out, name=name: stats.add(name, args[0]))
        for name, module in linear_layers(layer).items()
    ]
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()


# Returns whether it changed the layer (False: the statistics pass's outputs are reused).
PruneLayer = Callable[[int, nn.Module, ActivationStats], bool]


@torch.no_grad()
def walk_layers(
    model, tokens: torch.Tensor, prune_layer: PruneLayer, *, hessian: bool, batch_size: int = 8,
    description: str = "layers",
) -> None:
    """For each decoder layer: collect statistics on its (pruned-model) inputs, call
    ``prune_layer(index, layer, stats)`` (which changes the layer's weights in place),
    then run the changed layer to make the next layer's inputs."""
    from tqdm.auto import tqdm

    inputs = capture_layer0_inputs(model, tokens, batch_size)
    layers = model.model.layers
    for index in tqdm(range(len(layers)), desc=description, unit="layer"):
        layer = layers[index]
        with collecting(layer, ActivationStats(hessian)) as stats:
            outputs = run_layer(layer, inputs)
        if prune_layer(index, layer, stats):
            outputs = run_layer(layer, inputs)
        inputs = outputs
