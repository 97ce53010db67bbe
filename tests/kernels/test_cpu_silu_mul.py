"""The fused SiLU(gate) * up of the skip-aware MLP (``vllm_sparse::cpu_silu_mul``,
csrc/silu_mul.cpp) against ATen's own silu and mul, bit for bit, on every loop ATen
can run on this host (ATEN_CPU_CAPABILITY selects it, in a fresh process)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from vllm_sparse.kernels import cpu as cpu_kernels

# (rows, intermediate): vector widths, ragged tails of both loops, one row.
SHAPES = ((1, 64), (3, 100), (8, 1536), (5, 8192 + 37), (2, 31), (17, 160))


@pytest.fixture(scope="module", autouse=True)
def kernels():
    assert cpu_kernels.build.load(), cpu_kernels.build.load_error()


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.view(torch.int16) == b.view(torch.int16)) | (a.isnan() & b.isnan())


def _mismatches(seed: int) -> int:
    """Elements where the kernel and ATen differ, over SHAPES, with and without a
    neuron threshold, on rows packed and strided, plus how far off the kernel's count
    of dropped values is."""
    gen = torch.Generator().manual_seed(seed)
    bad = 0
    for rows, inter in SHAPES:
        gate_up = (torch.randn(rows, 2 * inter, generator=gen) * 4).bfloat16()
        gate_up[0, :6] = torch.tensor([float("nan"), float("inf"), -float("inf"), -100.0, 100.0, -0.0])
        wide = torch.full((rows, 2 * inter + 7), float("nan"), dtype=torch.bfloat16)
        wide[:, :2 * inter] = gate_up
        drop = torch.rand(rows, generator=gen) < 0.6
        threshold = 0.3
        for source in (gate_up, wide[:, :2 * inter]):
            expected = F.silu(source[:, :inter]) * source[:, inter:]
            got, dropped = torch.ops.vllm_sparse.cpu_silu_mul(source, None, 0.0)
            bad += int((~_bits_equal(got, expected)).sum()) + abs(dropped)
            act = F.silu(source[:, :inter])
            expected_dropped = int((act[drop].abs() <= threshold).sum())
            act[drop] = torch.where(act[drop].abs() <= threshold, torch.zeros((), dtype=act.dtype), act[drop])
            expected = act * source[:, inter:]
            got, dropped = torch.ops.vllm_sparse.cpu_silu_mul(source, drop, threshold)
            bad += int((~_bits_equal(got, expected)).sum()) + abs(dropped - expected_dropped)
    return bad


def test_matches_aten_bit_for_bit():
    assert _mismatches(0) == 0


LOOPS = ("default", "avx2", "avx512")  # ATen's x86 capabilities, lowest first


def _capabilities() -> tuple[str, ...]:
    """The loops ATen can run here: up to the one it picks by itself."""
    top = torch.backends.cpu.get_cpu_capability().lower()
    return LOOPS[:LOOPS.index(top) + 1] if top in LOOPS else ()


@pytest.mark.parametrize("capability", LOOPS)
def test_matches_aten_on_each_capability(capability):
    if capability not in _capabilities():
        pytest.skip(f"this host cannot run ATen's {capability} loop")
    code = ("import torch; from vllm_sparse.kernels import cpu; assert cpu.build.load(), cpu.build.load_error(); "
            f"import tests.kernels.test_cpu_silu_mul as t; print(torch.backends.cpu.get_cpu_capability(), "
            "t._mismatches(1))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "ATEN_CPU_CAPABILITY": capability}, cwd=os.getcwd())
    assert out.returncode == 0, out.stderr[-2000:]
    ran, mismatches = out.stdout.split()[-2:]
    assert ran.lower() == capability and mismatches == "0"


def test_refuses_what_it_cannot_run():
    with pytest.raises(RuntimeError, match="bf16"):
        torch.ops.vllm_sparse.cpu_silu_mul(torch.zeros(2, 8), None, 0.0)
    with pytest.raises(RuntimeError, match="one entry per row"):
        torch.ops.vllm_sparse.cpu_silu_mul(torch.zeros(2, 8, dtype=torch.bfloat16), torch.ones(3, dtype=torch.bool),
                                           0.1)
