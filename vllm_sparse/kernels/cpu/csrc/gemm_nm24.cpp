// 2:4 weights without an expand instruction (AVX-512 BW + VBMI + BF16).
//
// vpexpandw costs ~0.7 ns per 32 entries on the AMD EPYC machine we measure, as long
// as 2.5 dot products (benchmarks/cpu_pipes.c), a cost the bitmap kernel pays per
// word. A 2:4 weight has exactly two stored values per group of four columns, so
// instead of moving the weights to their columns this kernel moves the activations
// to the weights: each stored value carries a 2-bit selector (its column within the
// group), 32 selectors (64 columns) fit in one 64-bit word, vpmultishiftqb + and +
// add turn that word into 32 lane indices, and vpermt2w gathers the 32 matching
// activations from the 64 columns; vdpbf16ps multiplies them with the 32 packed
// values. No zero is multiplied.
//
// The weight comes in blocks of 8 rows, each one sequential run of records (spmm.h):
// on the EPYC that made decode ~1.2x faster than row-by-row storage (two streams per
// row). A block is read as a few streams at once (block_rows).
#include <immintrin.h>
#include "store.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vbmi2,avx512bf16,popcnt")

namespace {

#include "nm24_records.h"

// Lane l of 32 (16-bit): column 4 * (l / 2) + selector l of a 64-column chunk. The
// group base has its low two bits clear, so (bits & 3) | base is the sum, in one
// vpternlogd instead of an and and an add: 0.99-1.14x, median 1.04x, at M = 1, 4, 8
// and 16 on the Llama shapes (same-process A/B, 2-core EPYC, 2026-12-04).
inline __m512i gather_index(uint64_t selectors, __m512i shift_control, __m512i group_base) {
    __m512i bits = _mm512_multishift_epi64_epi8(shift_control, _mm512_set1_epi64((long long)selectors));
    return _mm512_ternarylogic_epi32(bits, _mm512_set1_epi16(3), group_base, 0xEA);  // (A & B) | C
}

// The 8 rows of block `block` against activation rows [m0, m0 + MB), the block's
// records read as `Streams` streams (visit_records). Same-process A/B,
// 2-core Xeon (Emerald Rapids), 2026-12-06, cold weights, M = 1, Llama-3-8B shapes:
// four streams 1.24-1.31x faster than one (two 1.20-1.23x, eight 1.17-1.23x), close to
// the bitmap kernel's decode, which keeps many rows' streams in flight. Prefetching
// the one stream further ahead (16-32 KiB, to L1 or L2) gained nothing. Passes of two
// activation rows take two streams: 1.29-1.38x faster than one at M = 2 (four:
// 1.27-1.35x). Not measured on the EPYC.
//
// The first pass over a block also brings the next block (`next`, or null) into L2, a
// record for each record it reads, as the bitmap kernel's decode does with its next
// rows: at M = 1 1.14-1.19x faster again (same A/B, four Llama shapes, two runs; to
// L3 instead of L2 the same), and faster than the bitmap decode by 1.10-1.16x; at
// M = 2 1.18-1.30x, at M = 3 1.09-1.22x.
template <int MB, int Streams>
void block_rows(const VsNM24Weight* w, const VsGemm* g, int64_t block, int64_t m0, __m512i control, __m512i base,
                const uint8_t* next) {
    const int R = kRows;
    const int chunks = (int)(w->k / 64);
    const uint16_t* x = (const uint16_t*)g->x + m0 * w->k;
    const uint8_t* records = block_records(w, block);
    __m512 acc[R][MB];
    for (int r = 0; r < R; r++)
        for (int i = 0; i < MB; i++) acc[r][i] = _mm512_setzero_ps();
    auto chunk = [&](int c) __attribute__((always_inline)) {
        const uint8_t* record = records + c * kRecord;
        prefetch_ahead(record);
        if (next) prefetch_record_to_l2(next + c * kRecord);
        __m512i xlo[MB], xhi[MB];
        for (int i = 0; i < MB; i++) {
            xlo[i] = _mm512_loadu_si512(x + i * w->k + c * 64);
            xhi[i] = _mm512_loadu_si512(x + i * w->k + c * 64 + 32);
        }
        for (int r = 0; r < R; r++) {
            const __m512i idx = gather_index(record_selectors(record, r), control, base);
            const __m512i wv = _mm512_loadu_si512(record_values(record, r));
            for (int i = 0; i < MB; i++) {
                const __m512i xg = _mm512_permutex2var_epi16(xlo[i], idx, xhi[i]);
                acc[r][i] = _mm512_dpbf16_ps(acc[r][i], (__m512bh)wv, (__m512bh)xg);
            }
        }
    };
    visit_records<Streams>(chunks, chunk);
    for (int r = 0; r < R; r++) {
        const int64_t row = block * kRows + r;
        if (row < w->n)
            for (int i = 0; i < MB; i++) vs_store_out(g, m0 + i, row, _mm512_reduce_add_ps(acc[r][i]));
    }
}

}  // namespace

extern "C" void vs_gemm_nm24_avx512(const VsNM24Weight* w, const VsGemm* g, int64_t block_begin,
                                    int64_t block_end) {
    uint8_t control_bytes[64];
    uint16_t base_words[32];
    for (int j = 0; j < 64; j++) control_bytes[j] = (uint8_t)(2 * (j / 2));  // byte 2l <- bits 2l.. of the word
    for (int l = 0; l < 32; l++) base_words[l] = (uint16_t)(4 * (l / 2));
    const __m512i control = _mm512_loadu_si512(control_bytes);
    const __m512i base = _mm512_loadu_si512(base_words);
    // Every pass over a block reads it from L2 after the first (a block of K = 14336
    // is 129 KiB): the weight streams from memory once whatever M is. Passes of two
    // activation rows over the whole block (16 accumulators + 4 activation
    // registers): measured 1.3-1.5x faster at M = 4..16 than passes of four rows over
    // half a block, whose 16 + 8 registers left the compiler too few for the rest.
    for (int64_t b = block_begin; b < block_end; b++) {
        const uint8_t* next = b + 1 < block_end ? block_records(w, b + 1) : nullptr;
        int64_t m0 = 0;
        for (; m0 + 2 <= g->m; m0 += 2) block_rows<2, 2>(w, g, b, m0, control, base, m0 == 0 ? next : nullptr);
        if (m0 < g->m) block_rows<1, 4>(w, g, b, m0, control, base, m0 == 0 ? next : nullptr);
    }
}

// Dense rows of a 2:4 weight (the large-M path off the AVX-512 BF16 panels): two
// masked expand-loads place a record row's 32 values among its 64 columns.
extern "C" void vs_unpack_nm24_avx512(const VsNM24Weight* w, int64_t row_begin, int64_t row_end, uint16_t* dst) {
    unpack_rows(w, row_begin, row_end, dst, [](uint64_t selectors, const uint16_t* v, uint16_t* out) {
        const uint64_t mask = selector_mask(selectors);
        _mm512_storeu_si512(out, _mm512_maskz_expandloadu_epi16((__mmask32)(uint32_t)mask, v));
        _mm512_storeu_si512(out + 32, _mm512_maskz_expandloadu_epi16((__mmask32)(uint32_t)(mask >> 32), v + 16));
    });
}
