// 2:4 weights times a few to a few dozen activation rows on AVX-512 BF16, with the
// weight rows in the vector lanes.
//
// The direct 2:4 kernel (gemm_nm24.cpp) holds one weight row's 32 values of a 64-column
// chunk per vector and gathers their activations from two registers (vpermt2w), which
// costs as much as the dot it saves (benchmarks/cpu_pipes.c: vpermt2w + dot 1.91x a
// dot). Here a vector holds two groups of the 8 rows of a block (lane 2r + i: row r's
// value pair of group 2h + i), so the 16 columns they read lie in one 32-column
// register, and a one-source vpermw (vpermw + dot 1.35x a dot) gathers them for each
// activation row: per 32 kept values and activation row one vpermw and one dot, where
// dense spends two dots on the same 64 weights. Per vector and pass the extra work is
// shared by every activation row of the pass: three shuffles of the 8 x 8 transpose
// that puts the rows in the lanes, and the lane indices (vpmultishiftqb + vpternlogd
// straight from the record's selector words, which are already one per row).
//
// The activations come chunk-major (x[(c * m + i) * 64 ..]: chunk c of row i), so
// the rows of a pass read one contiguous run per chunk: rows of 4 or 8 KiB put every
// row's line of a chunk into one L1 set.
#include <immintrin.h>
#include "spmm.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512bf16,popcnt")

namespace {

#include "nm24_records.h"
#include "transpose16.h"

// Per vector h (groups 2h, 2h + 1 of the chunk): vpmultishiftqb control taking entry
// e of row r (16-bit lane 4r + e; value 4h + e of the row) from bits 8h + 2e of the
// row's selector word, and the entry's base column in its 32-column half of the chunk
// (8 (h % 4) + 4 (e / 2): group 2h + e / 2 within the half); vpermw reads only the low
// five bits of an index, and the base has the low two clear, so (bits & 3) | base.
struct Indices {
    __m512i control[8];
    __m512i base[4];
    Indices() {
        for (int h = 0; h < 8; h++) {
            uint8_t bytes[64];
            for (int b = 0; b < 64; b++) bytes[b] = (uint8_t)(8 * h + 2 * ((b / 2) % 4));
            control[h] = _mm512_loadu_si512(bytes);
        }
        for (int q = 0; q < 4; q++) {
            uint16_t words[32];
            for (int l = 0; l < 32; l++) words[l] = (uint16_t)(8 * q + 4 * ((l % 4) / 2));
            base[q] = _mm512_loadu_si512(words);
        }
    }
    __m512i of(__m512i selectors, int h) const {
        const __m512i bits = _mm512_multishift_epi64_epi8(control[h], selectors);
        return _mm512_ternarylogic_epi32(bits, _mm512_set1_epi16(3), base[h % 4], 0xEA);  // (A & B) | C
    }
};

// How many records ahead to ask for a whole record: this kernel spends ~45 ns on a
// record at M = 8, so the three lines 2 KiB ahead that the decode kernels ask for
// (prefetch_ahead) left it waiting on the rest (2.2x slower at M = 8, weight in L3,
// single thread); 8 ahead ran as 4.
const int kRecordsAhead = 4;
// Activation rows per pass: 16 accumulators, with the 8 transposed vectors and the
// index in registers. Passes of 8 and 12 ran as fast (single thread, weight in L3).
const int kPassRows = 16;

// The 8 rows of block `block` against activation rows [m0, m0 + MB). Each row's sum
// is split over S accumulators (vector h adds to split h % S): with fewer than 8
// rows, one accumulator per row would make every dot wait for the previous one.
template <int MB>
void block_pass(const VsNM24Weight* w, const VsGemm* g, int64_t block, int64_t m0, const Indices& ix) {
    const int S = MB >= 8 ? 1 : MB >= 4 ? 2 : MB >= 2 ? 4 : 8;
    const int64_t chunks = w->k / 64;
    const uint8_t* record = block_records(w, block);
    __m512 acc[MB][S];
    for (int i = 0; i < MB; i++)
        for (int s = 0; s < S; s++) acc[i][s] = _mm512_setzero_ps();
    for (int64_t c = 0; c < chunks; c++, record += kRecord) {
        prefetch_record(record, kRecordsAhead);
        const __m512i selectors = _mm512_loadu_si512(record);
        __m512i v[8];
        for (int r = 0; r < kRows; r++) v[r] = _mm512_loadu_si512(record_values(record, r));
        transpose8x8_epi64(v);  // v[h] qword r: row r's pairs of groups 2h, 2h + 1
        const uint16_t* x = (const uint16_t*)g->x + (c * g->m + m0) * 64;
#pragma GCC unroll 8
        for (int h = 0; h < 8; h++) {
            const __m512i idx = ix.of(selectors, h);
            const uint16_t* xh = x + 32 * (h / 4);
            for (int i = 0; i < MB; i++) {
                const __m512i xg = _mm512_permutexvar_epi16(idx, _mm512_loadu_si512(xh + i * 64));
                acc[i][h % S] = _mm512_dpbf16_ps(acc[i][h % S], (__m512bh)v[h], (__m512bh)xg);
            }
        }
    }
    // Row r's sum is lanes 2r and 2r + 1. Stored as bf16 eight rows at a time (the
    // op's output is x's dtype): with scalar stores, the 16 rows x 8 outputs of a
    // pass took as long as its dots at K = 576.
    const int64_t row0 = block * kRows;
    const __mmask8 valid = (__mmask8)(w->n - row0 >= kRows ? 0xff : (1u << (w->n - row0)) - 1);
    const __m256 bias = g->bias ? _mm256_maskz_loadu_ps(valid, g->bias + row0) : _mm256_setzero_ps();
    for (int i = 0; i < MB; i++) {
        __m512 sum = acc[i][0];
        for (int s = 1; s < S; s++) sum = _mm512_add_ps(sum, acc[i][s]);
        const __m512 pairs = _mm512_add_ps(sum, _mm512_permute_ps(sum, 0xB1));
        const __m256 rows = _mm256_add_ps(_mm512_castps512_ps256(_mm512_maskz_compress_ps(0x5555, pairs)), bias);
        _mm_mask_storeu_epi16((uint16_t*)g->y + (m0 + i) * g->ldy + row0, valid, (__m128i)_mm256_cvtneps_pbh(rows));
    }
}

}  // namespace

extern "C" void vs_gemm_nm24_lanes(const VsNM24Weight* w, const VsGemm* g, int64_t block_begin, int64_t block_end) {
    static const Indices ix;
    // All passes over a block before the next: the passes after the first read it
    // from L2 (a block of K = 14336 is 129 KiB), so the weight streams from memory
    // once whatever M is.
    for (int64_t b = block_begin; b < block_end; b++)
        for (int64_t m0 = 0; m0 < g->m; m0 += kPassRows) {
            switch (g->m - m0 < kPassRows ? g->m - m0 : kPassRows) {
#define VS_PASS(n) \
    case n: block_pass<n>(w, g, b, m0, ix); break;
                VS_PASS(1) VS_PASS(2) VS_PASS(3) VS_PASS(4) VS_PASS(5) VS_PASS(6) VS_PASS(7) VS_PASS(8)
                VS_PASS(9) VS_PASS(10) VS_PASS(11) VS_PASS(12) VS_PASS(13) VS_PASS(14) VS_PASS(15)
                default: block_pass<kPassRows>(w, g, b, m0, ix); break;
#undef VS_PASS
            }
        }
}
