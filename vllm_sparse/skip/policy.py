"""The FFN-skip policy: its knobs, their checks, and the YAML profile they live in.

A profile is a small YAML mapping, e.g. ``configs/ffn_skip_25.yaml``::

    enabled: true
    threshold: 0.985        # cosine(h_in, h_in + ffn(h_in)) above this triggers a skip
    skip_layers: 3          # k: the FFNs of the next k layers are skipped, then check again
    cold_start: 4           # the first layers never skip
    cold_end: 2             # nor the last ones
    warmup_tokens: 28       # the first W positions of every sequence always compute
    skip_prompt: false      # prompt (prefill) tokens compute in full unless true
    neuron_thresholds: []   # per layer: drop FFN neurons with |SiLU(gate)| <= t (0: none)

Neuron-level skipping (``neuron_thresholds``, one per decoder layer, from
``calibrate-skip --neuron-sparsity``) applies to the rows that may skip (past
warm-up, not prompt unless ``skip_prompt``) in the FFNs they compute: per token the
intermediate neurons whose |SiLU(gate)| is at most the layer's threshold contribute
nothing (their up_proj rows and down_proj columns need not be read). ``threshold:
1.0`` with neuron thresholds gives neuron-level skipping alone.

Unknown keys and out-of-range values are rejected with the key named, so a typo
fails at start-up instead of silently serving an unintended policy.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

ENV_VAR = "VLLM_SPARSE_FFN_SKIP"


class SkipPolicyError(ValueError):
    """A profile that cannot be served; the message names the file and key."""


@dataclass(frozen=True)
class SkipPolicy:
    enabled: bool = False
    threshold: float = 1.0
    skip_layers: int = 3
    cold_start: int = 4
    cold_end: int = 2
    warmup_tokens: int = 28
    skip_prompt: bool = False
    neuron_thresholds: tuple[float, ...] = ()

    @property
    def neuron_level(self) -> bool:
        return self.enabled and any(t > 0 for t in self.neuron_thresholds)

    def neuron_threshold(self, layer: int) -> float:
        return self.neuron_thresholds[layer] if self.neuron_level else 0.0

    def validate(self, num_layers: int | None = None, source: str = "skip policy") -> "SkipPolicy":
        def bad(key: str, why: str) -> SkipPolicyError:
            return SkipPolicyError(f"{source}: {key} {why} (got {getattr(self, key)!r})")

        for key in ("enabled", "skip_prompt"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, "must be true or false")
        for key in ("skip_layers", "cold_start", "cold_end", "warmup_tokens"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(key, "must be a whole number >= 0")
        if self.skip_layers < 1:
            raise bad("skip_layers", "must be >= 1 (the number of layers skipped after a trigger)")
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not -1.0 <= t <= 1.0:
            raise bad("threshold", "must be a cosine similarity in [-1, 1]")
        neurons = self.neuron_thresholds
        if not isinstance(neurons, tuple) or not all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t >= 0
                for t in neurons):
            raise bad("neuron_thresholds", "must be a list of numbers >= 0, one per decoder layer")
        if num_layers is not None and neurons and len(neurons) != num_layers:
            raise SkipPolicyError(f"{source}: neuron_thresholds has {len(neurons)} entries for a "
                                  f"{num_layers}-layer model")
        if num_layers is not None and self.enabled and self.cold_start + self.cold_end >= num_layers:
            raise SkipPolicyError(
                f"{source}: cold_start + cold_end = {self.cold_start + self.cold_end} leaves no layer "
                f"that may skip in a {num_layers}-layer model")
        return self

    def to_yaml(self) -> str:
        data = asdict(self)
        data["neuron_thresholds"] = [float(t) for t in self.neuron_thresholds]
        return yaml.safe_dump(data, sort_keys=False)


OFF = SkipPolicy()


def policy_from_mapping(data: object, source: str = "skip policy") -> SkipPolicy:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SkipPolicyError(f"{source}: expected a mapping of policy keys, got {type(data).__name__}")
    known = {f.name for f in fields(SkipPolicy)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SkipPolicyError(f"{source}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    if isinstance(data.get("neuron_thresholds"), list):
        data = {**data, "neuron_thresholds": tuple(data["neuron_thresholds"])}
    return SkipPolicy(**data).validate(source=source)


def load_policy(path: str | Path) -> SkipPolicy:
    path = Path(path)
    if not path.is_file():
        raise SkipPolicyError(f"{ENV_VAR}={path}: no such profile file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SkipPolicyError(f"{path}: not valid YAML: {exc}") from exc
    return policy_from_mapping(data, source=str(path))


def save_policy(policy: SkipPolicy, path: str | Path, comment: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "".join(f"# {line}\n" for line in comment.splitlines()) if comment else ""
    path.write_text(header + policy.to_yaml(), encoding="utf-8")
    return path


def policy_from_env() -> SkipPolicy | None:
    """The profile named by ``VLLM_SPARSE_FFN_SKIP``, or None when it is unset/empty."""
    value = os.environ.get(ENV_VAR, "").strip()
    return load_policy(value) if value else None
