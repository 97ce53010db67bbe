"""Every kernel compiles for Hopper (sm_90) at the block sizes it uses, no GPU needed,
within an H100's shared memory per block. Runs in a subprocess: this test process
imported triton in interpreter mode, which cannot compile."""

import json
import os
import subprocess
import sys

from vllm_sparse.kernels.compile_check import H100_MAX_SHARED_PER_BLOCK


def test_all_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-m", "vllm_sparse.kernels.compile_check", "--json"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.stdout.strip(), proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    failures = [r for r in results if not r["ok"]]
    assert not failures, json.dumps(failures, indent=1)[:5000]
    kernels = {r["kernel"].split()[0] for r in results}
    assert kernels == {"nm_matmul", "bitmap_gemm", "skip_mlp", "neuron_mlp", "unpack"}
    assert len(results) >= 30
    assert all(0 < r["shared_bytes"] <= H100_MAX_SHARED_PER_BLOCK for r in results)
    assert proc.returncode == 0
