// Neuron-level skipping at decode: see neuron_mlp.cpp.
#pragma once

#include <ATen/ATen.h>

// Can this CPU run neuron_mlp_decode (AVX-512 BF16)?
bool neuron_mlp_decode_supported();

// One token row x [1, hidden] through gate [intermediate, hidden] and up_down
// [intermediate, 2 * hidden] (neuron j: its up row, then its down_proj column; all
// bf16), neurons with |SiLU(gate)| <= threshold dropped: reads only the up rows and
// down columns of the others. The number dropped is added to *dropped (where not null).
at::Tensor neuron_mlp_decode(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up_down,
                             double threshold, int64_t* dropped = nullptr);
