#!/usr/bin/env bash
# Installs what is missing, then runs the whole test suite (real vLLM on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# A real Prometheus server scrapes our /metrics in the tests (Debian's package).
if ! command -v prometheus >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    fi
fi
# Optional reference stack for the live byte-compatibility check against
# compressed-tensors 0.14.0.1 (the committed fixtures are checked regardless).
bash scripts/ct014_venv.sh >/dev/null 2>&1 || echo "note: .venv-ct014 could not be built; live compressed-tensors 0.14 check skipped"
# The slowest tests are listed at the end, to keep the run under its time budget.
exec .venv/bin/python -m pytest -q -ra --durations=15 "$@"
