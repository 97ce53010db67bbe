// The one-row decode's walk over a block of R weight rows, shared by the AVX-512
// bitmap kernels. Included inside each ISA file's anonymous namespace, after its
// target pragma and prefetch.h.
//
// The block is walked in slices of `slice_words` words (the activations of a slice
// stay in L1), and within a slice row by row (P = 1): `slice(v, bits, w0, w1, next)`
// multiplies one row's words [w0, w1) with the activations, advances `v` (the row's
// packed values) past them and returns 16 fp32 partial sums; or two rows at a time
// (P = 2): `slice(va, vb, bits_a, bits_b, w0, w1, next, sum_a, sum_b)` does so for
// rows a and b, adding into their sums, so that each activation vector it loads feeds
// two dots. Walking 16 rows side by side word by word instead kept a value pointer
// per row, more than the core has registers (measured in gemm_avx512_bf16.cpp). While
// the block multiplies, the next block's values and bitmap rows (up to row `stop`)
// come into L2: `next` holds their two RegionPrefetch, paced for one advance() per
// `step_words` words of every P rows.
template <typename T, int R, int P = 1, typename Slice>
inline void decode_walk(const VsWeight* w, const VsGemm* g, int64_t r0, int64_t stop, int64_t m0, int slice_words,
                        int step_words, Slice slice) {
    static_assert(P == 1 || (P == 2 && R % 2 == 0), "rows go one or two at a time");
    const int words = (int)w->words;
    const T* values = (const T*)w->values;
    const int64_t next_end = r0 + 2 * R < stop ? r0 + 2 * R : stop;
    const int64_t next_begin = r0 + R < next_end ? r0 + R : next_end;
    const int64_t steps = (int64_t)(R / P) * (words / step_words > 0 ? words / step_words : 1);
    RegionPrefetch next[2] = {
        RegionPrefetch(values + w->row_offsets[next_begin], values + w->row_offsets[next_end], steps),
        RegionPrefetch(w->bitmap + next_begin * w->words, w->bitmap + next_end * w->words, steps)};
    const T* row_values[R];  // where each row's next slice starts
    __m512 total[R];
    for (int r = 0; r < R; r++) {
        row_values[r] = values + w->row_offsets[r0 + r];
        total[r] = _mm512_setzero_ps();
    }
    for (int w0 = 0; w0 < words; w0 += slice_words) {
        const int w1 = w0 + slice_words < words ? w0 + slice_words : words;
        for (int r = 0; r < R; r += P) {
            const uint32_t* bits = w->bitmap + (r0 + r) * w->words;
            if constexpr (P == 1) {
                const T* v = row_values[r];  // a local, so that it can live in a register
                total[r] = _mm512_add_ps(total[r], slice(v, bits, w0, w1, next));
                row_values[r] = v;
            } else {
                const T* va = row_values[r];
                const T* vb = row_values[r + 1];
                slice(va, vb, bits, bits + w->words, w0, w1, next, total[r], total[r + 1]);
                row_values[r] = va;
                row_values[r + 1] = vb;
            }
        }
    }
    for (int r = 0; r < R; r++) vs_store_out(g, m0, r0 + r, _mm512_reduce_add_ps(total[r]));
}

// Per step of a row slice: the next block's share of L2 prefetches, and this row's
// values 512 bytes ahead and bitmap every 16 words (prefetch_ahead).
static inline void decode_prefetch(RegionPrefetch* next, const void* v, const uint32_t* bits, int word) {
    next[0].advance();
    next[1].advance();
    prefetch_ahead(v, bits, word);
}
