"""Sparse linear kernels vs dense torch.matmul (and torch semi-structured 2:4) on a GPU.

    python benchmarks/kernels.py                 # full run on CUDA (Llama-3-8B, Qwen2.5-7B shapes)
    python benchmarks/kernels.py --dry-run       # tiny shapes; on CPU under the Triton interpreter

Needs torch + triton only (no vLLM). For every (shape, M, dtype) it
1. builds a random weight, prunes it (2:4, 4:8, unstructured at 50/70/90%),
2. checks every variant against an fp32 reference before timing it,
3. times each variant: median of CUDA-event timings (L2 flushed before each call,
   so decode reads weights from HBM, not from a warm 50 MB L2),
4. reports speedup vs dense in the same run, achieved GB/s (weight bytes as stored +
   activations + output) and that as a share of the device-to-device copy bandwidth
   measured in the same run, plus the fastest variant per cell (to tune the
   dispatcher's thresholds in vllm_sparse/kernels/custom_ops.py and dispatcher.py).
Writes a Markdown table to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import time

# (out_features, in_features) of the linear layers: Llama-3-8B q/o, k/v, gate/up, down;
# Qwen2.5-7B q/o, k/v, gate/up, down.
FULL_SHAPES = [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336),
               (3584, 3584), (512, 3584), (18944, 3584), (3584, 18944)]
FULL_MS = [1, 2, 4, 8, 16, 32, 64, 256, 2048, 8192]
DRY_SHAPES = [(96, 160), (40, 200)]
DRY_MS = [1, 8, 40]


def _parse_shapes(text):
    return [tuple(int(v) for v in s.split("x")) for s in text.split(",")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes, few reps; runs on CPU (interpreter)")
    parser.add_argument("--shapes", type=_parse_shapes, default=None, help="e.g. 4096x4096,14336x4096 (out x in)")
    parser.add_argument("--ms", type=lambda s: [int(v) for v in s.split(",")], default=None)
    parser.add_argument("--dtypes", default="float16,bfloat16")
    parser.add_argument("--patterns", default="2:4,4:8")
    parser.add_argument("--sparsities", type=lambda s: [float(v) for v in s.split(",")], default=[0.5, 0.7, 0.9])
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--bitmap-direct-max-m", type=int, default=256,
                        help="skip the direct bitmap kernel above this M (it is meant for decode)")
    parser.add_argument("--no-flush", action="store_true", help="do not flush L2 between timed calls")
    parser.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)

    import torch

    on_gpu = torch.cuda.is_available()
    if not on_gpu and not args.dry_run:
        print("no CUDA device: only --dry-run can run here (under the Triton interpreter)", file=sys.stderr)
        return 2
    if not on_gpu and "triton" not in sys.modules:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede the first triton import
    shapes = args.shapes or (DRY_SHAPES if args.dry_run else FULL_SHAPES)
    ms = args.ms or (DRY_MS if args.dry_run else FULL_MS)
    reps = args.reps or (3 if args.dry_run else 50)
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    if args.dry_run and args.dtypes == "float16,bfloat16":
        dtypes = [torch.float16, torch.bfloat16]
    bench = Bench(torch.device("cuda" if on_gpu else "cpu"), reps, flush=not args.no_flush and on_gpu)
    rows = bench.run(shapes, ms, dtypes, args.patterns.split(","), args.sparsities, args.bitmap_direct_max_m)
    text = bench.markdown(rows, dry_run=args.dry_run)
    os.makedirs(args.out_dir, exist_ok=True)
    tag = "dryrun_cpu" if not on_gpu else torch.cuda.get_device_name().replace(" ", "_").replace("/", "_")
    path = os.path.join(args.out_dir, f"kernels_{tag}_{datetime.date.today().isoformat()}.md")
    with open(path, "w") as fh:
        fh.write(text)
    print(text)
    print(f"wrote {path}")
    bad = [r for r in rows if r["error"]]
    return 1 if bad else 0


class Bench:
    def __init__(self, device, reps, flush):
        import torch

        self.torch = torch
        self.device = device
        self.reps = reps
        self.flush = flush
        self._flush_buf = torch.empty(256 * 2**20, dtype=torch.uint8, device=device) if flush else None
        self.copy_gbps = self._copy_bandwidth()

    # ---- timing --------------------------------------------------------------
    def _time(self, fn) -> float:
        """Median seconds per call."""
        torch = self.torch
        for _ in range(2 if self.device.type == "cpu" else 5):
            fn()
        samples = []
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            for _ in range(self.reps):
                if self._flush_buf is not None:
                    self._flush_buf.zero_()
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / 1e3)
        else:
            for _ in range(self.reps):
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    def _copy_bandwidth(self) -> float:
        """Device-to-device copy, GB/s (read + write bytes)."""
        torch = self.torch
        n = (1024 if self.device.type == "cuda" else 32) * 2**20
        src = torch.empty(n, dtype=torch.uint8, device=self.device).fill_(1)
        dst = torch.empty_like(src)
        t = self._time(lambda: dst.copy_(src))
        return 2 * n / t / 1e9

    # ---- the matrix of cases -------------------------------------------------
    def run(self, shapes, ms, dtypes, patterns, sparsities, bitmap_direct_max_m):
        torch = self.torch
        import torch.nn.functional as F

        from vllm_sparse.kernels import (
            TORCH_SEMI_STRUCTURED, TRITON_BITMAP, TRITON_NM, NMPattern, analyze_weight, pack_for_path, sparse_linear,
        )
        from vllm_sparse.kernels.dispatcher import semi_structured_supported
        from vllm_sparse.kernels.triton_bitmap_gemv import bitmap_gemm
        from vllm_sparse.kernels.triton_nm_matmul import nm_matmul
        from vllm_sparse.kernels.triton_unpack import unpack

        rows = []
        gen = torch.Generator(device=self.device).manual_seed(0)
        for dtype in dtypes:
            for (out_f, in_f) in shapes:
                w = (torch.randn(out_f, in_f, generator=gen, device=self.device) * in_f**-0.5).to(dtype)
                weights = []  # (label, dense pruned weight, [(variant, stored_bytes, fn(x))])
                weights.append(("dense", w, [("dense torch.matmul", out_f * in_f * dtype.itemsize,
                                              lambda x, w=w: torch.matmul(x, w.t()))]))
                for p in patterns:
                    pat = NMPattern.parse(p)
                    if in_f % pat.m:
                        continue
                    wp = _prune_nm(w, pat.n, pat.m)
                    a = analyze_weight(wp)
                    packed = pack_for_path(wp, a, TRITON_NM)
                    lay = packed.layout
                    variants = [
                        ("dense torch.matmul", out_f * in_f * dtype.itemsize, lambda x, wp=wp: torch.matmul(x, wp.t())),
                        ("ours N:M kernel", lay.stored_bytes,
                         lambda x, lay=lay: nm_matmul(x, lay.values, lay.bitmap, lay.pattern.n, lay.pattern.m,
                                                      lay.shape[1])),
                        ("ours unpack+matmul", lay.stored_bytes,
                         lambda x, lay=lay: torch.matmul(x, unpack(1, lay.values, lay.bitmap, None, lay.shape[1],
                                                                   lay.pattern.n, lay.pattern.m).t())),
                        ("ours dispatch", lay.stored_bytes, lambda x, packed=packed: sparse_linear(x, packed)),
                    ]
                    if p == "2:4" and semi_structured_supported((out_f, in_f), dtype, self.device):
                        semi = pack_for_path(wp, a, TORCH_SEMI_STRUCTURED)
                        variants.append(("torch semi-structured", semi.stored_bytes,
                                         lambda x, s=semi.dense: F.linear(x, s)))
                    weights.append((p, wp, variants))
                for s in sparsities:
                    ws = _prune_random(w, s, gen)
                    packed = pack_for_path(ws, analyze_weight(ws), TRITON_BITMAP)
                    lay = packed.layout
                    variants = [
                        ("dense torch.matmul", out_f * in_f * dtype.itemsize, lambda x, ws=ws: torch.matmul(x, ws.t())),
                        ("ours bitmap kernel", lay.stored_bytes,
                         lambda x, lay=lay: bitmap_gemm(x, lay.values, lay.bitmap, lay.tile_offsets, lay.tile_k,
                                                        lay.shape[1])),
                        ("ours unpack+matmul", lay.stored_bytes,
                         lambda x, lay=lay: torch.matmul(x, unpack(2, lay.values, lay.bitmap, lay.tile_offsets,
                                                                   lay.shape[1], tile_k=lay.tile_k).t())),
                        ("ours dispatch", lay.stored_bytes, lambda x, packed=packed: sparse_linear(x, packed)),
                    ]
                    weights.append((f"unstructured {s:.0%}", ws, variants))
                for m in ms:
                    x = torch.randn(m, in_f, generator=gen, device=self.device).to(dtype)
                    act_bytes = (m * in_f + m * out_f) * dtype.itemsize
                    for label, wd, variants in weights:
                        ref = F.linear(x.float(), wd.float())
                        dense_t = None
                        for name, stored, fn in variants:
                            if name == "ours bitmap kernel" and m > bitmap_direct_max_m:
                                continue
                            row = dict(dtype=str(dtype).replace("torch.", ""), shape=f"{out_f}x{in_f}", m=m,
                                       weight=label, kernel=name, t=None, speedup=None, gbps=None, err=None,
                                       error="")
                            try:
                                y = fn(x)
                                err = ((y.float() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
                                row["err"] = err
                                tol = 2e-2 if dtype == torch.bfloat16 else 5e-3
                                if not err < tol:
                                    raise AssertionError(f"relative error {err:.2e} > {tol}")
                                t = self._time(lambda: fn(x))
                            except Exception as exc:
                                row["error"] = f"{type(exc).__name__}: {str(exc)[:120]}"
                                rows.append(row)
                                continue
                            if name == "dense torch.matmul":
                                dense_t = t
                            row.update(t=t, speedup=(dense_t / t) if dense_t else None,
                                       gbps=(stored + act_bytes) / t / 1e9)
                            rows.append(row)
                        if label == "dense":
                            continue
        return rows

    # ---- report --------------------------------------------------------------
    def markdown(self, rows, dry_run: bool) -> str:
        torch = self.torch
        import triton

        if self.device.type == "cuda":
            dev = torch.cuda.get_device_name()
            try:
                driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
            except Exception:
                driver = "unknown (nvidia-smi failed)"
            timer = "CUDA events, median" + ("" if self.flush else " (no L2 flush)")
        else:
            dev, driver, timer = "CPU (Triton interpreter)", "n/a", "time.perf_counter, median"
        lines = [
            "# Sparse linear kernels" + (" — DRY RUN on CPU (interpreter): timings are meaningless" if dry_run else ""),
            "",
            f"- Device: {dev}; driver {driver}; CUDA {torch.version.cuda}",
            f"- torch {torch.__version__}; triton {triton.__version__}; date {datetime.date.today().isoformat()}",
            f"- Timer: {timer} of {self.reps} calls; device-to-device copy bandwidth in this run: "
            f"{self.copy_gbps:.1f} GB/s",
            "- GB/s = (weight bytes as stored + activation + output bytes) / time; "
            "speedup = dense torch.matmul time on the same pruned weight / time.",
            "",
            "| dtype | out x in | M | weight | kernel | median ms | speedup vs dense | GB/s | % copy BW | rel err | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            t = f"{r['t'] * 1e3:.4f}" if r["t"] is not None else "-"
            sp = f"{r['speedup']:.2f}x" if r["speedup"] is not None else "-"
            gb = f"{r['gbps']:.0f}" if r["gbps"] is not None else "-"
            pc = f"{100 * r['gbps'] / self.copy_gbps:.0f}%" if r["gbps"] is not None else "-"
            er = f"{r['err']:.1e}" if r["err"] is not None else "-"
            lines.append(f"| {r['dtype']} | {r['shape']} | {r['m']} | {r['weight']} | {r['kernel']} | {t} | {sp} | "
                         f"{gb} | {pc} | {er} | {r['error']} |")
        # Fastest variant per (dtype, shape, weight, M): what the dispatcher should pick.
        best = {}
        for r in rows:
            if r["t"] is None or r["weight"] == "dense":
                continue
            key = (r["dtype"], r["shape"], r["weight"], r["m"])
            if key not in best or r["t"] < best[key]["t"]:
                best[key] = r
        lines += ["", "## Fastest per cell", "", "| dtype | out x in | weight | M | fastest | speedup vs dense |",
                  "|---|---|---|---|---|---|"]
        for (dt, shape, weight, m), r in best.items():
            sp = f"{r['speedup']:.2f}x" if r["speedup"] is not None else "-"
            lines.append(f"| {dt} | {shape} | {weight} | {m} | {r['kernel']} | {sp} |")
        return "\n".join(lines) + "\n"


def _prune_nm(w, n, m):
    import torch

    rows, k = w.shape
    g = w.reshape(rows, k // m, m)
    idx = g.abs().float().topk(n, dim=-1).indices
    keep = torch.zeros_like(g, dtype=torch.bool).scatter_(-1, idx, True)
    return torch.where(keep, g, torch.zeros_like(g)).reshape(rows, k)


def _prune_random(w, sparsity, gen):
    import torch

    drop = torch.rand(w.shape, generator=gen, device=w.device) < sparsity
    return torch.where(drop, torch.zeros_like(w), w)


if __name__ == "__main__":
    sys.exit(main())
