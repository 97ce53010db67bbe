"""Whether our Triton kernels run compiled (CUDA) or interpreted (CPU, for tests).

Triton fixes the mode when ``triton.language`` is first imported: its own helpers
(``tl.zeros``, ``tl.cumsum`` ...) become interpreted only if ``TRITON_INTERPRET=1``
was set by then. A kernel decorated in the other mode cannot call them. So we do not
read the variable ourselves: we look at the mode ``triton.language`` was built in and
decorate our kernels the same way (``jit`` below), so they always agree.

To run the kernels on CPU, export ``TRITON_INTERPRET=1`` before anything imports
triton (tests/kernels/conftest.py does). Without it, on a machine with no GPU, the
kernels cannot run and ``sparse_linear`` falls back to the torch reference.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def _language_is_interpreted() -> bool:
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.standard.zeros, InterpretedFunction)


INTERPRET: bool = _language_is_interpreted()


def jit(fn):
    """``triton.jit`` in the mode ``triton.language`` was imported in."""
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1" if INTERPRET else "0"
    try:
        return triton.jit(fn)
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old


def kernels_can_run(device: torch.device | str) -> bool:
    device = torch.device(device)
    return device.type == "cpu" if INTERPRET else device.type == "cuda"


def check_device(t: torch.Tensor, what: str) -> None:
    """Fail clearly when a tensor lives where our kernels cannot run."""
    if INTERPRET:
        if t.device.type != "cpu":
            raise ValueError(f"{what} is on {t.device}, but our Triton kernels run interpreted (CPU tensors only)")
    elif t.device.type != "cuda":
        raise ValueError(
            f"{what} is on {t.device}; compiled Triton kernels need CUDA tensors "
            "(for CPU, set TRITON_INTERPRET=1 before triton is first imported)"
        )
