"""Round-to-nearest quantization of the pruned linear weights, in the layouts
published 2:4 checkpoints use: W8A8 "dynamic" (per-channel symmetric int8 or fp8
weight scales, activations quantized per token at run time by the server) and
W4A16 (symmetric int4 weights in groups of 128 along a row, or one scale per row
where a layer's width is not a multiple of 128; activations stay 16-bit).

The arithmetic is compressed-tensors 0.14.0.1's (``quantize``: ``x / scale`` and
``+ zero_point`` in the compute dtype, clamp, round or cast to float8, back to the
compute dtype, then to the stored dtype), so the same scales give the same bytes.
The compute dtype is the weight's, except for W4A16, which its marlin-24
compressor quantizes in float16 whatever the model's dtype. Each scale is its
group's largest magnitude over the type's largest value, rounded up to the next
value the weight's dtype holds where rounding to nearest made it smaller, so no
value overflows the range (int8 -128 and int4 -8 never appear, so no compressor
can drop them)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..checkpoint.compressed_tensors_format import quantization_group_dict
from ..checkpoint.layer_names import prunable_layer_index

W4A16_GROUP = 128  # the one group size marlin-24 takes
# float16's smallest normal: W4A16 scales are stored float16, and one below this
# would lose bits (or become 0) there.
FLOAT16_TINY = torch.finfo(torch.float16).tiny


@dataclass(frozen=True)
class QuantScheme:
    name: str
    value_type: str  # compressed-tensors' "int" or "float"
    dtype: torch.dtype  # the values in memory before storage (int4 is held in int8)
    largest: float  # largest magnitude the stored type holds
    rounds: bool  # int: round to the nearest integer; float8: the cast rounds
    num_bits: int = 8
    group_size: int | None = None  # None: one scale per output row
    dynamic_activations: bool = True  # False: weight-only (activations stay 16-bit)
    compute_dtype: torch.dtype | None = None  # None: the weight's dtype

    def config_group(self) -> dict:
        return quantization_group_dict(self.value_type, self.num_bits, group_size=self.group_size,
                                       dynamic_activations=self.dynamic_activations)

    def for_widths(self, widths: set[int]) -> QuantScheme:
        """Groups where every layer's input width is a multiple of the group size,
        else one scale per row (one config group serves the whole model)."""
        if self.group_size is None or all(width % self.group_size == 0 for width in widths):
            return self
        return replace(self, group_size=None)


SCHEMES = {
    "int8-dynamic": QuantScheme("int8-dynamic", "int", torch.int8, 127.0, True),
    "fp8-dynamic": QuantScheme("fp8-dynamic", "float", torch.float8_e4m3fn, 448.0, False),
    "w4a16": QuantScheme("w4a16", "int", torch.int8, 7.0, True, num_bits=4, group_size=W4A16_GROUP,
                         dynamic_activations=False, compute_dtype=torch.float16),
}


def _grouped(weight: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """[rows, groups, group width] view of a [rows, cols] weight."""
    width = weight.shape[1] if scheme.group_size is None else scheme.group_size
    return weight.reshape(weight.shape[0], -1, width)


def weight_scales(weight: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """One scale per output row and group, in the weight's dtype, shape [rows, groups]."""
    smallest = FLOAT16_TINY * scheme.largest if scheme.compute_dtype == torch.float16 else torch.finfo(torch.float32).tiny
    absmax = _grouped(weight, scheme).abs().amax(dim=2).float().clamp(min=smallest)
    scale = (absmax / scheme.largest).to(weight.dtype)
    too_small = scale.float() * scheme.largest < absmax
    return torch.where(too_small, torch.nextafter(scale, torch.full_like(scale, float("inf"))), scale)


def quantize_weight(weight: torch.Tensor, scale: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    compute = scheme.compute_dtype or weight.dtype
    scaled = _grouped(weight.to(compute), scheme) / scale.to(compute).unsqueeze(-1)
    scaled += torch.zeros_like(scaled[..., :1])  # the symmetric zero point, added as compressed-tensors does
    clamped = torch.clamp(scaled, -scheme.largest - (1 if scheme.rounds else 0), scheme.largest)
    rounded = torch.round(clamped) if scheme.rounds else clamped.to(scheme.dtype)
    return rounded.to(compute).to(scheme.dtype).reshape(weight.shape)


def quantize_state_dict(state_dict: dict[str, torch.Tensor],
                        scheme: QuantScheme) -> tuple[dict[str, torch.Tensor], QuantScheme]:
    """Every decoder linear weight as its values plus ``<module>.weight_scale``
    [rows, groups]; everything else unchanged. Returns the scheme as applied (W4A16
    falls back to one scale per row when a width is not a multiple of 128)."""
    linear = [name for name in state_dict if prunable_layer_index(name) is not None]
    scheme = scheme.for_widths({state_dict[name].shape[1] for name in linear})
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        if name not in linear:
            out[name] = tensor
            continue
        scale = weight_scales(tensor, scheme)
        out[name] = quantize_weight(tensor, scale, scheme)
        out[name.removesuffix(".weight") + ".weight_scale"] = scale
    return out, scheme
