// 2:4 weights on AVX2 + FMA, in the layout of gemm_nm24.cpp (blocks of 8 rows, one
// 576-byte record per 64 columns: 8 selectors, then 8 x 32 bf16 values).
//
// The bitmap kernel's AVX2 path spends a table lookup, a byte shuffle and a widening
// on every 8 columns, zeros included. Here the 8 values of a 16-column quarter (four
// groups) are widened to fp32 once and their 8 activations are gathered to them: a
// value's column within its 8-column half is 4 * (its group's place in the half) +
// its selector, so one vpermps per half and a blend fetch them from the fp32
// activations. No zero is multiplied.
#include <immintrin.h>
#include "store.h"

#pragma GCC target("avx2,fma,f16c,popcnt")

namespace {

#include "nm24_records.h"

inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Lane j of 8 (value 8q + j of a chunk, group 4q + j / 2): its column within its
// 8-column half of the quarter. `selectors16` holds the quarter's 8 selectors.
inline __m256i quarter_index(uint32_t selectors16, __m256i shifts, __m256i group_base) {
    const __m256i sel = _mm256_srlv_epi32(_mm256_set1_epi32((int)selectors16), shifts);
    return _mm256_add_epi32(_mm256_and_si256(sel, _mm256_set1_epi32(3)), group_base);
}

// The 8 rows of block `block` against fp32 activation row m.
void block_rows(const VsNM24Weight* w, const VsGemm* g, int64_t block, int64_t m) {
    const int chunks = (int)(w->k / 64);
    const float* x = (const float*)g->x + m * w->k;
    const uint8_t* record = block_records(w, block);
    const __m256i shifts = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    const __m256i group_base = _mm256_setr_epi32(0, 0, 4, 4, 0, 0, 4, 4);
    __m256 acc[kRows];
    for (int r = 0; r < kRows; r++) acc[r] = _mm256_setzero_ps();
    for (int c = 0; c < chunks; c++, record += kRecord) {
        prefetch_ahead(record);
        for (int q = 0; q < 4; q++) {
            const __m256 lo = _mm256_loadu_ps(x + c * 64 + q * 16);
            const __m256 hi = _mm256_loadu_ps(x + c * 64 + q * 16 + 8);
            for (int r = 0; r < kRows; r++) {
                const uint32_t quarter = (uint32_t)(record_selectors(record, r) >> (16 * q)) & 0xffffu;
                const __m256i idx = quarter_index(quarter, shifts, group_base);
                const __m128i raw = _mm_loadu_si128((const __m128i*)(record_values(record, r) + q * 8));
                const __m256 wv = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
                const __m256 xg = _mm256_blend_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx), 0xF0);
                acc[r] = _mm256_fmadd_ps(wv, xg, acc[r]);
            }
        }
    }
    for (int r = 0; r < kRows; r++) {
        const int64_t row = block * kRows + r;
        if (row < w->n) vs_store_out(g, m, row, hsum(acc[r]));
    }
}

// pshufb control placing the four values of two groups (one selector byte: value v's
// selector in bits 2v, 2v+1) on their 8 columns, zeros elsewhere.
struct PlaceTable {
    uint8_t control[256][16];
    PlaceTable() {
        for (int s = 0; s < 256; s++) {
            for (int j = 0; j < 16; j++) control[s][j] = 0x80;  // pshufb writes 0
            for (int v = 0; v < 4; v++) {
                const int column = 4 * (v / 2) + ((s >> (2 * v)) & 3);
                control[s][2 * column] = (uint8_t)(2 * v);
                control[s][2 * column + 1] = (uint8_t)(2 * v + 1);
            }
        }
    }
};

}  // namespace

extern "C" void vs_gemm_nm24_avx2(const VsNM24Weight* w, const VsGemm* g, int64_t block_begin, int64_t block_end) {
    // One activation row per pass over a block (8 accumulators; later passes read the
    // block from L2): with two rows per pass the sixteen ymm registers did not hold the
    // accumulators, which went to the stack, and M = 2 ran slower than two passes.
    for (int64_t b = block_begin; b < block_end; b++)
        for (int64_t m = 0; m < g->m; m++) block_rows(w, g, b, m);
}

// Dense rows of a 2:4 weight (the large-M path), 8 columns per byte shuffle.
extern "C" void vs_unpack_nm24_avx2(const VsNM24Weight* w, int64_t row_begin, int64_t row_end, uint16_t* dst) {
    static const PlaceTable table;
    unpack_rows(w, row_begin, row_end, dst, [](uint64_t selectors, const uint16_t* v, uint16_t* out) {
        for (int t = 0; t < 8; t++) {  // 8 columns, 4 values each
            const __m128i raw = _mm_loadl_epi64((const __m128i*)(v + 4 * t));  // its 4 values only
            const __m128i control = _mm_loadu_si128((const __m128i*)table.control[(selectors >> (8 * t)) & 0xff]);
            _mm_storeu_si128((__m128i*)(out + 8 * t), _mm_shuffle_epi8(raw, control));
        }
    });
}
