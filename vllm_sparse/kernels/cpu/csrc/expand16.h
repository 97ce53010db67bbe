// A word's packed 16-bit values (bitmap word `mask`, values from `v`) expanded into
// its 32 columns, zeros elsewhere. Written as a 64-byte load and vpexpandw's register
// form; GCC folds the load into the memory form, which reads only the values the mask
// takes. Either is safe: the bitmap layout pads its values by 64 entries (ops.cpp
// checks). Kept folded: with the load held apart (an empty asm on the loaded vector)
// the direct kernel ran 0.79-0.87x as fast at M = 8 and 16 on a Zen 4 EPYC, the same at
// M = 1-4, and the row tiles' fill 0.94-1.05x (benchmarks/CPU_KERNELS.md, "The
// expand as built"). Include inside the caller's namespace, after its AVX-512 VBMI2
// target pragma.
static inline __m512i vs_expand16(uint32_t mask, const uint16_t* v) {
    return _mm512_maskz_expand_epi16((__mmask32)mask, _mm512_loadu_si512(v));
}
