// Dense bf16 W [N, K] times a few activation rows on AVX2 + FMA: the LM head of a
// sparse model on CPUs without AVX-512 BF16, where vLLM multiplies bf16 with
// F.linear, which streams about half the read bandwidth at M = 1 and runs torch's
// slow bf16 GEMM above it (benchmarks/results/dense_gemv_avx2.md).
//
// A bf16 is the top half of its fp32, so a 32-bit lane holding two weights gives
// the odd column's fp32 by masking off the low half and the even column's by
// shifting it up: two instructions widen 16 weights, no shuffle. The activations
// come in fp32, each 16 columns split into their 8 even then their 8 odd values
// (ops.cpp lays them out once per call), so each half meets its weights lane for lane.
#include <immintrin.h>
#include "store.h"

#pragma GCC target("avx2,fma")

namespace {

#include "hsum256.h"

// Each thread reads its rows one after another, so its share of the weight is one
// sequential stream, asked for 1 KiB ahead into L1. Measured on a 2-core EPYC (AVX2
// only, 2026-12-07, standalone, M = 1, weights on 2 MiB pages, 4 copies alternating):
// eight rows at a time, column by column (as the AVX-512 BF16 GEMV goes), read
// 10-16 GB/s on 49152 x 576 and 17-20 on 49152 x 2048; one row at a time 21-25 and
// 16-24, where a plain read of one stream per thread gave 19-24.
const int64_t kAhead = 1024;

// Rows [begin, end) against MB activation rows from m0. Per activation row four
// accumulators (two from MB = 2 on, to stay within the 16 registers) keep the FMAs'
// latency off the loop; every row sums its columns in the same order wherever it
// falls, so a row's result does not depend on how rows were split.
template <int MB>
void rows(const uint16_t* w, int64_t k, int64_t kx, const VsGemm* g, int64_t begin, int64_t end, int64_t m0) {
    constexpr int A = MB == 1 ? 4 : 2;
    const float* x = (const float*)g->x + m0 * kx;
    const __m256i odd_half = _mm256_set1_epi32((int)0xffff0000u);
    const int64_t whole = k / 16 * 16;
    for (int64_t r = begin; r < end; r++) {
        const uint16_t* row = w + r * k;
        __m256 acc[MB][A];
#pragma GCC unroll 4
        for (int i = 0; i < MB; i++)
#pragma GCC unroll 4
            for (int a = 0; a < A; a++) acc[i][a] = _mm256_setzero_ps();
        int64_t c = 0;
        for (; c + 32 <= whole; c += 32) {
            _mm_prefetch((const char*)(row + c) + kAhead, _MM_HINT_T0);
            const __m256i w0 = _mm256_loadu_si256((const __m256i*)(row + c));
            const __m256i w1 = _mm256_loadu_si256((const __m256i*)(row + c + 16));
            const __m256 part[4] = {_mm256_castsi256_ps(_mm256_slli_epi32(w0, 16)),
                                    _mm256_castsi256_ps(_mm256_and_si256(w0, odd_half)),
                                    _mm256_castsi256_ps(_mm256_slli_epi32(w1, 16)),
                                    _mm256_castsi256_ps(_mm256_and_si256(w1, odd_half))};
#pragma GCC unroll 4
            for (int i = 0; i < MB; i++)
#pragma GCC unroll 4
                for (int q = 0; q < 4; q++)
                    acc[i][q % A] = _mm256_fmadd_ps(part[q], _mm256_loadu_ps(x + i * kx + c + 8 * q), acc[i][q % A]);
        }
        if (c < whole) {  // a last group of 16
            const __m256i w0 = _mm256_loadu_si256((const __m256i*)(row + c));
            const __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(w0, 16));
            const __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(w0, odd_half));
#pragma GCC unroll 4
            for (int i = 0; i < MB; i++) {
                acc[i][0] = _mm256_fmadd_ps(even, _mm256_loadu_ps(x + i * kx + c), acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(odd, _mm256_loadu_ps(x + i * kx + c + 8), acc[i][1]);
            }
        }
#pragma GCC unroll 4
        for (int i = 0; i < MB; i++) {
            __m256 total = acc[i][0];
#pragma GCC unroll 4
            for (int a = 1; a < A; a++) total = _mm256_add_ps(total, acc[i][a]);
            float sum = hsum(total);
            for (int64_t cc = whole; cc < k; cc++)  // the last, partial group
                sum += vs_bf16_to_f32(row[cc]) * x[i * kx + whole + vs_even_odd_slot(cc - whole)];
            vs_store_out(g, m0 + i, r, sum);
        }
    }
}

// Rows per L2-resident chunk when several passes of activations go over them (M > 4).
const int64_t kChunkBytes = 256 << 10;

}  // namespace

extern "C" void vs_dense_gemv_avx2(const uint16_t* w, int64_t k, const VsGemm* g, int64_t row_begin,
                                   int64_t row_end) {
    const int64_t kx = (k + 15) / 16 * 16;  // row stride of the split fp32 activations
    if (g->m == 1) { rows<1>(w, k, kx, g, row_begin, row_end, 0); return; }
    if (g->m == 2) { rows<2>(w, k, kx, g, row_begin, row_end, 0); return; }
    if (g->m == 4) { rows<4>(w, k, kx, g, row_begin, row_end, 0); return; }
    // Other row counts: passes of 4, 2 and 1 activation rows over L2-resident chunks
    // of weight rows, so that the weight streams from memory once.
    int64_t chunk = kChunkBytes / (2 * k);
    if (chunk < 8) chunk = 8;
    for (int64_t c0 = row_begin; c0 < row_end; c0 += chunk) {
        const int64_t c1 = c0 + chunk < row_end ? c0 + chunk : row_end;
        int64_t m0 = 0;
        for (; m0 + 4 <= g->m; m0 += 4) rows<4>(w, k, kx, g, c0, c1, m0);
        for (; m0 + 2 <= g->m; m0 += 2) rows<2>(w, k, kx, g, c0, c1, m0);
        if (m0 < g->m) rows<1>(w, k, kx, g, c0, c1, m0);
    }
}
