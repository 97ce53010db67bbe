"""Which of the CPU kernels' instruction-set paths this host runs.

The op itself checks the CPU (``__builtin_cpu_supports``) and refuses a path the
host cannot run; this module names the paths, picks the default (the best the CPU
has, or ``VLLM_SPARSE_CPU_ISA``) and reads ``/proc/cpuinfo`` for reports.
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

import torch

from . import build

log = logging.getLogger(__name__)

SCALAR, AVX2, AVX512, AVX512_BF16 = 0, 1, 2, 3
NAMES = {SCALAR: "scalar", AVX2: "avx2", AVX512: "avx512", AVX512_BF16: "avx512_bf16"}
CODES = {name: code for code, name in NAMES.items()}


def best() -> int:
    """The fastest path this CPU can run (the kernels must be loaded)."""
    return int(torch.ops.vllm_sparse.cpu_best_isa())


def supported() -> list[int]:
    return list(range(SCALAR, best() + 1))


def default() -> int:
    """``VLLM_SPARSE_CPU_ISA`` if set and runnable here, else the best path."""
    top = best()
    forced = os.environ.get("VLLM_SPARSE_CPU_ISA")
    if not forced:
        return top
    if forced not in CODES:
        raise ValueError(f"VLLM_SPARSE_CPU_ISA={forced!r} is not one of {sorted(CODES)}")
    if CODES[forced] > top:
        log.warning("vllm-sparse: VLLM_SPARSE_CPU_ISA=%s but this CPU only runs up to %s; using %s",
                    forced, NAMES[top], NAMES[top])
        return top
    return CODES[forced]


# The host class of a CPU whose AVX-512 BF16 path multiplies large M on AMX tiles
# (csrc/gemm_amx_bf16.cpp): its dense baseline (oneDNN on AMX) and its large-M path
# both differ from an AVX-512 BF16 host's, so the dispatcher keeps their records apart.
AMX_HOST = "avx512_amx"


def amx_ready() -> bool:
    """Does the large-M path run on AMX tiles here (AMX-BF16, granted by the OS)?"""
    return build.load() and bool(torch.ops.vllm_sparse.cpu_amx_ready())


def host_class(code: int | None = None) -> str:
    """The host class whose dispatch records apply to ISA path ``code`` (default: the
    path in force): the path's name, or ``AMX_HOST`` for the AVX-512 BF16 path of a CPU
    with AMX (the kernels must be loaded)."""
    code = default() if code is None else code
    return AMX_HOST if code == AVX512_BF16 and amx_ready() else NAMES[code]


def cpu_description() -> dict:
    """CPU model and the SIMD flags that matter here, for benchmark records. Virtual
    machines of two CPU generations can share a model name ("Intel(R) Xeon(R)
    Processor"), so the name carries the family, model and cache sizes as well."""
    model, flags, ids = platform.processor() or "unknown", set(), {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "model name" and model in ("unknown", "", platform.processor()):
                    model = value
                elif key in ("cpu family", "model"):
                    ids.setdefault(key, value)
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    details = [f"family {ids['cpu family']} model {ids['model']}"] if len(ids) == 2 else []
    details += [f"L{level} {size >> 10}K" for level, size in unified_caches()]
    if details:
        model = f"{model} ({', '.join(details)})"
    wanted = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vbmi2", "avx512_bf16",
              "avx512_vpopcntdq", "amx_bf16")
    return {"cpu": model, "cores": os.cpu_count(), "flags": [f for f in wanted if f in flags]}


def unified_caches() -> list[tuple[int, int]]:
    """(level, bytes) of each unified cache of CPU 0 as sysfs reports it, e.g. [(2, 2 MiB),
    (3, 480 MiB)]; empty where sysfs says nothing."""
    caches = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (index / "type").read_text().strip() != "Unified":
                continue
            text = (index / "size").read_text().strip()
            scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
            caches.append((int((index / "level").read_text()), int(text.rstrip("KMG")) * scale))
        except (OSError, ValueError):
            continue
    return caches


def available() -> bool:
    return build.load()
