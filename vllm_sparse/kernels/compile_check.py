"""Compile every kernel for Hopper (sm_90) without a GPU, at the block sizes it uses.

    python -m vllm_sparse.kernels.compile_check [--json]

Must run in a process where triton was imported *without* ``TRITON_INTERPRET=1``
(the interpreter has nothing to compile). Reports, per kernel variant, the shared
memory ptxas/triton allot and fails if any variant does not compile or needs more
than an H100 gives one block (227 KiB).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

H100_MAX_SHARED_PER_BLOCK = 227 * 1024

_TY = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


def _compile(fn, signature: dict, constexprs: dict, num_warps: int, num_stages: int):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = dict(signature)
    for name in constexprs:
        sig[name] = "constexpr"
    src = ASTSource(fn, sig, constexprs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def variants():
    """(name, fn, signature, constexprs, num_warps, num_stages) for each real configuration."""
    from . import triton_bitmap_gemv as bg
    from . import triton_neuron_mlp as nrn
    from . import triton_nm_matmul as nmm
    from . import triton_skip_mlp as sm
    from . import triton_unpack as up
    from ._launch import dot_precision, upcast_in_kernel

    out = []
    # Shapes only steer pick_config (decode, mid, prefill); block sizes come from it.
    for dtype in (torch.float16, torch.bfloat16):
        t = _TY[dtype]
        for (n, m) in ((2, 4), (4, 8)):
            for rows in (1, 32, 2048):
                cfg = nmm.pick_config(rows, 4096, 4096)
                sig = {"x_ptr": f"*{t}", "values_ptr": f"*{t}", "bitmap_ptr": "*u8", "bias_ptr": f"*{t}",
                       "out_ptr": "*fp32" if cfg.split_k > 1 else f"*{t}",
                       "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_xk": "i32",
                       "stride_v": "i32", "stride_b": "i32", "stride_om": "i32"}
                const = {"NM_N": n, "NM_M": m, "HAS_BIAS": True, "SPLIT_K": cfg.split_k,
                         "UPCAST": upcast_in_kernel(dtype), "DOT_PRECISION": dot_precision(dtype),
                         "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k}
                out.append((f"nm_matmul {t} {n}:{m} M={rows} {cfg}", nmm.nm_matmul_kernel, sig, const,
                            cfg.num_warps, cfg.num_stages))
        for rows in (1, 16, 64, 2048):
            cfg = bg.pick_config(rows, 4096, 4096, bg.GPU_TILE_K)
            sig = {"x_ptr": f"*{t}", "values_ptr": f"*{t}", "bitmap_ptr": "*u8", "offsets_ptr": "*i32",
                   "bias_ptr": f"*{t}", "out_ptr": "*fp32" if cfg.split_k > 1 else f"*{t}",
                   "M": "i32", "N": "i32", "K": "i32", "n_tiles": "i32", "stride_xm": "i32", "stride_xk": "i32",
                   "stride_b": "i32", "stride_om": "i32"}
            const = {"HAS_BIAS": True, "SPLIT_K": cfg.split_k, "UPCAST": upcast_in_kernel(dtype),
                     "DOT_PRECISION": dot_precision(dtype),
                     "BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k}
            out.append((f"bitmap_gemm {t} M={rows} {cfg}", bg.bitmap_gemm_kernel, sig, const,
                        cfg.num_warps, cfg.num_stages))
        for fmt, fmt_name in ((0, "dense"), (1, "2:4"), (2, "bitmap")):
            for rows in (1, 64):
                cfg = sm.pick_config(rows, 4096, 14336, fmt, bg.GPU_TILE_K)
                sig = {"x_ptr": f"*{t}", "skip_ptr": "*i8", "out_ptr": "*fp32"}
                for w in ("g", "u", "d"):
                    sig.update({f"{w}_values": f"*{t}", f"{w}_bitmap": "*u8", f"{w}_offsets": "*i32",
                                f"{w}_stride_v": "i32", f"{w}_stride_b": "i32"})
                sig.update({"M": "i32", "H": "i32", "I": "i32", "stride_xm": "i32", "stride_om": "i32",
                            "h_tiles": "i32", "i_tiles": "i32"})
                const = {"FMT": fmt, "NM_N": 2, "NM_M": 4, "UPCAST": upcast_in_kernel(dtype),
                         "DOT_PRECISION": dot_precision(dtype), "BLOCK_M": cfg.block_m,
                         "BLOCK_I": cfg.block_i, "BLOCK_K": cfg.block_k, "BLOCK_H": cfg.block_h}
                out.append((f"skip_mlp {t} {fmt_name} M={rows} {cfg}", sm.skip_mlp_kernel, sig, const,
                            cfg.num_warps, cfg.num_stages))
        for rows in (1, 64):
            cfg = nrn.pick_config(rows)
            sig = {"x_ptr": f"*{t}", "mode_ptr": "*i8", "gate_ptr": f"*{t}", "up_ptr": f"*{t}",
                   "down_t_ptr": f"*{t}", "out_ptr": "*fp32", "dropped_ptr": "*i32", "threshold": "fp32",
                   "M": "i32", "H": "i32", "I": "i32", "stride_xm": "i32", "stride_om": "i32",
                   "stride_g": "i32", "stride_u": "i32", "stride_d": "i32"}
            const = {"UPCAST": upcast_in_kernel(dtype), "DOT_PRECISION": dot_precision(dtype),
                     "BLOCK_M": cfg.block_m, "BLOCK_I": cfg.block_i, "BLOCK_K": cfg.block_k, "BLOCK_H": cfg.block_h}
            out.append((f"neuron_mlp {t} M={rows} {cfg}", nrn.neuron_mlp_kernel, sig, const,
                        cfg.num_warps, cfg.num_stages))
        for fmt, fmt_name in ((1, "2:4"), (1, "4:8"), (2, "bitmap")):
            n, m = (4, 8) if fmt_name == "4:8" else (2, 4)
            sig = {"values_ptr": "*i16", "bitmap_ptr": "*u8", "offsets_ptr": "*i32", "out_ptr": "*i16",
                   "N": "i32", "K": "i32", "stride_v": "i32", "stride_b": "i32", "stride_o": "i32",
                   "n_tiles": "i32"}
            const = {"FMT": fmt, "NM_N": n, "NM_M": m, "BLOCK_R": up.BLOCK_R, "BLOCK_K": bg.GPU_TILE_K}
            out.append((f"unpack {t} {fmt_name}", up.unpack_kernel, sig, const, 4, 1))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON list of results")
    args = parser.parse_args(argv)
    from ._triton_mode import INTERPRET

    if INTERPRET:
        print("triton was imported with TRITON_INTERPRET=1: nothing to compile", file=sys.stderr)
        return 2
    results, failed = [], 0
    for name, fn, sig, const, warps, stages in variants():
        t0 = time.perf_counter()
        try:
            kernel = _compile(fn, sig, const, warps, stages)
            shared = int(kernel.metadata.shared)
            ok = shared <= H100_MAX_SHARED_PER_BLOCK
            err = None if ok else f"needs {shared} B shared memory > {H100_MAX_SHARED_PER_BLOCK}"
        except Exception as exc:  # report every variant, then fail
            shared, ok, err = None, False, f"{type(exc).__name__}: {str(exc)[:2000]}"
        failed += not ok
        results.append({"kernel": name, "ok": ok, "shared_bytes": shared, "seconds": round(time.perf_counter() - t0, 2),
                        "error": err})
        if not args.json:
            print(f"{'ok ' if ok else 'FAIL'} {name}: shared={shared} ({results[-1]['seconds']} s){'' if ok else ' ' + err}")
    if args.json:
        print(json.dumps(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
