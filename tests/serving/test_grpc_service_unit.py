"""The gRPC front end over a fake engine: argument checks, back-pressure, abort on
cancel, bearer token and TLS. (The real engine is exercised in test_grpc_serving.py.)"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from smg_grpc_proto import vllm_engine_pb2 as ve
from smg_grpc_proto import vllm_engine_pb2_grpc as ve_grpc

from grpc_helpers import free_port, generate_request, self_signed_certificate, stub
from vllm_sparse.serving.grpc_server import GrpcFrontEnd
from vllm_sparse.serving.grpc_settings import GrpcSettings
from vllm_sparse.serving.proto import sparse_serving_pb2 as pb


class FakeEngine:
    """Streams ``max_tokens`` one-token outputs, ``delay`` seconds apart."""

    errored = False  # read by vLLM's VllmEngine HealthCheck

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.aborted: list[str] = []
        self.running = 0

    async def generate(self, prompt, params, request_id):
        self.running += 1
        try:
            for index in range(params.max_tokens):
                await asyncio.sleep(self.delay)
                finished = index == params.max_tokens - 1
                step = SimpleNamespace(text=f" t{index}", token_ids=[index], finish_reason="length" if finished else None)
                yield SimpleNamespace(outputs=[step], finished=finished, prompt_token_ids=[1, 2, 3])
        finally:
            self.running -= 1

    async def abort(self, request_id):
        self.aborted.append(request_id)


def run(coroutine):
    return asyncio.run(coroutine)


async def _with_server(settings: GrpcSettings, engine: FakeEngine, body):
    front = GrpcFrontEnd(settings, engine, "fake-model", max_model_len=128)
    await front.start()
    try:
        return await body(front)
    finally:
        await front.stop()


def _plain(**kwargs) -> GrpcSettings:
    return GrpcSettings(port=free_port(), shutdown_drain_seconds=0, **kwargs)


def test_streams_every_token_then_finishes():
    async def body(front):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{front.port}") as channel:
            replies = [r async for r in stub(channel).Generate(generate_request(max_tokens=5))]
        assert [r.token_ids[0] for r in replies] == [0, 1, 2, 3, 4]
        assert replies[-1].finished and replies[-1].finish_reason == "length"
        assert replies[-1].completion_tokens == 5 and replies[-1].prompt_tokens == 3

    run(_with_server(_plain(), FakeEngine(), body))


@pytest.mark.parametrize(
    "request_, message",
    [
        (generate_request(max_tokens=0), "max_tokens must be at least 1"),
        (generate_request(max_tokens=500), "exceeds the model's length 128"),
        (generate_request(temperature=-1.0), "temperature must be >= 0"),
        (generate_request(top_p=1.5), "top_p"),
        (pb.GenerateRequest(sampling=pb.SamplingParameters(max_tokens=4)), "exactly one of prompt"),
        (pb.GenerateRequest(prompt="x", prompt_token_ids=[1], sampling=pb.SamplingParameters(max_tokens=4)),
         "exactly one of prompt"),
    ],
)
def test_bad_parameters_are_invalid_argument(request_, message):
    async def body(front):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{front.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                [r async for r in stub(channel).Generate(request_)]
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in error.value.details()

    run(_with_server(_plain(), FakeEngine(), body))


def test_over_capacity_is_resource_exhausted_and_others_keep_streaming():
    engine = FakeEngine(delay=0.05)

    async def body(front):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{front.port}") as channel:
            client = stub(channel)
            first = [client.Generate(generate_request(max_tokens=10)) for _ in range(2)]
            await asyncio.sleep(0.1)  # both admitted
            with pytest.raises(grpc.aio.AioRpcError) as error:
                [r async for r in client.Generate(generate_request(max_tokens=2))]
            assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for call in first:
                assert len([r async for r in call]) == 10

    run(_with_server(_plain(max_inflight=2), engine, body))


def test_cancel_mid_stream_aborts_the_engine_request():
    engine = FakeEngine(delay=0.05)

    async def body(front):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{front.port}") as channel:
            call = stub(channel).Generate(generate_request(max_tokens=50))
            await call.read()
            call.cancel()
            for _ in range(100):
                if engine.aborted:
                    break
                await asyncio.sleep(0.02)
        assert len(engine.aborted) == 1 and engine.aborted[0].startswith("grpc-")
        assert front.gate.inflight == 0

    run(_with_server(_plain(), engine, body))


def test_bearer_token_required_except_for_health():
    async def body(front):
        target = f"127.0.0.1:{front.port}"
        async with grpc.aio.insecure_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub(channel).GetModelInfo(pb.GetModelInfoRequest())
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub(channel).GetModelInfo(pb.GetModelInfoRequest(), metadata=(("authorization", "Bearer nope"),))
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
            info = await stub(channel).GetModelInfo(pb.GetModelInfoRequest(), metadata=(("authorization", "Bearer s3cret"),))
            assert info.model == "fake-model"
            health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            # vLLM's protocol on the same port follows the same rule.
            vllm_engine = ve_grpc.VllmEngineStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await vllm_engine.HealthCheck(ve.HealthCheckRequest())
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reply = await vllm_engine.HealthCheck(ve.HealthCheckRequest(), metadata=(("authorization", "Bearer s3cret"),))
            assert reply.healthy
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="vllm.grpc.engine.VllmEngine"))
            assert health.status == health_pb2.HealthCheckResponse.SERVING

    run(_with_server(_plain(token="s3cret"), FakeEngine(), body))


def _self_signed(directory):
    key_pem, cert_pem = self_signed_certificate("localhost")
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert_pem)
    key_path.write_bytes(key_pem)
    return cert_path, key_path


def test_tls_only_clients_with_the_certificate_get_in(tmp_path):
    cert, key = _self_signed(tmp_path)

    async def body(front):
        target = f"localhost:{front.port}"
        async with grpc.aio.insecure_channel(target) as channel:  # plaintext client
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await stub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        async with grpc.aio.secure_channel(target, credentials) as channel:
            info = await stub(channel).GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
            assert info.model == "fake-model"

    run(_with_server(GrpcSettings(host="localhost", port=free_port(), tls_cert=cert, tls_key=key, shutdown_drain_seconds=0), FakeEngine(), body))


def test_a_second_server_on_a_taken_port_fails_to_start():
    """grpc binds with SO_REUSEPORT unless told not to: a second server on the same
    port would then start and share the port's connections with the first."""
    settings = _plain()

    async def body(front):
        with pytest.raises(RuntimeError, match="could not bind"):
            GrpcFrontEnd(settings, FakeEngine(), "fake-model", max_model_len=128)

    run(_with_server(settings, FakeEngine(), body))


def test_settings_reject_bad_values(tmp_path):
    with pytest.raises(ValueError, match="both a certificate and a key"):
        GrpcSettings(tls_cert=tmp_path / "a.pem").validate()
    with pytest.raises(ValueError, match="not a whole number"):
        GrpcSettings.from_env({"VLLM_SPARSE_GRPC_PORT": "fifty"})
    with pytest.raises(ValueError, match="at least 1"):
        GrpcSettings(max_inflight=0).validate()
    assert GrpcSettings.from_env({"VLLM_SPARSE_GRPC_PORT": "6000"}).port == 6000


def _requests_counted(code: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("vllm_sparse_grpc_requests_total", {"method": "Generate", "code": code}) or 0.0


def test_deadline_is_counted_and_aborts_the_engine_request():
    engine = FakeEngine(delay=0.05)
    before = _requests_counted("DEADLINE_EXCEEDED")

    async def body(front):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{front.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as error:
                [r async for r in stub(channel).Generate(generate_request(max_tokens=100), timeout=0.5)]
            assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            for _ in range(100):
                if engine.aborted:
                    break
                await asyncio.sleep(0.02)
        assert len(engine.aborted) == 1

    run(_with_server(_plain(), engine, body))
    assert _requests_counted("DEADLINE_EXCEEDED") == before + 1
