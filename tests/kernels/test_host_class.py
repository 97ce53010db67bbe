"""Running as a smaller x86 host class (benchmarks' --host-class): nothing happens
without the variable, a process started without the library caps is stopped, and with
them torch's CPU probes answer as the smaller host does (vLLM picks its kernels by them)."""

import pytest
import torch

from vllm_sparse.kernels.cpu import host_class

PROBES = ("_is_avx512_supported", "_is_avx512_bf16_supported", "_is_amx_tile_supported")


@pytest.fixture
def probes(monkeypatch):
    """torch's probes as they are now, put back after the test whatever enter() did."""
    for name in PROBES:
        monkeypatch.setattr(torch.cpu, name, getattr(torch.cpu, name))
    return {name: getattr(torch.cpu, name) for name in PROBES}


def test_native_unless_asked(monkeypatch, probes):
    monkeypatch.delenv(host_class.ENV, raising=False)
    assert host_class.current() == host_class.NATIVE
    host_class.enter()
    assert all(getattr(torch.cpu, name) is probe for name, probe in probes.items())


def test_an_unknown_class_is_refused(monkeypatch, probes):
    monkeypatch.setenv(host_class.ENV, "avx3")
    with pytest.raises(SystemExit, match="avx3"):
        host_class.current()


def test_caps_must_be_set_before_the_process_starts(monkeypatch, probes):
    monkeypatch.setenv(host_class.ENV, "avx2")
    for key in host_class.CAPS["avx2"]:
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(SystemExit, match="ONEDNN_MAX_CPU_ISA"):
        host_class.enter()
    assert all(getattr(torch.cpu, name) is probe for name, probe in probes.items())


@pytest.mark.parametrize("name, avx512", [("avx2", False), ("avx512", True)])
def test_probes_answer_as_the_smaller_host(monkeypatch, probes, name, avx512):
    monkeypatch.setenv(host_class.ENV, name)
    for key, value in host_class.CAPS[name].items():
        monkeypatch.setenv(key, value)
    host_class.enter()
    assert torch.cpu._is_avx512_bf16_supported() is False
    assert torch.cpu._is_amx_tile_supported() is False
    assert torch.cpu._is_avx512_supported() == (avx512 and probes["_is_avx512_supported"]())
