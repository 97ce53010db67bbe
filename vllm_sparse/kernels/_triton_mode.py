"""Decides, once per process, whether our Triton kernels run compiled or interpreted.

Triton picks compiled (``JITFunction``) or interpreted (``InterpretedFunction``) at
decoration time, from ``TRITON_INTERPRET``. Relying on the caller to export that
variable before the first import is fragile (any earlier import of a kernel module
fixes the mode), and exporting it process-wide would also switch every *other*
library's Triton kernels (vLLM's) to the interpreter. So our kernel modules decorate
with :func:`jit`, which sets the mode only while decorating *our* functions:

* ``VLLM_SPARSE_TRITON_INTERPRET=1`` / ``=0`` forces interpreted / compiled;
* otherwise we interpret when ``TRITON_INTERPRET=1`` or when no CUDA device exists
  (there is no compiled CPU backend, so the interpreter is the only way to run there).

The compile-only Hopper check runs with ``VLLM_SPARSE_TRITON_INTERPRET=0``.
"""

from __future__ import annotations

import os

import torch
import triton


def _decide_interpret() -> bool:
    forced = os.environ.get("VLLM_SPARSE_TRITON_INTERPRET")
    if forced is not None and forced != "":
        return forced not in ("0", "false", "False")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return True
    return not torch.cuda.is_available()


INTERPRET: bool = _decide_interpret()


def jit(fn):
    """``triton.jit`` in the mode this process chose for our kernels."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if INTERPRET else "0"
    try:
        return triton.jit(fn)
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old


def check_device(t: torch.Tensor, what: str) -> None:
    """Fail clearly when a tensor lives where our kernels cannot run."""
    if INTERPRET:
        if t.device.type != "cpu":
            raise ValueError(f"{what} is on {t.device}, but our Triton kernels run interpreted (CPU tensors only)")
    elif t.device.type != "cuda":
        raise ValueError(f"{what} is on {t.device}; compiled Triton kernels need CUDA tensors")
