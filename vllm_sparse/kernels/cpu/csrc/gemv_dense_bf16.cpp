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

// R weight rows from r0 against MB activation rows from m0 (x [m, k], row stride k).
// A row's words are prefetched 512 bytes ahead (as in prefetch.h: the hardware
// prefetcher alone falls behind with this many streams).
template <int MB, int R>
void block(const uint16_t* w, int64_t k, const VsGemm* g, int64_t r0, int64_t m0) {
    const uint16_t* x = (const uint16_t*)g->x + m0 * k;
    __m512 acc[R][MB];
#pragma GCC unroll 16
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int i = 0; i < MB; i++) acc[r][i] = _mm512_setzero_ps();
    const uint16_t* rows = w + r0 * k;
    const int64_t whole = k / 32 * 32;
    for (int64_t c = 0; c < whole; c += 32) {
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            const uint16_t* wr = rows + r * k + c;
            const __m512i wv = _mm512_loadu_si512(wr);
            _mm_prefetch((const char*)wr + 512, _MM_HINT_T0);
#pragma GCC unroll 8
            for (int i = 0; i < MB; i++)
                acc[r][i] = _mm512_dpbf16_ps(acc[r][i], (__m512bh)wv, (__m512bh)_mm512_loadu_si512(x + i * k + c));
        }
    }
    if (whole < k) {  // the last, partial word: masked loads read nothing past k
        const __mmask32 tail = (__mmask32)((1ull << (k - whole)) - 1);
#pragma GCC unroll 16
        for (int r = 0; r < R; r++) {
            const __m512i wv = _mm512_maskz_loadu_epi16(tail, rows + r * k + whole);
#pragma GCC unroll 8
            for (int i = 0; i < MB; i++)
                acc[r][i] = _mm512_dpbf16_ps(acc[r][i], (__m512bh)wv,
                                             (__m512bh)_mm512_maskz_loadu_epi16(tail, x + i * k + whole));
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int i = 0; i < MB; i++) vs_store_out(g, m0 + i, r0 + r, _mm512_reduce_add_ps(acc[r][i]));
}

template <int MB, int R>
void rows(const uint16_t* w, int64_t k, const VsGemm* g, int64_t begin, int64_t end, int64_t m0) {
    int64_t r = begin;
    for (; r + R <= end; r += R) block<MB, R>(w, k, g, r, m0);
    for (; r < end; r++) block<MB, 1>(w, k, g, r, m0);
}

// Rows per L2-resident chunk when more than one pass of activations goes over them
// (M > 4): 32 rows of K = 4096 are 256 KiB.
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
        for (; m0 + 4 <= g->m; m0 += 4) rows<4, 6>(w, k, g, c0, c1, m0);
        for (; m0 + 2 <= g->m; m0 += 2) rows<2, 8>(w, k, g, c0, c1, m0);
        if (m0 < g->m) rows<1, 16>(w, k, g, c0, c1, m0);
    }
}
