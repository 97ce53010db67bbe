// Scalar helpers shared by every ISA file: fp16/bf16 <-> fp32 by bit manipulation
// (portable, exact; round-to-nearest-even on the way down) and the output store.
#pragma once
#include <stdint.h>
#include <string.h>
#include "spmm.h"

static inline float vs_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t vs_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float vs_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else {  // subnormal: normalise
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) { man <<= 1; exp--; }
            u = sign | (exp << 23) | ((man & 0x3ffu) << 13);
        }
    } else if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t vs_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);  // rounds to inf
    if (a < 0x38800000u) {  // subnormal or zero in fp16
        if (a < 0x33000000u) return (uint16_t)sign;
        uint32_t exp = a >> 23;
        uint32_t man = (a & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126 - exp;  // 14 .. 24 for exponents 102 .. 112
        uint32_t half = man >> shift;
        uint32_t rem = man & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1u))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

// Where column j (0..15) of a 16-column group sits in activations split into its 8
// even then its 8 odd columns (the AVX2 dense GEMV's layout).
static inline int64_t vs_even_odd_slot(int64_t j) { return (j & 1) ? 8 + j / 2 : j / 2; }

static inline float vs_load_value(const void* values, int dtype, int64_t i) {
    if (dtype == VS_F32) return ((const float*)values)[i];
    uint16_t h = ((const uint16_t*)values)[i];
    return dtype == VS_BF16 ? vs_bf16_to_f32(h) : vs_f16_to_f32(h);
}

static inline void vs_store_out(const VsGemm* g, int64_t m, int64_t r, float acc) {
    if (g->bias) acc += g->bias[r];
    int64_t i = m * g->ldy + r;
    if (g->out_dtype == VS_F32) {
        ((float*)g->y)[i] = acc;
    } else if (g->out_dtype == VS_BF16) {
        ((uint16_t*)g->y)[i] = vs_f32_to_bf16(acc);
    } else {
        ((uint16_t*)g->y)[i] = vs_f32_to_f16(acc);
    }
}
