"""Metric names referenced in PromQL text."""

import re

_METRIC = re.compile(r"\b(vllm:[a-z_]+|vllm_sparse_[a-z_]+)")


def metric_names(text: str) -> set[str]:
    return set(_METRIC.findall(text))
