"""``vllm-sparse serve`` for real: one vLLM engine behind the OpenAI HTTP server and
our gRPC server, a compressed-tensors 2:4 checkpoint, Python gRPC clients.

The tests share one server and run in file order; the last one stops it with
SIGTERM."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time

import grpc
import psutil
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from checkpoints import CASES, MODELS, build_case
from grpc_helpers import free_port, generate_request, prometheus_value, stub, vllm_engine_stream
from deploy_metrics import metric_names
from prometheus_server import PrometheusServer
from vllm_sparse.serving.proto import sparse_serving_pb2 as pb
from vllm_sparse.serving.server_process import SparseServer

pytestmark = pytest.mark.vllm


# FFN skipping on (an aggressive profile, so that short test requests skip), block and
# neuron-level, so the skip counters are exercised end to end.
SKIP_PROFILE = f"""\
enabled: true
threshold: 0.5
skip_layers: 1
cold_start: 2
cold_end: 2
warmup_tokens: 2
skip_prompt: false
neuron_thresholds: [{", ".join(["0.1"] * 30)}]
"""
INTERMEDIATE = 1536  # SmolLM2-135M's FFN neurons


@pytest.fixture(scope="module")
def server(base_model, tmp_path_factory):
    checkpoint = build_case(base_model, MODELS / "test-checkpoints", next(c for c in CASES if c.name == "2of4")).compressed
    workdir = tmp_path_factory.mktemp("serve")
    (workdir / "skip.yaml").write_text(SKIP_PROFILE)
    server = SparseServer(checkpoint, free_port(), free_port(), workdir / "server.log",
                          env={"VLLM_SPARSE_FFN_SKIP": str(workdir / "skip.yaml")})
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        yield channel


def _wait_for_idle(client, timeout: float = 30.0) -> pb.MetricsSnapshot:
    deadline = time.monotonic() + timeout
    while True:
        snapshot = client.GetMetrics(pb.GetMetricsRequest())
        if snapshot.requests_running == 0 and snapshot.requests_waiting == 0:
            return snapshot
        if time.monotonic() > deadline:
            raise AssertionError(f"engine still busy: {snapshot.requests_running} running")
        time.sleep(0.2)


def test_health_serving_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "vllm_sparse.v1.SparseServing"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
    responses = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = {service.name for response in responses for service in response.list_services_response.service}
    assert {"vllm_sparse.v1.SparseServing", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_model_info_has_the_layer_table(channel):
    info = stub(channel).GetModelInfo(pb.GetModelInfoRequest())
    assert info.quantization == "vllm-sparse"
    assert len(info.layers) == 120
    assert {layer.pattern for layer in info.layers} == {"2:4"}
    assert info.model_sparsity == pytest.approx(0.5, abs=0.001)
    assert info.dense_bytes > 0


def test_generate_streams_tokens_and_matches_http(server, channel):
    replies = list(stub(channel).Generate(generate_request("The capital of France is", max_tokens=16)))
    tokens = [t for reply in replies for t in reply.token_ids]
    assert len(tokens) == 16 and len(replies) >= 2  # streamed, not one final message
    assert replies[-1].finished and replies[-1].finish_reason == "length"
    http = server.post("/v1/completions", {"model": server.model, "prompt": "The capital of France is",
                                           "max_tokens": 16, "temperature": 0.0, "ignore_eos": True})
    assert "".join(reply.text for reply in replies) == http["choices"][0]["text"]


def test_vllm_engine_protocol_with_smgs_own_client(server, channel):
    """vLLM's gRPC protocol on the same port, driven by smg's generated client."""
    from smg_grpc_proto import vllm_engine_pb2 as ve
    from smg_grpc_proto import vllm_engine_pb2_grpc as ve_grpc

    client = ve_grpc.VllmEngineStub(channel)
    health = client.HealthCheck(ve.HealthCheckRequest(), timeout=30)
    assert health.healthy, health.message
    info = client.GetModelInfo(ve.GetModelInfoRequest(), timeout=30)
    assert info.is_generation and info.max_context_length == 1024 and info.vocab_size == 49152
    assert "LlamaForCausalLM" in info.architectures
    server_info = client.GetServerInfo(ve.GetServerInfoRequest(), timeout=30)
    assert server_info.data_parallel_size == 1 and server_info.max_num_seqs > 0
    assert "bfloat16" in server_info.model_dtype

    prompt = "The capital of France is"
    ids = [int(t) for t in server.post("/tokenize", {"model": server.model, "prompt": prompt})["tokens"]]
    request = ve.GenerateRequest(
        request_id="smg-greedy", tokenized=ve.TokenizedInput(original_text=prompt, input_ids=ids), stream=True,
        sampling_params=ve.SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))
    streamed, complete = vllm_engine_stream(client, request)
    http = server.post("/v1/completions", {"model": server.model, "prompt": ids, "max_tokens": 12,
                                           "temperature": 0.0, "ignore_eos": True, "return_token_ids": True})
    assert streamed == list(http["choices"][0]["token_ids"])
    assert len(streamed) == 12 and complete is not None and complete.finish_reason == "length"

    long = ve.GenerateRequest(
        request_id="smg-abort", tokenized=ve.TokenizedInput(input_ids=ids), stream=True,
        sampling_params=ve.SamplingParams(temperature=0.0, max_tokens=500, ignore_eos=True))
    call = client.Generate(long, timeout=120)
    next(call)
    client.Abort(ve.AbortRequest(request_ids=["smg-abort"]), timeout=30)
    ends = [r.complete.finish_reason for r in call if r.HasField("complete")]
    assert ends in ([], ["abort"])  # the stream ends early either way
    _wait_for_idle(stub(channel), timeout=10)


def test_bad_parameters_are_invalid_argument(channel):
    with pytest.raises(grpc.RpcError) as error:
        list(stub(channel).Generate(generate_request(max_tokens=0)))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "max_tokens" in error.value.details()


def test_requests_vllm_refuses_are_invalid_argument(channel):
    client = stub(channel)
    past_vocabulary = pb.GenerateRequest(prompt_token_ids=[1, 2, 10_000_000],
                                         sampling=pb.SamplingParameters(max_tokens=4))
    with pytest.raises(grpc.RpcError) as error:
        list(client.Generate(past_vocabulary))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "10000000" in error.value.details() or "vocab" in error.value.details().lower()

    too_long = pb.GenerateRequest(prompt_token_ids=[100] * 2000, sampling=pb.SamplingParameters(max_tokens=4))
    with pytest.raises(grpc.RpcError) as error:
        list(client.Generate(too_long))  # the server runs --max-model-len 1024
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1024" in error.value.details()
    _wait_for_idle(client, timeout=10)


def test_cancel_mid_stream_frees_the_engine(channel):
    client = stub(channel)
    call = client.Generate(generate_request(max_tokens=400))
    next(call)
    assert client.GetMetrics(pb.GetMetricsRequest()).requests_running == 1
    call.cancel()
    _wait_for_idle(client, timeout=10)


def test_deadline_shorter_than_generation_aborts(server, channel):
    client = stub(channel)
    before = prometheus_value(server.get("/metrics"), "vllm_sparse_grpc_requests_total",
                              method="Generate", code="DEADLINE_EXCEEDED")
    with pytest.raises(grpc.RpcError) as error:
        list(client.Generate(generate_request(max_tokens=600), timeout=1.0))
    assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    _wait_for_idle(client, timeout=10)
    # The handler counts the request once it has aborted it in the engine, which
    # may be a moment after the client saw its deadline pass.
    deadline = time.monotonic() + 10
    while True:
        after = prometheus_value(server.get("/metrics"), "vllm_sparse_grpc_requests_total",
                                 method="Generate", code="DEADLINE_EXCEEDED")
        if after == before + 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    metrics = server.get("/metrics")
    counted = {code: prometheus_value(metrics, "vllm_sparse_grpc_requests_total", method="Generate", code=code)
               for code in ("OK", "CANCELLED", "DEADLINE_EXCEEDED", "INTERNAL")}
    assert after == before + 1, f"Generate requests by code: {counted}"


def test_32_concurrent_streams_and_counters_match(server, channel):
    client = stub(channel)
    _wait_for_idle(client)
    before = client.GetMetrics(pb.GetMetricsRequest())
    metrics_before = server.get("/metrics")

    def one(index: int) -> int:
        replies = list(client.Generate(generate_request(f"Story number {index}:", max_tokens=8 + index % 5)))
        assert replies[-1].finished
        return sum(len(reply.token_ids) for reply in replies)

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        received = list(pool.map(one, range(32)))
    assert received == [8 + i % 5 for i in range(32)]

    after = _wait_for_idle(client)
    metrics_after = server.get("/metrics")
    assert after.requests_finished_total - before.requests_finished_total == 32
    assert after.generation_tokens_total - before.generation_tokens_total == sum(received)

    def delta(name, **labels):
        return prometheus_value(metrics_after, name, **labels) - prometheus_value(metrics_before, name, **labels)

    assert delta("vllm_sparse_grpc_requests_total", method="Generate", code="OK") == 32
    assert delta("vllm_sparse_grpc_generated_tokens_total") == sum(received)
    assert delta("vllm:generation_tokens_total") == sum(received)
    assert delta("vllm:request_success_total") == 32
    assert after.time_to_first_token.samples > 0 and after.end_to_end_latency.p50_seconds > 0
    assert after.generation_tokens_per_second > 0


def test_metrics_endpoint_carries_sparse_figures(server):
    text = server.get("/metrics")
    assert prometheus_value(text, "vllm_sparse_kernel_layers") == 120  # summed over kernel paths
    dense = prometheus_value(text, "vllm_sparse_linear_weight_bytes", form="dense")
    stored = prometheus_value(text, "vllm_sparse_linear_weight_bytes", form="stored")
    assert dense > 0 and 0 < stored <= dense
    if prometheus_value(text, "vllm_sparse_kernel_layers", kernel="dense") < 120:  # some layers on cpu_sparse
        assert stored < 0.8 * dense
    # The tied 49152 x 576 head: on our GEMV where this host class has records (the committed table),
    # as the plugin's own rule decides for that weight (torch.empty touches no memory).
    from vllm_sparse.plugin.lm_head import gemv_max_m

    head_rows = prometheus_value(text, "vllm_sparse_lm_head_gemv_max_rows")
    assert head_rows == gemv_max_m(torch.empty((49152, 576), dtype=torch.bfloat16))
    sparsity = prometheus_value(text, "vllm_sparse_layer_sparsity_ratio", layer="model.layers.0.mlp.down_proj")
    assert sparsity == pytest.approx(0.5, abs=0.001)
    assert "vllm_sparse_grpc_request_duration_seconds_bucket" in text


def test_ffn_skip_counters_reach_grpc_and_metrics(server, channel):
    from vllm_sparse.plugin.worker_metrics import FFN_FLUSH_SECONDS

    list(stub(channel).Generate(generate_request("Tell me about the sea.", max_tokens=24)))
    time.sleep(3 * FFN_FLUSH_SECONDS)  # the worker hands its counts on every FFN_FLUSH_SECONDS
    snapshot = stub(channel).GetMetrics(pb.GetMetricsRequest())
    assert 0 < snapshot.ffn_skip_ratio < 1
    by_layer = {entry.layer: entry for entry in snapshot.ffn_skip}
    assert by_layer[0].skipped == 0 and by_layer[0].computed > 0  # cold layer
    assert sum(entry.skipped for entry in snapshot.ffn_skip) > 0
    text = server.get("/metrics")
    assert prometheus_value(text, "vllm_sparse_ffn_blocks_total", decision="skipped") == sum(
        entry.skipped for entry in snapshot.ffn_skip
    )
    # Neuron-level: counted in whole rows of neurons (the decoding rows past warm-up
    # that compute the layer: every such row in the cold layers 0 and 1), some dropped.
    assert 0 < snapshot.ffn_neuron_drop_ratio < 1
    for entry in snapshot.ffn_skip:
        counted = entry.neurons_dropped + entry.neurons_kept
        assert counted % INTERMEDIATE == 0, entry
        assert entry.neuron_drop_ratio == pytest.approx(entry.neurons_dropped / counted if counted else 0.0)
    assert by_layer[0].neurons_dropped + by_layer[0].neurons_kept >= INTERMEDIATE
    for decision, field in (("dropped", "neurons_dropped"), ("kept", "neurons_kept")):
        assert prometheus_value(text, "vllm_sparse_ffn_neurons_total", decision=decision) == sum(
            getattr(entry, field) for entry in snapshot.ffn_skip)


def test_prometheus_scrapes_request_and_skip_counters(server, channel, tmp_path):
    with PrometheusServer(tmp_path, free_port(), f"127.0.0.1:{server.port}") as prometheus:
        # The counters before our requests, as Prometheus itself saw them.
        start_ok = prometheus.wait_for_value(
            'sum(vllm_sparse_grpc_requests_total{method="Generate",code="OK"})',
            prometheus_value(server.get("/metrics"), "vllm_sparse_grpc_requests_total", method="Generate", code="OK"),
        )
        start_http = float(prometheus_value(server.get("/metrics"), "vllm:request_success_total"))
        requests = 5
        for index in range(requests):
            list(stub(channel).Generate(generate_request(f"Request {index}", max_tokens=6)))
        prometheus.wait_for_value(
            'sum(vllm_sparse_grpc_requests_total{method="Generate",code="OK"})', start_ok + requests
        )
        prometheus.wait_for_value("sum(vllm:request_success_total)", start_http + requests)
        skipped = prometheus.query('sum(vllm_sparse_ffn_blocks_total{decision="skipped"})')
        assert skipped and float(skipped[0]["value"][1]) > 0
        dropped = prometheus.query('sum(vllm_sparse_ffn_neurons_total{decision="dropped"})')
        assert dropped and float(dropped[0]["value"][1]) > 0
        layers = prometheus.query("count(vllm_sparse_layer_sparsity_ratio)")
        assert float(layers[0]["value"][1]) == 120


def test_dashboard_and_alerts_use_metrics_the_server_exports(server):
    """Every metric the Grafana dashboard and the alert rules query is on /metrics."""
    from test_deploy_files import referenced_metrics

    exported = {name.removesuffix("_bucket") for name in metric_names(server.get("/metrics"))}
    missing = {name for name in referenced_metrics() if name.removesuffix("_bucket") not in exported}
    assert not missing


def test_watch_metrics_streams_snapshots(channel):
    stream = stub(channel).WatchMetrics(pb.WatchMetricsRequest(interval_seconds=0.2))
    first, second = next(stream), next(stream)
    stream.cancel()
    assert second.timestamp_seconds - first.timestamp_seconds == pytest.approx(0.2, abs=0.15)
    with pytest.raises(grpc.RpcError) as error:
        next(stub(channel).WatchMetrics(pb.WatchMetricsRequest(interval_seconds=0)))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_sigterm_reports_not_serving_ends_streams_unavailable_and_leaves_no_processes(server, channel):
    health = health_pb2_grpc.HealthStub(channel)
    family = [server.process.pid] + [child.pid for child in psutil.Process(server.process.pid).children(recursive=True)]
    # Eight streams far longer than the drain (1 s) + grace (5 s) periods, four on
    # each protocol.
    from smg_grpc_proto import vllm_engine_pb2 as ve
    from smg_grpc_proto import vllm_engine_pb2_grpc as ve_grpc

    calls = [stub(channel).Generate(generate_request(max_tokens=900)) for _ in range(4)]
    calls += [ve_grpc.VllmEngineStub(channel).Generate(ve.GenerateRequest(
        request_id=f"sigterm-{i}", text="Once upon a time", stream=True,
        sampling_params=ve.SamplingParams(temperature=0.0, max_tokens=900, ignore_eos=True))) for i in range(4)]
    for call in calls:
        next(call)
    os.kill(server.process.pid, signal.SIGTERM)  # `vllm-sparse serve` forwards it
    statuses = set()
    for _ in range(100):
        try:
            statuses.add(health.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status)
        except grpc.RpcError:
            break  # the server is gone
        time.sleep(0.05)
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses
    # Still generating when the grace period ends: each ends UNAVAILABLE (retry
    # elsewhere), saying why, never UNKNOWN or CANCELLED.
    for call in calls:
        with pytest.raises(grpc.RpcError) as error:
            list(call)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE, error.value
        assert "shutting down" in error.value.details()
    assert server.process.wait(timeout=60) == 0
    time.sleep(1)
    alive = [pid for pid in family if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert alive == []
