// Neuron-level skipping at decode: see neuron_mlp.cpp.
#pragma once

#include <ATen/ATen.h>

// Can this CPU run neuron_mlp_decode (AVX-512 BF16)?
bool neuron_mlp_decode_supported();

// One token row x [1, hidden] through gate_up [2 * intermediate, hidden] and
// down_t [intermediate, hidden] (all bf16), neurons with |SiLU(gate)| <= threshold
// dropped: reads only the up rows and down columns of the others.
at::Tensor neuron_mlp_decode(const at::Tensor& x, const at::Tensor& gate_up, const at::Tensor& down_t,
                             double threshold);
