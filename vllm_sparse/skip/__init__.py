"""Input-adaptive FFN skipping (FFN-SkipLLM): the policy, the per-token decision on
tensors (shared by the vLLM hook and the transformers path), calibration and
evaluation. Imports neither vLLM nor transformers at module level."""

from .decision import SkipRun, eligible_rows, layer_is_hot, residual_cosine
from .policy import ENV_VAR, OFF, SkipPolicy, SkipPolicyError, load_policy, policy_from_env, save_policy

__all__ = [
    "ENV_VAR",
    "OFF",
    "SkipPolicy",
    "SkipPolicyError",
    "SkipRun",
    "eligible_rows",
    "layer_is_hot",
    "load_policy",
    "policy_from_env",
    "residual_cosine",
    "save_policy",
]
