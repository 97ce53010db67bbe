"""Process helpers for running vLLM on a machine without network or GPU: environment
defaults (each only a default: a value already set in the environment wins), and
handing freed memory back to the OS."""

from __future__ import annotations

import ctypes
import gc
import os
from pathlib import Path

OFFLINE_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",  # never reach for a model hub
    "VLLM_HOST_IP": "127.0.0.1",  # keep the engine's message queue on loopback
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; small models need little
}


def apply_offline_defaults() -> None:
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)


def private_vllm_cache(workdir: str | Path) -> str:
    """A VLLM_CACHE_ROOT of the run's own under ``workdir``, so that its compiled
    graphs are never reused by a run with other plugins (vLLM's compile-cache key
    does not see what a plugin changes), with vLLM's model-info cache shared: that
    one is keyed by the hash of the model's source file, and without it the first
    engine of each process spends ~8 s inspecting the model class in a child
    process that imports vLLM again."""
    shared = Path(os.environ.get("VLLM_CACHE_ROOT", "~/.cache/vllm")).expanduser() / "modelinfos"
    root = Path(workdir) / "vllm-cache"
    root.mkdir(parents=True, exist_ok=True)
    link = root / "modelinfos"
    if not link.exists():
        shared.mkdir(parents=True, exist_ok=True)
        link.symlink_to(shared, target_is_directory=True)
    return str(root)


def release_freed_memory() -> None:
    """Hand freed memory back to the OS (the dense weights freed while packing; the
    buffers vLLM's warm-up run freed): collect the reference cycles that still hold
    some (a weight's loader closure refers to the weight), then let glibc return its
    freed heap (it keeps it otherwise, and RSS would not show the saving)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass
