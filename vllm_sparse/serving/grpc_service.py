"""The SparseServing gRPC service over vLLM's engine client (the same engine the
OpenAI HTTP server uses)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import contextmanager

import grpc

from .prometheus_metrics import GRPC_GENERATED_TOKENS, GRPC_REQUEST_DURATION, GRPC_REQUESTS
from .proto import sparse_serving_pb2 as pb
from .proto import sparse_serving_pb2_grpc as pb_grpc
from .sparse_figures import SparseFigures, current_figures
from .stats import SERVING_STATS, Percentiles, ServingStats

MIN_WATCH_INTERVAL, MAX_WATCH_INTERVAL = 0.1, 3600.0
# How grpc.aio ends a streaming handler whose client went away (cancel, deadline,
# dropped connection): the task is cancelled, or the response generator closed.
_ENDED_BY_CLIENT = (asyncio.CancelledError, GeneratorExit)
DEADLINE_SLACK_SECONDS = 0.1


logger = logging.getLogger("vllm.sparse.grpc")
SHUTDOWN_MESSAGE = "the server is shutting down; retry on another replica"


class BadRequest(ValueError):
    """Client input that cannot be served: answered with INVALID_ARGUMENT."""


class _ShuttingDown(Exception):
    """The server's grace period for in-flight streams is over: UNAVAILABLE."""


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


@contextmanager
def _observed(method: str):
    """Counts a request by its final status code and times it."""
    started = time.perf_counter()
    outcome = {"code": grpc.StatusCode.OK}
    try:
        yield outcome
    except _ENDED_BY_CLIENT:
        if outcome["code"] == grpc.StatusCode.OK:
            outcome["code"] = grpc.StatusCode.CANCELLED
        raise
    except Exception:
        if outcome["code"] == grpc.StatusCode.OK:
            outcome["code"] = grpc.StatusCode.INTERNAL
        raise
    finally:
        GRPC_REQUESTS.labels(method, outcome["code"].name).inc()
        GRPC_REQUEST_DURATION.labels(method).observe(time.perf_counter() - started)


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
    skips = [
        pb.LayerSkip(layer=layer, skipped=s, computed=c, skip_ratio=s / (s + c) if s + c else 0.0)
        for layer, (s, c) in figures.ffn_skip.items()
    ]
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
        kernel_layers=figures.kernel_layers,
    )


class SparseServingService(pb_grpc.SparseServingServicer):
    def __init__(self, engine_client, model_name: str, max_model_len: int | None, max_inflight: int) -> None:
        self.engine = engine_client
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.max_inflight = max_inflight
        self.inflight = 0
        self.closing = asyncio.Event()

    def close_streams(self) -> None:
        """End every stream still generating with UNAVAILABLE (called once the
        shutdown grace period is over)."""
        self.closing.set()

    async def _until_closing(self, stream):
        """The engine's outputs, until ``close_streams``: then _ShuttingDown."""
        outputs = stream.__aiter__()
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            while True:
                step = asyncio.ensure_future(outputs.__anext__())
                done, _ = await asyncio.wait({step, closing}, return_when=asyncio.FIRST_COMPLETED)
                if step not in done:
                    step.cancel()
                    raise _ShuttingDown
                try:
                    yield step.result()
                except StopAsyncIteration:
                    return
        finally:
            closing.cancel()

    async def Generate(self, request, context):
        with _observed("Generate") as outcome:
            try:
                params = sampling_params_from(request, self.max_model_len)
            except BadRequest as exc:
                outcome["code"] = grpc.StatusCode.INVALID_ARGUMENT
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            if self.inflight >= self.max_inflight:
                outcome["code"] = grpc.StatusCode.RESOURCE_EXHAUSTED
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self.inflight} streams in flight, the limit is {self.max_inflight}; retry later",
                )
            # A client whose deadline passes cancels its call at that moment, which can
            # reach us a little before our copy of the deadline expires: allow for it.
            remaining = context.time_remaining()
            deadline = None if remaining is None else time.monotonic() + remaining - DEADLINE_SLACK_SECONDS
            request_id = request.request_id or f"grpc-{uuid.uuid4().hex}"
            prompt = {"prompt": request.prompt} if request.prompt else {"prompt_token_ids": list(request.prompt_token_ids)}
            self.inflight += 1
            finished = False
            try:
                completion_tokens = 0
                async for output in self._until_closing(self.engine.generate(prompt, params, request_id)):
                    step = output.outputs[0]
                    completion_tokens += len(step.token_ids)
                    GRPC_GENERATED_TOKENS.inc(len(step.token_ids))
                    finished = output.finished
                    yield pb.GenerateResponse(
                        request_id=request_id, text=step.text, token_ids=list(step.token_ids),
                        finished=finished, finish_reason=step.finish_reason or "",
                        prompt_tokens=len(output.prompt_token_ids or ()), completion_tokens=completion_tokens,
                    )
            except _ENDED_BY_CLIENT:
                # The client cancelled or its deadline passed: free the engine's slot.
                outcome["code"] = (
                    grpc.StatusCode.DEADLINE_EXCEEDED if deadline is not None and time.monotonic() >= deadline
                    else grpc.StatusCode.CANCELLED
                )
                raise
            except _request_errors() as exc:  # vLLM rejected the request (e.g. prompt too long)
                outcome["code"] = grpc.StatusCode.INVALID_ARGUMENT
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except _ShuttingDown:
                outcome["code"] = grpc.StatusCode.UNAVAILABLE
                await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTDOWN_MESSAGE)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # the engine failed (e.g. its process died): never UNKNOWN
                logger.exception("Generate %s failed in the engine", request_id)
                outcome["code"] = grpc.StatusCode.INTERNAL
                await context.abort(grpc.StatusCode.INTERNAL, f"engine error: {type(exc).__name__}: {exc}")
            finally:
                self.inflight -= 1
                if not finished:
                    await self.engine.abort(request_id)

    async def GetMetrics(self, request, context):
        with _observed("GetMetrics"):
            return metrics_snapshot()

    async def WatchMetrics(self, request, context):
        with _observed("WatchMetrics") as outcome:
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
            except _ENDED_BY_CLIENT:
                outcome["code"] = grpc.StatusCode.CANCELLED  # the usual way a watch ends
                raise

    async def GetModelInfo(self, request, context):
        with _observed("GetModelInfo"):
            figures = current_figures()
            return pb.ModelInfo(
                model=self.model_name,
                quantization=figures.quantization,
                layers=_layer_messages(figures),
                model_sparsity=figures.model_sparsity,
                dense_bytes=sum(row.dense_bytes for row in figures.layers),
                stored_bytes=sum(row.stored_bytes for row in figures.layers),
            )
