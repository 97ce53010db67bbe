"""vLLM's own gRPC protocol (``VllmEngine``, smg's generated client) against real
servers: stock vLLM's gRPC launcher (``python -m
vllm.entrypoints.launchers.grpc_server``, vLLM's normal multi-process mode) on a
compressed-tensors 2:4 checkpoint, which it loads with no extra flag only because our
plugin is installed; then stock's launcher and
``vllm-sparse serve`` on the same dense model, load-tested in turns with one client
(``vllm-sparse bench --backend vllm-grpc``). Then every status of the failure
mapping is produced on purpose on ours; the last test kills ours's engine process.
Tests run in file order."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import statistics
import time

import grpc
import psutil
import pytest
from smg_grpc_proto import vllm_engine_pb2 as ve
from smg_grpc_proto import vllm_engine_pb2_grpc as ve_grpc

from checkpoints import CASES, MODELS, build_case, layer_rows
from grpc_helpers import free_port, generate_request, prometheus_value, stub, vllm_engine_stream
from vllm_runner import run_engines
from vllm_sparse.cli import main as cli_main
from vllm_sparse.demo import extract_layer_table
from vllm_sparse.serving.server_process import SparseServer, VllmGrpcLauncher

pytestmark = pytest.mark.vllm
# The tests that use the two long-lived servers run in scripts/test.sh's `alone` part:
# one of them compares their speeds, and the servers then start once.
alone = pytest.mark.alone

PROMPT_IDS = [504, 3575, 282, 4649, 314]  # "The capital of France is" in SmolLM2's vocabulary
MAX_INFLIGHT = 6  # ours: the 7th concurrent stream is refused
# The stock launcher's servicer adds two things ours does not run: a planned
# warm-up (35 steps, 27 s here; the load test warms both servers alike) and vLLM's
# ZMQ KV-event publisher for cache-aware routers, which made every engine step
# slower (ours 1.07-1.11x its request throughput with it on). Both off: the two
# servers then run the same engine and differ in the front end alone.
STOCK_ENV = {"SMG_VLLM_SERVICER_WARMUP": "off", "SMG_VLLM_SERVICER_KV_EVENTS": "off"}
# The two long-lived servers compare front ends, whatever the engine's dtype: fp32,
# since on an AVX2-only CPU vLLM's bf16 linear layers take torch's slow bf16 GEMM from
# two rows up (prefill, batched decode) and the load test took most of this file's 9
# minutes there (CI's alone part, this file and test_bench_vs_vllm.py: 558 s in fp32, 815 s in bf16).
FRONT_END_ARGS = ["--dtype", "float32"]


@pytest.fixture(scope="module")
def checkpoint(base_model):
    return build_case(base_model, MODELS / "test-checkpoints", next(c for c in CASES if c.name == "2of4")).compressed


@pytest.fixture(scope="module")
def stock(base_model, tmp_path_factory):
    server = VllmGrpcLauncher(base_model, free_port(), tmp_path_factory.mktemp("stock") / "server.log",
                              extra_args=FRONT_END_ARGS, env=STOCK_ENV)
    with server:
        yield server


@pytest.fixture(scope="module")
def ours(base_model, tmp_path_factory):
    server = SparseServer(base_model, free_port(), free_port(), tmp_path_factory.mktemp("ours") / "server.log",
                          grpc_args=["--grpc-max-inflight", str(MAX_INFLIGHT), "--grpc-shutdown-grace", "1"],
                          extra_args=FRONT_END_ARGS)
    with server:
        yield server


def _client(port: int):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=30)
    return channel, ve_grpc.VllmEngineStub(channel)


def _greedy_request(request_id: str, max_tokens: int, ids=PROMPT_IDS) -> ve.GenerateRequest:
    return ve.GenerateRequest(request_id=request_id, tokenized=ve.TokenizedInput(input_ids=ids), stream=True,
                              sampling_params=ve.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))


def _error_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as error:
        list(call)
    return error.value


def test_stock_launcher_serves_the_compressed_checkpoint_through_the_plugin(checkpoint, tmp_path):
    launcher = VllmGrpcLauncher(checkpoint, free_port(), tmp_path / "server.log", env=STOCK_ENV)
    with launcher:
        # Our loader ran inside stock vLLM's engine process, recognising 2:4 in every layer.
        rows = layer_rows(extract_layer_table(launcher.log_text()))
        assert len(rows) == 120 and {row[2] for row in rows} == {"2:4"}
        channel, client = _client(launcher.port)
        with channel:
            health = client.HealthCheck(ve.HealthCheckRequest(), timeout=30)
            assert health.healthy, health.message
            info = client.GetModelInfo(ve.GetModelInfoRequest(), timeout=30)
            assert info.max_context_length == 1024 and info.vocab_size == 49152
            assert "LlamaForCausalLM" in info.architectures
            server_info = client.GetServerInfo(ve.GetServerInfoRequest(), timeout=30)
            assert server_info.data_parallel_size == 1 and "bfloat16" in server_info.model_dtype
            tokens, complete = vllm_engine_stream(client, _greedy_request("stock-greedy", 12))
            assert len(tokens) == 12 and complete.finish_reason == "length"
            # Abort mid-stream: the stream ends early, the engine lets the request go.
            call = client.Generate(_greedy_request("stock-abort", 500), timeout=120)
            next(call)
            client.Abort(ve.AbortRequest(request_ids=["stock-abort"]), timeout=30)
            assert sum(len(r.chunk.token_ids) for r in call if r.HasField("chunk")) < 499
    # The same greedy tokens as vLLM with the plugin in-process on the same checkpoint.
    reference = run_engines([{"model": str(checkpoint), "prompts": [PROMPT_IDS], "max_tokens": 12}],
                            tmp_path / "reference")[0]
    assert reference["tokens"] == [tokens]


# ---------------------------------------------------------------- load test, same client, both servers

TURNS = ("stock", "ours", "ours", "stock", "stock", "ours")  # in pairs of neighbouring turns
# (number of requests, concurrency) and the figures compared. TTFT is compared at
# concurrency 1: with fixed lengths at concurrency 4 it depends on whether a group
# of requests lands in one engine step or two (see test_bench_vs_vllm.py).
# Small, since a slower host multiplies them: on an AVX2-only EPYC, where vLLM's
# bf16 prefill runs through F.linear, 16 requests at concurrency 4 took 47 s a round.
WORKLOADS = {"c4": (8, 4), "c1": (4, 1)}
COMPARED = {"c4": ("request_throughput",), "c1": ("request_throughput", "ttft_p50_ms")}
# A guard against a front end that costs real time, not a measurement of a few
# percent: on the shared CI machine one server's rounds moved by up to 2x (ITL
# 44.7-82.1 ms at concurrency 1 within minutes), while ours and stock's run the same
# engine. The figures in the README come from quiet runs of this test.
TOLERANCE = 0.20


def _bench(target: str, workload: str, seed: int, out) -> dict:
    num_requests, concurrency = WORKLOADS[workload]
    assert cli_main(["bench", "--backend", "vllm-grpc", "--target", target, "--random-input-len", "64",
                     "--vocab-size", "49152", "--num-requests", str(num_requests), "--concurrency", str(concurrency),
                     "--max-tokens", "32", "--ignore-eos", "--warmup-requests", str(concurrency), "--seed", str(seed),
                     "--no-progress", "--json-out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["requests"] == {"sent": num_requests, "completed": num_requests, "failed": 0, "errors": {}}
    assert data["input_tokens"] == num_requests * 64 and data["output_tokens"] == num_requests * 32
    return {"request_throughput": data["request_throughput"], "ttft_p50_ms": data["ttft_ms"]["p50"],
            "itl_p50_ms": data["itl_ms"]["p50"]}


def _paired_ratio(pairs: list[dict], key: str) -> float:
    """Median over the pairs of neighbouring turns of ours / stock. A neighbour on the
    shared machine slows whole stretches of minutes; two turns next to each other
    mostly share one, so their ratio keeps what the servers differ in, and the median
    drops the pairs that one burst split. Best rounds, as this test took before, let
    one lucky round decide (stock's 0.59 req/s at concurrency 1 against its other
    0.39-0.55 failed a CI run, while the median of its first three pairs was 0.90)."""
    return statistics.median(pair["ours"][key] / pair["stock"][key] for pair in pairs)


def _compare(pairs_by_workload: dict) -> tuple[list[str], str]:
    """The figures where ours is worse than stock by more than the tolerance, and the table."""
    lines = [f"{len(pairs_by_workload['c1'])} pairs of neighbouring turns; ratio = median over the pairs of "
             "ours / stock vLLM gRPC launcher"]
    failures = []
    for workload, compared in COMPARED.items():
        pairs = pairs_by_workload[workload]
        for key in ("request_throughput", "ttft_p50_ms", "itl_p50_ms"):
            ratio = _paired_ratio(pairs, key)
            ours, theirs = (" ".join(f"{pair[server][key]:7.2f}" for pair in pairs) for server in ("ours", "stock"))
            lines.append(f"  {workload} {key:<19} ours {ours}   stock {theirs}   ratio {ratio:.3f}")
            # One-sided: ours may not be slower (throughput) or later (TTFT) by more
            # than the tolerance. Ours came out 1.05-1.09x faster in throughput on a
            # quiet machine (README, "Serving"), near a two-sided edge, which is no defect.
            worse = 1 / ratio if key == "request_throughput" else ratio
            if key in compared and worse > 1 + TOLERANCE:
                failures.append(f"{workload} {key}: {ratio:.3f}")
    return failures, "\n".join(lines)


@alone
def test_bench_vllm_grpc_agrees_between_stock_launcher_and_ours_on_the_dense_model(stock, ours, tmp_path):
    targets = {"stock": stock.target, "ours": f"127.0.0.1:{ours.grpc_port}"}
    pairs = {workload: [] for workload in WORKLOADS}
    for turn, server in enumerate(TURNS):
        for workload in WORKLOADS:
            if turn % 2 == 0:
                pairs[workload].append({})
            out = tmp_path / f"{server}-{workload}-{turn}.json"
            pairs[workload][-1][server] = _bench(targets[server], workload, turn // 2, out)
    failures, table = _compare(pairs)
    print("\n" + table)
    assert not failures, f"{failures}\n{table}"


# ---------------------------------------------------------------- every status, on purpose, on ours


@alone
def test_requests_vllm_refuses_are_invalid_argument(ours):
    channel, client = _client(ours.grpc_port)
    with channel:
        past_vocabulary = _error_of(client.Generate(_greedy_request("vocab", 4, ids=[1, 2, 10_000_000]), timeout=30))
        too_long = _error_of(client.Generate(_greedy_request("long", 4, ids=[100] * 2000), timeout=30))
        bad_sampling = ve.GenerateRequest(request_id="temp", tokenized=ve.TokenizedInput(input_ids=PROMPT_IDS),
                                          stream=True, sampling_params=ve.SamplingParams(temperature=-1, max_tokens=4))
        negative_temperature = _error_of(client.Generate(bad_sampling, timeout=30))
    assert past_vocabulary.code() == grpc.StatusCode.INVALID_ARGUMENT and "10000000" in past_vocabulary.details()
    assert too_long.code() == grpc.StatusCode.INVALID_ARGUMENT and "1024" in too_long.details()
    assert negative_temperature.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert prometheus_value(ours.get("/metrics"), "vllm_sparse_grpc_requests_total",
                            method="VllmEngine.Generate", code="INVALID_ARGUMENT") == 3


@alone
def test_streams_past_the_limit_are_resource_exhausted_on_both_protocols(ours):
    channel, client = _client(ours.grpc_port)
    with channel:
        # The limit is shared: half the streams on each protocol.
        calls = [client.Generate(_greedy_request(f"hold-{i}", 900), timeout=120) for i in range(MAX_INFLIGHT // 2)]
        calls += [stub(channel).Generate(generate_request(max_tokens=900)) for _ in range(MAX_INFLIGHT // 2)]
        for call in calls:
            next(call)
        refused = [_error_of(client.Generate(_greedy_request("one-too-many", 4), timeout=30)),
                   _error_of(stub(channel).Generate(generate_request(max_tokens=4)))]
        for call in calls:
            call.cancel()
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit is 6" in error.details()
    _wait_until_counted(ours, "VllmEngine.Generate", "CANCELLED", MAX_INFLIGHT // 2)
    _wait_until_counted(ours, "Generate", "CANCELLED", MAX_INFLIGHT // 2)


@alone
def test_deadline_and_cancel_are_counted_by_cause(ours):
    channel, client = _client(ours.grpc_port)
    with channel:
        before = prometheus_value(ours.get("/metrics"), "vllm_sparse_grpc_requests_total",
                                  method="VllmEngine.Generate", code="DEADLINE_EXCEEDED")
        error = _error_of(client.Generate(_greedy_request("short-deadline", 900), timeout=1.0))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _wait_until_counted(ours, "VllmEngine.Generate", "DEADLINE_EXCEEDED", before + 1, absolute=True)


def _wait_until_counted(server, method: str, code: str, expected: float, absolute: bool = False) -> None:
    """The handler counts a request once the engine has let it go, a moment after
    the client saw its end."""
    deadline = time.monotonic() + 15
    while True:
        value = prometheus_value(server.get("/metrics"), "vllm_sparse_grpc_requests_total", method=method, code=code)
        if (value == expected if absolute else value >= expected) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert value == expected if absolute else value >= expected, f"{method} {code}: {value}"


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@alone
def test_engine_death_ends_streams_internal_with_the_cause_logged(ours):
    engine_cores = [p for p in psutil.Process(ours.process.pid).children(recursive=True)
                    if "EngineCore" in p.name() or "EngineCore" in " ".join(p.cmdline())]
    assert len(engine_cores) == 1, [p.name() for p in psutil.Process(ours.process.pid).children(recursive=True)]
    channel, client = _client(ours.grpc_port)
    with channel:
        calls = [client.Generate(_greedy_request("doomed-vllm", 900), timeout=120),
                 stub(channel).Generate(generate_request(max_tokens=900), timeout=120)]
        for call in calls:
            next(call)
        os.kill(engine_cores[0].pid, signal.SIGKILL)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            errors = list(pool.map(_error_of, calls))
    for error in errors:
        assert error.code() == grpc.StatusCode.INTERNAL, error
    # The server goes down with its engine (so an orchestrator restarts it),
    # leaving nothing running, and the log says why the streams failed.
    family = [p.pid for p in psutil.Process(ours.process.pid).children(recursive=True)]
    ours.process.wait(timeout=60)
    # The engine's worker, orphaned by the kill, notices it and exits a moment later.
    deadline = time.monotonic() + 30
    while (left := [pid for pid in family if _running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == []
    log = ours.log_text()
    assert "EngineDeadError" in log
    assert "Error in Generate for request doomed-vllm" in log and "failed in the engine" in log
    assert log.count("gRPC server draining") == 1  # stopped once
