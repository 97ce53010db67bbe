// AVX-512 BF16: bf16 weights and bf16 activations meet in vdpbf16ps (pairs of
// products summed into fp32), so a word costs one expand-load and one dot per
// activation row, with no widening. Other dtypes take the plain AVX-512 kernel.
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>
#include "store.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi2,avx512bf16,popcnt")

namespace {

#include "prefetch.h"
#include "expand16.h"
#include "decode_walk.h"

const int64_t kRowChunk = 48;  // a multiple of every row block below

// x arrives with each pass of 8 activation rows interleaved word by word
// (vs_interleave_bf16): x[m0 * ldx + (word * 8 + i) * 32 + j] = row m0 + i, column
// 32 word + j. The pass then reaches its 8 vectors of a word through one pointer at
// constant offsets; with 8 row pointers the loop ran out of general registers and
// spilled them to vector registers, moving them back on every word. Same-process A/B
// (2-core EPYC, 2026-12-04, Llama-1B shapes, 2:4 and 70%, cold weights): 1.17-1.25x
// faster at M = 8 and 1.18-1.24x at M = 16; at M = 2 and 4 interleaving their passes
// too was 0.94-1.00x (the copy, and no spills to save), so they read x as it is.
template <int MB, int R>
void block(const VsWeight* w, const VsGemm* g, int64_t r0, int64_t m0, RegionPrefetch* ahead) {
    constexpr bool interleaved = MB == 8;
    const int64_t ldx = w->words * 32;
    const int64_t row_step = interleaved ? 32 : ldx;  // from one row's word to the next row's
    const uint16_t* x = (const uint16_t*)g->x + m0 * ldx;
    __m512 acc[R][MB];
    const uint16_t* v[R];
    const uint32_t* bits[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        v[r] = (const uint16_t*)w->values + w->row_offsets[r0 + r];
        bits[r] = w->bitmap + (r0 + r) * w->words;
#pragma GCC unroll 8
        for (int i = 0; i < MB; i++) acc[r][i] = _mm512_setzero_ps();
    }
    for (int64_t word = 0; word < w->words; word++) {
        const uint16_t* xw = x + word * 32 * (interleaved ? MB : 1);
        ahead[0].advance();
        ahead[1].advance();
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            uint32_t mask = bits[r][word];
            __m512i wv = vs_expand16(mask, v[r]);
            prefetch_ahead(v[r], bits[r], word);
            v[r] += _mm_popcnt_u32(mask);
            // Activations come straight from L1 as memory operands: registers go to
            // the R x MB accumulators.
#pragma GCC unroll 8
            for (int i = 0; i < MB; i++)
                acc[r][i] = _mm512_dpbf16_ps(acc[r][i], (__m512bh)wv, (__m512bh)_mm512_loadu_si512(xw + i * row_step));
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int i = 0; i < MB; i++) vs_store_out(g, m0 + i, r0 + r, _mm512_reduce_add_ps(acc[r][i]));
}

// One activation row (decode), a block of R weight rows, in slices of 128 words
// (4096 columns: 8 KiB of activations, which stay in L1): within a slice each row's
// words in one loop, four words a step into four accumulators. Measured on a 2-core
// EPYC (same process, calls alternating, M = 1, Llama-3-8B and Llama-1B shapes,
// 2026-12-04): walking the rows this way was 1.2-1.7x faster at 70% and 1.4-1.7x at
// 90% than walking the 16 rows side by side word by word (which kept 16 value
// pointers, more than there are registers; 16-22 GB/s at 70%, then 24-28 against a
// 30.6 GB/s read), and the slices 1.01-1.56x faster again than whole rows (most on
// 4096x4096 and 2048x8192, whose rows are one and two slices long, so the activation
// reuse alone does not explain it; the loop's code differs too). The value stream is
// prefetched 512 bytes ahead and the bitmap row every 16 words, as in the side-by-side
// form (where leaving it out took 1.5x as long); while it multiplies, the next block's
// values and bitmap rows (up to row `stop`) come into L2 (RegionPrefetch).
template <int R>
void decode_block(const VsWeight* w, const VsGemm* g, int64_t r0, int64_t stop, int64_t m0) {
    const uint16_t* x = (const uint16_t*)g->x + m0 * w->words * 32;
    // Inlined into decode_walk, so that its prefetch state stays in registers (not
    // inlined, the fp16 decode ran up to 1.15x slower).
    auto row_slice = [x](const uint16_t*& v, const uint32_t* bits, int w0, int w1,
                         RegionPrefetch* next) __attribute__((always_inline)) {
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
        int word = w0;
        for (; word + 4 <= w1; word += 4) {
            decode_prefetch(next, v, bits, word);
            // Each expand-load's address needs the popcounts before it; each dot
            // depends only on its own accumulator.
            const uint32_t k0 = bits[word], k1 = bits[word + 1], k2 = bits[word + 2], k3 = bits[word + 3];
            const __m512i e0 = vs_expand16(k0, v);
            v += _mm_popcnt_u32(k0);
            const __m512i e1 = vs_expand16(k1, v);
            v += _mm_popcnt_u32(k1);
            const __m512i e2 = vs_expand16(k2, v);
            v += _mm_popcnt_u32(k2);
            const __m512i e3 = vs_expand16(k3, v);
            v += _mm_popcnt_u32(k3);
            const uint16_t* xw = x + word * 32;
            a0 = _mm512_dpbf16_ps(a0, (__m512bh)e0, (__m512bh)_mm512_loadu_si512(xw));
            a1 = _mm512_dpbf16_ps(a1, (__m512bh)e1, (__m512bh)_mm512_loadu_si512(xw + 32));
            a2 = _mm512_dpbf16_ps(a2, (__m512bh)e2, (__m512bh)_mm512_loadu_si512(xw + 64));
            a3 = _mm512_dpbf16_ps(a3, (__m512bh)e3, (__m512bh)_mm512_loadu_si512(xw + 96));
        }
        for (; word < w1; word++) {
            const uint32_t k = bits[word];
            a0 = _mm512_dpbf16_ps(a0, (__m512bh)vs_expand16(k, v),
                                  (__m512bh)_mm512_loadu_si512(x + word * 32));
            v += _mm_popcnt_u32(k);
        }
        return _mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3));
    };
    // Slices of 4096 columns (8 KiB of activations), four words a step.
    decode_walk<uint16_t, R>(w, g, r0, stop, m0, 128, 4, row_slice);
}

// N words from `word` of two rows, a and b, expanded into ea and eb, and their value
// pointers moved past them: the step of the pair walk below.
template <int N>
__attribute__((always_inline)) inline void expand_two_rows(const uint32_t* bits_a, const uint32_t* bits_b, int word,
                                                           const uint16_t*& va, const uint16_t*& vb, __m512i* ea,
                                                           __m512i* eb) {
#pragma GCC unroll 4
    for (int j = 0; j < N; j++) {
        const uint32_t k = bits_a[word + j];
        ea[j] = vs_expand16(k, va);
        va += _mm_popcnt_u32(k);
    }
#pragma GCC unroll 4
    for (int j = 0; j < N; j++) {
        const uint32_t k = bits_b[word + j];
        eb[j] = vs_expand16(k, vb);
        vb += _mm_popcnt_u32(k);
    }
}

// How the pair walk below multiplies one word of both rows (`ea`, `eb`) with the
// activations at `xw`, into each row's sums for that word: the bf16 dot on x as it is,
// one sum a word, four words a step.
struct DotForm {
    using X = uint16_t;
    static constexpr int kWords = 4, kSums = 1;
    __attribute__((always_inline)) static inline void multiply(__m512* a, __m512* b, __m512i ea, __m512i eb,
                                                               const X* xw) {
        const __m512bh x = (__m512bh)_mm512_loadu_si512(xw);
        a[0] = _mm512_dpbf16_ps(a[0], (__m512bh)ea, x);
        b[0] = _mm512_dpbf16_ps(b[0], (__m512bh)eb, x);
    }
};

// fp32 FMAs instead of the bf16 dot: each expanded word is split into its even and odd
// columns as fp32 (a shift and an and) against the activation row split likewise
// (split_row: per word 16 even then 16 odd columns), two sums a word, two words a
// step. On an Emerald Rapids core a vpexpandw and a vdpbf16ps each hold the vector
// pipes ~0.5 ns and do not overlap, where the expand, shift, and and two FMAs take
// ~0.84 ns a word against ~1.0 (benchmarks/cpu_pipes.c); the walk is bound by that
// work as much as by memory at 70% and above. Same-process A/B against the dot form
// (2-core Emerald Rapids, 2026-12-06, cold weights, M = 1, Llama-3-8B shapes, two
// runs): 70% 0.97-1.05x (median 1.02x), 90% 1.22-1.24x; 50% no faster, so not there.
// Taken on CPUs with AMX (the cores measured); the EPYC, not measured, keeps the dot.
struct FmaForm {
    using X = float;
    static constexpr int kWords = 2, kSums = 2;
    __attribute__((always_inline)) static inline void multiply(__m512* a, __m512* b, __m512i ea, __m512i eb,
                                                               const X* xw) {
        const __m512i high = _mm512_set1_epi32((int)0xffff0000u);
        const __m512 x_even = _mm512_loadu_ps(xw), x_odd = _mm512_loadu_ps(xw + 16);
        a[0] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(ea, 16)), x_even, a[0]);
        a[1] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(ea, high)), x_odd, a[1]);
        b[0] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(eb, 16)), x_even, b[0]);
        b[1] = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(eb, high)), x_odd, b[1]);
    }
};

// The same two rows at a time: one activation load feeds both rows' products, so a
// word costs one load fewer. `x`: the decoded activation row as Form reads it.
// Measured with the dot on a 2-core EPYC (same process, calls alternating, both sides
// over the same cold copies, M = 1, the 12 Llama-3-8B, Llama-1B and SmolLM2 shapes,
// 2026-12-05): 1.01-1.10x at 70% (1.05-1.10x on the Llama shapes), 1.04-1.12x at 90%,
// 1.00-1.10x at 60%, but 0.94-0.99x at 50%, whose words carry the most bytes: there
// the loads are not what the walk waits on, and a pair's two value streams cost more
// than the load saved. Hence kPairsBelowDensity.
template <class Form, int R>
void decode_pair_block(const VsWeight* w, const VsGemm* g, int64_t r0, int64_t stop, int64_t m0,
                       const typename Form::X* x) {
    constexpr int kSums = Form::kWords * Form::kSums;
    static_assert(kSums == 4, "four sums a row, added in pairs");
    auto pair_slice = [x](const uint16_t*& va, const uint16_t*& vb, const uint32_t* bits_a, const uint32_t* bits_b,
                          int w0, int w1, RegionPrefetch* next, __m512& total_a, __m512& total_b)
        __attribute__((always_inline)) {
        __m512 a[kSums], b[kSums];
        for (int j = 0; j < kSums; j++) a[j] = b[j] = _mm512_setzero_ps();
        int word = w0;
        for (; word + Form::kWords <= w1; word += Form::kWords) {
            if ((word & 3) == 0) {  // the prefetches' pace: every four words
                decode_prefetch(next, va, bits_a, word);
                prefetch_ahead(vb, bits_b, word);
            }
            __m512i ea[Form::kWords], eb[Form::kWords];
            expand_two_rows<Form::kWords>(bits_a, bits_b, word, va, vb, ea, eb);
#pragma GCC unroll 4
            for (int j = 0; j < Form::kWords; j++)
                Form::multiply(a + j * Form::kSums, b + j * Form::kSums, ea[j], eb[j], x + (word + j) * 32);
        }
        for (; word < w1; word++) {
            __m512i ea, eb;
            expand_two_rows<1>(bits_a, bits_b, word, va, vb, &ea, &eb);
            Form::multiply(a, b, ea, eb, x + word * 32);
        }
        total_a = _mm512_add_ps(total_a, _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3])));
        total_b = _mm512_add_ps(total_b, _mm512_add_ps(_mm512_add_ps(b[0], b[1]), _mm512_add_ps(b[2], b[3])));
    };
    decode_walk<uint16_t, R, 2>(w, g, r0, stop, m0, 128, 4, pair_slice);
}

// Activation row `x` (bf16, `words` words) as FmaForm reads it.
void split_row(const uint16_t* x, int64_t words, float* xs) {
    const __m512i high = _mm512_set1_epi32((int)0xffff0000u);
    for (int64_t word = 0; word < words; word++) {
        const __m512i v = _mm512_loadu_si512(x + word * 32);
        _mm512_storeu_si512(xs + word * 32, _mm512_slli_epi32(v, 16));
        _mm512_storeu_si512(xs + word * 32 + 16, _mm512_and_si512(v, high));
    }
}

// Below this share of kept weights the one-row decode walks rows in pairs.
const double kPairsBelowDensity = 0.45;

// Does the pair walk multiply with fp32 FMAs (FmaForm) rather than the
// bf16 dot? On CPUs with AMX (where it was measured faster), unless
// VLLM_SPARSE_CPU_DECODE=dot or =fma names a form (tests and benchmarks; read on
// every call, as a decode call takes microseconds).
bool pairs_with_fmas() {
    const char* forced = getenv("VLLM_SPARSE_CPU_DECODE");
    if (forced && strcmp(forced, "dot") == 0) return false;
    if (forced && strcmp(forced, "fma") == 0) return true;
    return vs_amx_ready() != 0;
}

// `xs`: the row split for FmaForm, or null for the dot form.
template <int R>
void decode_rows(const VsWeight* w, const VsGemm* g, int64_t begin, int64_t end, int64_t stop, int64_t m0,
                 bool in_pairs, const float* xs) {
    int64_t r = begin;
    if (in_pairs && xs) {
        for (; r + R <= end; r += R) decode_pair_block<FmaForm, R>(w, g, r, stop, m0, xs);
    } else if (in_pairs) {
        const uint16_t* x = (const uint16_t*)g->x + m0 * w->words * 32;
        for (; r + R <= end; r += R) decode_pair_block<DotForm, R>(w, g, r, stop, m0, x);
    } else {
        for (; r + R <= end; r += R) decode_block<R>(w, g, r, stop, m0);
    }
    for (; r < end; r++) decode_block<1>(w, g, r, stop, m0);
}

template <int MB, int R>
void rows(const VsWeight* w, const VsGemm* g, int64_t begin, int64_t end, int64_t m0, RegionPrefetch* ahead) {
    int64_t r = begin;
    for (; r + R <= end; r += R) block<MB, R>(w, g, r, m0, ahead);
    for (; r < end; r++) block<MB, 1>(w, g, r, m0, ahead);
}

}  // namespace

extern "C" void vs_interleave_bf16(const uint16_t* x, int64_t m, int64_t ldx, int64_t word_begin, int64_t word_end,
                                   uint16_t* out) {
    int64_t m0 = 0;
    for (; m0 + 8 <= m; m0 += 8)
        for (int64_t word = word_begin; word < word_end; word++)
            for (int64_t i = 0; i < 8; i++)
                _mm512_storeu_si512(out + m0 * ldx + (word * 8 + i) * 32,
                                    _mm512_loadu_si512(x + (m0 + i) * ldx + word * 32));
    for (; m0 < m; m0++)  // rows of the smaller passes stay as they are
        for (int64_t word = word_begin; word < word_end; word++)
            _mm512_storeu_si512(out + m0 * ldx + word * 32, _mm512_loadu_si512(x + m0 * ldx + word * 32));
}

extern "C" void vs_gemm_avx512_bf16(const VsWeight* w, const VsGemm* g, int64_t row_begin, int64_t row_end) {
    if (w->dtype != VS_BF16) {
        vs_gemm_avx512(w, g, row_begin, row_end);
        return;
    }
    // The one-row decode walks rows in pairs below kPairsBelowDensity of the entries kept,
    // with fp32 FMAs on CPUs with AMX: the decoded row (the last, where M is odd) split once.
    const bool in_pairs = (double)w->row_offsets[w->n] < kPairsBelowDensity * (double)w->n * (double)w->k;
    float* xs = nullptr;
    if (in_pairs && g->m % 2 == 1 && pairs_with_fmas()) {
        xs = (float*)aligned_alloc(64, w->words * 32 * sizeof(float));
        if (xs) split_row((const uint16_t*)g->x + (g->m - 1) * w->words * 32, w->words, xs);
    }
    // Rows in chunks that stay in L2 while every activation block passes over them:
    // the weight streams from memory once whatever M is.
    for (int64_t c0 = row_begin; c0 < row_end; c0 += kRowChunk) {
        const int64_t c1 = c0 + kRowChunk < row_end ? c0 + kRowChunk : row_end;
        int64_t m0 = 0;
        // The next chunk comes into L2 over this chunk's passes (RegionPrefetch).
        const int64_t n1 = c1 + kRowChunk < row_end ? c1 + kRowChunk : row_end;
        // block() calls below, each `words` steps long (row tails aside).
        const int64_t chunk_rows = c1 - c0;
        const int64_t calls = (g->m / 8) * ((chunk_rows + 1) / 2) +
                              ((g->m % 8) / 4 + (g->m % 4) / 2) * ((chunk_rows + 3) / 4);
        const int64_t steps = (calls > 0 ? calls : 1) * w->words;
        RegionPrefetch ahead[2] = {
            RegionPrefetch((const uint16_t*)w->values + w->row_offsets[c1], (const uint16_t*)w->values + w->row_offsets[n1], steps),
            RegionPrefetch(w->bitmap + c1 * w->words, w->bitmap + n1 * w->words, steps)};
        // Passes of eight activation rows over two weight rows: each expand-load (~0.7 ns
        // per word here, as long as 2.5 dots) then feeds eight dots. With the next chunk
        // prefetched, M = 8 ran 1.1-1.5x faster than two passes of four over
        // four weight rows, and 1.1-1.4x faster than eight over three or six over four
        // (2-core EPYC, Llama-3-8B shapes, 50% and 70%).
        for (; m0 + 8 <= g->m; m0 += 8) rows<8, 2>(w, g, c0, c1, m0, ahead);
        for (; m0 + 4 <= g->m; m0 += 4) rows<4, 4>(w, g, c0, c1, m0, ahead);
        if (m0 + 2 <= g->m) { rows<2, 4>(w, g, c0, c1, m0, ahead); m0 += 2; }
        if (m0 < g->m) decode_rows<16>(w, g, c0, c1, row_end, m0, in_pairs, xs);
    }
    free(xs);
}
