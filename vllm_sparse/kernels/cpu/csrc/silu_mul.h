// SiLU(gate) * up of bf16 activation rows in one pass (silu_mul.cpp).
#pragma once

#include <ATen/ATen.h>

// act [rows, I] (contiguous bf16) = SiLU(gate_up[:, :I]) * gate_up[:, I:], bit for bit
// as ATen's silu and mul give it; in the rows where drop_rows[r] (may be null), SiLU
// values with |value| <= threshold are zeroed first, and their number is added to
// *dropped (where not null). Returns false, and writes nothing, where it does not
// apply (not bf16, rows not contiguous, a host whose ATen loop it does not mirror):
// the caller then runs ATen's ops.
bool silu_mul_bf16(const at::Tensor& gate_up, at::Tensor& act, const bool* drop_rows, double threshold,
                   int64_t* dropped = nullptr);
