"""Prometheus metrics of the API server process (the gRPC front end). With
``PROMETHEUS_MULTIPROC_DIR`` set they reach vLLM's ``/metrics`` together with the
worker-side figures of ``vllm_sparse.plugin.worker_metrics``."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

GRPC_REQUESTS = Counter(
    "vllm_sparse_grpc_requests_total",
    "gRPC requests handled, by method and final status code.",
    ["method", "code"],
)
GRPC_REQUEST_DURATION = Histogram(
    "vllm_sparse_grpc_request_duration_seconds",
    "Time from receiving a gRPC request to its last response message.",
    ["method"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160),
)
GRPC_GENERATED_TOKENS = Counter(
    "vllm_sparse_grpc_generated_tokens_total",
    "Tokens streamed to gRPC Generate clients.",
)
