"""Round-to-nearest quantization of the pruned linear weights, for the W8A8
"dynamic" layouts that published 2:4 checkpoints use: per-channel symmetric weight
scales, activations quantized per token at run time by the server.

The arithmetic is compressed-tensors 0.14.0.1's (``quantize`` for a channel-wise
scheme: ``x / scale`` and ``+ zero_point`` in the weight's dtype, clamp, round or
cast to float8, back to the weight's dtype, then to the stored dtype), so the same
scales give the same bytes. Each row's scale is its largest magnitude over the
type's largest value, rounded up to the next value the weight's dtype holds where
rounding to nearest made it smaller, so no value overflows the range (int8 -128
never appears, so no compressor can drop it)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..checkpoint.compressed_tensors_format import quantization_group_dict
from ..checkpoint.layer_names import prunable_layer_index


@dataclass(frozen=True)
class QuantScheme:
    name: str
    value_type: str  # compressed-tensors' "int" or "float"
    dtype: torch.dtype  # stored values
    largest: float  # largest magnitude the stored type holds
    rounds: bool  # int: round to the nearest integer; float8: the cast rounds

    def config_group(self) -> dict:
        return quantization_group_dict(self.value_type)


SCHEMES = {
    "int8-dynamic": QuantScheme("int8-dynamic", "int", torch.int8, 127.0, True),
    "fp8-dynamic": QuantScheme("fp8-dynamic", "float", torch.float8_e4m3fn, 448.0, False),
}


def channel_scales(weight: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    """One scale per output row, in the weight's dtype, shape [rows, 1]."""
    absmax = weight.abs().amax(dim=1, keepdim=True).float().clamp(min=torch.finfo(torch.float32).tiny)
    scale = (absmax / scheme.largest).to(weight.dtype)
    too_small = scale.float() * scheme.largest < absmax
    return torch.where(too_small, torch.nextafter(scale, torch.full_like(scale, float("inf"))), scale)


def quantize_weight(weight: torch.Tensor, scale: torch.Tensor, scheme: QuantScheme) -> torch.Tensor:
    scaled = weight / scale
    scaled += torch.zeros_like(scale)  # the symmetric zero point, added as compressed-tensors does
    clamped = torch.clamp(scaled, -scheme.largest - (1 if scheme.rounds else 0), scheme.largest)
    rounded = torch.round(clamped) if scheme.rounds else clamped.to(scheme.dtype)
    return rounded.to(weight.dtype).to(scheme.dtype)


def quantize_state_dict(state_dict: dict[str, torch.Tensor], scheme: QuantScheme) -> dict[str, torch.Tensor]:
    """Every decoder linear weight as stored values plus ``<module>.weight_scale``;
    everything else unchanged."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        if prunable_layer_index(name) is None:
            out[name] = tensor
            continue
        scale = channel_scales(tensor, scheme)
        out[name] = quantize_weight(tensor, scale, scheme)
        out[name.removesuffix(".weight") + ".weight_scale"] = scale
    return out
