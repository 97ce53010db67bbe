"""The gRPC server on one port: vLLM's own ``VllmEngine`` protocol (the servicer of
the ``smg-grpc-servicer`` package, the one vLLM's gRPC launcher runs), our
``SparseServing`` metrics and model-info extension beside it, the standard health
service and server reflection, with optional TLS and bearer-token authentication
for all of them."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from smg_grpc_proto import vllm_engine_pb2, vllm_engine_pb2_grpc

from .grpc_service import SparseServingService
from .grpc_settings import GrpcSettings
from .grpc_streams import StreamGate
from .grpc_vllm_engine import GatedVllmEngineServicer
from .proto import sparse_serving_pb2 as pb
from .proto import sparse_serving_pb2_grpc as pb_grpc

logger = logging.getLogger("vllm.sparse.grpc")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SparseServing"].full_name
VLLM_ENGINE_SERVICE = vllm_engine_pb2.DESCRIPTOR.services_by_name["VllmEngine"].full_name
# As vLLM's gRPC launcher sets them: a non-streaming Generate is silent while the
# engine decodes, and client keepalive pings in that window must not count as abuse.
SERVER_OPTIONS = (
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10000),
    ("grpc.keepalive_permit_without_calls", True),
    # grpc binds with SO_REUSEPORT by default: a second server started on a port
    # already served would bind it too and take a share of its connections silently.
    ("grpc.so_reuseport", 0),
)
# Probes (kubelet, grpc_health_probe) cannot send a token: health stays open.
_UNAUTHENTICATED_PREFIXES = ("/grpc.health.v1.Health/",)
# Time the handlers get to end their streams with UNAVAILABLE before grpc cancels them.
CLOSE_MARGIN_SECONDS = 2.0


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

        async def refuse(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        self._refusal = grpc.unary_unary_rpc_method_handler(refuse)

    async def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method
        if method.startswith(_UNAUTHENTICATED_PREFIXES):
            return await continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        given = str(metadata.get("authorization", "")).encode()
        if hmac.compare_digest(given, self._expected):
            return await continuation(handler_call_details)
        return self._refusal


class GrpcFrontEnd:
    """Owns the grpc.aio server; started and stopped with vLLM's API server."""

    def __init__(self, settings: GrpcSettings, engine_client, model_name: str, max_model_len: int | None) -> None:
        self.settings = settings
        interceptors = [BearerTokenInterceptor(settings.token)] if settings.token else []
        self.server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
        # One in-flight limit and one shutdown signal for the streams of both protocols.
        self.gate = StreamGate(settings.max_inflight)
        self.service = SparseServingService(engine_client, model_name, max_model_len, self.gate)
        pb_grpc.add_SparseServingServicer_to_server(self.service, self.server)
        self.vllm_engine = GatedVllmEngineServicer(engine_client, time.time(), self.gate)
        vllm_engine_pb2_grpc.add_VllmEngineServicer_to_server(self.vllm_engine, self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, VLLM_ENGINE_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME),
            self.server,
        )
        self._stopping: asyncio.Future | None = None
        address = f"{settings.host}:{settings.port}"
        refusal = f"gRPC server could not bind {address} (is the port in use?)"
        try:
            if settings.tls_cert:
                credentials = grpc.ssl_server_credentials(
                    [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())]
                )
                self.port = self.server.add_secure_port(address, credentials)
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError as error:  # grpcio raises where older releases returned 0
            raise RuntimeError(f"{refusal}: {error}") from error
        if self.port == 0:
            raise RuntimeError(refusal)

    async def start(self) -> None:
        await self.server.start()
        await self._set_status(health_pb2.HealthCheckResponse.SERVING)
        logger.info(
            "vllm-sparse gRPC server on %s:%d (%s%s)", self.settings.host, self.port,
            "TLS" if self.settings.tls_cert else "plaintext", ", bearer token" if self.settings.token else "",
        )

    async def stop(self) -> None:
        """Stops once, however often it is called (vLLM's shutdown path can call it
        twice, e.g. after the engine died): later calls wait for the first."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._drain_and_stop())
        await asyncio.shield(self._stopping)

    async def _drain_and_stop(self) -> None:
        """NOT_SERVING first, kept up for the drain period so health probes and
        balancers see it while the server still answers; then new calls are
        refused and in-flight streams get the grace period to finish before they
        are cancelled (their engine requests aborted)."""
        await self._set_status(health_pb2.HealthCheckResponse.NOT_SERVING)
        logger.info(
            "vllm-sparse gRPC server draining (%.1f s), then stopping (grace %.1f s)",
            self.settings.shutdown_drain_seconds, self.settings.shutdown_grace_seconds,
        )
        await asyncio.sleep(self.settings.shutdown_drain_seconds)
        # grpc cancels what is left at the end of its grace, which clients see as
        # CANCELLED or UNKNOWN; we end those streams ourselves just before, with
        # UNAVAILABLE (retry elsewhere) and a message saying why.
        grace = self.settings.shutdown_grace_seconds
        stopping = asyncio.ensure_future(self.server.stop(grace + CLOSE_MARGIN_SECONDS))
        try:
            await asyncio.wait_for(asyncio.shield(stopping), grace)
        except asyncio.TimeoutError:
            self.gate.close_streams()
            await stopping

    async def _set_status(self, status) -> None:
        for service in ("", SERVICE_NAME, VLLM_ENGINE_SERVICE):
            await self.health.set(service, status)
