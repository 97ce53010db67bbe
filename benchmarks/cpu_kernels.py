"""CPU sparse kernels against the dense GEMM vLLM's CPU worker runs for unquantized
layers (oneDNN on a prepacked weight, ``vllm._custom_ops.onednn_mm``; torch's
``F.linear`` where vLLM is absent), side by side in one process, plus a
read-bandwidth test.

    python benchmarks/cpu_kernels.py                       # full run (~20 min on 2 cores)
    python benchmarks/cpu_kernels.py --quick               # a few shapes and M
    python benchmarks/cpu_kernels.py --write-table         # also refresh the dispatcher's table
    python benchmarks/cpu_kernels.py --write-table my.json # this host's own table (VLLM_SPARSE_CPU_DISPATCH_TABLE=my.json)
    VLLM_SPARSE_CPU_ISA=avx2 python benchmarks/cpu_kernels.py ...   (or --isa avx2,avx512_bf16)

Each case: a random weight [out, in] pruned to the pattern (2:4 and 4:8 by magnitude
within groups, unstructured by random mask), stored bf16 and packed as the plugin packs it at load
(the streamed tensors on 2 MiB pages). Every kernel is checked
against the fp32 torch reference first. Timing: calls of dense and sparse alternate
(so a drift in machine speed weighs on both), each over enough copies of the weight
that the set is larger than the last-level cache (every layer of a real model comes
cold from memory, since the rest of the model streamed through since its last call);
the median of each side is kept. ``speedup`` = dense time / sparse time.
``gbps`` = bytes of the compressed weight / sparse time; ``read_gbps`` = a read of as
many bytes from memory (8 prefetched streams per thread, ``cpu_stream_read``) taking
turns with the two at M = 1, for every M of the case (the machine's: a 512 MiB read
before and after the run). Results: Markdown + JSON ({"machine", "records"}).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vllm_sparse.kernels.cpu import host_class  # noqa: E402

host_class.enter()  # before vLLM: it may answer torch's CPU probes as a smaller host
from vllm_sparse.kernels import cpu as cpu_kernels  # noqa: E402
from vllm_sparse.kernels.cpu import dispatch, isa, layout24  # noqa: E402

# The 2:4 kernels, beside the ISA paths of the bitmap kernel: NM24_OFFSET + their ISA code.
NM24_OFFSET = 100


def is_nm24(code: int) -> bool:
    return code >= NM24_OFFSET


def pack_for(code: int):
    """How the plugin packs a layer for this kernel at load (huge pages included)."""
    return pack_24 if is_nm24(code) else pack_bitmap


def pack_24(weight: torch.Tensor):
    return layout24.Cpu24Layout.pack(weight).on_huge_pages()


def pack_bitmap(weight: torch.Tensor):
    return cpu_kernels.CpuSparseLayout.pack(weight).on_huge_pages()

LLAMA8B = [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)]
LLAMA1B = [(3072, 2048), (2048, 2048), (16384, 2048), (2048, 8192)]  # fused qkv, o, gate_up, down
SMOLLM2 = [(960, 576), (576, 576), (3072, 576), (576, 1536)]  # as vLLM fuses them
MS = [1, 2, 4, 8, 16, 64, 512]
PATTERNS = ["2:4", "4:8", "40%", "50%", "70%", "90%"]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def _last_level_cache_bytes() -> int:
    """The largest CPU cache sysfs reports (0 where it reports none)."""
    return max((size for _, size in isa.unified_caches()), default=0)


# The weight copies each side cycles through: twice the last-level cache, at least
# 96 MiB (a Xeon VM here reports a 300 MiB L3: 96 MiB of copies stayed in it).
CACHE_SPAN_BYTES = max(96 << 20, 2 * _last_level_cache_bytes())


def prune(w: torch.Tensor, pattern: str, gen: torch.Generator) -> tuple[torch.Tensor, float]:
    out, k = w.shape
    if ":" in pattern:
        n, m = (int(v) for v in pattern.split(":"))
        groups = w.abs().view(out, k // m, m)
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(n, -1).indices, True)
        return w * keep.view(out, k), 1 - n / m
    sparsity = float(pattern.rstrip("%")) / 100
    return w * (torch.rand(w.shape, generator=gen) >= sparsity), sparsity


def dense_linear(weight: torch.Tensor, x: torch.Tensor):
    """The dense baseline: what vLLM's CPU worker runs for an unquantized layer (oneDNN
    with the weight prepacked, ``vllm._custom_ops.onednn_mm``) when vLLM is installed,
    else torch's ``F.linear``; ``F.linear`` too where oneDNN refuses the weight, as
    vLLM falls back (bf16 on an AVX2-only host)."""
    if BASELINE != "F.linear":  # vLLM with oneDNN here (which may still refuse this weight)
        from vllm import _custom_ops as ops

        try:
            handler = ops.create_onednn_mm(weight.t(), 32)
        except RuntimeError:
            pass
        else:
            return lambda: ops.onednn_mm(handler, x, None)
    return lambda: F.linear(x, weight)


def _baseline() -> str:
    """The dense GEMM vLLM runs for a bf16 layer on this host (class)."""
    try:
        from vllm import _custom_ops as ops
    except ImportError:
        return "F.linear"
    if not getattr(ops, "_supports_onednn", False):
        return "F.linear"
    try:
        ops.create_onednn_mm(torch.zeros(64, 64, dtype=torch.bfloat16).t(), 32)
    except RuntimeError:
        return "F.linear (oneDNN refuses bf16)"
    return "onednn_mm"


BASELINE = _baseline()


TIMED_CALLS = 200  # per side, at most


def time_pair(dense_fns, sparse_fns, min_reps: int, budget_s: float, read_fns=None) -> tuple[float, ...]:
    """Median dense and sparse times, calls alternating; with ``read_fns``, a third
    median, of plain reads taking turns with the two (the memory's speed at the same
    moments: it drifts by tens of percent within minutes on a shared machine)."""
    sides = [dense_fns, sparse_fns] + ([read_fns] if read_fns else [])
    for fns in sides:
        for f in fns[:2]:
            f()
    times = [[] for _ in sides]
    start = time.perf_counter()
    i = 0
    while i < min_reps or (time.perf_counter() - start < budget_s and i < TIMED_CALLS):
        for fns, spent in zip(sides, times):
            t = time.perf_counter()
            fns[i % len(fns)]()
            spent.append(time.perf_counter() - t)
        i += 1
    return tuple(statistics.median(spent) for spent in times)


@functools.cache
def read_buffer() -> torch.Tensor:
    """512 MiB, initialised (a fresh torch.empty reads the zero page), kept for the run."""
    return torch.ones(512 << 20 >> 2)


def cold_reads(nbytes: int) -> list:
    """Reads of `nbytes` from memory (``cpu_stream_read``), each of its own slice of the
    read buffer, as many as time_pair makes calls, so that each is read once, cold."""
    big = read_buffer()
    n = max(1, nbytes // 4)
    slices = [big[o:o + n] for o in range(0, big.numel() - n + 1, n)][:TIMED_CALLS]
    return [lambda piece=piece: torch.ops.vllm_sparse.cpu_stream_read(piece) for piece in slices]


def read_bandwidth() -> float:
    """Best of 5 reads of 512 MiB, each thread reading its share as 8 interleaved
    streams, each prefetched 512 bytes ahead (``cpu_stream_read``): what a GEMV that
    reads several rows at once can get. (A single-stream read such as ``torch.sum``
    measured ~40% less here, below what oneDNN's dense GEMV reaches.)"""
    big = read_buffer()
    torch.ops.vllm_sparse.cpu_stream_read(big)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        torch.ops.vllm_sparse.cpu_stream_read(big)
        times.append(time.perf_counter() - t)
    return big.numel() * 4 / min(times) / 1e9


def run_kernel(layout, x, code, max_direct_m):
    if is_nm24(code):
        return layout24.linear(x, layout, None, max_direct_m, code - NM24_OFFSET)
    return cpu_kernels.linear(x, layout, None, code, max_direct_m)


def check(layout, dense_w, x, code, max_direct_m):
    y = run_kernel(layout, x, code, max_direct_m).float()
    ref = x.float() @ dense_w.float().t()
    tol = 2e-2 * ref.abs().max().item() + 1e-3
    err = (y - ref).abs().max().item()
    if not err <= tol:
        raise AssertionError(f"kernel disagrees with the torch reference: max |err| {err:.3g} > {tol:.3g}")


def run_case(shape, pattern, dtype, ms, codes, gen, budget_s, log):
    out, k = shape
    dense_w, sparsity = prune(torch.randn(out, k, generator=gen), pattern, gen)
    dense_w = dense_w.to(dtype)
    copies = max(2, -(-CACHE_SPAN_BYTES // (dense_w.numel() * dense_w.element_size())))
    dense_copies = [dense_w.clone() for _ in range(copies)]
    codes = list(codes)
    if pattern == "2:4" and layout24.eligible(shape, dtype):
        # The 2:4 kernel each measured ISA path would run (AVX-512 gather, AVX2).
        codes += sorted({NM24_OFFSET + nm for nm in map(layout24.kernel_isa, codes) if nm is not None})
    layouts = {}
    for code in codes:
        pack = pack_for(code)
        if pack not in layouts:
            layouts[pack] = [pack(dense_w) for _ in range(copies)]
    records = []
    case_read_gbps = {}  # per kernel: a read of its compressed bytes, timed beside it at M = 1
    for m in ms:
        x = torch.randn(m, k, generator=gen).to(dtype)
        dense_fns = [dense_linear(w, x) for w in dense_copies]
        for code in codes:
            sparse_copies = layouts[pack_for(code)]
            layout = sparse_copies[0]
            # Where the large-M path has no GEMM of its own (every ISA path but AVX-512 BF16
            # on bf16) it runs torch's: on a host without bf16 dot products the direct
            # kernel, multiplying only the nonzeros, may beat it at any M.
            own_tile_gemm = dtype == torch.bfloat16 and code % NM24_OFFSET == isa.AVX512_BF16
            amx = own_tile_gemm and isa.amx_ready()
            row = {"shape": f"{out}x{k}", "m": m, "pattern": pattern, "sparsity": sparsity,
                   "dtype": [n for n, d in DTYPES.items() if d == dtype][0],
                   "isa": dispatch.NM24_PATHS[code - NM24_OFFSET] if is_nm24(code) else isa.NAMES[code]}
            # Direct kernel (the tiled path is not the direct path's fallback below 16).
            for name, max_direct in (("direct", 1 << 30), ("tiled", 0)):
                if name == "direct" and m > 128 and own_tile_gemm:
                    continue  # compute-bound there by construction; the tiled path's own GEMMs serve it
                if name == "tiled" and m < (2 if own_tile_gemm and amx else 8):
                    continue  # on AMX the tile unit's large-M path may win from two rows
                check(layout, dense_w, x, code, max_direct)
                fns = [lambda lay=lay: run_kernel(lay, x, code, max_direct) for lay in sparse_copies]
                # At M = 1 (bound by memory) a read of the compressed bytes takes turns
                # with the two: the limit at the same moments, for this case's every M.
                reads = cold_reads(layout.stored_bytes) if m == 1 and name == "direct" else None
                td, ts, *tr = time_pair(dense_fns, fns, 5, budget_s, reads)
                if tr:
                    case_read_gbps[code] = round(layout.stored_bytes / tr[0] / 1e9, 2)
                row[name] = round(td / ts, 3)
                row[f"{name}_ms"] = round(ts * 1e3, 4)
                row["dense_ms"] = round(td * 1e3, 4)
                if name == "direct":
                    row["gbps"] = round(layout.stored_bytes / ts / 1e9, 2)
            if code in case_read_gbps:
                row["read_gbps"] = case_read_gbps[code]
            row["dense_gbps"] = round(dense_w.numel() * dense_w.element_size() / (row["dense_ms"] / 1e3) / 1e9, 2)
            row["stored_bytes"] = layout.stored_bytes
            row["dense_bytes"] = dense_w.numel() * dense_w.element_size()
            records.append(row)
            log(row)
    return records


def annotate(records, read_gbps):
    """Add what the dispatcher would do with each record's case, from this run's
    records (``dispatch.choose_among``, as ``dispatcher.cpu_plan`` does from the
    committed table): a 2:4 weight may run on the 2:4 kernel or the bitmap kernel of
    the same ISA path, whichever has the better geometric mean over the M of batched
    decode, or within 3% of it is better over every measured M."""
    # Each bitmap path of the run with the 2:4 kernel its host runs beside it (an
    # AVX-512 host without BF16 runs the AVX2 one), as dispatcher._cpu_path_names pairs them.
    bitmap_to_nm24 = {}
    for name in {r["isa"] for r in records if r["isa"] in isa.CODES}:
        nm24_isa = layout24.kernel_isa(isa.CODES[name])
        if nm24_isa is not None:
            bitmap_to_nm24[name] = dispatch.NM24_PATHS[nm24_isa]
    nm24_to_bitmap = {nm24: bitmap for bitmap, nm24 in bitmap_to_nm24.items()}
    for r in records:
        r.setdefault("read_gbps", round(read_gbps, 2))  # the run's, where the case had no M = 1
        n, k = (int(v) for v in r["shape"].split("x"))
        pattern = r["pattern"] if ":" in r["pattern"] else None
        paths = [r["isa"]]
        if pattern == "2:4":
            bitmap = nm24_to_bitmap.get(r["isa"], r["isa"])
            paths = [bitmap_to_nm24[bitmap], bitmap] if bitmap in bitmap_to_nm24 else [bitmap]
        choice = dispatch.choose_among(paths, (n, k), r["sparsity"], DTYPES[r["dtype"]], tuple(records),
                                       pattern=pattern)
        if choice is None or choice.isa != r["isa"]:
            r["path"], r["chosen"] = "dense" if choice is None else "other 2:4 kernel", False
        else:
            r["path"] = "direct" if r["m"] <= choice.max_direct_m else "tiled"
            r["chosen"] = True
        r["speedup"] = r[r["path"]] if r["chosen"] else r.get("direct", r.get("tiled"))
        r["speedup_of_path_run"] = r[r["path"]] if r["chosen"] else 1.0


def _times(speedup: float | None) -> str:
    return "-" if speedup is None else f"{speedup:.2f}x"


def markdown(machine, records) -> str:
    lines = [
        f"# CPU sparse kernels vs dense ({machine['baseline']})",
        "",
        f"Machine: {machine['cpu']}, {machine['threads']} threads, flags {' '.join(machine['flags'])}; "
        f"torch {machine['torch']}; {machine['date']}. Read bandwidth (512 MiB, before and after the run): "
        f"{machine['read_gbps']:.1f} GB/s. Command: `{machine['command']}`.",
        "",
        *([f"Dispatch host class **{machine['dispatch_host']}**: the large-M path (tiled) multiplies on AMX tiles "
           "(csrc/gemm_amx_bf16.cpp) and is measured from M = 2.", ""]
          if machine.get("dispatch_host") == isa.AMX_HOST else []),
        *([f"Run as an **{machine['host_class']}** host: the dense baseline is the one vLLM runs on that host "
           "class (its kernel library, oneDNN and ATen capped to that ISA: vllm_sparse/kernels/cpu/host_class.py); clock, "
           "caches and memory are this machine's.", ""]
          if machine.get("host_class", "native") != "native" else []),
        "speedup = dense time / sparse time, same run, calls alternating; direct = the sparse kernel (the 2:4 "
        "layout on AVX-512 BF16 from M = 4: the kernel with the weight rows in the lanes), "
        "tiled = the large-M path (AVX-512 BF16: weight rows decompressed into L2 a tile at a time and multiplied "
        "by our own vdpbf16ps GEMMs, row tiles or panels; elsewhere tiles into torch's dense GEMM, bf16 and fp16 "
        "tiles widened to fp32 for it); a dash: not measured at that M; GB/s = compressed bytes / direct time; "
        "% of read = GB/s over a read of as many bytes from memory timed alternating with the two at M = 1; "
        "path = what the dispatcher runs for this layer and M (dense: the layer stays dense; other 2:4 kernel: a "
        "2:4 layer runs on the other kernel of this ISA path, faster over M = 1..8, or within 3% there and "
        "faster over every M).",
        "",
        "| isa | dtype | shape | pattern | M | dense ms | direct | tiled | GB/s | % of read | path |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        gbps = r.get("gbps")
        share = "" if gbps is None else f"{100 * gbps / r['read_gbps']:.0f}%"
        lines.append(
            f"| {r['isa']} | {r['dtype']} | {r['shape']} | {r['pattern']} | {r['m']} | {r['dense_ms']:.3f} | "
            f"{_times(r.get('direct'))} | {_times(r.get('tiled'))} | "
            f"{'' if gbps is None else f'{gbps:.1f}'} | "
            f"{share} | {r['path']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few shapes, patterns and M")
    ap.add_argument("--isa", default=None, help="comma-separated ISA paths (default: the best, and avx2 below it; "
                                                 "with --host-class, that class's path)")
    ap.add_argument("--host-class", default=host_class.current(), choices=[host_class.NATIVE, *host_class.CAPS],
                    help="measure as an AVX2-only host or an AVX-512 one without BF16 would run: that class's "
                         "dense baseline (vllm_sparse/kernels/cpu/host_class.py); the process restarts itself as one")
    ap.add_argument("--dtypes", default="bf16")
    ap.add_argument("--patterns", default=",".join(PATTERNS))
    ap.add_argument("--shapes", default="llama8b,llama1b,smollm2")
    ap.add_argument("--ms", default=",".join(map(str, MS)), help="activation rows to measure (comma-separated)")
    ap.add_argument("--budget", type=float, default=0.4, help="seconds of timing per case and side (min 5 calls)")
    ap.add_argument("--out", default="benchmarks/results/cpu_kernels")
    ap.add_argument("--write-table", nargs="?", const=dispatch.TABLE_PATH, type=Path, metavar="PATH",
                    help=f"write the dispatcher's table: the committed {dispatch.TABLE_PATH.name}, or PATH (a host's "
                         f"own, served with {dispatch.TABLE_ENV}=PATH); records of cases not measured are kept")
    args = ap.parse_args()
    host_class.reexec(args.host_class)
    if not cpu_kernels.build.load():
        raise SystemExit(f"CPU kernels unavailable: {cpu_kernels.build.load_error()}")
    best = isa.best()
    if args.isa:
        codes = [isa.CODES[name] for name in args.isa.split(",")]
    elif args.host_class != host_class.NATIVE:
        codes = [isa.CODES[args.host_class]]
    else:
        codes = [best] + ([isa.AVX2] if best > isa.AVX2 else [])
    families = {"llama8b": LLAMA8B, "llama1b": LLAMA1B, "smollm2": SMOLLM2}
    shapes = [shape for name in args.shapes.split(",") for shape in families[name]]
    ms, patterns = [int(m) for m in args.ms.split(",")], args.patterns.split(",")
    if args.quick:
        shapes, ms, patterns = [(14336, 4096), (3072, 576)], [1, 8, 64], ["2:4", "70%"]
    gen = torch.Generator().manual_seed(0)
    read_gbps = read_bandwidth()
    records = []
    t0 = time.time()

    def log(row):
        print(f"[{time.time() - t0:6.0f}s] {row['isa']:>11} {row['dtype']} {row['shape']:>10} {row['pattern']:>4} "
              f"M={row['m']:<3} direct {row.get('direct', float('nan')):.2f}x tiled {row.get('tiled', float('nan')):.2f}x "
              f"{row.get('gbps', float('nan')):.1f} GB/s", flush=True)

    for dtype_name in args.dtypes.split(","):
        for shape in shapes:
            for pattern in patterns:
                records += run_case(shape, pattern, DTYPES[dtype_name], ms, codes, gen, args.budget, log)
    read_after = read_bandwidth()
    machine = {**isa.cpu_description(), "threads": torch.get_num_threads(), "torch": torch.__version__,
               "date": datetime.date.today().isoformat(), "read_gbps": round((read_gbps + read_after) / 2, 2),
               "best_isa": isa.NAMES[best], "host_class": args.host_class, "baseline": BASELINE,
               "dispatch_host": isa.host_class(best) if args.host_class == host_class.NATIVE else args.host_class,
               "command": "python " + " ".join(sys.argv)}
    annotate(records, machine["read_gbps"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "records": records}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(machine, records))
    print(f"wrote {out.with_suffix('.md')} and .json")
    if args.write_table:
        write_table(args.write_table, machine, records)


def write_table(target: Path, machine: dict, records: list[dict]) -> None:
    """The dispatcher's table: this run's records replace those of the cases it
    measured (host class, ISA path, dtype, shape, pattern, M); the others are kept, so
    a run of a few M (``--ms 64,512``) leaves the table's other M as they were. Each
    record names its run (``run``), and ``runs`` holds every named run's date, command and read
    bandwidth: a table merges runs that may be hours and code changes apart."""
    keep = ("host", "isa", "dtype", "shape", "pattern", "sparsity", "m", "direct", "tiled")
    # The host class measured, as the dispatcher asks for it (isa.host_class): named by
    # its bitmap kernels' ISA path (this machine's best, or the class emulated), or
    # avx512_amx where the large-M path runs on AMX.
    host = machine["dispatch_host"]

    def case(r):
        return r.get("host"), r["isa"], r["dtype"], r["shape"], r["pattern"], r["m"]

    run_id = datetime.datetime.now().isoformat(timespec="minutes")
    records = [{**r, "host": host} for r in records]
    measured = {case(r) for r in records}
    old = json.loads(target.read_text()) if target.exists() else {"records": []}
    kept = [r for r in old["records"] if case(r) not in measured]
    runs = {run: info for run, info in old.get("runs", {}).items() if any(r.get("run") == run for r in kept)}
    runs[run_id] = {k: machine[k] for k in ("date", "command", "read_gbps")}
    table = {"machine": machine, "runs": runs,
             "records": kept + [{**{k: r[k] for k in keep if k in r}, "run": run_id} for r in records]}
    target.write_text(json.dumps(table, indent=0) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    main()
