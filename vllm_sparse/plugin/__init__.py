"""Everything that touches vLLM. ``register()`` is the ``vllm.general_plugins``
entry point: vLLM calls it in every process (API server, engine core, each worker),
so it must be cheap and idempotent."""

_registered = False


def register() -> None:
    global _registered
    if _registered:
        return
    # Importing the module registers the quantization config with vLLM.
    from . import sparse_config  # noqa: F401
    # FFN skipping: re-registers Llama/Qwen2/Mistral only when VLLM_SPARSE_FFN_SKIP is set.
    from .ffn_skip import register_models

    register_models()

    _registered = True
