"""The skip-aware MLP op of FFN skipping on CPU (``vllm_sparse::cpu_skip_mlp``,
csrc/skip_mlp.cpp): one call per decoder layer decides which rows skip, runs
gate_up -> SiLU * up -> down on the others with the kernels the layer already has,
and advances the rows' countdowns. Never imports vLLM.

A ``Projection`` says how one of the two projections runs; the kind numbers are the
C++ ``LinearKind``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .hugepages import on_huge_pages

DENSE_WEIGHT, ONEDNN, BITMAP, NM24 = 0, 1, 2, 3
KIND_NAMES = {DENSE_WEIGHT: "torch dense", ONEDNN: "oneDNN dense", BITMAP: "cpu_sparse bitmap", NM24: "cpu_sparse 2:4"}

# Row kinds (int8), as the op reads them.
ROW_COMPUTE, ROW_MAY_SKIP, ROW_UNCOUNTED = 0, 1, 2


@dataclass(frozen=True)
class Projection:
    kind: int
    tensors: tuple[torch.Tensor, ...]
    ints: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return KIND_NAMES[self.kind]

    @classmethod
    def dense(cls, weight: torch.Tensor) -> "Projection":
        return cls(DENSE_WEIGHT, (weight,))

    @classmethod
    def onednn(cls, handler_tensor: torch.Tensor, out_features: int) -> "Projection":
        """vLLM's prepacked oneDNN GEMM (``_C::onednn_mm``), by its handler tensor."""
        return cls(ONEDNN, (handler_tensor,), (out_features,))

    @classmethod
    def cpu_sparse(cls, packed) -> "Projection":
        """A ``dispatcher.PackedWeight`` on the ``cpu_sparse`` path."""
        from .layout24 import Cpu24Layout

        lay = packed.layout
        if isinstance(lay, Cpu24Layout):
            return cls(NM24, (lay.blocks,), (packed.out_features, packed.in_features, packed.cpu_isa,
                                             packed.max_direct_m))
        return cls(BITMAP, (lay.values, lay.bitmap, lay.row_offsets),
                   (packed.in_features, packed.cpu_isa, packed.max_direct_m, int(lay.sixteen_per_word)))


def skip_params(*, hot: bool, check: bool, threshold: float, skip_layers: int,
                neuron_threshold: float = 0.0) -> torch.Tensor:
    """A layer's rule settings as the op takes them (float64 [5]): data, so that a
    compiled graph does not hold one profile's values as constants. ``neuron_threshold``
    > 0: neuron-level skipping in the rows that may skip."""
    return torch.tensor([float(hot), float(check), float(threshold), float(skip_layers), float(neuron_threshold)],
                        dtype=torch.float64)


def new_counts() -> torch.Tensor:
    """The op's running counts (int64 [4], updated in place): token rows that skipped
    and that computed the block (rows not counted excluded), then the intermediate
    neurons dropped and kept by neuron-level skipping in the computed rows that may
    skip."""
    return torch.zeros(4, dtype=torch.int64)


def neuron_weights(gate_up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The one-row neuron-level kernel's layout of a dense MLP: (gate [I, H], up_down
    [I, 2H]), where row j is neuron j's up row followed by its down_proj column."""
    inter = down.shape[1]
    return (on_huge_pages(gate_up[:inter].contiguous()),
            on_huge_pages(torch.cat([gate_up[inter:], down.t()], dim=1).contiguous()))


def skip_mlp(x: torch.Tensor, residual: torch.Tensor, row_kind: torch.Tensor, countdown: torch.Tensor,
             counts: torch.Tensor, decisions: torch.Tensor, gate_up: Projection, down: Projection,
             params: torch.Tensor, neuron_layout: tuple[torch.Tensor, torch.Tensor] | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(FFN output [rows, hidden] with zero rows where skipped, the next countdown).
    ``counts`` (``new_counts``) and ``decisions`` (uint8, 1 = skipped) are updated
    in place; ``params`` from ``skip_params``. ``neuron_layout``: the
    layer's bf16 weights as ``neuron_weights`` lays them out, with which a single
    decoding row under neuron-level skipping reads only its active neurons (AVX-512
    BF16 hosts)."""
    gate, up_down = neuron_layout if neuron_layout is not None else (None, None)
    return torch.ops.vllm_sparse.cpu_skip_mlp(
        x, residual, row_kind, countdown, counts, decisions,
        gate_up.kind, list(gate_up.tensors), list(gate_up.ints), down.kind, list(down.tensors), list(down.ints),
        params, gate, up_down)
