// Large M on AVX-512 BF16 where M fills 16-row vectors (csrc/ops.cpp `tile_gemm`):
// the weight decompressed VS_ROWTILE_ROWS (12) rows at a time into a cache-resident
// tile, as it comes (no transposes), times every activation row; no dense copy of
// the weight.
//
// The panels of gemm_tile_bf16.cpp broadcast activations against vectors of 16
// weight rows, so a fill transposes the expanded weight in registers: 64 shuffles per
// 16 rows x 32 columns on top of 16 expands (leaving the fills out made a call at
// M = 64 15-17% faster, Llama-3-8B shapes, 2026-12-05). Here the vectors run along
// activation rows and each weight pair is broadcast, so a fill is one expand and one
// store per row and 32-column word. A block is 12 weight rows x 2 vectors of 16
// activation rows: 24 fp32 accumulators, one broadcast per two dots, as in the panels.
// The activations are transposed once per call (16 x 16 words at a time in
// registers), shared by every tile and thread, and the accumulators once per block on
// the way out.
//
// tile[(word * 12 + n) * 16 + j]: pair j of 32-column word `word` of tile row n;
// rows past the weight's are zero. xa[(b * words * 16 + p) * 32 + i] = (x[32 b + i,
// 2p], x[32 b + i, 2p + 1]), zero past k and past m (a block of at most 16 rows
// reads, and gets, its first 16 lanes only).
#include <immintrin.h>
#include "store.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi2,avx512bf16,popcnt")

namespace {

#include "prefetch.h"

const int kTR = VS_ROWTILE_ROWS;
const int kBM = VS_ROWTILE_BLOCK_M;

#include "nm24_records.h"
#include "transpose16.h"

// kTR weight rows x NV vectors of 16 activation rows, over `words` words of 16 pairs.
template <int NV>
void rowtile_block(const uint32_t* xa, const uint32_t* tile, int64_t words, int64_t m0, int64_t row0, int64_t rows,
                   const VsGemm* g, RegionPrefetch* ahead) {
    __m512 acc[kTR][NV];
    for (int n = 0; n < kTR; n++)
        for (int v = 0; v < NV; v++) acc[n][v] = _mm512_setzero_ps();
    for (int64_t word = 0; word < words; word++, tile += kTR * 16, xa += 16 * kBM) {
        if ((word & 3) == 0) {
            ahead[0].advance();
            ahead[1].advance();
        }
#pragma GCC unroll 16
        for (int j = 0; j < 16; j++) {
            __m512bh x[NV];
            for (int v = 0; v < NV; v++) x[v] = (__m512bh)_mm512_loadu_si512(xa + j * kBM + 16 * v);
            for (int n = 0; n < kTR; n++) {
                const __m512bh w = (__m512bh)_mm512_set1_epi32((int)tile[n * 16 + j]);
                for (int v = 0; v < NV; v++) acc[n][v] = _mm512_dpbf16_ps(acc[n][v], x[v], w);
            }
        }
    }
    // acc[n][v] lane i is y[m0 + 16 v + i, row0 + n]: transposed, each register is
    // one activation row's outputs, stored as one masked write.
    const __mmask16 valid = (__mmask16)((1u << rows) - 1);
    const __m512 bias = g->bias ? _mm512_maskz_loadu_ps(valid, g->bias + row0) : _mm512_setzero_ps();
    for (int v = 0; v < NV; v++) {
        __m512i r[16];
        for (int n = 0; n < 16; n++) r[n] = n < kTR ? _mm512_castps_si512(acc[n][v]) : _mm512_setzero_si512();
        transpose16(r);
        const int64_t first = m0 + 16 * v;
        const int64_t count = g->m - first < 16 ? g->m - first : 16;
        uint16_t* y = (uint16_t*)g->y + first * g->ldy + row0;
        for (int64_t i = 0; i < count; i++, y += g->ldy)
            _mm256_mask_storeu_epi16(y, valid,
                                     (__m256i)_mm512_cvtneps_pbh(_mm512_add_ps(_mm512_castsi512_ps(r[i]), bias)));
    }
}

inline void zero_rows(uint32_t* tile, int64_t words, int64_t from) {
    for (int64_t word = 0; word < words; word++)
        for (int n = (int)from; n < kTR; n++) _mm512_storeu_si512(tile + (word * kTR + n) * 16, _mm512_setzero_si512());
}

}  // namespace

extern "C" void vs_rowtile_pack_activations(const uint16_t* x, int64_t m, int64_t k, int64_t word_begin,
                                            int64_t word_end, uint32_t* xa) {
    const int64_t pairs = k / 2;
    const int64_t words = (k + 31) / 32;
    const uint32_t* x32 = (const uint32_t*)x;  // row i's pair p is x32[i * pairs + p]
    for (int64_t m0 = 0; m0 < m; m0 += 16) {  // 16 rows x 16 pairs per transpose
        uint32_t* block = xa + m0 / kBM * kBM * words * 16 + m0 % kBM;
        for (int64_t word = word_begin; word < word_end; word++) {
            const int64_t p = word * 16;
            const __mmask16 live = pairs - p >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (pairs - p)) - 1);
            __m512i r[16];
            for (int i = 0; i < 16; i++)
                r[i] = m0 + i < m ? _mm512_maskz_loadu_epi32(live, x32 + (m0 + i) * pairs + p) : _mm512_setzero_si512();
            transpose16(r);
            for (int j = 0; j < 16; j++) _mm512_storeu_si512(block + (p + j) * kBM, r[j]);
        }
    }
}

extern "C" void vs_rowtile_from_bitmap(const VsWeight* w, int64_t row0, int64_t rows, uint32_t* tile) {
    for (int n = 0; n < rows; n++) {
        const uint16_t* v = (const uint16_t*)w->values + w->row_offsets[row0 + n];
        const uint32_t* bits = w->bitmap + (row0 + n) * w->words;
        for (int64_t word = 0; word < w->words; word++) {
            const uint32_t mask = bits[word];
            _mm512_storeu_si512(tile + (word * kTR + n) * 16, _mm512_maskz_expandloadu_epi16((__mmask32)mask, v));
            v += _mm_popcnt_u32(mask);
        }
    }
    zero_rows(tile, w->words, rows);
}

extern "C" void vs_rowtile_from_nm24(const VsNM24Weight* w, int64_t row0, int64_t rows, uint32_t* tile) {
    // Record by record (the tile's rows are in at most three 8-row blocks, each one
    // sequential stream of records), each row's 64 columns as two words.
    const uint8_t* record[kTR];
    int slot[kTR];
    for (int n = 0; n < rows; n++) {
        record[n] = block_records(w, (row0 + n) / kRows);
        slot[n] = (int)((row0 + n) % kRows);
    }
    for (int64_t c = 0; c < w->k / 64; c++) {
        for (int n = 0; n < rows; n++) {
            const uint64_t mask = selector_mask(record_selectors(record[n], slot[n]));
            const uint16_t* v = record_values(record[n], slot[n]);
            _mm512_storeu_si512(tile + (2 * c * kTR + n) * 16, _mm512_maskz_expandloadu_epi16((__mmask32)mask, v));
            _mm512_storeu_si512(tile + ((2 * c + 1) * kTR + n) * 16,
                                _mm512_maskz_expandloadu_epi16((__mmask32)(mask >> 32), v + 16));
            record[n] += kRecord;
        }
    }
    zero_rows(tile, w->k / 32, rows);
}

extern "C" void vs_rowtile_multiply(const uint32_t* tile, int64_t rows, int64_t k, const uint32_t* xa, int64_t m,
                                    const VsGemm* g, int64_t row0, const VsRegion* next, int regions) {
    const int64_t words = (k + 31) / 32;
    const int64_t blocks = (m + kBM - 1) / kBM;
    const int64_t steps = (words / 4 + 1) * blocks;
    RegionPrefetch ahead[2] = {RegionPrefetch(nullptr, nullptr, 1), RegionPrefetch(nullptr, nullptr, 1)};
    for (int i = 0; i < regions && i < 2; i++) ahead[i] = RegionPrefetch(next[i].begin, next[i].end, steps);
    for (int64_t m0 = 0; m0 < m; m0 += kBM) {
        const uint32_t* block = xa + m0 * words * 16;
        if (m - m0 > 16)
            rowtile_block<2>(block, tile, words, m0, row0, rows, g, ahead);
        else
            rowtile_block<1>(block, tile, words, m0, row0, rows, g, ahead);
    }
}
