"""The benchmark scripts run end to end in their tiny modes (no GPU here)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.interp
def test_kernels_benchmark_dry_run(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--dry-run", "--shapes", "40x72",
         "--ms", "1,5", "--dtypes", "float16,bfloat16", "--sparsities", "0.7", "--reps", "1",
         "--out-dir", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (report,) = tmp_path.glob("kernels_dryrun_cpu_*.md")
    text = report.read_text()
    assert "triton 3." in text and "copy bandwidth" in text
    for kernel in ("dense torch.matmul", "ours N:M kernel", "ours bitmap kernel", "ours unpack+matmul",
                   "ours dispatch"):
        assert f"| {kernel} |" in text
    # 2 dtypes x 2 M x (dense + 2:4 (4) + 4:8 (4) + 70% (4)) rows, all checked and timed.
    table = [ln for ln in text.splitlines() if ln.startswith("| float16") or ln.startswith("| bfloat16")]
    data = [ln for ln in table if ln.count("|") == 12]
    assert len(data) == 2 * 2 * 13
    assert all(ln.rstrip().endswith("|  |") for ln in data), "a variant failed its correctness check"


def test_cpu_linear_quick(tmp_path):
    out = tmp_path / "cpu.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cpu_linear.py"), "--quick", "--reps", "10",
                           "--out", str(out)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "| float32 | 192x576 | 70% | 1 | dense F.linear |" in text
    assert "CSR torch.sparse.mm" in text
