#!/usr/bin/env bash
# Installs what is missing, then runs the whole test suite (real vLLM on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
# Optional reference stack for the live byte-compatibility check against
# compressed-tensors 0.14.0.1 (the committed fixtures are checked regardless), built
# beside the main install.
bash scripts/ct014_venv.sh >/dev/null 2>&1 &
ct014=$!
bash scripts/install.sh
# A real Prometheus server scrapes our /metrics in the tests (Debian's package).
if ! command -v prometheus >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    fi
fi
wait "$ct014" || echo "note: .venv-ct014 could not be built; live compressed-tensors 0.14 check skipped"
# The slowest tests are listed at the end, to keep the run under its time budget.
pytest=(.venv/bin/python -m pytest -q -ra --durations=40)
if [ "$#" -gt 0 ]; then
    exec "${pytest[@]}" "$@"
fi
# Most of the suite's time is spent starting vLLM engines in child processes, much
# of it single-threaded, so two pytest workers (whole modules each) share the two
# cores. Tests marked `alone` compare our speed with vLLM's and would be skewed by
# the other worker: they run afterwards, with the machine to themselves.
status=0
# Modules go to the workers in collection order (tests/conftest.py puts the slow
# ones first), not xdist's default of most tests first. OpenMP threads that wait
# passively: two processes each running OpenMP loops on both cores otherwise spin
# against each other, and an engine generating while the other worker works took
# 5-10x its time alone (SmolLM2, 8 prompts x 32 tokens: 6-9.5 s against 1.4 s passive,
# 0.9 s alone).
OMP_WAIT_POLICY=PASSIVE "${pytest[@]}" -n 2 --dist loadfile --no-loadscope-reorder -m "not alone" || status=$?
"${pytest[@]}" -m alone || status=$((status ? status : $?))
exit "$status"
