#!/usr/bin/env bash
# Regenerates the committed gRPC code from vllm_sparse/serving/proto/*.proto
# (tests/serving/test_proto_current.py fails when they are stale).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. \
    vllm_sparse/serving/proto/sparse_serving.proto
