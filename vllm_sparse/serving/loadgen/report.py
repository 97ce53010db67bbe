"""From request records to numbers: percentiles, the run summary (a plain dict,
written as JSON), the terminal table, and the B/A comparison of two runs."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Sequence

from .runner import RunResult

STATS = ("mean", "p50", "p90", "p99")
LATENCIES = (("ttft_ms", "TTFT"), ("itl_ms", "ITL"), ("e2e_ms", "E2E"))
THROUGHPUTS = (
    ("request_throughput", "requests/s"),
    ("input_token_throughput", "input tokens/s"),
    ("output_token_throughput", "output tokens/s"),
    ("total_token_throughput", "total tokens/s"),
)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between order statistics
    (numpy's default method), so numbers agree with vLLM's client, which uses numpy."""
    if not values:
        return math.nan
    xs = sorted(values)
    position = (len(xs) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(xs) - 1)
    return xs[low] + (xs[high] - xs[low]) * (position - low)


def distribution_ms(seconds: Sequence[float]) -> dict:
    ms = [s * 1000.0 for s in seconds]
    stats = {"mean": sum(ms) / len(ms) if ms else math.nan}
    stats.update({f"p{q}": percentile(ms, q) for q in (50, 90, 99)})
    stats["samples"] = len(ms)
    return stats


def summarize(result: RunResult, **context) -> dict:
    """Throughput counts completed requests only; latencies come from them only.
    ``context`` (backend, endpoint, workload, ...) is copied into the summary."""
    ok = [r for r in result.records if r.ok]
    errors = Counter(r.error for r in result.records if not r.ok)
    duration = result.duration
    input_tokens = sum(r.input_tokens for r in ok)
    output_tokens = sum(r.output_tokens for r in ok)

    def rate(count: float) -> float:
        return count / duration if duration > 0 else math.nan

    return {
        **context,
        "requests": {"sent": len(result.records), "completed": len(ok), "failed": sum(errors.values()),
                     "errors": dict(sorted(errors.items()))},
        "duration_s": duration,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "request_throughput": rate(len(ok)),
        "input_token_throughput": rate(input_tokens),
        "output_token_throughput": rate(output_tokens),
        "total_token_throughput": rate(input_tokens + output_tokens),
        "ttft_ms": distribution_ms([r.ttft for r in ok]),
        "itl_ms": distribution_ms([gap for r in ok for gap in r.itls]),
        "e2e_ms": distribution_ms([r.e2e for r in ok]),
    }


def compare(a: dict, b: dict) -> dict:
    """B/A for every throughput and latency statistic (None where A is 0 or NaN).
    Above 1 means B is faster for throughputs, slower for latencies."""
    ratios = {key: _ratio(b[key], a[key]) for key, _ in THROUGHPUTS}
    for key, _ in LATENCIES:
        ratios[key] = {stat: _ratio(b[key][stat], a[key][stat]) for stat in STATS}
    return ratios


def _ratio(numerator: float, denominator: float) -> float | None:
    if not denominator or math.isnan(denominator) or math.isnan(numerator):
        return None
    return numerator / denominator


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_summary(summary: dict) -> str:
    requests = summary["requests"]
    lines = [
        f"{summary.get('backend', '')} {summary.get('endpoint', '')}".strip(),
        f"  requests          {requests['completed']} completed, {requests['failed']} failed"
        f" in {summary['duration_s']:.2f} s",
    ]
    for kind, count in requests["errors"].items():
        lines.append(f"    error {kind}: {count}")
    lines += [f"  {label:<17} {_num(summary[key])}" for key, label in THROUGHPUTS]
    lines.append(f"  {'latency (ms)':<17} " + " ".join(f"{stat:>9}" for stat in STATS))
    for key, label in LATENCIES:
        lines.append(f"  {label:<17} " + " ".join(f"{_num(summary[key][stat]):>9}" for stat in STATS))
    return "\n".join(lines)


def format_comparison(a: dict, b: dict, ratios: dict) -> str:
    lines = [f"A = {a.get('endpoint', 'A')}", f"B = {b.get('endpoint', 'B')}",
             f"  {'metric':<22} {'A':>10} {'B':>10} {'B/A':>7}"]
    for key, label in THROUGHPUTS:
        lines.append(f"  {label:<22} {_num(a[key]):>10} {_num(b[key]):>10} {_num(ratios[key], 3):>7}")
    for key, label in LATENCIES:
        for stat in STATS:
            name = f"{label} {stat} (ms)"
            lines.append(f"  {name:<22} {_num(a[key][stat]):>10} {_num(b[key][stat]):>10}"
                         f" {_num(ratios[key][stat], 3):>7}")
    return "\n".join(lines)


def write_json(path: str | Path, payload: dict) -> None:
    # NaN (no samples) is written as null: JSON has no NaN.
    Path(path).write_text(json.dumps(_nan_to_none(payload), indent=2) + "\n")


def _nan_to_none(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value
