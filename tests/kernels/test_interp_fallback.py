"""If triton was imported before tests/kernels/conftest.py could set TRITON_INTERPRET=1
(a whole-suite run where another directory imports vLLM first), the ``interp`` tests
were deselected in this process: run them here, in a fresh interpreter-mode process."""

import os
import subprocess
import sys
from pathlib import Path

from vllm_sparse.kernels._triton_mode import INTERPRET


def test_interpreter_tests_ran_somewhere():
    if INTERPRET:
        return  # they are collected and run in this very process
    here = Path(__file__).parent
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "interp", str(here)],
                          capture_output=True, text=True, env=env, cwd=here.parent.parent, timeout=900)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
