"""Shared wrapper logic: argument checks, output buffers, dtype rules, block configs."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._triton_mode import INTERPRET, check_device

ACT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class BlockConfig:
    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 2


def check_activation(x: torch.Tensor, in_features: int, weight_dtype: torch.dtype) -> None:
    if x.dim() != 2:
        raise ValueError(f"kernels take 2-D activations [M, K], got shape {tuple(x.shape)}")
    if x.shape[1] != in_features:
        raise ValueError(f"activation has {x.shape[1]} features, the weight expects in_features={in_features}")
    if x.dtype not in ACT_DTYPES:
        raise ValueError(f"activation dtype {x.dtype} is not supported (fp16, bf16, fp32)")
    if x.dtype != weight_dtype:
        raise ValueError(f"activation dtype {x.dtype} differs from the weight's {weight_dtype}")
    check_device(x, "activation")


def check_bias(bias: torch.Tensor | None, out_features: int, x: torch.Tensor) -> None:
    if bias is None:
        return
    if tuple(bias.shape) != (out_features,):
        raise ValueError(f"bias has shape {tuple(bias.shape)}, expected ({out_features},)")
    if bias.device != x.device:
        raise ValueError(f"bias is on {bias.device}, activation on {x.device}")


def upcast_in_kernel(dtype: torch.dtype) -> bool:
    """Convert operands to fp32 right after loading them?

    fp32 operands always are fp32. bf16 arithmetic is wrong under the Triton
    interpreter (bits treated as integers), so there we upcast bf16 on load; compiled,
    bf16 goes to the tensor cores as is."""
    return dtype == torch.float32 or (INTERPRET and dtype == torch.bfloat16)


def dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs: full-precision FMA, not TF32, so fp32 results match the reference.
    return "ieee" if dtype == torch.float32 else "tf32"


def out_buffer(m: int, n: int, dtype: torch.dtype, device, split_k: int) -> torch.Tensor:
    """Output the kernel writes: fp32 zeros for split-K atomics, and fp32 for bf16 under
    the interpreter (its fp32 -> bf16 store is unreliable); otherwise the final dtype.
    Non-zeroed buffers are filled with NaN when interpreting so a row or column the
    kernel forgot to write cannot pass a test."""
    if split_k > 1:
        return torch.zeros(m, n, dtype=torch.float32, device=device)
    buf_dtype = torch.float32 if (INTERPRET and dtype == torch.bfloat16) else dtype
    if INTERPRET:
        return torch.full((m, n), float("nan"), dtype=buf_dtype, device=device)
    return torch.empty(m, n, dtype=buf_dtype, device=device)
