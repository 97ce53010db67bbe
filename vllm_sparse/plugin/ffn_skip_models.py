"""vLLM's Llama, Qwen2 and Mistral causal LMs with FFN skipping installed after
construction (see ffn_skip.py). Imported by vLLM's model registry only when
``VLLM_SPARSE_FFN_SKIP`` is set; each class keeps its base's name, since vLLM
derives the model's runner and task from the architecture name."""

from __future__ import annotations

from . import ffn_skip
from .vllm_internals import skip_capable_model_classes


def _with_ffn_skip(base: type) -> type:
    def __init__(self, *, vllm_config, prefix: str = "", **kwargs):
        base.__init__(self, vllm_config=vllm_config, prefix=prefix, **kwargs)
        ffn_skip.install(self, vllm_config)

    def load_weights(self, weights):
        loaded = base.load_weights(self, weights)
        ffn_skip.weights_loaded(self)
        return loaded

    def process_weights_after_loading(self):  # vLLM's model-level post-load hook
        parent = getattr(base, "process_weights_after_loading", None)
        if parent is not None:
            parent(self)
        ffn_skip.after_loading(self)

    return type(base.__name__, (base,), {"__init__": __init__, "__module__": __name__,
                                          "load_weights": load_weights,
                                          "process_weights_after_loading": process_weights_after_loading,
                                          "__doc__": f"{base.__name__} with FFN skipping (vllm-sparse)."})


_BASES = skip_capable_model_classes()
LlamaForCausalLM = _with_ffn_skip(_BASES["LlamaForCausalLM"])
Qwen2ForCausalLM = _with_ffn_skip(_BASES["Qwen2ForCausalLM"])
MistralForCausalLM = _with_ffn_skip(_BASES["MistralForCausalLM"])
