// AVX-512 BF16: bf16 weights and bf16 activations meet in vdpbf16ps (pairs of
// products summed into fp32), so a word costs one expand-load and one dot per
// activation row, with no widening. Other dtypes take the plain AVX-512 kernel.
#include <immintrin.h>
#include "store.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi2,avx512bf16,popcnt")

namespace {

#include "prefetch.h"

const int64_t kRowChunk = 48;  // a multiple of every row block below

template <int MB, int R>
void block(const VsWeight* w, const VsGemm* g, int64_t r0, int64_t m0, RegionPrefetch* ahead) {
    const int64_t ldx = w->words * 32;
    const uint16_t* x = (const uint16_t*)g->x + m0 * ldx;
    __m512 acc[R][MB];
    const uint16_t* v[R];
    const uint32_t* bits[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        v[r] = (const uint16_t*)w->values + w->row_offsets[r0 + r];
        bits[r] = w->bitmap + (r0 + r) * w->words;
#pragma GCC unroll 8
        for (int i = 0; i < MB; i++) acc[r][i] = _mm512_setzero_ps();
    }
    for (int64_t word = 0; word < w->words; word++) {
        const uint16_t* xw = x + word * 32;
        ahead[0].advance();
        ahead[1].advance();
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            uint32_t mask = bits[r][word];
            __m512i wv = _mm512_maskz_expandloadu_epi16((__mmask32)mask, v[r]);
            prefetch_ahead(v[r], bits[r], word);
            v[r] += _mm_popcnt_u32(mask);
            // Activations come straight from L1 as memory operands: registers go to
            // the R x MB accumulators.
#pragma GCC unroll 8
            for (int i = 0; i < MB; i++)
                acc[r][i] = _mm512_dpbf16_ps(acc[r][i], (__m512bh)wv, (__m512bh)_mm512_loadu_si512(xw + i * ldx));
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int i = 0; i < MB; i++) vs_store_out(g, m0 + i, r0 + r, _mm512_reduce_add_ps(acc[r][i]));
}

// One activation row (decode), a block of R weight rows: each row's words in one
// loop, four words a step into four accumulators, the activation words from L1.
// Measured on a 2-core EPYC (same process, calls alternating, M = 1, Llama-3-8B and
// Llama-1B shapes): 1.2-1.7x faster at 70% and 1.4-1.7x at 90% than walking the 16
// rows of a block word by word side by side (which kept 16 pointers, more than
// there are registers, and reached 16-22 GB/s at 70%; row by row 24-28 GB/s against
// a 30.6 GB/s read). The value stream is prefetched 512 bytes ahead and the bitmap
// row every 16 words, as in that form (where leaving it out took 1.5x as long); while
// it multiplies, the next block's values and bitmap rows (up to row `stop`) come
// into L2 (RegionPrefetch).
template <int R>
void decode_block(const VsWeight* w, const VsGemm* g, int64_t r0, int64_t stop, int64_t m0) {
    const int words = (int)w->words;
    const uint16_t* x = (const uint16_t*)g->x + m0 * w->words * 32;
    const uint16_t* values = (const uint16_t*)w->values;
    const int64_t next_end = r0 + 2 * R < stop ? r0 + 2 * R : stop;
    const int64_t next_begin = r0 + R < next_end ? r0 + R : next_end;
    const int64_t steps = (int64_t)R * ((words + 3) / 4);
    RegionPrefetch next_values(values + w->row_offsets[next_begin], values + w->row_offsets[next_end], steps);
    RegionPrefetch next_bits(w->bitmap + next_begin * w->words, w->bitmap + next_end * w->words, steps);
    for (int r = 0; r < R; r++) {
        const uint16_t* v = values + w->row_offsets[r0 + r];
        const uint32_t* bits = w->bitmap + (r0 + r) * w->words;
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        int word = 0;
        for (; word + 4 <= words; word += 4) {
            next_values.advance();
            next_bits.advance();
            _mm_prefetch((const char*)v + 512, _MM_HINT_T0);
            if ((word & 15) == 0) _mm_prefetch((const char*)(bits + word) + 256, _MM_HINT_T0);
            // Each expand-load's address needs the popcounts before it; the dots after
            // them depend on nothing but their own accumulator.
            __m512i wv[4];
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) {
                const uint32_t mask = bits[word + i];
                wv[i] = _mm512_maskz_expandloadu_epi16(mask, v);
                v += _mm_popcnt_u32(mask);
            }
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++)
                acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)wv[i], (__m512bh)_mm512_loadu_si512(x + (word + i) * 32));
        }
        for (; word < words; word++) {
            const uint32_t mask = bits[word];
            acc[0] = _mm512_dpbf16_ps(acc[0], (__m512bh)_mm512_maskz_expandloadu_epi16(mask, v),
                                      (__m512bh)_mm512_loadu_si512(x + word * 32));
            v += _mm_popcnt_u32(mask);
        }
        const __m512 sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        vs_store_out(g, m0, r0 + r, _mm512_reduce_add_ps(sum));
    }
}

template <int R>
void decode_rows(const VsWeight* w, const VsGemm* g, int64_t begin, int64_t end, int64_t stop, int64_t m0) {
    int64_t r = begin;
    for (; r + R <= end; r += R) decode_block<R>(w, g, r, stop, m0);
    for (; r < end; r++) decode_block<1>(w, g, r, stop, m0);
}

template <int MB, int R>
void rows(const VsWeight* w, const VsGemm* g, int64_t begin, int64_t end, int64_t m0, RegionPrefetch* ahead) {
    int64_t r = begin;
    for (; r + R <= end; r += R) block<MB, R>(w, g, r, m0, ahead);
    for (; r < end; r++) block<MB, 1>(w, g, r, m0, ahead);
}

}  // namespace

extern "C" void vs_gemm_avx512_bf16(const VsWeight* w, const VsGemm* g, int64_t row_begin, int64_t row_end) {
    if (w->dtype != VS_BF16) {
        vs_gemm_avx512(w, g, row_begin, row_end);
        return;
    }
    // Rows in chunks that stay in L2 while every activation block passes over them:
    // the weight streams from memory once whatever M is.
    for (int64_t c0 = row_begin; c0 < row_end; c0 += kRowChunk) {
        const int64_t c1 = c0 + kRowChunk < row_end ? c0 + kRowChunk : row_end;
        int64_t m0 = 0;
        // The next chunk comes into L2 over this chunk's passes (RegionPrefetch).
        const int64_t n1 = c1 + kRowChunk < row_end ? c1 + kRowChunk : row_end;
        // block() calls below, each `words` steps long (row tails aside).
        const int64_t chunk_rows = c1 - c0;
        const int64_t calls = (g->m / 8) * ((chunk_rows + 1) / 2) +
                              ((g->m % 8) / 4 + (g->m % 4) / 2) * ((chunk_rows + 3) / 4);
        const int64_t steps = (calls > 0 ? calls : 1) * w->words;
        RegionPrefetch ahead[2] = {
            RegionPrefetch((const uint16_t*)w->values + w->row_offsets[c1], (const uint16_t*)w->values + w->row_offsets[n1], steps),
            RegionPrefetch(w->bitmap + c1 * w->words, w->bitmap + n1 * w->words, steps)};
        // Passes of eight activation rows over two weight rows: each expand-load (about
        // 4 cycles per word here) then feeds eight dots. With the next chunk
        // prefetched, M = 8 ran 1.1-1.5x faster than two passes of four over
        // four weight rows, and 1.1-1.4x faster than eight over three or six over four
        // (2-core EPYC, Llama-3-8B shapes, 50% and 70%).
        for (; m0 + 8 <= g->m; m0 += 8) rows<8, 2>(w, g, c0, c1, m0, ahead);
        for (; m0 + 4 <= g->m; m0 += 4) rows<4, 4>(w, g, c0, c1, m0, ahead);
        if (m0 + 2 <= g->m) { rows<2, 4>(w, g, c0, c1, m0, ahead); m0 += 2; }
        if (m0 < g->m) decode_rows<16>(w, g, c0, c1, row_end, m0);
    }
}
