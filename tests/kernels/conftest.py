"""Kernel tests run the real Triton kernels on CPU through the Triton interpreter.

Triton fixes interpreted-vs-compiled when ``triton.language`` is first imported, so
``TRITON_INTERPRET=1`` is set here, before anything in this directory imports it.
If some other test directory imported triton first (a whole-suite run), the tests
marked ``interp`` are deselected here and ``test_interp_fallback.py`` runs them in a
fresh subprocess instead, so they are never silently skipped.
"""

import os
import sys

_TRITON_ALREADY_IMPORTED = "triton" in sys.modules
if not _TRITON_ALREADY_IMPORTED:
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from vllm_sparse.kernels._triton_mode import INTERPRET  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "interp: runs Triton kernels under TRITON_INTERPRET=1")


def pytest_collection_modifyitems(config, items):
    if INTERPRET:
        return
    keep, moved = [], []
    for item in items:
        (moved if item.get_closest_marker("interp") and "tests/kernels" in str(item.fspath) else keep).append(item)
    if moved:
        config.hook.pytest_deselected(items=moved)
        items[:] = keep


def prune_nm(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n largest-magnitude entries of every group of m (ties: first wins)."""
    rows, k = w.shape
    g = w.reshape(rows, k // m, m)
    idx = g.abs().float().topk(n, dim=-1).indices
    keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True)
    return torch.where(keep, g, torch.zeros_like(g)).reshape(rows, k)


def prune_random(w: torch.Tensor, sparsity: float, gen: torch.Generator | None = None) -> torch.Tensor:
    drop = torch.rand(w.shape, generator=gen) < sparsity
    return torch.where(drop, torch.zeros_like(w), w)


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    y, ref = y.double(), ref.double()
    denom = ref.norm().item()
    return (y - ref).norm().item() / (denom if denom > 0 else 1.0)


# Relative-error bounds against an fp32-accumulated reference rounded to the same dtype.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture
def interp_only():
    assert INTERPRET, "kernel tests need TRITON_INTERPRET=1 before triton is imported"


class LoadRecorder:
    """Records every address the interpreter loads (masked-off lanes excluded)."""

    def __init__(self, monkeypatch):
        from triton.runtime import interpreter

        self.addresses = []
        builder = interpreter.interpreter_builder
        original = builder.create_masked_load

        def recording(ptrs, mask, *args, **kwargs):
            self.addresses.append(ptrs.data[mask.data.astype(bool)].copy())
            return original(ptrs, mask, *args, **kwargs)

        monkeypatch.setattr(builder, "create_masked_load", recording)

    def touched(self, t: torch.Tensor) -> int:
        lo, hi = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
        return sum(int(((a >= lo) & (a < hi)).sum()) for a in self.addresses)
