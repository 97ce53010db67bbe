// AVX2 + FMA + F16C: no expand instruction, so each bitmap byte (8 columns) indexes
// a table of byte shuffles (16-bit values) or lane permutations (fp32 values) that
// moves its packed values to their columns and zeroes the rest; the 8 weights are
// widened to fp32 and multiplied into every activation row of the block. For bf16 at
// one or two activation rows a single shuffle both places and widens (see
// widen_bf16).
#include <immintrin.h>
#include "store.h"

#pragma GCC target("avx2,fma,f16c,popcnt")

namespace {

#include "prefetch.h"

const int64_t kRowChunk = 24;  // a multiple of every row block below

struct Tables {
    uint8_t shuffle16[256][16];  // pshufb control: lane j <- packed 16-bit value rank(j)
    int32_t permute32[256][8];   // vpermps index: lane j <- packed fp32 value rank(j)
    // vpshufb control on the 16 value bytes broadcast to both 128-bit halves: fp32
    // lane j (bytes 4j..4j+3, in half j / 4) takes packed bf16 value rank(j) as its
    // upper two bytes and zeros below (a bf16 is the top half of its fp32).
    alignas(32) uint8_t widen_bf16[256][32];
    Tables() {
        for (int b = 0; b < 256; b++) {
            int rank = 0;
            for (int j = 0; j < 8; j++) {
                if (b & (1 << j)) {
                    shuffle16[b][2 * j] = (uint8_t)(2 * rank);
                    shuffle16[b][2 * j + 1] = (uint8_t)(2 * rank + 1);
                    permute32[b][j] = rank;
                    rank++;
                } else {
                    shuffle16[b][2 * j] = shuffle16[b][2 * j + 1] = 0x80;  // pshufb writes 0
                    permute32[b][j] = 0;
                }
                widen_bf16[b][4 * j] = widen_bf16[b][4 * j + 1] = 0x80;
                widen_bf16[b][4 * j + 2] = shuffle16[b][2 * j];
                widen_bf16[b][4 * j + 3] = shuffle16[b][2 * j + 1];
            }
        }
    }
};

const Tables& tables() {
    static const Tables t;
    return t;
}

// The 8 dense fp32 weights of the columns of bitmap byte b.
template <int DT>
inline __m256 expand_byte(const Tables& t, uint32_t b, const void* v) {
    if (DT == VS_F32) {
        __m256 raw = _mm256_loadu_ps((const float*)v);
        __m256 moved = _mm256_permutevar8x32_ps(raw, _mm256_loadu_si256((const __m256i*)t.permute32[b]));
        const __m256i lane_bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
        __m256i keep = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)b), lane_bits), lane_bits);
        return _mm256_and_ps(moved, _mm256_castsi256_ps(keep));
    }
    __m128i raw = _mm_loadu_si128((const __m128i*)v);
    __m128i moved = _mm_shuffle_epi8(raw, _mm_loadu_si128((const __m128i*)t.shuffle16[b]));
    if (DT == VS_BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(moved), 16));
    return _mm256_cvtph_ps(moved);
}

// The same for bf16 in one shuffle instead of three (shuffle, zero-extend, shift).
// Measured on a 2-core EPYC (AVX2 path forced, same process, calls alternating, bf16,
// 2026-12-04): 1.18-1.40x faster at M = 1 and 1.08-1.12x at M = 2 over Llama-3-8B and
// Llama-1B shapes at 50-90% and 4:8; 0.73-0.84x at M = 4 and 0.95-1.01x at M = 8,
// where one expansion feeds four or eight activation rows (not analysed), so those
// keep the three-step form.
inline __m256 expand_byte_widened_bf16(const Tables& t, uint32_t b, const void* v) {
    const __m256i raw = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)v));
    return _mm256_castsi256_ps(_mm256_shuffle_epi8(raw, _mm256_load_si256((const __m256i*)t.widen_bf16[b])));
}

#include "hsum256.h"

template <int DT, int MB, int R>
void block(const Tables& t, const VsWeight* w, const VsGemm* g, int64_t r0, int64_t m0, RegionPrefetch* ahead) {
    const int size = DT == VS_F32 ? 4 : 2;
    const int64_t ldx = w->words * 32;
    const float* x = (const float*)g->x + m0 * ldx;
    __m256 acc[R][MB];
    const char* v[R];
    const uint32_t* bits[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        v[r] = (const char*)w->values + w->row_offsets[r0 + r] * size;
        bits[r] = w->bitmap + (r0 + r) * w->words;
#pragma GCC unroll 8
        for (int i = 0; i < MB; i++) acc[r][i] = _mm256_setzero_ps();
    }
    for (int64_t word = 0; word < w->words; word++) {
        const float* xw = x + word * 32;
        ahead[0].advance();
        ahead[1].advance();
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            uint32_t mask = bits[r][word];
            const char* p = v[r];
            // One activation row: the expansion, not memory, bounds the loop (~23 GB/s
            // with the weight in cache as out of it), and the next chunk's prefetch
            // alone keeps the rows coming; each row's own prefetch cost 1-3%.
            if (MB > 1) prefetch_ahead(p, bits[r], word);
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++) {
                uint32_t b = (mask >> (8 * q)) & 0xffu;
                __m256 wq = DT == VS_BF16 && MB <= 2 ? expand_byte_widened_bf16(t, b, p) : expand_byte<DT>(t, b, p);
                // A 64-bit count goes into the address as it is; a 32-bit one cost a
                // sign extension and a separate doubling per byte (M = 1, one thread,
                // weight in cache: 1.15-1.2x faster this way, 2026-12-05).
                p += (int64_t)_mm_popcnt_u64(b) * size;
#pragma GCC unroll 8
                for (int i = 0; i < MB; i++)
                    acc[r][i] = _mm256_fmadd_ps(wq, _mm256_loadu_ps(xw + i * ldx + 8 * q), acc[r][i]);
            }
            v[r] = p;
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int i = 0; i < MB; i++) vs_store_out(g, m0 + i, r0 + r, hsum(acc[r][i]));
}

// One activation row of bf16 weights, R rows at a time: the loop of block<VS_BF16, 1, R>
// in a function of its own, so that GCC allocates its registers apart from the
// multi-row blocks and the prefetch state around them (inlined there, it kept the
// rows' value and bitmap pointers on the stack: 11.1 instructions per bitmap byte
// against 9.6 here). Each byte's table offset (byte x 32) comes straight from the
// word, and its popcount is the byte's.
template <int R>
__attribute__((noinline)) void block_one_row_bf16(const Tables& t, const VsWeight* w, const VsGemm* g, int64_t r0,
                                                  int64_t m0, RegionPrefetch* ahead) {
    const int64_t words = w->words;
    const float* x = (const float*)g->x + m0 * words * 32;
    const char* widen = (const char*)t.widen_bf16;
    const uint32_t* bits = w->bitmap + r0 * words;
    __m256 acc[R];
    const char* v[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        v[r] = (const char*)w->values + w->row_offsets[r0 + r] * 2;
        acc[r] = _mm256_setzero_ps();
    }
    for (int64_t word = 0; word < words; word++) {
        const float* xw = x + word * 32;
        ahead[0].advance();
        ahead[1].advance();
        const __m256 xq[4] = {_mm256_loadu_ps(xw), _mm256_loadu_ps(xw + 8), _mm256_loadu_ps(xw + 16),
                              _mm256_loadu_ps(xw + 24)};
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            const uint32_t mask = bits[r * words + word];
            const uint32_t offset[4] = {(mask << 5) & 0x1fe0u, (mask >> 3) & 0x1fe0u, (mask >> 11) & 0x1fe0u,
                                        (mask >> 19) & 0x1fe0u};
            const char* p = v[r];
            __m256 a = acc[r];
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++) {
                const __m256i placed = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)p)),
                                                           _mm256_load_si256((const __m256i*)(widen + offset[q])));
                a = _mm256_fmadd_ps(_mm256_castsi256_ps(placed), xq[q], a);
                p += (int64_t)_mm_popcnt_u64(offset[q]) * 2;
            }
            acc[r] = a;
            v[r] = p;
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) vs_store_out(g, m0, r0 + r, hsum(acc[r]));
}

template <int DT, int MB, int R>
void rows(const Tables& t, const VsWeight* w, const VsGemm* g, int64_t begin, int64_t end, int64_t m0,
          RegionPrefetch* ahead) {
    int64_t r = begin;
    if constexpr (DT == VS_BF16 && MB == 1) {
        for (; r + R <= end; r += R) block_one_row_bf16<R>(t, w, g, r, m0, ahead);
        for (; r < end; r++) block_one_row_bf16<1>(t, w, g, r, m0, ahead);
    } else {
        for (; r + R <= end; r += R) block<DT, MB, R>(t, w, g, r, m0, ahead);
        for (; r < end; r++) block<DT, MB, 1>(t, w, g, r, m0, ahead);
    }
}

template <int DT>
void gemm(const VsWeight* w, const VsGemm* g, int64_t begin, int64_t end) {
    const Tables& t = tables();
    // Rows in chunks that stay in L2 while every activation block passes over them:
    // the weight streams from memory once whatever M is.
    for (int64_t c0 = begin; c0 < end; c0 += kRowChunk) {
        const int64_t c1 = c0 + kRowChunk < end ? c0 + kRowChunk : end;
        // The next chunk comes into L2 over this chunk's block() calls (RegionPrefetch).
        const int64_t n1 = c1 + kRowChunk < end ? c1 + kRowChunk : end;
        const int64_t rows_here = c1 - c0;
        const int64_t calls = (g->m / 8) * rows_here + (g->m % 8) / 4 * ((rows_here + 1) / 2) +
                              (g->m % 4) / 2 * ((rows_here + 3) / 4) + (g->m % 2) * ((rows_here + 7) / 8);
        const int64_t steps = (calls > 0 ? calls : 1) * w->words;
        const int size = DT == VS_F32 ? 4 : 2;
        const char* values = (const char*)w->values;
        RegionPrefetch ahead[2] = {
            RegionPrefetch(values + w->row_offsets[c1] * size, values + w->row_offsets[n1] * size, steps),
            RegionPrefetch(w->bitmap + c1 * w->words, w->bitmap + n1 * w->words, steps)};
        int64_t m0 = 0;
        for (; m0 + 8 <= g->m; m0 += 8) rows<DT, 8, 1>(t, w, g, c0, c1, m0, ahead);
        if (m0 + 4 <= g->m) { rows<DT, 4, 2>(t, w, g, c0, c1, m0, ahead); m0 += 4; }
        if (m0 + 2 <= g->m) { rows<DT, 2, 4>(t, w, g, c0, c1, m0, ahead); m0 += 2; }
        if (m0 < g->m) rows<DT, 1, 8>(t, w, g, c0, c1, m0, ahead);
    }
}

}  // namespace

extern "C" void vs_gemm_avx2(const VsWeight* w, const VsGemm* g, int64_t row_begin, int64_t row_end) {
    if (w->dtype == VS_F32) {
        gemm<VS_F32>(w, g, row_begin, row_end);
    } else if (w->dtype == VS_BF16) {
        gemm<VS_BF16>(w, g, row_begin, row_end);
    } else {
        gemm<VS_F16>(w, g, row_begin, row_end);
    }
}

extern "C" void vs_unpack_avx2(const VsWeight* w, int64_t row_begin, int64_t row_end, void* dst) {
    if (w->dtype == VS_F32) {  // rare (fp32 prefill): the portable loop is enough
        vs_unpack_scalar(w, row_begin, row_end, dst);
        return;
    }
    const Tables& t = tables();
    const int64_t k = w->k;
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t* bits = (const uint8_t*)(w->bitmap + r * w->words);
        const uint16_t* v = (const uint16_t*)w->values + w->row_offsets[r];
        uint16_t* out = (uint16_t*)dst + (r - row_begin) * k;
        int64_t col = 0;
        for (; col + 8 <= k; col += 8) {
            uint32_t b = bits[col / 8];
            __m128i raw = _mm_loadu_si128((const __m128i*)v);
            _mm_storeu_si128((__m128i*)(out + col), _mm_shuffle_epi8(raw, _mm_loadu_si128((const __m128i*)t.shuffle16[b])));
            v += _mm_popcnt_u32(b);
        }
        for (uint32_t b = col < k ? bits[col / 8] : 0; col < k; col++, b >>= 1) out[col] = (b & 1u) ? *v++ : 0;
    }
}
