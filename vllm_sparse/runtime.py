"""Environment defaults for running vLLM on a machine without network or GPU.

Each is only a default: a value already set in the environment wins."""

from __future__ import annotations

import os

OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",  # never reach for a model hub
    "VLLM_HOST_IP": "127.0.0.1",  # keep the engine's message queue on loopback
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; small models need little
}


def apply_offline_defaults() -> None:
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
