// 2:4 weights on AVX2 + FMA, in the layout of gemm_nm24.cpp (blocks of 8 rows, one
// 576-byte record per 64 columns: 8 selectors, then 8 x 32 bf16 values).
//
// The bitmap kernel's AVX2 path spends a table lookup, a byte shuffle and a widening
// on every 8 columns, zeros included. Here the activations are gathered to the
// values instead (vpermps, by each value's 2-bit selector), with the block's 8 rows
// in the vector lanes (block_rows). No zero is multiplied.
#include <immintrin.h>
#include "store.h"

#pragma GCC target("avx2,fma,f16c,popcnt")

namespace {

#include "nm24_records.h"

// r[j] lane i <- r[i] lane j: an 8 x 8 block of 32-bit words transposed in registers.
inline void transpose8x8_epi32(__m256i r[8]) {
    __m256i a[8], b[8];
    for (int i = 0; i < 8; i += 2) {
        a[i] = _mm256_unpacklo_epi32(r[i], r[i + 1]);
        a[i + 1] = _mm256_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        b[i] = _mm256_unpacklo_epi64(a[i], a[i + 2]);
        b[i + 1] = _mm256_unpackhi_epi64(a[i], a[i + 2]);
        b[i + 2] = _mm256_unpacklo_epi64(a[i + 1], a[i + 3]);
        b[i + 3] = _mm256_unpackhi_epi64(a[i + 1], a[i + 3]);
    }
    for (int i = 0; i < 4; i++) {
        r[i] = _mm256_permute2x128_si256(b[i], b[i + 4], 0x20);
        r[i + 4] = _mm256_permute2x128_si256(b[i], b[i + 4], 0x31);
    }
}

// Whole records asked for this many ahead on a block's first pass (the later passes
// read it from L2 and ask for three lines 2 KiB ahead, as the decode kernels do).
// Same-process A/Bs against the per-row kernel this file had before (2026-12-05, cold
// weights, 2 threads, Llama and SmolLM2 shapes): with it 1.24-1.74x at M = 1, with
// the three lines on every pass 0.92-1.08x; 8 records ahead and whole records on
// every pass no better.
const int kFirstPassRecordsAhead = 4;
// A block's records read as two streams (visit_records): 1.04-1.15x faster than one
// at M = 1 (same-process A/B, 2-core Xeon, Emerald Rapids, this path forced, cold
// weights, Llama-3-8B shapes, 2026-12-06; four streams 0.90-1.10x), 0.98-1.05x at M = 2.
const int kStreams = 2;

// The 8 rows of block `block` against fp32 activation row m, the rows in the lanes:
// per 8 groups of a record, an 8 x 8 transpose puts each group's 8 value pairs in one
// register (lane r: row r), the group's four activations are one 128-bit load, and
// two vpermps (lane r <- the columns of the row's two selectors) and two FMAs (even
// and odd values, widened by a shift and a mask) take 16 values: about 14
// instructions where the per-row kernel this replaced spent about 14 on 8 values
// (its selectors widened per row and quarter, two vpermps and a blend per 8).
void block_rows(const VsNM24Weight* w, const VsGemm* g, int64_t block, int64_t m) {
    const int chunks = (int)(w->k / 64);
    const float* x = (const float*)g->x + m * w->k;
    const uint8_t* records = block_records(w, block);
    const __m256i three = _mm256_set1_epi32(3), high = _mm256_set1_epi32((int)0xffff0000u);
    __m256 acc[4];
    for (int i = 0; i < 4; i++) acc[i] = _mm256_setzero_ps();
    auto chunk = [&](int c) __attribute__((always_inline)) {
        const uint8_t* record = records + c * kRecord;
        if (m == 0)
            prefetch_record(record, kFirstPassRecordsAhead);
        else
            prefetch_ahead(record);
        // Selector words of rows 0-3 and 4-7; shuffled to lane r = row r's low (groups
        // 0-7) and high (8-15) 32 bits.
        const __m256i s03 = _mm256_loadu_si256((const __m256i*)record);
        const __m256i s47 = _mm256_loadu_si256((const __m256i*)record + 1);
        const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
        const __m256i halves[2] = {
            _mm256_permutevar8x32_epi32(
                _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(s03), _mm256_castsi256_ps(s47), 0x88)), order),
            _mm256_permutevar8x32_epi32(
                _mm256_castps_si256(_mm256_shuffle_ps(_mm256_castsi256_ps(s03), _mm256_castsi256_ps(s47), 0xDD)), order)};
        for (int half = 0; half < 2; half++) {
            __m256i v[8];
            for (int r = 0; r < kRows; r++)
                v[r] = _mm256_loadu_si256((const __m256i*)(record_values(record, r) + 16 * half));
            transpose8x8_epi32(v);  // v[j]: lane r = row r's pair of group 8 half + j
            const float* xh = x + c * 64 + 32 * half;
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++) {
                const __m256i sel = _mm256_srli_epi32(halves[half], 4 * j);
                const __m256 xs = _mm256_castps128_ps256(_mm_loadu_ps(xh + 4 * j));
                const __m256 x0 = _mm256_permutevar8x32_ps(xs, _mm256_and_si256(sel, three));
                const __m256 x1 = _mm256_permutevar8x32_ps(xs, _mm256_and_si256(_mm256_srli_epi32(sel, 2), three));
                const __m256 w0 = _mm256_castsi256_ps(_mm256_slli_epi32(v[j], 16));
                const __m256 w1 = _mm256_castsi256_ps(_mm256_and_si256(v[j], high));
                acc[2 * (j & 1)] = _mm256_fmadd_ps(w0, x0, acc[2 * (j & 1)]);
                acc[2 * (j & 1) + 1] = _mm256_fmadd_ps(w1, x1, acc[2 * (j & 1) + 1]);
            }
        }
    };
    visit_records<kStreams>(chunks, chunk);
    float sums[8];
    _mm256_storeu_ps(sums, _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
    for (int r = 0; r < kRows; r++) {
        const int64_t row = block * kRows + r;
        if (row < w->n) vs_store_out(g, m, row, sums[r]);
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
    // One activation row per pass over a block (later passes read the block from L2):
    // sixteen ymm registers hold one row's accumulators, a transposed half record and
    // the constants, not two rows'.
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
