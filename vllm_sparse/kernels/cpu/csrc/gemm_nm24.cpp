// 2:4 weights without an expand instruction (AVX-512 BW + VBMI + BF16).
//
// vpexpandw costs about 4 cycles per 32 entries on the AMD EPYC (Zen 5) machines we
// measure, which bound the bitmap kernel at ~19 GB/s per core at decode. A 2:4 weight
// has exactly two stored values per group of four columns, so instead of moving the
// weights to their columns this kernel moves the activations to the weights: each
// stored value carries a 2-bit selector (its column within the group), 32 selectors
// (64 columns) fit in one 64-bit word, vpmultishiftqb + and + add turn that word into
// 32 lane indices, and vpermt2w gathers the 32 matching activations from the 64
// columns; vdpbf16ps multiplies them with the 32 packed values. No zero is multiplied.
#include <immintrin.h>
#include "store.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vbmi2,avx512bf16,popcnt")

namespace {

#include "prefetch.h"

const int64_t kRowChunk = 24;

// Lane l of 32 (16-bit): column 4 * (l / 2) + selector l of a 64-column chunk.
inline __m512i gather_index(uint64_t selectors, __m512i shift_control, __m512i group_base) {
    __m512i bits = _mm512_multishift_epi64_epi8(shift_control, _mm512_set1_epi64((long long)selectors));
    return _mm512_add_epi16(_mm512_and_si512(bits, _mm512_set1_epi16(3)), group_base);
}

template <int MB, int R>
void block(const VsNM24Weight* w, const VsGemm* g, int64_t r0, int64_t m0, __m512i control, __m512i base) {
    const int64_t chunks = w->k / 64;
    const int64_t ldx = w->k;
    const uint16_t* x = (const uint16_t*)g->x + m0 * ldx;
    __m512 acc[R][MB];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int i = 0; i < MB; i++) acc[r][i] = _mm512_setzero_ps();
    const uint16_t* values = (const uint16_t*)w->values + r0 * (w->k / 2);
    const uint64_t* sel = w->selectors + r0 * chunks;
    for (int64_t c = 0; c < chunks; c++) {
        __m512i xlo[MB], xhi[MB];
#pragma GCC unroll 8
        for (int i = 0; i < MB; i++) {
            xlo[i] = _mm512_loadu_si512(x + i * ldx + c * 64);
            xhi[i] = _mm512_loadu_si512(x + i * ldx + c * 64 + 32);
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const uint16_t* v = values + r * (w->k / 2) + c * 32;
            _mm_prefetch((const char*)v + 1024, _MM_HINT_T0);
            __m512i idx = gather_index(sel[r * chunks + c], control, base);
            __m512i wv = _mm512_loadu_si512(v);
#pragma GCC unroll 8
            for (int i = 0; i < MB; i++) {
                __m512i xg = _mm512_permutex2var_epi16(xlo[i], idx, xhi[i]);
                acc[r][i] = _mm512_dpbf16_ps(acc[r][i], (__m512bh)wv, (__m512bh)xg);
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int i = 0; i < MB; i++) vs_store_out(g, m0 + i, r0 + r, _mm512_reduce_add_ps(acc[r][i]));
}

template <int MB, int R>
void rows(const VsNM24Weight* w, const VsGemm* g, int64_t begin, int64_t end, int64_t m0, __m512i control,
          __m512i base) {
    int64_t r = begin;
    for (; r + R <= end; r += R) block<MB, R>(w, g, r, m0, control, base);
    for (; r < end; r++) block<MB, 1>(w, g, r, m0, control, base);
}

}  // namespace

extern "C" void vs_gemm_nm24_avx512(const VsNM24Weight* w, const VsGemm* g, int64_t row_begin, int64_t row_end) {
    uint8_t control_bytes[64];
    uint16_t base_words[32];
    for (int j = 0; j < 64; j++) control_bytes[j] = (uint8_t)(2 * (j / 2));  // byte 2l <- bits 2l.. of the word
    for (int l = 0; l < 32; l++) base_words[l] = (uint16_t)(4 * (l / 2));
    const __m512i control = _mm512_loadu_si512(control_bytes);
    const __m512i base = _mm512_loadu_si512(base_words);
    for (int64_t c0 = row_begin; c0 < row_end; c0 += kRowChunk) {
        const int64_t c1 = c0 + kRowChunk < row_end ? c0 + kRowChunk : row_end;
        int64_t m0 = 0;
        // No 8-row block: eight activation rows' 64-column chunks (16 registers) would
        // leave room for one weight row only, and reloading them per row from L2 made
        // M = 8 1.5x slower than two passes of four rows x three weight rows (measured).
        while (m0 + 4 <= g->m) { rows<4, 3>(w, g, c0, c1, m0, control, base); m0 += 4; }

        if (m0 + 2 <= g->m) { rows<2, 4>(w, g, c0, c1, m0, control, base); m0 += 2; }
        if (m0 < g->m) rows<1, 8>(w, g, c0, c1, m0, control, base);
    }
}

// Dense rows of a 2:4 weight (the large-M path): each byte of a selector word holds
// the four selectors of two groups, so a 256-entry table turns it into the 8-column
// mask of those groups, and two masked expand-loads place a chunk's 32 values.
extern "C" void vs_unpack_nm24_avx512(const VsNM24Weight* w, int64_t row_begin, int64_t row_end, uint16_t* dst) {
    static const struct Table {
        uint8_t mask[256];
        Table() {
            for (int b = 0; b < 256; b++)
                mask[b] = (uint8_t)((1 << (b & 3)) | (1 << ((b >> 2) & 3)) | (16 << ((b >> 4) & 3)) | (16 << (b >> 6)));
        }
    } table;
    const int64_t chunks = w->k / 64;
    const uint16_t* values = (const uint16_t*)w->values;
    for (int64_t r = row_begin; r < row_end; r++) {
        uint16_t* out = dst + (r - row_begin) * w->k;
        const uint16_t* v = values + r * (w->k / 2);
        const uint64_t* sel = w->selectors + r * chunks;
        for (int64_t c = 0; c < chunks; c++) {
            uint64_t mask = 0;
            for (int j = 0; j < 8; j++) mask |= (uint64_t)table.mask[(sel[c] >> (8 * j)) & 0xff] << (8 * j);
            _mm512_storeu_si512(out + c * 64, _mm512_maskz_expandloadu_epi16((__mmask32)(uint32_t)mask, v + c * 32));
            _mm512_storeu_si512(out + c * 64 + 32,
                                _mm512_maskz_expandloadu_epi16((__mmask32)(uint32_t)(mask >> 32), v + c * 32 + 16));
        }
    }
}
