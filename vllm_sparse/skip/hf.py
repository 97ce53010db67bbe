"""FFN skipping on a transformers Llama-family model (LlamaForCausalLM, Qwen2, Mistral),
for cheap quality evaluation and calibration without vLLM.

Hooks, not a copy of the model code: a forward pre-hook on each decoder layer takes
the row positions, one on ``post_attention_layernorm`` takes the residual stream
entering the FFN (its input), and ``mlp.forward`` is replaced by the shared
decision step (``decision.SkipRun.ffn``). Rows are the flattened (batch, time)
tokens, so a full-sequence forward and an incremental decode with a KV cache give
the same per-token decisions.

Which rows are prompt tokens: ``prompt_len`` (positions below it are prompt).
The default 0 treats every token as generated, which is how perplexity under
skipping is measured (teacher forcing of tokens as if they were decoded).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from .decision import Recorder, SkipRun
from .policy import SkipPolicy


def load_hf_llama(model_dir: str | Path, dtype: torch.dtype = torch.float32):
    """A transformers causal LM from a Hugging Face directory. A pruned checkpoint
    stored dense carries a compressed-tensors ``quantization_config`` (only a sparsity
    declaration) that transformers would try to act on, so it is dropped here."""
    from transformers import AutoConfig, AutoModelForCausalLM

    model_dir = Path(model_dir)
    raw = json.loads((model_dir / "config.json").read_text())
    if "quantization_config" in raw:
        from safetensors.torch import load_file

        raw.pop("quantization_config")
        config = AutoConfig.for_model(**raw)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        state = {}
        for path in sorted(model_dir.glob("*.safetensors")):
            state.update(load_file(path))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [m for m in missing if m != "lm_head.weight"]  # tied embeddings
        if missing or unexpected:
            raise ValueError(f"{model_dir}: weights do not fit the config "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        model.tie_weights()
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    return model.eval()


class HFSkipper:
    """FFN skipping installed on a transformers model; counts per layer.

    Use as ``with skipping(model, policy) as s: model(...)``; ``s.skipped`` and
    ``s.computed`` are per-layer token-row counts; ``s.decisions`` (when
    ``trace=True``) holds (layer, flat row, skipped) for the last forward pass."""

    def __init__(self, model, policy: SkipPolicy, *, prompt_len: int = 0, recorder: Recorder | None = None,
                 trace: bool = False) -> None:
        self.layers = list(model.model.layers)
        self.num_layers = len(self.layers)
        self.policy = policy.validate(self.num_layers)
        self.prompt_len = prompt_len
        self.recorder = recorder
        self.skipped = [0] * self.num_layers
        self.computed = [0] * self.num_layers
        self.trace = trace
        self.decisions: list[torch.Tensor] = []  # per layer: bool [N] skipped, last forward
        self.neurons_dropped = 0  # neuron-level: intermediate neurons dropped / seen, over rows that may skip
        self.neurons_seen = 0
        self.positions: torch.Tensor | None = None
        self._run: SkipRun | None = None
        self._residual: torch.Tensor | None = None
        self._handles: list = []
        for index, layer in enumerate(self.layers):
            self._install(index, layer)

    def _install(self, index: int, layer) -> None:
        def on_layer(module, args, kwargs):
            if index == 0:
                hidden = args[0] if args else kwargs["hidden_states"]
                positions = kwargs.get("position_ids")
                if positions is None:
                    raise ValueError("FFN skipping needs position_ids passed to the decoder layers")
                positions = positions.expand(hidden.shape[0], hidden.shape[1]).reshape(-1)
                self._start(positions)

        def on_norm(module, args):
            self._residual = args[0]

        mlp = layer.mlp
        original = mlp.forward
        neuron_threshold = self.policy.neuron_threshold(index)

        def neuron_forward(x: torch.Tensor) -> torch.Tensor:
            """The MLP with the neurons at or under the threshold dropped, in the rows
            that may skip."""
            act = mlp.act_fn(mlp.gate_proj(x))
            drop = (act.abs() <= neuron_threshold) & self._run.may_skip_rows()[:, None]
            self.neurons_dropped += int(drop.sum())
            self.neurons_seen += int(self._run.may_skip_rows().sum()) * act.shape[-1]
            return mlp.down_proj(act.masked_fill(drop, 0) * mlp.up_proj(x))

        def skip_forward(x: torch.Tensor) -> torch.Tensor:
            shape = x.shape
            flat = x.reshape(-1, shape[-1])
            run_mlp = neuron_forward if neuron_threshold > 0 else original
            out, skipped, computed = self._run.ffn(index, flat, self._residual.reshape(-1, shape[-1]), run_mlp)
            self.skipped[index] += skipped
            self.computed[index] += computed
            if self.trace:
                self.decisions.append(self._run.last_skip)
            return out.reshape(shape)

        self._handles.append(layer.register_forward_pre_hook(on_layer, with_kwargs=True))
        self._handles.append(layer.post_attention_layernorm.register_forward_pre_hook(on_norm))
        mlp.forward = skip_forward
        self._handles.append(_Restore(mlp, original))

    def _start(self, positions: torch.Tensor) -> None:
        self.positions = positions
        self.decisions = []
        self._run = SkipRun.start(self.policy, self.num_layers, positions, positions < self.prompt_len,
                                  recorder=self.recorder)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @property
    def neuron_sparsity(self) -> float:
        """Share of intermediate neurons dropped, over the rows that may skip."""
        return self.neurons_dropped / self.neurons_seen if self.neurons_seen else 0.0

    @property
    def skip_ratio(self) -> float:
        total = sum(self.skipped) + sum(self.computed)
        return sum(self.skipped) / total if total else 0.0


class _Restore:
    def __init__(self, mlp, original) -> None:
        self.mlp, self.original = mlp, original

    def remove(self) -> None:
        self.mlp.forward = self.original


@contextmanager
def skipping(model, policy: SkipPolicy, **kwargs) -> Iterator[HFSkipper]:
    skipper = HFSkipper(model, policy, **kwargs)
    try:
        yield skipper
    finally:
        skipper.remove()
