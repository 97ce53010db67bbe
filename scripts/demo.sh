#!/usr/bin/env bash
# Installs what is missing, then runs the main job: fetch SmolLM2-135M, prune it 50%
# unstructured (SparseGPT; `--pattern 2:4` for 2:4),
# serve it sparse with vLLM's OpenAI server, send a request, print the answer and
# the per-layer table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/vllm-sparse demo "$@"
