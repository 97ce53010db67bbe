// Large M on AVX-512 BF16 where M fills vectors of 8 activation rows (csrc/ops.cpp
// `tile_gemm`): the weight decompressed VS_ROWTILE_ROWS (12) rows at a time into a
// cache-resident tile, as it comes (no transposes), times every activation row; no
// dense copy of the weight.
//
// The panels of gemm_tile_bf16.cpp broadcast activations against vectors of 16
// weight rows, so a fill transposes the expanded weight in registers: 64 shuffles per
// 16 rows x 32 columns on top of 16 expands (leaving the fills out made a call at
// M = 64 15-17% faster, Llama-3-8B shapes, 2026-12-05). Here the vectors run along
// activation rows and the weight is broadcast, so a fill is one expand and one store
// per row and 32-column word. A vector holds 8 activation rows, each in a lane pair
// with the two column pairs of one 64-bit word (four columns); the weight row's same
// 64-bit word is broadcast whole, and the lane pair's two sums are added at the end.
// So M comes in steps of 8, not 16 (at M = 24, 16-row vectors ran 0.88x of the
// panels, these 1.10x: geometric means over the shapes of benchmarks/large_m_ab.py),
// and a block of 32 activation rows x 6 weight rows has 24 fp32 accumulators and one
// broadcast per four dots. The activations are
// transposed once per call (8 x 8 64-bit words at a time in registers), shared by
// every tile and thread, and the accumulators once per block on the way out.
//
// From the bitmap, a thread fills its next tile a few words per word of the multiply
// (VsRowtileFill, into a second buffer): as a pass of its own a fill cost ~3.6 TSC
// cycles a word, a fifth to a quarter of the call at M = 16; among the dots ~1.1-1.5.
// Same process, cold weights, calls alternating (2-core EPYC, 2026-12-06, 50%, five
// Llama-3-8B / Llama-1B / SmolLM2 shapes): 1.02-1.11x at M = 16-32 (one 0.98x),
// 1.03-1.05x at M = 64, 1.01-1.05x at M = 128. The 2:4 records still fill, then
// multiply.
//
// tile[(word * 12 + n) * 16 + j]: pair j of 32-column word `word` of tile row n;
// rows past the weight's are zero. As 64-bit words, xa[(b * words * 8 + q) * 32 + i]
// = x[32 b + i, 4q .. 4q + 3], zero past k and past m within the vectors a block
// reads (vectors wholly past m are neither written nor read).
#include <immintrin.h>
#include "store.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi2,avx512bf16,popcnt")

namespace {

#include "prefetch.h"
#include "expand16.h"

const int kTR = VS_ROWTILE_ROWS;
const int kBM = VS_ROWTILE_BLOCK_M;

#include "nm24_records.h"
#include "transpose16.h"

inline void zero_rows(uint32_t* tile, int64_t words, int64_t from) {
    for (int64_t word = 0; word < words; word++)
        for (int n = (int)from; n < kTR; n++) _mm512_storeu_si512(tile + (word * kTR + n) * 16, _mm512_setzero_si512());
}

// Expands up to `count` more words of the fill, row by row; the rows past the
// weight's are zeroed after the last word.
inline void fill_some(VsRowtileFill* f, int64_t count) {
    if (f->n >= f->rows) return;
    const VsWeight* w = f->w;
    const int64_t words = w->words;
    int64_t n = f->n, word = f->word;
    const uint16_t* v = f->v;
    const uint32_t* bits = w->bitmap + (f->row0 + n) * words;
    for (; count > 0; count--) {
        const uint32_t mask = bits[word];
        _mm512_storeu_si512(f->tile + (word * kTR + n) * 16, vs_expand16(mask, v));
        v += _mm_popcnt_u32(mask);
        if (++word == words) {
            word = 0;
            bits += words;
            if (++n == f->rows) {
                zero_rows(f->tile, words, n);
                break;
            }
            v = (const uint16_t*)w->values + w->row_offsets[f->row0 + n];
        }
    }
    f->n = n;
    f->word = word;
    f->v = v;
}

// Tile rows [n0, n0 + R) x NV vectors of 8 activation rows, a vector lane pair per
// row: lanes 2i, 2i + 1 hold row i's two column pairs of a 64-bit word, each weight
// word broadcast whole.
template <int NV, int R, bool kFill>
void rowtile_block(const uint64_t* xa, const uint32_t* tile, int64_t words, int64_t m0, int64_t row0, int n0,
                   int64_t rows, const VsGemm* g, RegionPrefetch* ahead, VsRowtileFill* fill, int64_t fill_step) {
    __m512 acc[R][NV];
    for (int n = 0; n < R; n++)
        for (int v = 0; v < NV; v++) acc[n][v] = _mm512_setzero_ps();
    for (int64_t word = 0; word < words; word++, xa += 8 * 32) {
        if ((word & 3) == 0) {
            ahead[0].advance();
            ahead[1].advance();
        }
        if (kFill) fill_some(fill, fill_step);  // the next tile, among the dots
        const uint64_t* t = (const uint64_t*)(tile + word * kTR * 16) + n0 * 8;
#pragma GCC unroll 8
        for (int jj = 0; jj < 8; jj++) {
            __m512bh x[NV];
            for (int v = 0; v < NV; v++) x[v] = (__m512bh)_mm512_loadu_si512(xa + jj * 32 + 8 * v);
            for (int n = 0; n < R; n++) {
                const __m512bh w = (__m512bh)_mm512_set1_epi64((long long)t[n * 8 + jj]);
                for (int v = 0; v < NV; v++) acc[n][v] = _mm512_dpbf16_ps(acc[n][v], x[v], w);
            }
        }
    }
    const int64_t live = rows - n0 < R ? rows - n0 : R;
    if (live <= 0) return;
    const __mmask16 valid = (__mmask16)((1u << live) - 1);
    const __m512 bias = g->bias ? _mm512_maskz_loadu_ps(valid, g->bias + row0 + n0) : _mm512_setzero_ps();
    for (int v = 0; v < NV; v++) {
        __m512i r[16];
        for (int n = 0; n < 16; n++) r[n] = n < R ? _mm512_castps_si512(acc[n][v]) : _mm512_setzero_si512();
        transpose16(r);  // r[j] lane n: lane j of acc[n][v]
        for (int i = 0; i < 8 && m0 + 8 * v + i < g->m; i++) {
            const __m512 pair_sum = _mm512_add_ps(_mm512_castsi512_ps(r[2 * i]), _mm512_castsi512_ps(r[2 * i + 1]));
            const __m512 out = _mm512_add_ps(pair_sum, bias);
            uint16_t* y = (uint16_t*)g->y + (m0 + 8 * v + i) * g->ldy + row0 + n0;
            _mm256_mask_storeu_epi16(y, valid, (__m256i)_mm512_cvtneps_pbh(out));
        }
    }
}

}  // namespace

extern "C" void vs_rowtile_fill_begin(VsRowtileFill* fill, const VsWeight* w, int64_t row0, int64_t rows,
                                      uint32_t* tile) {
    *fill = VsRowtileFill{w, tile, row0, rows, 0, 0, (const uint16_t*)w->values + w->row_offsets[row0]};
}

extern "C" void vs_rowtile_from_bitmap(const VsWeight* w, int64_t row0, int64_t rows, uint32_t* tile) {
    VsRowtileFill fill;
    vs_rowtile_fill_begin(&fill, w, row0, rows, tile);
    fill_some(&fill, rows * w->words);
}

extern "C" void vs_rowtile_from_nm24(const VsNM24Weight* w, int64_t row0, int64_t rows, uint32_t* tile) {
    // Record by record (a tile's 12 rows lie in two 8-row blocks, each one sequential
    // stream of records), each row's 64 columns as two words.
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
            _mm512_storeu_si512(tile + (2 * c * kTR + n) * 16, vs_expand16(mask, v));
            // The memory form: a 64-byte load from v + 16 would run past the last record.
            _mm512_storeu_si512(tile + ((2 * c + 1) * kTR + n) * 16,
                                _mm512_maskz_expandloadu_epi16((__mmask32)(mask >> 32), v + 16));
            record[n] += kRecord;
        }
    }
    zero_rows(tile, w->k / 32, rows);
}

extern "C" void vs_rowtile_pack_activations(const uint16_t* x, int64_t m, int64_t k, int64_t word_begin,
                                            int64_t word_end, uint64_t* xa) {
    const int64_t pairs = k / 2;
    const int64_t words = (k + 31) / 32;
    const uint32_t* x32 = (const uint32_t*)x;
    for (int64_t m0 = 0; m0 < m; m0 += 8) {
        uint64_t* block = xa + m0 / kBM * kBM * words * 8 + m0 % kBM;
        for (int64_t word = word_begin; word < word_end; word++) {
            const int64_t p = word * 16;
            const __mmask16 live = pairs - p >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (pairs - p)) - 1);
            __m512i r[8];
            for (int i = 0; i < 8; i++)
                r[i] = m0 + i < m ? _mm512_maskz_loadu_epi32(live, x32 + (m0 + i) * pairs + p) : _mm512_setzero_si512();
            transpose8x8_epi64(r);
            for (int jj = 0; jj < 8; jj++) _mm512_storeu_si512(block + (word * 8 + jj) * kBM, r[jj]);
        }
    }
}

namespace {

template <bool kFill>
void rowtile_multiply(const uint32_t* tile, int64_t rows, int64_t k, const uint64_t* xa, int64_t m, const VsGemm* g,
                      int64_t row0, const VsRegion* next, int regions, VsRowtileFill* fill) {
    const int64_t words = (k + 31) / 32;
    int64_t passes = 0;
    for (int64_t m0 = 0; m0 < m; m0 += kBM) passes += (m - m0 + 7) / 8 >= 3 ? 2 : 1;
    const int64_t steps = (words / 4 + 1) * passes;
    RegionPrefetch ahead[2] = {RegionPrefetch(nullptr, nullptr, 1), RegionPrefetch(nullptr, nullptr, 1)};
    for (int i = 0; i < regions && i < 2; i++) ahead[i] = RegionPrefetch(next[i].begin, next[i].end, steps);
    // One call of fill_some per word of a pass, rounded up: the passes fill every word.
    const int64_t fill_step = kFill ? (fill->rows * words + passes * words - 1) / (passes * words) : 0;
    for (int64_t m0 = 0; m0 < m; m0 += kBM) {
        const uint64_t* block = xa + m0 * words * 8;
        const int64_t vectors = (m - m0 + 7) / 8;
        if (vectors >= 4) {
            rowtile_block<4, 6, kFill>(block, tile, words, m0, row0, 0, rows, g, ahead, fill, fill_step);
            rowtile_block<4, 6, kFill>(block, tile, words, m0, row0, 6, rows, g, ahead, fill, fill_step);
        } else if (vectors == 3) {
            rowtile_block<3, 6, kFill>(block, tile, words, m0, row0, 0, rows, g, ahead, fill, fill_step);
            rowtile_block<3, 6, kFill>(block, tile, words, m0, row0, 6, rows, g, ahead, fill, fill_step);
        } else if (vectors == 2) {
            rowtile_block<2, 12, kFill>(block, tile, words, m0, row0, 0, rows, g, ahead, fill, fill_step);
        } else {
            rowtile_block<1, 12, kFill>(block, tile, words, m0, row0, 0, rows, g, ahead, fill, fill_step);
        }
    }
}

}  // namespace

extern "C" void vs_rowtile_multiply(const uint32_t* tile, int64_t rows, int64_t k, const uint64_t* xa, int64_t m,
                                    const VsGemm* g, int64_t row0, const VsRegion* next, int regions,
                                    VsRowtileFill* fill) {
    if (fill) rowtile_multiply<true>(tile, rows, k, xa, m, g, row0, next, regions, fill);
    else rowtile_multiply<false>(tile, rows, k, xa, m, g, row0, next, regions, fill);
}
