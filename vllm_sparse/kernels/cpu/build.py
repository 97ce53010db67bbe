"""Builds the C++ CPU kernels for this host on first use and loads them.

One shared library holds every ISA path (scalar, AVX2, AVX-512, AVX-512 BF16; each
source file is compiled for its own instruction set with ``#pragma GCC target``),
and the op picks one at run time from the CPU's features, so the same build serves
an AVX2-only machine and an AVX-512 one. Builds are cached under
``$VLLM_SPARSE_CACHE`` (default ``~/.cache/vllm_sparse``), keyed by a hash of the
sources, compiler, flags and torch version; a build happens in a private folder that
is renamed into place only once it succeeded, under a file lock, so concurrent
processes (vLLM's engine and worker) build once and never load a half-built cache.

Anything that goes wrong (no compiler, no ninja, a failed build) leaves
``load_error()`` with the reason, one warning is logged, and callers stay dense.
``VLLM_SPARSE_CPU_KERNELS=0`` turns the kernels off.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE_DIR = Path(__file__).parent / "csrc"
SOURCES = ("ops.cpp", "gemm_scalar.cpp", "gemm_avx2.cpp", "gemm_avx512.cpp", "gemm_avx512_bf16.cpp", "gemm_nm24.cpp",
           "gemm_nm24_avx2.cpp", "gemm_nm24_lanes_bf16.cpp", "gemm_tile_bf16.cpp", "gemm_rowtile_bf16.cpp",
           "gemm_amx_bf16.cpp", "gemv_dense_bf16.cpp", "gemv_dense_avx2.cpp", "skip_mlp.cpp", "silu_mul.cpp", "neuron_mlp.cpp")
HEADERS = ("spmm.h", "store.h", "prefetch.h", "decode_walk.h", "nm24_records.h", "neuron_mlp.h", "silu_mul.h", "bf16.h",
           "transpose16.h", "expand16.h", "hsum256.h")
# -mtune=native schedules for this CPU without using any instruction it lacks (each
# ISA file still names its own with a target pragma): on an AMD EPYC (znver3 tuning)
# it made the unstructured decode kernel ~1.4x faster than GCC's generic tuning.
CFLAGS = ("-O3", "-std=c++17", "-fopenmp", "-fno-math-errno", "-mtune=native")
LDFLAGS = ("-fopenmp",)

_lock = threading.Lock()
_state: dict[str, object] = {}


def _compiler_id() -> str:
    cxx = os.environ.get("CXX", "c++")
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
        return f"{cxx}:{out.stdout.splitlines()[0] if out.stdout else out.returncode}"
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"no C++ compiler ({cxx}): {exc}") from exc


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("model name")), "")
    except OSError:
        return ""


def build_key() -> str:
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        digest.update(name.encode())
        digest.update((SOURCE_DIR / name).read_bytes())
    digest.update(" ".join(CFLAGS + LDFLAGS).encode())
    digest.update(_compiler_id().encode())
    digest.update(torch.__version__.encode())
    digest.update(_cpu_id().encode())  # -mtune=native: a build is tuned for one CPU
    return digest.hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("VLLM_SPARSE_CACHE", Path.home() / ".cache" / "vllm_sparse"))


def _library_name(key: str) -> str:
    return f"vllm_sparse_cpu_{key}"


def _build(final: Path, key: str) -> None:
    from torch.utils import cpp_extension

    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    try:
        log.info("vllm-sparse: building the CPU kernels (once per host and version) in %s", final)
        cpp_extension.load(
            name=_library_name(key),
            sources=[str(SOURCE_DIR / s) for s in SOURCES],
            extra_cflags=list(CFLAGS),
            extra_ldflags=list(LDFLAGS),
            build_directory=str(scratch),
            is_python_module=False,
            verbose=False,
        )
        os.rename(scratch, final)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise


def _load() -> None:
    if os.environ.get("VLLM_SPARSE_CPU_KERNELS", "1") == "0":
        raise RuntimeError("turned off by VLLM_SPARSE_CPU_KERNELS=0")
    key = build_key()
    final = cache_root() / "cpu_kernels" / key
    library = final / f"{_library_name(key)}.so"
    if not library.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(final.parent / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not library.exists():
                if final.exists():  # a folder without the library: not ours to trust
                    shutil.rmtree(final)
                _build(final, key)
                if library.exists():
                    return  # cpp_extension.load already loaded it into this process
    torch.ops.load_library(str(library))


def load() -> bool:
    """True once the kernels are loaded in this process; False (with one warning) if
    they cannot be."""
    with _lock:
        if "ok" not in _state:
            try:
                _load()
                _register_fakes()
                _state["ok"] = True
            except Exception as exc:  # noqa: BLE001 - any failure means: stay dense
                _state["ok"] = False
                _state["error"] = f"{type(exc).__name__}: {exc}".strip()
                log.warning("vllm-sparse: CPU sparse kernels unavailable, layers stay dense (%s)",
                            _state["error"].splitlines()[0][:500])
        return bool(_state["ok"])


def load_error() -> str | None:
    return _state.get("error")  # type: ignore[return-value]


def _register_fakes() -> None:
    @torch.library.register_fake("vllm_sparse::cpu_sparse_linear")
    def _(x, values, bitmap, row_offsets, in_features, isa, max_direct_m, bias, sixteen_per_word=False):
        return x.new_empty(x.shape[0], bitmap.shape[0])

    @torch.library.register_fake("vllm_sparse::cpu_nm24_linear")
    def _(x, blocks, out_features, in_features, isa, max_direct_m, bias):
        return x.new_empty(x.shape[0], out_features)

    @torch.library.register_fake("vllm_sparse::cpu_nm24_unpack")
    def _(blocks, out_features, in_features, isa):
        return blocks.new_empty(out_features, in_features, dtype=torch.bfloat16)

    @torch.library.register_fake("vllm_sparse::cpu_skip_mlp")
    def _(x, residual, row_kind, countdown, counts, decisions, gate_up_kind, gate_up_tensors, gate_up_ints,
          down_kind, down_tensors, down_ints, params, neuron_gate=None, neuron_up_down=None):
        return torch.empty_like(x), torch.empty_like(countdown)

    @torch.library.register_fake("vllm_sparse::cpu_dense_linear")
    def _(x, weight, bias, isa):
        return x.new_empty(x.shape[0], weight.shape[0])

    @torch.library.register_fake("vllm_sparse::cpu_sparse_unpack")
    def _(values, bitmap, row_offsets, in_features, isa):
        return values.new_empty(bitmap.shape[0], in_features)
