"""``vllm.endpoint_plugins`` entry point: runs our gRPC server inside vLLM's API
server process, on the same engine client as the OpenAI HTTP routes.

vLLM 0.32 internals used here (besides the documented EndpointPlugin protocol):
- ``engine_client.model_config.max_model_len`` to validate max_tokens;
- wrapping ``engine_client.shutdown``: vLLM's SIGTERM handler calls it (from an
  executor thread) before stopping the HTTP server, so wrapping it is the one place
  where the gRPC server can report NOT_SERVING and let in-flight streams finish
  while the engine still runs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from argparse import Namespace

from .grpc_server import GrpcFrontEnd
from .grpc_settings import GrpcSettings

logger = logging.getLogger("vllm.sparse.grpc")


class GrpcEndpointPlugin:
    name = "vllm_sparse_grpc"
    required_tasks = ("generate",)

    def attach_router(self, app) -> None:
        pass  # no HTTP routes: our metrics go to vLLM's own /metrics

    async def init_state(self, engine_client, state, args: Namespace) -> None:
        if engine_client is None:
            return
        settings = GrpcSettings.from_env()
        model_name = (args.served_model_name or [args.model])[0] if hasattr(args, "served_model_name") else args.model
        max_model_len = getattr(getattr(engine_client, "model_config", None), "max_model_len", None)
        front_end = GrpcFrontEnd(settings, engine_client, model_name, max_model_len)
        await front_end.start()
        state.vllm_sparse_grpc = front_end
        _stop_before_engine_shutdown(engine_client, front_end, asyncio.get_running_loop())


def _stop_before_engine_shutdown(engine_client, front_end: GrpcFrontEnd, loop: asyncio.AbstractEventLoop) -> None:
    original_shutdown = engine_client.shutdown
    grace = front_end.settings.shutdown_drain_seconds + front_end.settings.shutdown_grace_seconds
    loop_thread = threading.get_ident()

    def shutdown(*args, **kwargs):
        if threading.get_ident() == loop_thread:  # cannot wait on our own loop
            loop.create_task(front_end.stop())
            return original_shutdown(*args, **kwargs)
        try:
            future = asyncio.run_coroutine_threadsafe(front_end.stop(), loop)
            future.result(timeout=grace + 10)
        except Exception:  # never let our stop block the engine's
            logger.exception("vllm-sparse gRPC server did not stop cleanly")
        return original_shutdown(*args, **kwargs)

    engine_client.shutdown = shutdown


def plugin() -> GrpcEndpointPlugin:
    return GrpcEndpointPlugin()
