"""vllm-sparse: serve pruned LLM checkpoints with vLLM."""

__version__ = "0.1.0"
