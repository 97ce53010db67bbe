"""Our kernels as torch custom ops (namespace ``vllm_sparse``), so torch.compile'd
graphs (vLLM's) treat each as one opaque node with a shape-only fake implementation.

Importing this module does not import triton. Each op runs the Triton kernel where our kernels can run (CUDA, or CPU under the
Triton interpreter) and the torch reference elsewhere, so a graph stays runnable
on any device. Kernel modules are imported on first use only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .bitmap_layout import BitmapLayout
from .nm_layout import NMLayout
from .patterns import NMPattern

# Per-M choice inside a layout (see dispatcher.py for the reasoning; not yet tuned on
# a GPU: benchmarks/kernels.py measures both sides of each threshold).
NM_DIRECT_MAX_M = 256  # above: unpack to dense once, then the vendor dense GEMM
BITMAP_DIRECT_MAX_M = 64

FMT_DENSE, FMT_NM, FMT_BITMAP = 0, 1, 2


def kernels_can_run(device: torch.device) -> bool:
    """Can our Triton kernels run on ``device`` in this process? Imports triton only
    now, at the first op call: importing ``vllm_sparse.kernels`` must not fix triton's
    interpreted-vs-compiled mode (see ``_triton_mode``)."""
    from ._triton_mode import kernels_can_run as can_run

    return can_run(device)


def _nm_dense(values, bitmap, n, m, in_features):
    return NMLayout(values, bitmap, NMPattern(n, m), (values.shape[0], in_features)).to_dense()


def _bitmap_dense(values, bitmap, tile_offsets, tile_k, in_features):
    return BitmapLayout(values, bitmap, tile_offsets, (bitmap.shape[0], in_features), tile_k).to_dense()


@torch.library.custom_op("vllm_sparse::unpack", mutates_args=())
def unpack(values: torch.Tensor, bitmap: torch.Tensor, tile_offsets: torch.Tensor | None, fmt: int, n: int, m: int,
           tile_k: int, in_features: int) -> torch.Tensor:
    """Dense [out, in_features] weight from N:M (fmt 1) or bitmap (fmt 2) layout tensors."""
    if kernels_can_run(values.device):
        from .triton_unpack import unpack as triton_unpack

        return triton_unpack(fmt, values, bitmap, tile_offsets, in_features, n, m, tile_k)
    if fmt == FMT_NM:
        return _nm_dense(values, bitmap, n, m, in_features)
    return _bitmap_dense(values, bitmap, tile_offsets, tile_k, in_features)


@unpack.register_fake
def _(values, bitmap, tile_offsets, fmt, n, m, tile_k, in_features):
    return values.new_empty(bitmap.shape[0], in_features)


@torch.library.custom_op("vllm_sparse::nm_linear", mutates_args=())
def nm_linear(x: torch.Tensor, values: torch.Tensor, bitmap: torch.Tensor, n: int, m: int, in_features: int,
              bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, in] @ W^T (+ bias) for W in the N:M layout."""
    if kernels_can_run(x.device):
        if x.shape[0] <= NM_DIRECT_MAX_M:
            from .triton_nm_matmul import nm_matmul

            return nm_matmul(x, values, bitmap, n, m, in_features, bias)
        from .triton_unpack import unpack as triton_unpack

        return F.linear(x, triton_unpack(FMT_NM, values, bitmap, None, in_features, n, m), bias)
    from .reference import linear_ref

    return linear_ref(x, _nm_dense(values, bitmap, n, m, in_features), bias)


@nm_linear.register_fake
def _(x, values, bitmap, n, m, in_features, bias):
    return x.new_empty(x.shape[0], values.shape[0])


@torch.library.custom_op("vllm_sparse::bitmap_linear", mutates_args=())
def bitmap_linear(x: torch.Tensor, values: torch.Tensor, bitmap: torch.Tensor, tile_offsets: torch.Tensor,
                  tile_k: int, in_features: int, bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, in] @ W^T (+ bias) for W in the bitmap layout."""
    if kernels_can_run(x.device):
        if x.shape[0] <= BITMAP_DIRECT_MAX_M:
            from .triton_bitmap_gemv import bitmap_gemm

            return bitmap_gemm(x, values, bitmap, tile_offsets, tile_k, in_features, bias)
        from .triton_unpack import unpack as triton_unpack

        dense = triton_unpack(FMT_BITMAP, values, bitmap, tile_offsets, in_features, tile_k=tile_k)
        return F.linear(x, dense, bias)
    from .reference import linear_ref

    return linear_ref(x, _bitmap_dense(values, bitmap, tile_offsets, tile_k, in_features), bias)


@bitmap_linear.register_fake
def _(x, values, bitmap, tile_offsets, tile_k, in_features, bias):
    return x.new_empty(x.shape[0], bitmap.shape[0])


@torch.library.custom_op("vllm_sparse::skip_mlp", mutates_args=())
def skip_mlp(x: torch.Tensor, skip: torch.Tensor, fmt: int, n: int, m: int, tile_k: int, intermediate: int,
             g_values: torch.Tensor, g_bitmap: torch.Tensor | None, g_offsets: torch.Tensor | None,
             u_values: torch.Tensor, u_bitmap: torch.Tensor | None, u_offsets: torch.Tensor | None,
             d_values: torch.Tensor, d_bitmap: torch.Tensor | None, d_offsets: torch.Tensor | None) -> torch.Tensor:
    """down(SiLU(gate(x)) * up(x)); rows with skip != 0 return zeros (no work done)."""
    from .triton_skip_mlp import MLPWeight

    ws = [MLPWeight(g_values, g_bitmap, g_offsets), MLPWeight(u_values, u_bitmap, u_offsets),
          MLPWeight(d_values, d_bitmap, d_offsets)]
    if kernels_can_run(x.device):
        from .triton_skip_mlp import skip_mlp as triton_skip_mlp

        return triton_skip_mlp(x, skip, *ws, fmt, intermediate, (n, m), tile_k)
    from .reference import skip_mlp_ref

    hidden = x.shape[1]
    shapes = [(intermediate, hidden), (intermediate, hidden), (hidden, intermediate)]
    dense = []
    for w, (out_f, in_f) in zip(ws, shapes):
        if fmt == FMT_DENSE:
            dense.append(w.values)
        elif fmt == FMT_NM:
            dense.append(_nm_dense(w.values, w.bitmap, n, m, in_f))
        else:
            dense.append(_bitmap_dense(w.values, w.bitmap, w.tile_offsets, tile_k, in_f))
    return skip_mlp_ref(x, skip, *dense)


@skip_mlp.register_fake
def _(x, skip, fmt, n, m, tile_k, intermediate, *weights):
    return torch.empty_like(x)


@torch.library.custom_op("vllm_sparse::neuron_mlp", mutates_args=())
def neuron_mlp(x: torch.Tensor, row_mode: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down_t: torch.Tensor,
               threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated MLP with neuron-level skipping (triton_neuron_mlp), weights as its
    NeuronLayout (gate, up, down_t: [I, H] each): (output, neurons dropped per row)."""
    if kernels_can_run(x.device):
        from .triton_neuron_mlp import NeuronLayout
        from .triton_neuron_mlp import neuron_mlp as triton_neuron_mlp

        return triton_neuron_mlp(x, row_mode, NeuronLayout(gate, up, down_t), threshold)
    from .reference import neuron_mlp_ref

    return neuron_mlp_ref(x, row_mode, gate, up, down_t.t(), threshold)


@neuron_mlp.register_fake
def _(x, row_mode, gate, up, down_t, threshold):
    return torch.empty_like(x), x.new_empty(x.shape[0], dtype=torch.int32)
