"""The SparseServing gRPC service over vLLM's engine client (the same engine the
OpenAI HTTP server uses)."""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc

from .grpc_streams import (
    ENDED_BY_CLIENT,
    SHUTDOWN_MESSAGE,
    ShuttingDown,
    StreamGate,
    client_deadline,
    ended_by_client_code,
    observed,
)
from .prometheus_metrics import GRPC_GENERATED_TOKENS
from .proto import sparse_serving_pb2 as pb
from .proto import sparse_serving_pb2_grpc as pb_grpc
from .sparse_figures import SparseFigures, current_figures, share
from .stats import SERVING_STATS, Percentiles, ServingStats

MIN_WATCH_INTERVAL, MAX_WATCH_INTERVAL = 0.1, 3600.0

logger = logging.getLogger("vllm.sparse.grpc")


class BadRequest(ValueError):
    """Client input that cannot be served: answered with INVALID_ARGUMENT."""


def _request_errors() -> tuple[type[BaseException], ...]:
    """What vLLM raises for a request it will not take (a token id past the
    vocabulary, a prompt longer than the model): its validation error is not a
    ValueError, and older paths still raise ValueError."""
    from vllm.exceptions import VLLMClientError

    return ValueError, VLLMClientError


def sampling_params_from(request: pb.GenerateRequest, max_model_len: int | None):
    """vLLM SamplingParams from a request, or BadRequest saying what is wrong."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    if bool(request.prompt) == bool(request.prompt_token_ids):
        raise BadRequest("give exactly one of prompt and prompt_token_ids")
    sampling = request.sampling
    if sampling.max_tokens < 1:
        raise BadRequest("sampling.max_tokens must be at least 1")
    if max_model_len is not None and sampling.max_tokens >= max_model_len:
        raise BadRequest(f"sampling.max_tokens={sampling.max_tokens} exceeds the model's length {max_model_len}")
    if not sampling.temperature >= 0:  # also rejects NaN
        raise BadRequest(f"sampling.temperature must be >= 0, got {sampling.temperature}")
    if not 0 <= sampling.top_p <= 1:
        raise BadRequest(f"sampling.top_p must be in (0, 1], got {sampling.top_p}")
    if sampling.top_k < -1:
        raise BadRequest(f"sampling.top_k must be -1, 0 or positive, got {sampling.top_k}")
    try:
        return SamplingParams(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p or 1.0,
            top_k=sampling.top_k if sampling.top_k > 0 else 0,
            seed=sampling.seed if sampling.has_seed else None,
            stop=list(sampling.stop) or None,
            ignore_eos=sampling.ignore_eos,
            output_kind=RequestOutputKind.DELTA,
        )
    except ValueError as exc:  # vLLM's own checks
        raise BadRequest(str(exc)) from None


def _percentiles(values: Percentiles) -> pb.LatencyPercentiles:
    return pb.LatencyPercentiles(
        p50_seconds=values.p50, p90_seconds=values.p90, p99_seconds=values.p99, samples=values.samples
    )


def _layer_messages(figures: SparseFigures) -> list[pb.LayerInfo]:
    return [
        pb.LayerInfo(
            name=row.name, shape=list(row.shape), pattern=row.pattern, sparsity=row.sparsity,
            kernel=row.kernel, dense_bytes=row.dense_bytes, stored_bytes=row.stored_bytes,
        )
        for row in figures.layers
    ]


def metrics_snapshot(stats: ServingStats = SERVING_STATS) -> pb.MetricsSnapshot:
    snap = stats.snapshot()
    figures = current_figures()
    skips = []
    for layer in sorted(figures.ffn_skip.keys() | figures.ffn_neurons.keys()):
        s, c = figures.ffn_skip.get(layer, (0, 0))
        dropped, kept = figures.ffn_neurons.get(layer, (0, 0))
        skips.append(pb.LayerSkip(layer=layer, skipped=s, computed=c, skip_ratio=share(s, c),
                                  neurons_dropped=dropped, neurons_kept=kept, neuron_drop_ratio=share(dropped, kept)))
    return pb.MetricsSnapshot(
        timestamp_seconds=snap.timestamp,
        window_seconds=snap.window_seconds,
        requests_per_second=snap.requests_per_second,
        prompt_tokens_per_second=snap.prompt_tokens_per_second,
        generation_tokens_per_second=snap.generation_tokens_per_second,
        time_to_first_token=_percentiles(snap.time_to_first_token),
        inter_token_latency=_percentiles(snap.inter_token_latency),
        end_to_end_latency=_percentiles(snap.end_to_end_latency),
        requests_running=snap.requests_running,
        requests_waiting=snap.requests_waiting,
        requests_finished_total=snap.requests_finished_total,
        prompt_tokens_total=snap.prompt_tokens_total,
        generation_tokens_total=snap.generation_tokens_total,
        model_sparsity=figures.model_sparsity,
        layers=_layer_messages(figures),
        ffn_skip_ratio=figures.ffn_skip_ratio,
        ffn_skip=skips,
        ffn_neuron_drop_ratio=figures.ffn_neuron_drop_ratio,
        kernel_layers=figures.kernel_layers,
    )


class SparseServingService(pb_grpc.SparseServingServicer):
    def __init__(self, engine_client, model_name: str, max_model_len: int | None, gate: StreamGate) -> None:
        self.engine = engine_client
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.gate = gate

    async def Generate(self, request, context):
        with observed("Generate") as outcome:
            try:
                params = sampling_params_from(request, self.max_model_len)
            except BadRequest as exc:
                outcome["code"] = grpc.StatusCode.INVALID_ARGUMENT
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            if refusal := self.gate.refusal():
                outcome["code"] = grpc.StatusCode.RESOURCE_EXHAUSTED
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
            deadline = client_deadline(context)
            request_id = request.request_id or f"grpc-{uuid.uuid4().hex}"
            prompt = {"prompt": request.prompt} if request.prompt else {"prompt_token_ids": list(request.prompt_token_ids)}
            finished = False
            try:
                with self.gate.admitted():
                    completion_tokens = 0
                    async for output in self.gate.until_closing(self.engine.generate(prompt, params, request_id)):
                        step = output.outputs[0]
                        completion_tokens += len(step.token_ids)
                        GRPC_GENERATED_TOKENS.inc(len(step.token_ids))
                        finished = output.finished
                        yield pb.GenerateResponse(
                            request_id=request_id, text=step.text, token_ids=list(step.token_ids),
                            finished=finished, finish_reason=step.finish_reason or "",
                            prompt_tokens=len(output.prompt_token_ids or ()), completion_tokens=completion_tokens,
                        )
            except ENDED_BY_CLIENT:
                # The client cancelled or its deadline passed: free the engine's slot.
                outcome["code"] = ended_by_client_code(deadline)
                raise
            except _request_errors() as exc:  # vLLM rejected the request (e.g. prompt too long)
                outcome["code"] = grpc.StatusCode.INVALID_ARGUMENT
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except ShuttingDown:
                outcome["code"] = grpc.StatusCode.UNAVAILABLE
                await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTDOWN_MESSAGE)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # the engine failed (e.g. its process died): never UNKNOWN
                logger.exception("Generate %s failed in the engine", request_id)
                outcome["code"] = grpc.StatusCode.INTERNAL
                await context.abort(grpc.StatusCode.INTERNAL, f"engine error: {type(exc).__name__}: {exc}")
            finally:
                if not finished:
                    await self.engine.abort(request_id)

    async def GetMetrics(self, request, context):
        with observed("GetMetrics"):
            return metrics_snapshot()

    async def WatchMetrics(self, request, context):
        with observed("WatchMetrics") as outcome:
            interval = request.interval_seconds
            if not MIN_WATCH_INTERVAL <= interval <= MAX_WATCH_INTERVAL:
                outcome["code"] = grpc.StatusCode.INVALID_ARGUMENT
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"interval_seconds must be in [{MIN_WATCH_INTERVAL}, {MAX_WATCH_INTERVAL}], got {interval}",
                )
            try:
                while True:
                    yield metrics_snapshot()
                    await asyncio.sleep(interval)
            except ENDED_BY_CLIENT:
                outcome["code"] = grpc.StatusCode.CANCELLED  # the usual way a watch ends
                raise

    async def GetModelInfo(self, request, context):
        with observed("GetModelInfo"):
            figures = current_figures()
            return pb.ModelInfo(
                model=self.model_name,
                quantization=figures.quantization,
                layers=_layer_messages(figures),
                model_sparsity=figures.model_sparsity,
                dense_bytes=sum(row.dense_bytes for row in figures.layers),
                stored_bytes=sum(row.stored_bytes for row in figures.layers),
            )
