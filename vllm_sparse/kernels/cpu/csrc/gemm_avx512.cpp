// AVX-512 (F/BW/VL + VBMI2): one masked expand-load (vpexpandw / vexpandps) turns a
// 32-bit bitmap word and the packed values it covers into the 32 dense weights of
// those columns; they are widened to fp32 and multiplied into every activation row
// of the block. Several weight rows are in flight so that their value-pointer
// chains (pointer += popcount(word)) and memory streams overlap.
#include <immintrin.h>
#include "store.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi2,f16c,fma,popcnt")

namespace {

#include "prefetch.h"
#include "expand16.h"
#include "decode_walk.h"

const int64_t kRowChunk = 24;  // a multiple of every row block below

template <int DT>
struct Values {
    typedef uint16_t type;
};
template <>
struct Values<VS_F32> {
    typedef float type;
};

// Dense fp32 weights of one 32-column word: columns 0..15 in lo, 16..31 in hi.
template <int DT>
inline void expand_word(uint32_t mask, const typename Values<DT>::type* v, __m512& lo, __m512& hi) {
    if (DT == VS_F32) {
        const float* f = (const float*)v;
        uint32_t low = mask & 0xffffu;
        // Plain loads, as in vs_expand16 (expand16.h), which the compiler may fold into
        // the expand; the padding covers the 64 bytes read.
        lo = _mm512_maskz_expand_ps((__mmask16)low, _mm512_loadu_ps(f));
        hi = _mm512_maskz_expand_ps((__mmask16)(mask >> 16), _mm512_loadu_ps(f + _mm_popcnt_u32(low)));
        return;
    }
    __m512i raw = vs_expand16(mask, (const uint16_t*)v);
    __m256i a = _mm512_castsi512_si256(raw);
    __m256i b = _mm512_extracti64x4_epi64(raw, 1);
    if (DT == VS_BF16) {
        lo = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(a), 16));
        hi = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
    } else {
        lo = _mm512_cvtph_ps(a);
        hi = _mm512_cvtph_ps(b);
    }
}

// R weight rows from r0 against MB activation rows from m0.
template <int DT, int MB, int R>
void block(const VsWeight* w, const VsGemm* g, int64_t r0, int64_t m0) {
    typedef typename Values<DT>::type T;
    const int64_t ldx = w->words * 32;
    const float* x = (const float*)g->x + m0 * ldx;
    __m512 acc[R][MB];
    const T* v[R];
    const uint32_t* bits[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        v[r] = (const T*)w->values + w->row_offsets[r0 + r];
        bits[r] = w->bitmap + (r0 + r) * w->words;
#pragma GCC unroll 8
        for (int i = 0; i < MB; i++) acc[r][i] = _mm512_setzero_ps();
    }
    for (int64_t word = 0; word < w->words; word++) {
        const float* xw = x + word * 32;
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            uint32_t mask = bits[r][word];
            __m512 lo, hi;
            expand_word<DT>(mask, v[r], lo, hi);
            prefetch_ahead(v[r], bits[r], word);
            v[r] += _mm_popcnt_u32(mask);
#pragma GCC unroll 8
            for (int i = 0; i < MB; i++) {
                acc[r][i] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(xw + i * ldx), acc[r][i]);
                acc[r][i] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xw + i * ldx + 16), acc[r][i]);
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int i = 0; i < MB; i++) vs_store_out(g, m0 + i, r0 + r, _mm512_reduce_add_ps(acc[r][i]));
}

template <int DT, int MB, int R>
void rows(const VsWeight* w, const VsGemm* g, int64_t begin, int64_t end, int64_t m0) {
    int64_t r = begin;
    for (; r + R <= end; r += R) block<DT, MB, R>(w, g, r, m0);
    for (; r < end; r++) block<DT, MB, 1>(w, g, r, m0);
}

// One activation row (decode), a block of R weight rows, walked as the AVX-512 BF16
// kernel's decode_block walks them (decode_walk.h): in slices of 64 words (2048
// columns: 8 KiB of fp32 activations, in L1), each row's words of a slice in one
// loop, two words a step into four accumulators, the next block prefetched into L2.
// Measured on a 2-core EPYC (this path forced, same process, calls alternating, M = 1,
// Llama-3-8B shapes at 50% and 70%, 2026-12-04) against eight rows side by side word
// by word: fp16 1.37-2.06x, bf16 1.20-1.56x faster; fp32 0.88-1.25x (its expansion is
// two 16-lane expand-loads, and its rows are twice as many bytes), so fp32 keeps the
// side-by-side walk.
template <int DT, int R>
void decode_block(const VsWeight* w, const VsGemm* g, int64_t r0, int64_t stop, int64_t m0) {
    typedef typename Values<DT>::type T;
    const float* x = (const float*)g->x + m0 * w->words * 32;
    // Inlined into decode_walk, so that its prefetch state stays in registers (not
    // inlined, the fp16 decode ran up to 1.15x slower).
    auto row_slice = [x](const T*& v, const uint32_t* bits, int w0, int w1,
                         RegionPrefetch* next) __attribute__((always_inline)) {
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
        int word = w0;
        for (; word + 2 <= w1; word += 2) {
            decode_prefetch(next, v, bits, word);
            const uint32_t k0 = bits[word], k1 = bits[word + 1];
            __m512 lo0, hi0, lo1, hi1;
            expand_word<DT>(k0, v, lo0, hi0);
            v += _mm_popcnt_u32(k0);
            expand_word<DT>(k1, v, lo1, hi1);
            v += _mm_popcnt_u32(k1);
            const float* xw = x + word * 32;
            a0 = _mm512_fmadd_ps(lo0, _mm512_loadu_ps(xw), a0);
            a1 = _mm512_fmadd_ps(hi0, _mm512_loadu_ps(xw + 16), a1);
            a2 = _mm512_fmadd_ps(lo1, _mm512_loadu_ps(xw + 32), a2);
            a3 = _mm512_fmadd_ps(hi1, _mm512_loadu_ps(xw + 48), a3);
        }
        if (word < w1) {
            __m512 lo, hi;
            expand_word<DT>(bits[word], v, lo, hi);
            v += _mm_popcnt_u32(bits[word]);
            a0 = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x + word * 32), a0);
            a1 = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + word * 32 + 16), a1);
        }
        return _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
    };
    // Slices of 2048 columns (8 KiB of fp32 activations), two words a step.
    decode_walk<T, R>(w, g, r0, stop, m0, 64, 2, row_slice);
}

template <int DT, int R>
void decode_rows(const VsWeight* w, const VsGemm* g, int64_t begin, int64_t end, int64_t stop, int64_t m0) {
    int64_t r = begin;
    for (; r + R <= end; r += R) decode_block<DT, R>(w, g, r, stop, m0);
    for (; r < end; r++) decode_block<DT, 1>(w, g, r, stop, m0);
}

template <int DT>
void gemm(const VsWeight* w, const VsGemm* g, int64_t begin, int64_t end) {
    // Rows in chunks that stay in L2 while every activation block passes over them:
    // the weight streams from memory once whatever M is.
    for (int64_t c0 = begin; c0 < end; c0 += kRowChunk) {
        const int64_t c1 = c0 + kRowChunk < end ? c0 + kRowChunk : end;
        int64_t m0 = 0;
        for (; m0 + 8 <= g->m; m0 += 8) rows<DT, 8, 3>(w, g, c0, c1, m0);
        if (m0 + 4 <= g->m) { rows<DT, 4, 4>(w, g, c0, c1, m0); m0 += 4; }
        if (m0 + 2 <= g->m) { rows<DT, 2, 4>(w, g, c0, c1, m0); m0 += 2; }
        if (m0 < g->m) {
            if (DT == VS_F32) rows<DT, 1, 8>(w, g, c0, c1, m0);
            else decode_rows<DT, 8>(w, g, c0, c1, end, m0);
        }
    }
}

}  // namespace

extern "C" void vs_gemm_avx512(const VsWeight* w, const VsGemm* g, int64_t row_begin, int64_t row_end) {
    if (w->dtype == VS_F32) {
        gemm<VS_F32>(w, g, row_begin, row_end);
    } else if (w->dtype == VS_BF16) {
        gemm<VS_BF16>(w, g, row_begin, row_end);
    } else {
        gemm<VS_F16>(w, g, row_begin, row_end);
    }
}

extern "C" void vs_unpack_avx512(const VsWeight* w, int64_t row_begin, int64_t row_end, void* dst) {
    const int64_t k = w->k;
    const int64_t full = k / 32;
    const uint32_t tail = (k % 32) ? ((1u << (k % 32)) - 1) : 0u;
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint32_t* bits = w->bitmap + r * w->words;
        int64_t v = w->row_offsets[r];
        if (w->dtype == VS_F32) {
            const float* values = (const float*)w->values;
            float* out = (float*)dst + (r - row_begin) * k;
            for (int64_t word = 0; word < w->words; word++) {
                uint32_t mask = bits[word];
                uint32_t low = mask & 0xffffu;
                __m512 lo = _mm512_maskz_expandloadu_ps((__mmask16)low, values + v);
                __m512 hi = _mm512_maskz_expandloadu_ps((__mmask16)(mask >> 16), values + v + _mm_popcnt_u32(low));
                v += _mm_popcnt_u32(mask);
                if (word < full) {
                    _mm512_storeu_ps(out + word * 32, lo);
                    _mm512_storeu_ps(out + word * 32 + 16, hi);
                } else {
                    _mm512_mask_storeu_ps(out + word * 32, (__mmask16)(tail & 0xffffu), lo);
                    _mm512_mask_storeu_ps(out + word * 32 + 16, (__mmask16)(tail >> 16), hi);
                }
            }
        } else {
            const uint16_t* values = (const uint16_t*)w->values;
            uint16_t* out = (uint16_t*)dst + (r - row_begin) * k;
            for (int64_t word = 0; word < w->words; word++) {
                uint32_t mask = bits[word];
                __m512i raw = _mm512_maskz_expandloadu_epi16((__mmask32)mask, values + v);
                v += _mm_popcnt_u32(mask);
                if (word < full) {
                    _mm512_storeu_si512(out + word * 32, raw);
                } else {
                    _mm512_mask_storeu_epi16(out + word * 32, (__mmask32)tail, raw);
                }
            }
        }
    }
}
