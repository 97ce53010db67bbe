"""vLLM's own gRPC protocol (``vllm.grpc.engine.VllmEngine``), served by the
``smg-grpc-servicer`` package's servicer, the one vLLM's gRPC launcher runs, with
our stream rules around its Generate:

- past the in-flight limit shared with SparseServing: RESOURCE_EXHAUSTED;
- still generating when the shutdown grace period ends: UNAVAILABLE, saying why;
- anything the servicer lets escape (which grpc would send as UNKNOWN): INTERNAL,
  logged.

The servicer maps engine errors itself (smg_grpc_servicer/vllm/errors.py, 0.14.1):
vLLM's validation errors INVALID_ARGUMENT, engine failures INTERNAL with the cause
logged. Every Generate is counted in ``vllm_sparse_grpc_requests_total`` with
method ``VllmEngine.Generate`` and its final code."""

from __future__ import annotations

import logging

import grpc
from smg_grpc_servicer.vllm.servicer import VllmEngineServicer

from .grpc_streams import (
    ENDED_BY_CLIENT,
    SHUTDOWN_MESSAGE,
    ShuttingDown,
    StreamGate,
    client_deadline,
    ended_by_client_code,
    observed,
)

logger = logging.getLogger("vllm.sparse.grpc")
METHOD_LABEL = "VllmEngine.Generate"


class GatedVllmEngineServicer(VllmEngineServicer):
    def __init__(self, engine_client, start_time: float, gate: StreamGate) -> None:
        super().__init__(engine_client, start_time)
        self.gate = gate

    async def Generate(self, request, context):
        with observed(METHOD_LABEL) as outcome:
            if refusal := self.gate.refusal():
                outcome["code"] = grpc.StatusCode.RESOURCE_EXHAUSTED
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
            deadline = client_deadline(context)
            try:
                with self.gate.admitted():
                    async for response in self.gate.until_closing(super().Generate(request, context)):
                        yield response
            except ENDED_BY_CLIENT:
                outcome["code"] = ended_by_client_code(deadline)
                raise
            except grpc.aio.AbortError:  # the servicer ended the call with its own status
                outcome["code"] = context.code() or grpc.StatusCode.INTERNAL
                raise
            except ShuttingDown:
                outcome["code"] = grpc.StatusCode.UNAVAILABLE
                await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTDOWN_MESSAGE)
            except Exception as exc:  # noqa: BLE001 - never let grpc send UNKNOWN
                logger.exception("VllmEngine.Generate %s failed", request.request_id)
                outcome["code"] = grpc.StatusCode.INTERNAL
                await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
