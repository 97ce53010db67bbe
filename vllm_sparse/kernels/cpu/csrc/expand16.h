// A word's packed 16-bit values (bitmap word `mask`, values from `v`) expanded into
// its 32 columns, zeros elsewhere: a plain 64-byte load and the register form of
// vpexpandw. On a Zen 4 EPYC the memory form, interleaved with vdpbf16ps dots, cost
// ~12 TSC cycles a word more than the dots alone, the register form ~1.1 (the row
// tiles' fill among the dots: gemm_rowtile_bf16.cpp); as passes of their own both ran
// ~3.6. Reads up to 64 bytes from `v`: the bitmap layout pads its values (ops.cpp
// checks). Include inside the caller's namespace, after its AVX-512 VBMI2 target pragma.
static inline __m512i vs_expand16(uint32_t mask, const uint16_t* v) {
    return _mm512_maskz_expand_epi16((__mmask32)mask, _mm512_loadu_si512(v));
}
