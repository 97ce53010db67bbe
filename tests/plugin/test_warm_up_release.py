"""The plugin hands the heap that a compiled engine's warm-up freed back to the OS:
``after_cpu_warm_up`` wraps vLLM's CPU model runner once, and the callback runs
after vLLM's own warm-up, never instead of it. (A real compiled engine logs the
release: tests/plugin/test_cpu_sparse_serving.py.)"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.vllm


def test_callback_runs_after_vllms_warm_up_and_wraps_once(monkeypatch):
    from vllm.config import CompilationMode
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    from vllm_sparse.plugin.vllm_internals import after_cpu_warm_up

    calls = []

    def vllm_warm_up(self, *args, **kwargs):
        calls.append(("vllm", self, args, kwargs))
        return "warmed"

    monkeypatch.setattr(CPUModelRunner, "warming_up_model", vllm_warm_up)
    assert after_cpu_warm_up(lambda: calls.append("release"))
    assert after_cpu_warm_up(lambda: calls.append("second"))  # already wrapped: nothing added
    compiled, eager = (SimpleNamespace(vllm_config=SimpleNamespace(compilation_config=SimpleNamespace(mode=mode)))
                       for mode in (CompilationMode.DYNAMO_TRACE_ONCE, CompilationMode.NONE))
    assert CPUModelRunner.warming_up_model(compiled, 1, key=2) == "warmed"
    assert calls == [("vllm", compiled, (1,), {"key": 2}), "release"]
    CPUModelRunner.warming_up_model(eager)  # vLLM returns at once: nothing was freed
    assert calls[2:] == [("vllm", eager, (), {})]


def test_no_cpu_model_runner_loaded_is_reported(monkeypatch):
    from vllm_sparse.plugin.vllm_internals import after_cpu_warm_up

    monkeypatch.delitem(sys.modules, "vllm.v1.worker.cpu_model_runner", raising=False)
    assert not after_cpu_warm_up(lambda: None)
