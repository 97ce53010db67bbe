"""The LM head's CPU method (plugin/lm_head.py) on vLLM's own post-load step: our
GEMV for decode-sized inputs, vLLM's oneDNN GEMM above, one weight on huge pages
shared with a tied embedding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from prometheus_client import REGISTRY

from vllm_sparse.kernels import cpu as cpu_kernels


def test_head_takes_our_gemv_up_to_its_m_and_vllms_gemm_above(monkeypatch):
    from vllm_sparse.kernels.cpu.hugepages import HUGE_PAGE
    from vllm_sparse.plugin import lm_head

    weight = torch.nn.Parameter(torch.randn(2048, 576).bfloat16(), requires_grad=False)  # 2.25 MiB
    head, embedding = torch.nn.Module(), torch.nn.Module()
    head.weight = embedding.weight = weight  # tied
    shapes = []
    monkeypatch.setattr(lm_head.dispatch, "dense_gemv_max_m", lambda shape, isa: shapes.append(shape) or 4)
    method = lm_head.CpuHeadMethod()
    method.process_weights_after_loading(head)
    exported = REGISTRY.get_sample_value("vllm_sparse_lm_head_gemv_max_rows")
    if not cpu_kernels.dense_gemv_available():
        assert method.max_m == 0 and not shapes and exported == 0  # vLLM's path alone, weight untouched
        return
    assert method.max_m == 4 and exported == 4  # on /metrics too
    assert shapes == [(2048, 576)] and head.weight.data_ptr() % HUGE_PAGE == 0
    assert embedding.weight.data_ptr() == head.weight.data_ptr()  # the tie holds: one copy

    ours = []
    real = cpu_kernels.dense_linear
    monkeypatch.setattr(cpu_kernels, "dense_linear", lambda *a: ours.append(a[0].shape[0]) or real(*a))
    for m in (1, 4, 5):
        x = torch.randn(m, 576).bfloat16()
        y = method.apply(head, x)
        exact = F.linear(x.double(), weight.double())
        assert y.shape == (m, 2048) and torch.allclose(y.double(), exact, rtol=2**-7, atol=1e-2)
    assert ours == [1, 4]  # the larger batch went to vLLM's GEMM


def test_a_forced_lower_path_or_dense_keeps_vllms_gemm(monkeypatch):
    from vllm_sparse.kernels.cpu import isa
    from vllm_sparse.plugin.lm_head import gemv_max_m

    if not cpu_kernels.dense_gemv_available():
        pytest.skip("the CPU kernels are not built here")
    # One path below the best: its records were measured against another baseline.
    monkeypatch.setenv("VLLM_SPARSE_CPU_ISA", "avx2" if isa.best() > isa.AVX2 else "scalar")
    assert gemv_max_m(torch.zeros(4096, 2048, dtype=torch.bfloat16)) == 0
    monkeypatch.delenv("VLLM_SPARSE_CPU_ISA")
    assert gemv_max_m(torch.zeros(4096, 2048)) == 0  # fp32: vLLM's
    monkeypatch.setenv("VLLM_SPARSE_PATH", "dense")  # all of vLLM's own GEMMs, the head too
    assert gemv_max_m(torch.zeros(4096, 2048, dtype=torch.bfloat16)) == 0


def test_only_the_lm_head_gets_the_method():
    from vllm_sparse.plugin.lm_head import CpuHeadMethod, head_method
    from vllm_sparse.plugin.vllm_internals import ParallelLMHead

    assert head_method(torch.nn.Linear(4, 4)) is None
    head = ParallelLMHead.__new__(ParallelLMHead)  # the type is what is checked
    assert isinstance(head_method(head), CpuHeadMethod)
