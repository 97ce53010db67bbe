"""Benchmark as a smaller x86 host class would run: ``avx2`` (AVX2 + FMA only) or
``avx512`` (AVX-512 without BF16), measured on a bigger host (``benchmarks/cpu_kernels.py
--host-class``, ``benchmarks/cpu_e2e.py --host-class``). Nothing here runs unless
``VLLM_SPARSE_BENCH_HOST_CLASS`` is set.

The sparse kernels' path is forced anyway (``--isa``); what a forced run must not
keep is the bigger host's *dense* baseline. On an AVX2-only host vLLM loads its AVX2
build (``vllm._C_AVX2``), oneDNN has no bf16 matmul there (``create_onednn_mm``
fails and vLLM falls back to ``F.linear``), and torch's own bf16 GEMM runs its AVX2
code: measured against the AVX-512 BF16 GEMM instead, every AVX2 layer looked slower
than dense at M >= 4 and the dispatcher kept AVX2 hosts dense.

Set ``VLLM_SPARSE_BENCH_HOST_CLASS`` in the environment before the process starts
(``reexec`` does it): oneDNN and ATen read their ISA caps once
(``ONEDNN_MAX_CPU_ISA``, ``ATEN_CPU_CAPABILITY``), and vLLM picks its kernel library
from torch's CPU probes, which ``enter`` answers as the smaller host would: call it
before vLLM imports its kernels (a benchmark's process and the engine processes of
``vllm_sparse.serving.decode_speed`` do). What stays the bigger host's: clock, caches,
memory bandwidth (the read test measures it in the same run).
"""

from __future__ import annotations

import os
import sys

import torch

ENV = "VLLM_SPARSE_BENCH_HOST_CLASS"
# The environment each host class's libraries see (set before they load).
CAPS = {
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "ATEN_CPU_CAPABILITY": "avx512"},
}
NATIVE = "native"


def _known(name: str, where: str) -> str:
    if name != NATIVE and name not in CAPS:
        raise SystemExit(f"{where}{name!r}: not one of {[NATIVE, *CAPS]}")
    return name


def current() -> str:
    """The host class this process runs as: ``native`` unless emulating one."""
    return _known(os.environ.get(ENV, NATIVE), f"{ENV}=")


def reexec(name: str) -> None:
    """Restart this script as host class ``name`` (no-op if it already runs as one)."""
    if _known(name, "host class ") == current():
        return
    capped = {key for caps in CAPS.values() for key in caps}
    env = {k: v for k, v in os.environ.items() if k != ENV and k not in capped}
    if name != NATIVE:
        env.update(CAPS[name], **{ENV: name})
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def enter() -> None:
    """Answer torch's CPU probes as the host class does (vLLM reads them to pick its
    kernel library and GEMM)."""
    name = current()
    if name == NATIVE:
        return
    missing = {k: v for k, v in CAPS[name].items() if os.environ.get(k) != v}
    if missing:
        raise SystemExit(f"{ENV}={name} needs {missing} set before the process starts (host_class.reexec)")
    torch.cpu._is_avx512_bf16_supported = lambda: False
    torch.cpu._is_amx_tile_supported = lambda: False
    if name == "avx2":
        torch.cpu._is_avx512_supported = lambda: False
