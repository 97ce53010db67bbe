// bf16 <-> fp32 on the host, rounding as c10::BFloat16 does (nearest even, NaN kept a
// NaN), for kernels that must give ATen's bf16 results bit for bit.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

inline float vs_bf16_to_float(uint16_t v) {
    const uint32_t bits = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

inline uint16_t vs_float_to_bf16(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    if (std::isnan(f)) return 0x7fc0;
    bits += 0x7fff + ((bits >> 16) & 1);
    return static_cast<uint16_t>(bits >> 16);
}

inline float vs_round_bf16(float f) { return vs_bf16_to_float(vs_float_to_bf16(f)); }
