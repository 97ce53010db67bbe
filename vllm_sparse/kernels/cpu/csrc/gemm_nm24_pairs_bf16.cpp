// 2:4 weights times several activation rows on AVX-512 BF16, multiplying only the
// kept half of the weight.
//
// The other large-M paths decompress the weight to its dense form and do the dense
// GEMM's dot products, zeros included, so where oneDNN is compute-bound (M >= 16)
// they can at best tie with it. A 2:4 group keeps two of its four columns, one of six
// column pairs. So the activations are laid out once per call as, for every group
// and every one of its six pairs (a, b), vectors whose lanes are activation rows,
// lane i holding the bf16 pair (x[i, 4g + a], x[i, 4g + b]). A weight row's two
// values of a group are one 32-bit pair: broadcast, one vdpbf16ps multiplies them
// with the vector of the pair the group's selectors name, for 16 activation rows (8
// with ymm vectors, for M <= 8). Half the dense GEMM's dot products; per group and
// weight row the extra work is a selector lookup, shared by every vector of
// activation rows. Measured 1.0-1.36x of oneDNN at M = 16-32, not 2x: per weight row
// and group the selector decode (six scalar instructions and a table load) and the
// broadcast come on top of one to four dots (the dots' loads from L1 cost nothing
// extra: benchmarks/cpu_pipes.c).
//
// The pairs of one group take 6 x (vectors of activation rows) x 64 bytes, three
// times the activations' own bytes, so the columns are walked in chunks whose pairs
// stay in L1 (the caller picks them), the fp32 sums carried between chunks in
// `partial`. Layouts:
//   xp: ((g * 6 + pair) * vectors + v) * lanes * 2 bf16, lane i of vector v = row
//       m0 + v * lanes + i (zero past m);
//   partial: ((block - block_begin) * 8 + row) * vectors * lanes + v * lanes + i.
// Relies on the layout's guarantee (spmm.h, layout24.py) that a group's two
// selectors name two different columns in increasing order.
#include <immintrin.h>
#include "store.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512bf16,popcnt")

namespace {

#include "nm24_records.h"
#include "transpose16.h"

const int kPairs = VS_NM24_PAIRS;

// Pair index of a group's selector nibble (first column | second column << 2):
// (0, 1) = 4 -> 0, (0, 2) = 8 -> 1, (0, 3) = 12 -> 2, (1, 2) = 9 -> 3, (1, 3) = 13 -> 4,
// (2, 3) = 14 -> 5; the layout has no other nibble.
inline int pair_of_nibble(int nibble) {
    static const int8_t pair[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 3, 0, 0, 2, 4, 5, 0};
    return pair[nibble];
}

// vpermt2w control building pair p's vector from a group's rows 0..7 (first source)
// and 8..15 (second), each row's four columns in one 64-bit word: lane i <- the row's
// columns first[p] and second[p].
inline __m512i pair_control(int p) {
    static const int first[kPairs] = {0, 0, 0, 1, 1, 2}, second[kPairs] = {1, 2, 3, 2, 3, 3};
    uint16_t control[32];
    for (int i = 0; i < 16; i++) {
        const int row = i < 8 ? 4 * i : 32 + 4 * (i - 8);
        control[2 * i] = (uint16_t)(row + first[p]);
        control[2 * i + 1] = (uint16_t)(row + second[p]);
    }
    return _mm512_loadu_si512(control);
}

// 8 rows of a 32-column word: r[q] = group q's four columns of rows 0..7 (zero past m).
inline void load_groups(const uint16_t* x, int64_t k, int64_t row0, int64_t m, int64_t word, __m512i r[8]) {
    for (int i = 0; i < 8; i++)
        r[i] = row0 + i < m ? _mm512_loadu_si512(x + (row0 + i) * k + word * 32) : _mm512_setzero_si512();
    transpose8x8_epi64(r);
}

// Vectors of 16 (zmm) or 8 (ymm) activation rows.
template <int L>
struct Lanes;

template <>
struct Lanes<16> {
    typedef __m512 Acc;
    typedef __m512i Weight;
    static Acc zero() { return _mm512_setzero_ps(); }
    static Weight broadcast(uint32_t pair) { return _mm512_set1_epi32((int)pair); }
    static Acc dot(Acc acc, const uint16_t* x, Weight w) {
        return _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(x), (__m512bh)w);
    }
    static Acc load(const float* p) { return _mm512_loadu_ps(p); }
    static void store(float* p, Acc a) { _mm512_storeu_ps(p, a); }
};

template <>
struct Lanes<8> {
    typedef __m256 Acc;
    typedef __m256i Weight;
    static Acc zero() { return _mm256_setzero_ps(); }
    static Weight broadcast(uint32_t pair) { return _mm256_set1_epi32((int)pair); }
    static Acc dot(Acc acc, const uint16_t* x, Weight w) {
        return _mm256_dpbf16_ps(acc, (__m256bh)_mm256_loadu_si256((const __m256i*)x), (__m256bh)w);
    }
    static Acc load(const float* p) { return _mm256_loadu_ps(p); }
    static void store(float* p, Acc a) { _mm256_storeu_ps(p, a); }
};

// Rows [r0, r0 + R) of 8-row block `block` over chunks [c0, c1) of 64 columns.
template <int L, int V, int R>
void block_rows(const VsNM24Weight* w, const uint16_t* xp, int64_t block, int r0, int64_t c0, int64_t c1,
                float* partial, bool first, bool last, const VsGemm* g, int64_t m0) {
    typedef Lanes<L> T;
    const int64_t group_stride = (int64_t)kPairs * V * L * 2;  // bf16 per group of xp
    typename T::Acc acc[R][V];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < V; v++) acc[r][v] = first ? T::zero() : T::load(partial + (r0 + r) * V * L + v * L);
    const uint8_t* record = block_records(w, block) + c0 * kRecord;
    const int64_t block_bytes = w->k / 64 * kRecord;
    for (int64_t c = c0; c < c1; c++, record += kRecord) {
        // The blocks are walked across, one column chunk at a time: ask for the same
        // record two blocks on.
        if (r0 == 0)
            for (int line = 0; line < kRecord; line += 64)
                _mm_prefetch((const char*)record + 2 * block_bytes + line, _MM_HINT_T0);
        const uint16_t* xg = xp + c * 16 * group_stride;
        uint64_t selectors[R];
        const uint32_t* pairs[R];
        for (int r = 0; r < R; r++) {
            selectors[r] = record_selectors(record, r0 + r);
            pairs[r] = (const uint32_t*)record_values(record, r0 + r);
        }
#pragma GCC unroll 4
        for (int j = 0; j < 16; j++, xg += group_stride) {
            for (int r = 0; r < R; r++) {
                const uint16_t* x = xg + pair_of_nibble((int)(selectors[r] >> (4 * j)) & 15) * V * L * 2;
                const typename T::Weight wv = T::broadcast(pairs[r][j]);
                for (int v = 0; v < V; v++) acc[r][v] = T::dot(acc[r][v], x + v * L * 2, wv);
            }
        }
    }
    if (!last) {
        for (int r = 0; r < R; r++)
            for (int v = 0; v < V; v++) T::store(partial + (r0 + r) * V * L + v * L, acc[r][v]);
        return;
    }
    for (int r = 0; r < R; r++) {
        const int64_t row = block * kRows + r0 + r;
        if (row >= w->n) continue;
        for (int v = 0; v < V; v++) {
            float sums[L];
            T::store(sums, acc[r][v]);
            for (int i = 0; i < L && m0 + v * L + i < g->m; i++) vs_store_out(g, m0 + v * L + i, row, sums[i]);
        }
    }
}

template <int L, int V>
void blocks(const VsNM24Weight* w, const uint16_t* xp, int64_t block_begin, int64_t block_end, int64_t c0,
            int64_t c1, float* partial, bool first, bool last, const VsGemm* g, int64_t m0) {
    // Up to 16 accumulators: 8 rows at a time for one or two vectors, else 4.
    const int R = V <= 2 ? 8 : 4;
    for (int64_t b = block_begin; b < block_end; b++) {
        float* p = partial + (b - block_begin) * kRows * V * L;
        for (int r0 = 0; r0 < kRows; r0 += R) block_rows<L, V, R>(w, xp, b, r0, c0, c1, p, first, last, g, m0);
    }
}

}  // namespace

extern "C" void vs_pairs_pack_activations(const uint16_t* x, int64_t m, int64_t k, int64_t m0, int lanes,
                                          int vectors, int64_t word_begin, int64_t word_end, uint16_t* xp) {
    __m512i control[kPairs];
    for (int p = 0; p < kPairs; p++) control[p] = pair_control(p);
    const int64_t group_stride = (int64_t)kPairs * vectors * lanes * 2;
    for (int64_t word = word_begin; word < word_end; word++)
        for (int v = 0; v < vectors; v++) {
            const int64_t row0 = m0 + (int64_t)v * lanes;
            __m512i lo[8], hi[8];
            load_groups(x, k, row0, m, word, lo);
            if (lanes == 16) load_groups(x, k, row0 + 8, m, word, hi);
            else
                for (int q = 0; q < 8; q++) hi[q] = _mm512_setzero_si512();
            for (int q = 0; q < 8; q++) {
                uint16_t* out = xp + (word * 8 + q) * group_stride + (int64_t)v * lanes * 2;
                for (int p = 0; p < kPairs; p++) {
                    const __m512i pair = _mm512_permutex2var_epi16(lo[q], control[p], hi[q]);
                    uint16_t* dst = out + (int64_t)p * vectors * lanes * 2;
                    if (lanes == 16) _mm512_storeu_si512(dst, pair);
                    else _mm256_storeu_si256((__m256i*)dst, _mm512_castsi512_si256(pair));
                }
            }
        }
}

extern "C" void vs_pairs_multiply(const VsNM24Weight* w, const uint16_t* xp, int lanes, int vectors,
                                  int64_t block_begin, int64_t block_end, int64_t chunk_begin, int64_t chunk_end,
                                  float* partial, int first, int last, const VsGemm* g, int64_t m0) {
    const int64_t b0 = block_begin, b1 = block_end, c0 = chunk_begin, c1 = chunk_end;
    if (lanes == 8) return blocks<8, 1>(w, xp, b0, b1, c0, c1, partial, first, last, g, m0);
    switch (vectors) {
        case 1: return blocks<16, 1>(w, xp, b0, b1, c0, c1, partial, first, last, g, m0);
        case 2: return blocks<16, 2>(w, xp, b0, b1, c0, c1, partial, first, last, g, m0);
        case 3: return blocks<16, 3>(w, xp, b0, b1, c0, c1, partial, first, last, g, m0);
        default: return blocks<16, 4>(w, xp, b0, b1, c0, c1, partial, first, last, g, m0);
    }
}
