// Dense bf16 W [N, K] times a few bf16 activation rows on AVX-512 BF16: the LM head
// of a sparse model (never pruned, the largest single weight read per decode step).
// Each weight word (32 columns) is one plain load that feeds one vdpbf16ps per
// activation row; several rows are in flight at once so that the weight streams
// reach the memory bandwidth, which oneDNN's GEMV at M = 1 does not on the 2-core
// EPYC we measure on (see benchmarks/results/dense_gemv.md).
#include <immintrin.h>
#include "store.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")

namespace {

// The sums of sixteen accumulators, in their order, as one vector: pairs interleaved
// and added within 128-bit lanes, then lanes exchanged and added. ~45 instructions
// where sixteen horizontal sums take ~150: with rows of 576 columns (18 words) the
// horizontal sums and scalar stores cost about as much as the dots.
inline __m512 sums16(const __m512* a) {
    __m512 b[8], c[4];
    for (int i = 0; i < 8; i++)  // per lane: vectors 2i, 2i+1 interleaved, 2 partials each
        b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++) {  // per lane: vectors 4i .. 4i+3, one partial each
        const __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(b[2 * i]), _mm512_castps_pd(b[2 * i + 1]));
        const __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(b[2 * i]), _mm512_castps_pd(b[2 * i + 1]));
        c[i] = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi));
    }
    // Lane q of the result: the four lanes of c[q] added.
    const __m512 e01 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], 0x88), _mm512_shuffle_f32x4(c[0], c[1], 0xdd));
    const __m512 e23 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], 0x88), _mm512_shuffle_f32x4(c[2], c[3], 0xdd));
    return _mm512_add_ps(_mm512_shuffle_f32x4(e01, e23, 0x88), _mm512_shuffle_f32x4(e01, e23, 0xdd));
}

// y[m, r0 .. r0 + valid) = the first `valid` sums (+ bias), in one bf16 store (the
// op's output is always bf16).
inline void store16(const VsGemm* g, int64_t m, int64_t r0, __m512 sums, int valid) {
    const __mmask16 mask = (__mmask16)((1u << valid) - 1);
    if (g->bias) sums = _mm512_add_ps(sums, _mm512_maskz_loadu_ps(mask, g->bias + r0));
    _mm256_mask_storeu_epi16((uint16_t*)g->y + m * g->ldy + r0, mask, (__m256i)_mm512_cvtneps_pbh(sums));
}

// Prefetching, measured on a 2-core EPYC (49152 x 576 and 49152 x 2048, against
// oneDNN in the same runs): each word of the next block of R rows (the same column,
// `ahead` = R rows further; see the caller for the passes after the first over a
// chunk) is brought into L2 while this block multiplies, so a block never
// starts its R streams cold: M = 1 went from 1.02-1.07x to 1.46-1.49x of oneDNN on
// 576 columns, from 1.41x to 1.51-1.54x on 2048. Rows of at least kLongRow columns
// also ask for their own words 512 bytes ahead into L1 (as prefetch.h does for the
// sparse kernels): 1.85-1.90x then on 2048 columns; on 576 columns that prefetch
// lands in the next row, already on its way, and cost up to 25% at M = 8.
const int64_t kLongRow = 1024;

// R weight rows from r0 against MB activation rows from m0 (x [m, k], row stride k).
// Only the first `valid` rows are stored; the others repeat the last valid row (a
// block of sixteen then sums every row in the same order wherever it falls, so a row's
// result does not depend on how rows were split between threads or shards).
template <int MB, int R>
void block(const uint16_t* w, int64_t k, const VsGemm* g, int64_t r0, int64_t m0, int64_t ahead, int valid = R) {
    const uint16_t* x = (const uint16_t*)g->x + m0 * k;
    __m512 acc[R][MB];
#pragma GCC unroll 16
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int i = 0; i < MB; i++) acc[r][i] = _mm512_setzero_ps();
    const uint16_t* row[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; r++) row[r] = w + (r0 + (r < valid ? r : valid - 1)) * k;
    const int64_t whole = k / 32 * 32;
    const bool long_rows = k >= kLongRow;
    for (int64_t c = 0; c < whole; c += 32) {
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            const uint16_t* wr = row[r] + c;
            const __m512i wv = _mm512_loadu_si512(wr);
            _mm_prefetch((const char*)(wr + ahead * k), _MM_HINT_T1);
            if (long_rows) _mm_prefetch((const char*)wr + 512, _MM_HINT_T0);
#pragma GCC unroll 8
            for (int i = 0; i < MB; i++)
                acc[r][i] = _mm512_dpbf16_ps(acc[r][i], (__m512bh)wv, (__m512bh)_mm512_loadu_si512(x + i * k + c));
        }
    }
    if (whole < k) {  // the last, partial word: masked loads read nothing past k
        const __mmask32 tail = (__mmask32)((1ull << (k - whole)) - 1);
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            const __m512i wv = _mm512_maskz_loadu_epi16(tail, row[r] + whole);
#pragma GCC unroll 8
            for (int i = 0; i < MB; i++)
                acc[r][i] = _mm512_dpbf16_ps(acc[r][i], (__m512bh)wv,
                                             (__m512bh)_mm512_maskz_loadu_epi16(tail, x + i * k + whole));
        }
    }
    if constexpr (MB == 1 && R == 16) {
        __m512 rows16[16];
        for (int r = 0; r < 16; r++) rows16[r] = acc[r][0];
        store16(g, m0, r0, sums16(rows16), valid);
        return;
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int i = 0; i < MB; i++) vs_store_out(g, m0 + i, r0 + r, _mm512_reduce_add_ps(acc[r][i]));
}

template <int MB, int R>
void rows(const uint16_t* w, int64_t k, const VsGemm* g, int64_t begin, int64_t end, int64_t m0, int64_t ahead = R) {
    int64_t r = begin;
    for (; r + R <= end; r += R) block<MB, R>(w, k, g, r, m0, ahead);
    if constexpr (MB == 1 && R == 16) {
        if (r == end) return;
        block<MB, R>(w, k, g, r, m0, ahead, (int)(end - r));  // the tail: a masked block
        return;
    }
    for (; r < end; r++) block<MB, 1>(w, k, g, r, m0, ahead);
}

// Rows per L2-resident chunk when several passes of activations go over them
// (M > 2): 32 rows of K = 4096 are 256 KiB.
const int64_t kChunkBytes = 256 << 10;

}  // namespace

extern "C" void vs_dense_gemv_avx512_bf16(const uint16_t* w, int64_t k, const VsGemm* g, int64_t row_begin,
                                          int64_t row_end) {
    // One activation row takes sixteen weight rows at a time (sixteen streams, the
    // activation word shared), two take eight. More go over L2-resident chunks of rows
    // in passes of four activation rows against six weight rows: on 49152 x 2048 and
    // 32000 x 4096 (2-core EPYC, weights on 2 MiB pages), against oneDNN in the same
    // runs, M = 8 gained ~6% over one pass of eight against three weight rows, and
    // M = 4 ~10% over four against four.
    if (g->m == 1) { rows<1, 16>(w, k, g, row_begin, row_end, 0); return; }
    if (g->m == 2) { rows<2, 8>(w, k, g, row_begin, row_end, 0); return; }
    int64_t chunk = kChunkBytes / (2 * k);
    if (chunk < 6) chunk = 6;
    for (int64_t c0 = row_begin; c0 < row_end; c0 += chunk) {
        const int64_t c1 = c0 + chunk < row_end ? c0 + chunk : row_end;
        int64_t m0 = 0;
        // The first pass streams the chunk from memory, asking for each block's next
        // block; the later ones read it from L2 and ask for the next chunk instead,
        // which had been left to arrive cold. Same-process A/B (2-core EPYC,
        // 2026-12-05, the four shapes of benchmarks/dense_gemv.py, 2 MiB pages, calls
        // alternating): 1.07-1.25x at M = 8 to 16 and 1.06-1.12x at M = 3 (M = 4 is
        // one pass); asking for the next chunk in every pass but the very first ran
        // as this (0.97-1.07x).
        auto ahead = [&](int64_t block_rows) { return m0 == 0 ? block_rows : chunk; };
        for (; m0 + 4 <= g->m; m0 += 4) rows<4, 6>(w, k, g, c0, c1, m0, ahead(6));
        for (; m0 + 2 <= g->m; m0 += 2) rows<2, 8>(w, k, g, c0, c1, m0, ahead(8));
        if (m0 < g->m) rows<1, 16>(w, k, g, c0, c1, m0, ahead(16));
    }
}
