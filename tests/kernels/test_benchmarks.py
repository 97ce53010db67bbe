"""The benchmark scripts run end to end in their tiny modes (no GPU here)."""

import json
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


def test_a_table_run_of_a_few_m_keeps_the_other_m(tmp_path, monkeypatch):
    """benchmarks/cpu_kernels.py --write-table merges a run into the dispatch table: a
    run of M = 64 alone replaces that M's record of each case it measured and keeps
    every other record (other M, other patterns) as it was."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import cpu_kernels as bench

    def record(m, pattern, direct):
        return {"isa": "avx512_bf16", "dtype": "bf16", "shape": "64x64", "pattern": pattern, "sparsity": 0.5,
                "m": m, "direct": direct, "tiled": None}

    machine = {"dispatch_host": "avx512_amx", "date": "2026-12-06", "command": "test", "read_gbps": 30.0}
    table = tmp_path / "table.json"
    bench.write_table(table, machine, [record(1, "50%", 1.7), record(64, "50%", 0.5), record(1, "70%", 2.2)])
    bench.write_table(table, machine, [record(64, "50%", 0.9)])
    records = {(r["pattern"], r["m"]): r["direct"] for r in json.loads(table.read_text())["records"]}
    assert records == {("50%", 1): 1.7, ("50%", 64): 0.9, ("70%", 1): 2.2}
