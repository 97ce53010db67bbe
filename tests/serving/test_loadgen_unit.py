"""Fast tests of the load generator (``vllm-sparse bench``): arrival schedule,
percentiles, SSE parsing, error accounting, comparison, and both clients against
small in-process fake servers (gRPC SparseServing, OpenAI SSE)."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import threading
import time

import grpc
import numpy as np
import pytest
from aiohttp import web

from net import free_port
from grpc_helpers import self_signed_certificate
from vllm_sparse.cli import main as cli_main
from vllm_sparse.serving.loadgen import report
from vllm_sparse.serving.loadgen.backends import (
    GrpcBackend,
    Message,
    OpenAIBackend,
    RequestError,
    SSEParser,
    VllmGrpcBackend,
    parse_completion_event,
)
from vllm_sparse.serving.loadgen.bench import Endpoint
from vllm_sparse.serving.loadgen.runner import LoadPlan, measure, run_load
from vllm_sparse.serving.loadgen.workload import (
    GenerationParams,
    Prompt,
    cycle_prompts,
    poisson_arrivals,
    prompts_from_corpus,
    prompts_from_lines,
    random_token_prompts,
)
from vllm_sparse.serving.proto import sparse_serving_pb2 as pb
from vllm_sparse.serving.proto import sparse_serving_pb2_grpc as pb_grpc
from smg_grpc_proto import vllm_engine_pb2 as ve
from smg_grpc_proto import vllm_engine_pb2_grpc as ve_grpc


# ------------------------------------------------------------------ workload


def test_poisson_schedule_statistics_and_seeding():
    rate, n = 8.0, 20000
    times = np.array(list(itertools.islice(poisson_arrivals(rate, seed=3), n)))
    gaps = np.diff(times)
    assert times[0] == 0.0 and np.all(gaps > 0)
    # Exponential gaps: mean 1/rate, standard deviation 1/rate (coefficient of variation 1).
    # With 20000 samples the standard error of the mean is 0.7%: 3% is > 4 sigma.
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.04)
    # Memoryless: P(gap > 1/rate) = e^-1.
    assert (gaps > 1 / rate).mean() == pytest.approx(math.exp(-1), abs=0.015)
    again = list(itertools.islice(poisson_arrivals(rate, seed=3), n))
    other = list(itertools.islice(poisson_arrivals(rate, seed=4), n))
    assert again == times.tolist()
    assert other != again
    assert list(itertools.islice(poisson_arrivals(math.inf, seed=0), 5)) == [0.0] * 5
    with pytest.raises(ValueError):
        next(poisson_arrivals(0.0, seed=0))


def test_prompt_sources(tmp_path):
    a = random_token_prompts(5, 64, seed=7, vocab_size=1000)
    assert a == random_token_prompts(5, 64, seed=7, vocab_size=1000)
    assert a != random_token_prompts(5, 64, seed=8, vocab_size=1000)
    assert all(len(p.token_ids) == 64 and p.known_length == 64 for p in a)
    assert all(100 <= t < 1000 for p in a for t in p.token_ids)
    lines = tmp_path / "p.txt"
    lines.write_text("first prompt\n\n  second  \n")
    assert [p.text for p in prompts_from_lines(lines)] == ["first prompt", "second"]
    corpus = tmp_path / "c.txt"
    corpus.write_text(" ".join(f"w{i}" for i in range(25)))
    chunks = prompts_from_corpus(corpus, 10)
    assert [p.text.split()[0] for p in chunks] == ["w0", "w10"]  # the 5 left over are dropped
    assert [p.text for p in itertools.islice(cycle_prompts(chunks), 3)] == [chunks[0].text, chunks[1].text, chunks[0].text]


# ------------------------------------------------------------------ report


@pytest.mark.parametrize("size", [1, 2, 7, 100, 1001])
def test_percentiles_match_numpy(size):
    values = np.random.default_rng(size).lognormal(size=size).tolist()
    for q in (0, 1, 50, 90, 99, 99.9, 100):
        assert report.percentile(values, q) == pytest.approx(np.percentile(values, q), rel=1e-12, abs=1e-12)
    stats = report.distribution_ms(values)
    assert stats["mean"] == pytest.approx(np.mean(values) * 1000)
    assert stats["p90"] == pytest.approx(np.percentile(values, 90) * 1000)
    assert stats["samples"] == size
    assert math.isnan(report.percentile([], 50))


def _summary(rps, ttft_p50, e2e_mean):
    lat = {"mean": 1.0, "p50": 1.0, "p90": 1.0, "p99": 1.0}
    return {"request_throughput": rps, "input_token_throughput": 100.0, "output_token_throughput": 0.0,
            "total_token_throughput": 100.0, "ttft_ms": {**lat, "p50": ttft_p50}, "itl_ms": dict(lat),
            "e2e_ms": {**lat, "mean": e2e_mean}}


def test_comparison_ratios():
    a, b = _summary(2.0, 100.0, 400.0), _summary(3.0, 50.0, 500.0)
    b["output_token_throughput"] = 7.0
    ratios = report.compare(a, b)
    assert ratios["request_throughput"] == pytest.approx(1.5)
    assert ratios["ttft_ms"]["p50"] == pytest.approx(0.5)
    assert ratios["e2e_ms"]["mean"] == pytest.approx(1.25)
    assert ratios["itl_ms"]["p99"] == pytest.approx(1.0)
    assert ratios["output_token_throughput"] is None  # A produced nothing: no ratio, no crash
    table = report.format_comparison(a, b, ratios)
    assert "1.500" in table and "0.500" in table and "1.250" in table


# ------------------------------------------------------------------ SSE

# Recorded from vLLM 0.32's /v1/completions (SmolLM2-135M, max_tokens 4, stream,
# include_usage); fields trimmed for length, event framing unchanged.
RECORDED_SSE = (
    b'data: {"id":"cmpl-a6","object":"text_completion","created":1795434383,"model":"m","choices":[{"index":0,'
    b'"text":" Paris","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}]}\n\n'
    b'data: {"id":"cmpl-a6","object":"text_completion","created":1795434383,"model":"m","choices":[{"index":0,'
    b'"text":".","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}]}\n\n'
    b'data: {"id":"cmpl-a6","object":"text_completion","created":1795434383,"model":"m","choices":[{"index":0,'
    b'"text":"\\n","logprobs":null,"finish_reason":null,"stop_reason":null,"prompt_token_ids":null,"token_ids":null}]}\n\n'
    b'data: {"id":"cmpl-a6","object":"text_completion","created":1795434383,"model":"m","choices":[{"index":0,'
    b'"text":"\\n","logprobs":null,"finish_reason":"length","stop_reason":null,"prompt_token_ids":null,"token_ids":null}]}\n\n'
    b'data: {"id":"cmpl-a6","object":"text_completion","created":1795434383,"model":"m","choices":[],'
    b'"usage":{"prompt_tokens":5,"total_tokens":9,"completion_tokens":4},"system_fingerprint":"vllm-0.32.0-25c83ab5"}\n\n'
    b"data: [DONE]\n\n"
)


def _parse_in_pieces(stream: bytes, size: int) -> list[str]:
    parser = SSEParser()
    return [event for i in range(0, len(stream), size) for event in parser.feed(stream[i:i + size])]


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
def test_sse_parsing_of_recorded_stream(size):
    events = _parse_in_pieces(RECORDED_SSE, size)
    assert len(events) == 6 and events[-1] == "[DONE]"
    messages = [parse_completion_event(e) for e in events[:-1]]
    assert [m.text for m in messages[:4]] == [" Paris", ".", "\n", "\n"]
    assert [m.tokens for m in messages] == [1, 1, 1, 1, 0]
    assert (messages[-1].prompt_tokens, messages[-1].completion_tokens) == (5, 4)


def test_sse_framing_variants():
    # CRLF line ends, a keep-alive comment, a multi-line data field, other fields, a UTF-8
    # character split between two reads.
    stream = ": ping\r\n\r\nevent: x\r\ndata: {\"a\":\r\ndata: \"é\"}\r\nid: 3\r\n\r\ndata:[DONE]\r\n\r\n".encode()
    for size in (1, 2, 3, len(stream)):
        assert _parse_in_pieces(stream, size) == ['{"a":\n"é"}', "[DONE]"]
    # Tokens listed by the server (vLLM's return_token_ids) are counted, and an error event raises.
    assert parse_completion_event('{"choices":[{"text":"ab","token_ids":[5,6]}]}').tokens == 2
    with pytest.raises(RequestError, match="stream error"):
        parse_completion_event('{"error":{"message":"boom"}}')


# ------------------------------------------------------------------ runner


class ScriptedBackend:
    """In-memory backend: each request streams ``tokens`` one-token messages ``delay``
    apart; request number i fails as ``failures[i]`` says."""

    name = "scripted"

    def __init__(self, tokens=4, delay=0.002, failures=None, per_message=1):
        self.tokens, self.delay, self.per_message = tokens, delay, per_message
        self.failures = failures or {}
        self.count = 0
        self.in_flight = self.max_in_flight = 0
        self.send_times: list[float] = []

    async def start(self):
        pass

    async def close(self):
        pass

    async def generate(self, prompt, params):
        index = self.count
        self.count += 1
        self.send_times.append(time.perf_counter())
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            failure = self.failures.get(index)
            if failure == "http":
                raise RequestError("HTTP 500", "Internal Server Error")
            if failure == "crash":
                raise ConnectionResetError("peer went away")
            if failure == "hang":
                await asyncio.sleep(10)
            if failure == "empty":
                yield Message(tokens=0, prompt_tokens=3)
                return
            for i in range(0, self.tokens, self.per_message):
                await asyncio.sleep(self.delay)
                yield Message(tokens=self.per_message, text="x" * self.per_message)
                if failure == "midway" and i >= 1:
                    raise RequestError("stream error", "engine died")
            yield Message(tokens=0, prompt_tokens=len(prompt.token_ids or ()), completion_tokens=self.tokens)
        finally:
            self.in_flight -= 1


PROMPTS = random_token_prompts(8, 16, seed=0)
PARAMS = GenerationParams(max_tokens=4)


def test_errors_are_counted_and_the_run_completes():
    failures = {1: "http", 4: "http", 5: "crash", 7: "hang", 9: "empty", 10: "midway"}
    backend = ScriptedBackend(failures=failures)
    plan = LoadPlan(num_requests=14, concurrency=3, request_timeout=0.5)
    result = asyncio.run(run_load(backend, cycle_prompts(PROMPTS), PARAMS, plan))
    assert len(result.records) == 14
    summary = report.summarize(result)
    assert summary["requests"] == {
        "sent": 14, "completed": 8, "failed": 6,
        "errors": {"ConnectionResetError": 1, "HTTP 500": 2, "no tokens": 1, "stream error": 1, "timeout": 1},
    }
    # Only completed requests count: 8 x 4 output tokens, 8 x 16 input tokens.
    assert summary["output_tokens"] == 32 and summary["input_tokens"] == 128
    assert summary["request_throughput"] == pytest.approx(8 / result.duration)
    assert summary["e2e_ms"]["samples"] == 8
    failed = [r for r in result.records if not r.ok]
    assert all(r.error_detail for r in failed)
    assert "HTTP 500: 2" in report.format_summary(summary)


def test_closed_loop_keeps_concurrency_and_times_tokens():
    backend = ScriptedBackend(tokens=6, delay=0.01, per_message=2)
    result = asyncio.run(run_load(backend, cycle_prompts(PROMPTS), PARAMS, LoadPlan(num_requests=9, concurrency=3)))
    assert backend.max_in_flight == 3 and len(result.records) == 9
    for record in result.records:
        assert record.ok and record.output_tokens == 6 and record.input_tokens == 16
        assert record.ttft >= 0.01
        # 3 messages of 2 tokens: the 2 gaps after the first message, each split over its 2 tokens.
        assert len(record.itls) == 4 and all(0.004 < gap < 0.5 for gap in record.itls)
        assert record.itls[0] == record.itls[1]
        assert record.e2e >= record.ttft + 2 * 0.01
    # 9 requests of >= 30 ms, 3 at a time: at least 90 ms.
    assert result.duration >= 0.09


@pytest.mark.alone  # its bounds are event-loop jitter: not with another worker busy
def test_poisson_rate_and_duration_bound_runs():
    backend = ScriptedBackend(tokens=1, delay=0.0)
    plan = LoadPlan(num_requests=30, request_rate=100.0, seed=5)
    # The schedule counts from the run's start, which lies after this instant. Measuring from the
    # first send instead would make every request look early whenever the first one ran late.
    before_start = time.perf_counter()
    asyncio.run(run_load(backend, cycle_prompts(PROMPTS), PARAMS, plan))
    schedule = list(itertools.islice(poisson_arrivals(100.0, seed=5), 30))
    lags = sorted(t - before_start - due for t, due in zip(backend.send_times, schedule))
    # Requests leave on the seeded schedule: never early, late only by event-loop jitter.
    assert lags[0] > 0 and lags[len(lags) // 2] < 0.02
    timed = ScriptedBackend(tokens=2, delay=0.005)
    result = asyncio.run(run_load(timed, cycle_prompts(PROMPTS), PARAMS, LoadPlan(duration=0.3, concurrency=2)))
    # About 0.3 s / 10 ms x 2 workers = 60 requests; none sent after the deadline.
    assert 10 <= len(result.records) <= 70
    assert max(timed.send_times) - min(timed.send_times) < 0.3 + 0.02
    assert 0.3 <= result.duration < 1.0


# ------------------------------------------------------------------ fake OpenAI server


def test_openai_backend_against_fake_sse_server():
    requests = []

    async def completions(request):
        requests.append(await request.json())
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for event in RECORDED_SSE.split(b"\n\n")[:-1]:
            await asyncio.sleep(0.01)
            await response.write(event + b"\n\n")
        return response

    async def models(request):
        return web.json_response({"data": [{"id": "fake-model"}]})

    async def scenario():
        app = web.Application()
        app.router.add_post("/v1/completions", completions)
        app.router.add_get("/v1/models", models)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        backend = OpenAIBackend(f"http://127.0.0.1:{port}", token="s3cret")
        try:
            await backend.start()
            prompts = [Prompt(text="The capital of France is"), Prompt(token_ids=(1, 2, 3))]
            params = GenerationParams(max_tokens=4, ignore_eos=True)
            return backend.model, await run_load(backend, cycle_prompts(prompts), params,
                                                 LoadPlan(num_requests=4, concurrency=2))
        finally:
            await backend.close()
            await runner.cleanup()

    model, result = asyncio.run(scenario())
    assert model == "fake-model"
    assert requests[0]["prompt"] == "The capital of France is" and requests[1]["prompt"] == [1, 2, 3]
    assert all(r["stream"] and r["stream_options"] == {"include_usage": True} and r["ignore_eos"] for r in requests)
    for record in result.records:
        assert record.ok, record.error_detail
        assert (record.input_tokens, record.output_tokens) == (5, 4)  # the usage chunk's counts
        assert record.ttft >= 0.01 and len(record.itls) == 3
        assert record.e2e >= record.ttft + 0.03


# ------------------------------------------------------------------ fake gRPC server


class FakeSparseServing(pb_grpc.SparseServingServicer):
    """Streams ``max_tokens`` tokens, ``per_message`` per message, ``delay`` apart,
    and checks the bearer token as the real server will."""

    def __init__(self, token=None, delay=0.005, per_message=1, fail_prompt=None):
        self.token, self.delay, self.per_message, self.fail_prompt = token, delay, per_message, fail_prompt
        self.requests = []

    async def Generate(self, request, context):
        if self.token is not None:
            if dict(context.invocation_metadata()).get("authorization") != f"Bearer {self.token}":
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
        if self.fail_prompt is not None and request.prompt == self.fail_prompt:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "prompt refused")
        self.requests.append(request)
        prompt_tokens = len(request.prompt_token_ids) or len(request.prompt.split())
        n = request.sampling.max_tokens
        for start in range(0, n, self.per_message):
            await asyncio.sleep(self.delay)
            ids = list(range(start, min(start + self.per_message, n)))
            done = start + len(ids) == n
            yield pb.GenerateResponse(request_id="r", text="".join(f" t{i}" for i in ids), token_ids=ids,
                                      finished=done, finish_reason="length" if done else "",
                                      prompt_tokens=prompt_tokens, completion_tokens=start + len(ids))


class FakeVllmEngine(ve_grpc.VllmEngineServicer):
    """vLLM's protocol as its servicer streams it (smg-grpc-servicer 0.14.1): a
    chunk of new token ids per step, ``per_message`` at a time, ``delay`` apart,
    then ``complete`` repeating the last chunk's ids; completion counts are per
    message, not running totals."""

    def __init__(self, token=None, delay=0.005, per_message=1):
        self.token, self.delay, self.per_message = token, delay, per_message
        self.requests = []

    async def Generate(self, request, context):
        if self.token is not None:
            if dict(context.invocation_metadata()).get("authorization") != f"Bearer {self.token}":
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
        self.requests.append(request)
        prompt_tokens = len(request.tokenized.input_ids) or len(request.text.split())
        n = request.sampling_params.max_tokens
        for start in range(0, n, self.per_message):
            await asyncio.sleep(self.delay)
            ids = list(range(start, min(start + self.per_message, n)))
            yield ve.GenerateResponse(chunk=ve.GenerateStreamChunk(
                token_ids=ids, prompt_tokens=prompt_tokens, completion_tokens=len(ids)))
        yield ve.GenerateResponse(complete=ve.GenerateComplete(
            output_ids=ids, finish_reason="length", prompt_tokens=prompt_tokens, completion_tokens=len(ids)))


def _add_servicer(servicer, server) -> None:
    if isinstance(servicer, ve_grpc.VllmEngineServicer):
        ve_grpc.add_VllmEngineServicer_to_server(servicer, server)
    else:
        pb_grpc.add_SparseServingServicer_to_server(servicer, server)


class ServerThread:
    """A grpc.aio server on its own event loop in a thread, so clients (the CLI's
    asyncio.run included) can run in the test's thread."""

    def __init__(self, servicer, credentials=None):
        self.servicer, self.credentials = servicer, credentials
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=10)
        return self

    async def _start(self):
        self.server = grpc.aio.server()
        _add_servicer(self.servicer, self.server)
        address = f"127.0.0.1:{self.port}"
        if self.credentials is None:
            self.server.add_insecure_port(address)
        else:
            self.server.add_secure_port(address, self.credentials)
        await self.server.start()

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    @property
    def target(self):
        return f"127.0.0.1:{self.port}"


def test_grpc_backend_streams_and_times_tokens():
    servicer = FakeSparseServing(token="t0k", delay=0.01, per_message=2)
    prompts = [Prompt(token_ids=(11, 12, 13)), Prompt(text="four words of text")]
    with ServerThread(servicer) as server:
        async def scenario(token):
            backend = GrpcBackend(server.target, token=token)
            await backend.start()
            try:
                return await run_load(backend, cycle_prompts(prompts), GenerationParams(max_tokens=6, ignore_eos=True),
                                      LoadPlan(num_requests=6, concurrency=3))
            finally:
                await backend.close()

        good = asyncio.run(scenario("t0k"))
        bad = asyncio.run(scenario("wrong"))
    sent = sorted(str(list(r.prompt_token_ids) or r.prompt) for r in servicer.requests[:6])
    assert sent == ["[11, 12, 13]"] * 3 + ["four words of text"] * 3
    assert all(r.sampling.max_tokens == 6 and r.sampling.ignore_eos for r in servicer.requests)
    assert sorted(r.input_tokens for r in good.records) == [3, 3, 3, 4, 4, 4]
    for record in good.records:
        assert record.ok and record.output_tokens == 6
        # The server needs 3 x 10 ms for 3 messages; delivery may bunch them, so only
        # the totals are certain: first token after 10 ms, last after 30 ms.
        assert record.ttft >= 0.01 and len(record.itls) == 4 and record.e2e >= max(record.ttft, 0.03)
    # A wrong token fails every request, by status code, and the run still ends normally.
    assert report.summarize(bad)["requests"]["errors"] == {"grpc UNAUTHENTICATED": 6}


def test_cli_bench_grpc_with_tls_token_and_json(tmp_path, capsys):
    key_pem, cert_pem = self_signed_certificate("bench-test")
    ca = tmp_path / "ca.pem"
    ca.write_bytes(cert_pem)
    credentials = grpc.ssl_server_credentials([(key_pem, cert_pem)])
    servicer = FakeSparseServing(token="t0k", delay=0.002)
    out = tmp_path / "bench.json"
    with ServerThread(servicer, credentials) as server:
        code = cli_main(["bench", "--backend", "grpc", "--target", server.target, "--token", "t0k",
                         "--tls-ca", str(ca), "--tls-server-name", "bench-test", "--random-input-len", "12",
                         "--num-requests", "10", "--request-rate", "100", "--max-tokens", "5", "--ignore-eos",
                         "--json-out", str(out), "--no-progress"])
    assert code == 0
    summary = json.loads(out.read_text())
    assert summary["requests"] == {"sent": 10, "completed": 10, "failed": 0, "errors": {}}
    assert (summary["input_tokens"], summary["output_tokens"]) == (120, 50)
    assert summary["workload"]["request_rate"] == 100.0
    assert summary["ttft_ms"]["p50"] >= 2.0 and summary["itl_ms"]["samples"] == 40
    assert "TTFT" in capsys.readouterr().out
    assert all(len(r.prompt_token_ids) == 12 for r in servicer.requests)


def test_cli_compare_two_endpoints(tmp_path, capsys):
    out = tmp_path / "compare.json"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one prompt\nanother prompt here\nrefuse me\n")
    fast = FakeSparseServing(delay=0.002)
    slow = FakeSparseServing(delay=0.02, fail_prompt="refuse me")
    with ServerThread(fast) as a, ServerThread(slow) as b:
        code = cli_main(["bench", "--compare", a.target, f"grpc://{b.target}", "--prompts", str(prompts),
                         "--num-requests", "9", "--concurrency", "3", "--max-tokens", "4", "--no-progress",
                         "--json-out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["a"]["requests"]["completed"] == 9
    # B refuses one prompt in three: counted, and the comparison still comes out.
    assert result["b"]["requests"]["errors"] == {"grpc INVALID_ARGUMENT": 3}
    # The same workload on both (refused requests are not recorded by the servicer); B is 10x slower per token.
    assert sorted(r.prompt for r in fast.requests) == sorted(["another prompt here", "one prompt", "refuse me"] * 3)
    assert sorted(r.prompt for r in slow.requests) == ["another prompt here"] * 3 + ["one prompt"] * 3
    ratios = result["ratios"]
    assert ratios["itl_ms"]["p50"] > 2 and ratios["e2e_ms"]["mean"] > 2
    assert ratios["request_throughput"] < 0.7
    printed = capsys.readouterr().out
    assert "B/A" in printed and f"B = {b.target}" in printed


def test_vllm_grpc_backend_counts_chunks_not_the_closing_complete():
    servicer = FakeVllmEngine(token="t0k", delay=0.01, per_message=2)
    prompts = [Prompt(token_ids=(11, 12, 13)), Prompt(text="four words of text")]
    with ServerThread(servicer) as server:
        async def scenario():
            backend = VllmGrpcBackend(server.target, token="t0k")
            await backend.start()
            try:
                return await run_load(backend, cycle_prompts(prompts), GenerationParams(max_tokens=6, ignore_eos=True),
                                      LoadPlan(num_requests=4, concurrency=2))
            finally:
                await backend.close()

        result = asyncio.run(scenario())
    assert sorted(str(list(r.tokenized.input_ids) or r.text) for r in servicer.requests) == (
        ["[11, 12, 13]"] * 2 + ["four words of text"] * 2)
    assert all(r.stream and r.sampling_params.max_tokens == 6 and r.sampling_params.ignore_eos
               for r in servicer.requests)
    assert len({r.request_id for r in servicer.requests}) == 4  # the protocol needs unique ids
    for record in result.records:
        assert record.ok and record.output_tokens == 6, record.error_detail
        # 3 chunks of 2 tokens: 4 gaps after the first; the complete adds none.
        assert record.ttft >= 0.01 and len(record.itls) == 4 and record.e2e >= 0.03
    assert sorted(r.input_tokens for r in result.records) == [3, 3, 4, 4]


def test_endpoint_schemes_name_the_protocol():
    assert Endpoint.parse("vllm-grpc://h:1") == Endpoint("vllm-grpc", "h:1")
    assert Endpoint.parse("grpc://h:1", "vllm-grpc") == Endpoint("grpc", "h:1")
    assert Endpoint.parse("h:1", "vllm-grpc") == Endpoint("vllm-grpc", "h:1")
    assert Endpoint.parse("h:1") == Endpoint("grpc", "h:1")
    assert Endpoint.parse("http://h:1/") == Endpoint("openai", "http://h:1")
    assert Endpoint.parse("h:1", "openai") == Endpoint("openai", "http://h:1")
    with pytest.raises(ValueError, match="unknown backend"):
        Endpoint.parse("h:1", "smoke-signals")


def test_cli_compare_over_vllms_protocol(tmp_path):
    out = tmp_path / "compare.json"
    fast, slow = FakeVllmEngine(delay=0.002), FakeVllmEngine(delay=0.02)
    with ServerThread(fast) as a, ServerThread(slow) as b:
        code = cli_main(["bench", "--backend", "vllm-grpc", "--compare", a.target, f"vllm-grpc://{b.target}",
                         "--random-input-len", "8", "--num-requests", "6", "--concurrency", "2", "--max-tokens", "4",
                         "--ignore-eos", "--no-progress", "--json-out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["a"]["backend"] == result["b"]["backend"] == "vllm-grpc"
    assert result["a"]["output_tokens"] == result["b"]["output_tokens"] == 24
    assert sorted(list(r.tokenized.input_ids) for r in fast.requests) == sorted(list(r.tokenized.input_ids) for r in slow.requests)
    assert result["ratios"]["itl_ms"]["p50"] > 2


def test_cli_rejects_incomplete_options(capsys):
    assert cli_main(["bench", "--backend", "openai", "--random-input-len", "8"]) == 2
    assert "--base-url" in capsys.readouterr().err
    assert cli_main(["bench", "--target", "127.0.0.1:1", "--no-progress"]) == 2
    assert "--random-input-len" in capsys.readouterr().err


def test_unreachable_grpc_server_is_an_error_per_request():
    async def scenario():
        backend = GrpcBackend(f"127.0.0.1:{free_port()}")
        await backend.start()
        try:
            return await run_load(backend, cycle_prompts(PROMPTS), PARAMS, LoadPlan(num_requests=3, concurrency=3))
        finally:
            await backend.close()

    summary = report.summarize(asyncio.run(scenario()))
    assert summary["requests"]["errors"] == {"grpc UNAVAILABLE": 3}
    assert math.isnan(summary["ttft_ms"]["p50"])


def test_measure_records_server_counts_over_message_counts():
    class Backend(ScriptedBackend):
        async def generate(self, prompt, params):
            yield Message(tokens=1, text="a")
            yield Message(tokens=0, prompt_tokens=9, completion_tokens=3)  # the server knows better

    record = asyncio.run(measure(Backend(), Prompt(text="hi"), PARAMS, timeout=5))
    assert record.ok and (record.input_tokens, record.output_tokens) == (9, 3)
