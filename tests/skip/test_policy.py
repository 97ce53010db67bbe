"""Profiles: loading, and every bad value refused with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_sparse.skip.policy import SkipPolicy, SkipPolicyError, load_policy, policy_from_mapping, save_policy

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_profiles_load():
    off = load_policy(ROOT / "configs/ffn_skip_off.yaml")
    assert not off.enabled
    on = load_policy(ROOT / "configs/ffn_skip_25.yaml")
    assert on.enabled and 0 < on.threshold < 1
    on.validate(num_layers=30)
    neurons = load_policy(ROOT / "configs/ffn_skip_neuron50.yaml").validate(num_layers=30)
    assert neurons.neuron_level and neurons.threshold == 1.0 and all(t > 0 for t in neurons.neuron_thresholds)


def test_round_trip(tmp_path):
    policy = SkipPolicy(enabled=True, threshold=0.97, skip_layers=2, cold_start=3, cold_end=1, warmup_tokens=16)
    assert load_policy(save_policy(policy, tmp_path / "p.yaml", "a comment")) == policy
    neurons = SkipPolicy(enabled=True, threshold=1.0, neuron_thresholds=(0.1, 0.0, 0.25))
    assert load_policy(save_policy(neurons, tmp_path / "n.yaml")) == neurons
    assert neurons.neuron_threshold(2) == 0.25 and not SkipPolicy(neuron_thresholds=(0.1,)).neuron_level


@pytest.mark.parametrize("data, key", [
    ({"threshhold": 0.9}, "threshhold"),
    ({"threshold": 1.5}, "threshold"),
    ({"threshold": "high"}, "threshold"),
    ({"threshold": float("nan")}, "threshold"),
    ({"skip_layers": 0}, "skip_layers"),
    ({"warmup_tokens": -1}, "warmup_tokens"),
    ({"cold_start": 2.5}, "cold_start"),
    ({"enabled": "yes"}, "enabled"),
    ({"skip_prompt": 1}, "skip_prompt"),
    ({"neuron_thresholds": [0.1, -0.2]}, "neuron_thresholds"),
    ({"neuron_thresholds": [0.1, "x"]}, "neuron_thresholds"),
    ({"neuron_thresholds": 0.1}, "neuron_thresholds"),
])
def test_bad_values_name_the_key(data, key):
    with pytest.raises(SkipPolicyError, match=key):
        policy_from_mapping(data, source="p.yaml")


def test_neuron_thresholds_must_match_the_layers():
    with pytest.raises(SkipPolicyError, match="neuron_thresholds has 2 entries for a 30-layer model"):
        SkipPolicy(enabled=True, neuron_thresholds=(0.1, 0.2)).validate(num_layers=30)


def test_cold_regions_must_leave_a_layer():
    with pytest.raises(SkipPolicyError, match="leaves no layer"):
        SkipPolicy(enabled=True, cold_start=20, cold_end=10).validate(num_layers=30)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(SkipPolicyError, match="no such profile"):
        load_policy(tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SkipPolicyError, match="mapping"):
        load_policy(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("threshold: [\n")
    with pytest.raises(SkipPolicyError, match="YAML"):
        load_policy(tmp_path / "broken.yaml")
