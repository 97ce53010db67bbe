"""Which layers take the CPU sparse kernels, and up to which M the direct kernel runs.

Decided from measurements, not reasoning: ``dispatch_table.json`` (beside this file)
holds same-run speed-ups over vLLM's dense CPU GEMM (oneDNN on a prepacked weight) for
the direct kernel and the tiled large-M path, per ISA path, dtype, shape, sparsity and
M, as written by ``python benchmarks/cpu_kernels.py --write-table`` on a host of the
class we serve on. ``VLLM_SPARSE_CPU_DISPATCH_TABLE`` names another table instead (a
host's own, from ``--write-table PATH``; two tables compared end to end with
``benchmarks/cpu_e2e.py --ab-env``). A table merges several runs: each record names
its run, and ``runs`` gives each run's date, command and read bandwidth.

For a layer, the records of its ISA path, dtype and kind of pattern (its own N:M
pattern where measured, else the unstructured ones: a 4:8 layer and a 50% one read
the same bytes but not in the same order), at the highest measured sparsity not
above the layer's (conservative: more zeros only help) and the nearest measured
shape (by weight size, then in_features) give its expected speed-up per M:

* sparse only where the direct kernel beats dense at M = 1 by ``MIN_DECODE_GAIN``
  (decode, what sparsity is for) and loses no more than ``MAX_DECODE_LOSS`` at any
  measured M up to ``DECODE_MAX_M`` (batched decode), or up to the engine's largest
  decode batch where that is smaller (vLLM's ``max_num_seqs``: an engine serving one
  sequence at a time never multiplies more than one decode row); otherwise the layer
  stays dense, as stock vLLM runs it;
* ``max_direct_m``: the largest measured M at which the direct kernel is still at
  least as fast as the tiled path; above it, the tiled path runs. Where the direct
  kernel is ahead at every measured M, the largest included, it runs at any M.

Where a weight can take more than one kernel path (a 2:4 weight: the 2:4 kernel or
the bitmap kernel, the same bytes), the one with the best geometric mean over the
measured M of batched decode (as above, up to 8 or the engine's largest batch) runs;
where another comes within ``NEAR_TIE`` (3%) of that mean, the one of those with the
best geometric mean over every measured M.

With no record for the ISA path or dtype (a host class never measured), layers stay
dense: a sparse path only where a measurement says it wins.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .isa import AVX2, AVX512_BF16

TABLE_PATH = Path(__file__).parent / "dispatch_table.json"
TABLE_ENV = "VLLM_SPARSE_CPU_DISPATCH_TABLE"
# Same-run speed-ups of the dense GEMV (a model's LM head) over vLLM's GEMM, per ISA
# path, shape and M, as written by ``python benchmarks/dense_gemv.py --write-table``;
# ``VLLM_SPARSE_CPU_DENSE_GEMV_TABLE`` names another (one without records keeps every
# head on vLLM's GEMM: the A side of an end-to-end A/B).
DENSE_GEMV_TABLE_PATH = Path(__file__).parent / "dense_gemv_table.json"
DENSE_GEMV_TABLE_ENV = "VLLM_SPARSE_CPU_DENSE_GEMV_TABLE"
# The 2:4 kernels (csrc/gemm_nm24.cpp, gemm_nm24_avx2.cpp), recorded in the table as
# paths of their own, by the ISA code they run on.
NM24 = "avx512_nm24"
NM24_AVX2 = "avx2_nm24"
NM24_PATHS = {AVX512_BF16: NM24, AVX2: NM24_AVX2}
MIN_DECODE_GAIN = 1.05
DECODE_MAX_M = 8
MAX_DECODE_LOSS = 0.05
NEAR_TIE = 0.03
# max_direct_m of a layer whose direct kernel beats the large-M path at every measured M.
EVERY_M = 1 << 30
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


@dataclass(frozen=True)
class CpuChoice:
    isa: str
    max_direct_m: int
    decode_speedup: float  # expected at M = 1, from the table
    worst_speedup: float  # lowest over the measured M of the path the op will run
    worst_m: int
    decode_mean: float = float("nan")  # geometric mean over the measured M of batched decode
    overall_mean: float = float("nan")  # geometric mean over every measured M


def table_path(env: str = TABLE_ENV, committed: Path = TABLE_PATH) -> Path:
    """The dispatch table in force: the one the environment variable ``env`` names,
    else the committed one."""
    named = os.environ.get(env)
    return Path(named).expanduser() if named else committed


def load_table(path: Path | None = None) -> tuple[dict, ...]:
    return _read_table(path or table_path())


@lru_cache(maxsize=8)
def _read_table(path: Path) -> tuple[dict, ...]:
    if path in (TABLE_PATH, DENSE_GEMV_TABLE_PATH) and not path.exists():
        return ()  # an install without the committed table: every layer stays dense
    try:
        records = json.loads(path.read_text())["records"]
        if not all({"isa", "dtype", "shape", "m"} <= set(r) for r in records):
            raise ValueError("a record lacks isa, dtype, shape or m")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"cannot read the dispatch table {path} (as a benchmark's --write-table writes it): "
                         f"{error}") from None
    return tuple(records)


def _shape_distance(record: dict, n: int, k: int) -> tuple[float, float]:
    rn, rk = (int(v) for v in record["shape"].split("x"))
    return abs(math.log(rn * rk) - math.log(n * k)), abs(math.log(rk) - math.log(k))


def _same_kind(records: list[dict], pattern: str | None) -> list[dict]:
    """The records measured on the layer's kind of pattern: its N:M pattern ("2:4",
    "4:8") where there are any, else the unstructured ones ("50%", ...)."""
    if pattern is not None:
        exact = [r for r in records if r.get("pattern") == pattern]
        if exact:
            return exact
    return [r for r in records if str(r.get("pattern", "")).endswith("%")]


def _measured_on(record: dict, host: str | None) -> bool:
    """Was ``record`` measured on host class ``host`` (``isa.host_class``: its bitmap
    kernels' ISA path, "avx512_bf16", "avx512", "avx2", or "avx512_amx" for an AVX-512
    BF16 CPU with AMX)? A kernel path's speed-up depends on the dense
    GEMM of the host it ran on, and one path can serve two classes (the AVX2 2:4
    kernel is also the 2:4 kernel of AVX-512 hosts without BF16). Records without a
    host, and a query without one, match any."""
    return host is None or record.get("host", host) == host


def choose(shape: tuple[int, int], sparsity: float, dtype: torch.dtype, isa: str,
           records: tuple[dict, ...] | None = None, max_batch: int | None = None,
           pattern: str | None = None, host: str | None = None) -> CpuChoice | None:
    """The CPU sparse plan for one weight, or None to keep it dense. ``max_batch``:
    the largest decode batch the engine runs (None: unknown); ``pattern``: the
    weight's N:M pattern ("2:4"), None for unstructured; ``host``: the host class whose
    records count (see ``_measured_on``)."""
    records = load_table() if records is None else records
    dtype_name = DTYPE_NAMES.get(dtype)
    mine = _same_kind([r for r in records if r["isa"] == isa and r["dtype"] == dtype_name and _measured_on(r, host)],
                      pattern)
    measured = sorted({r["sparsity"] for r in mine if r["sparsity"] <= sparsity + 1e-6})
    if not measured:
        return None
    at_sparsity = [r for r in mine if r["sparsity"] == measured[-1]]
    n, k = shape
    nearest = min(at_sparsity, key=lambda r: _shape_distance(r, n, k))["shape"]
    by_m = {r["m"]: r for r in at_sparsity if r["shape"] == nearest}
    if 1 not in by_m or by_m[1].get("direct", 0.0) < MIN_DECODE_GAIN:
        return None
    max_direct = 1
    for m in sorted(by_m):
        if by_m[m].get("direct", 0.0) < by_m[m].get("tiled", 0.0):
            break
        max_direct = m
    else:
        if "direct" in by_m[max(by_m)]:
            max_direct = EVERY_M  # ahead at the largest measured M too: the direct kernel above it as well
    run = {m: r.get("direct" if m <= max_direct else "tiled", 0.0) for m, r in by_m.items()}
    decode_max_m = DECODE_MAX_M if max_batch is None else min(DECODE_MAX_M, max_batch)
    # An unmeasured batch counts as the next measured one above it.
    decode_max_m = min((m for m in run if m >= decode_max_m), default=decode_max_m)
    decode = [speedup for m, speedup in run.items() if m <= decode_max_m]
    if any(speedup < 1.0 - MAX_DECODE_LOSS for speedup in decode):
        return None
    worst_m = min(run, key=run.get)
    return CpuChoice(isa, max_direct, by_m[1]["direct"], run[worst_m], worst_m, _geometric_mean(decode),
                     _geometric_mean(list(run.values())))


def _geometric_mean(speedups: list[float]) -> float:
    return math.exp(sum(math.log(max(speedup, 1e-9)) for speedup in speedups) / len(speedups))


def choose_among(paths: list[str], shape: tuple[int, int], sparsity: float, dtype: torch.dtype,
                 records: tuple[dict, ...] | None = None, max_batch: int | None = None,
                 pattern: str | None = None, host: str | None = None) -> CpuChoice | None:
    """The plan of whichever kernel path in ``paths`` (preferred first, on a tie) has
    the best geometric mean over the measured M of batched decode, or among those
    within ``NEAR_TIE`` of it the best over every measured M; None where none is taken
    (see ``choose``). A 2:4 weight can run on the 2:4 kernel or the bitmap
    kernel of its ISA path (same bytes). Choosing by M = 1 alone had sent Llama-1B's
    down_proj (2048x8192) to the 2:4 kernel, 5% faster at M = 1 and 10% slower at M = 8
    in the 2026-12-04 22:21 table; end to end (compiled, Llama-1B 2:4, one run, engines
    taking turns) the engine with every 2:4 layer on the bitmap kernel decoded 1.04x
    faster at batch 1 and 1.11x at batch 8 (benchmarks/results/cpu_e2e_2of4_interleaved.md).
    (Before the bitmap kernel's interleaved passes the two rules had been even.)"""
    choices = [c for c in (choose(shape, sparsity, dtype, path, records, max_batch, pattern, host) for path in paths)
               if c is not None]
    if not choices:
        return None
    # Within NEAR_TIE of the best decode mean (closer than two runs of the benchmark
    # agree), the path better over every measured M: in the 2026-12-05 14:14 2:4 table
    # the bitmap kernel led 1024x4096 by 0.4% over M = 1..8 and 2048x2048 by 0.05%, and
    # ran 0.95x and 1.03x of oneDNN at M = 16 where the 2:4 kernel ran 1.27x and 1.44x.
    best = max(choices, key=lambda c: c.decode_mean)
    near = [c for c in choices if c.decode_mean >= best.decode_mean * (1.0 - NEAR_TIE)]
    return max(near, key=lambda c: c.overall_mean)


def dense_gemv_max_m(shape: tuple[int, int], isa: str, records: tuple[dict, ...] | None = None) -> int:
    """Activation rows up to which the dense GEMV runs a bf16 weight of ``shape`` on
    ISA path ``isa``; 0: never (vLLM's GEMM throughout). From the records of the
    nearest measured shape (by row length first: the per-row costs set how a GEMV
    streams, then by size): it must beat vLLM's GEMM by ``MIN_DECODE_GAIN`` at M = 1
    and be no slower at every measured M up to the one returned."""
    if records is None:
        records = load_table(table_path(DENSE_GEMV_TABLE_ENV, DENSE_GEMV_TABLE_PATH))
    mine = [r for r in records if r["isa"] == isa]
    if not mine:
        return 0
    n, k = shape
    nearest = min(mine, key=lambda r: _shape_distance(r, n, k)[::-1])["shape"]  # row length, then size
    by_m = {r["m"]: r["speedup"] for r in mine if r["shape"] == nearest}
    if by_m.get(1, 0.0) < MIN_DECODE_GAIN:
        return 0
    max_m = 1
    for m in sorted(by_m):
        if by_m[m] < 1.0:
            break
        max_m = m
    return max_m
