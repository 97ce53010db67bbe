#!/usr/bin/env bash
# Create .venv-ct014: an isolated venv with compressed-tensors 0.14.0.1, the last
# release that still writes and reads the sparse-bitmask / sparse-24-bitmask
# formats (removed in 0.15.0). It is only used to (re)generate and cross-check the
# reference fixtures in tests/checkpoint/fixtures/ct014; the project itself runs
# on compressed-tensors 0.17 in .venv.
#
# Stack: compressed-tensors 0.14.0.1 requires transformers<5 (it imports
# transformers.file_utils, gone in 5.x), pydantic>=2, loguru and torch>=1.7;
# it also imports psutil (offload/load.py) without declaring it.
# torch 2.13.0+cpu is taken from pip's local wheel dir (/opt/wheels), so only
# the small pure-Python packages come from PyPI.
#
# Usage: scripts/ct014_venv.sh [VENV_DIR]   (default: <repo>/.venv-ct014)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${1:-$repo/.venv-ct014}"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet \
    "torch==2.13.0" \
    "compressed-tensors==0.14.0.1" \
    "transformers>=4.45,<5" \
    safetensors numpy psutil tqdm
"$venv/bin/python" - <<'PY'
import compressed_tensors, torch, transformers
from compressed_tensors.compressors.sparse_compressors import (  # noqa: F401
    BitmaskCompressor, Sparse24BitMaskCompressor,
)
print(f"compressed-tensors {compressed_tensors.__version__}, torch {torch.__version__}, "
      f"transformers {transformers.__version__}")
assert compressed_tensors.__version__ == "0.14.0.1", compressed_tensors.__version__
PY
