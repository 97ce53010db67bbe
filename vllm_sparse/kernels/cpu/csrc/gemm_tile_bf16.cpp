// Large M on AVX-512 BF16 where M does not fill 16-row vectors, or is above 128 (else
// the row tiles of gemm_rowtile_bf16.cpp run; csrc/ops.cpp `tile_gemm`): the weight,
// decompressed 32 rows at a time into a cache-resident panel, times every activation
// row, with no dense copy of the weight.
//
// Handing decompressed tiles to torch's GEMM (oneDNN) repacks each one on every call
// and ran 0.65-0.9x of vLLM's prepacked dense GEMM (2-core EPYC, M = 64..512). Here
// the tile is laid out once as the micro-kernel reads it: a panel of 32 rows stored
// by column pair, panel[p * 32 + n] = (W[n, 2p], W[n, 2p + 1]), so one vdpbf16ps
// multiplies a broadcast activation pair with the same pair of 16 weight rows. The
// activations are packed once per call the same way (blocks of kMR rows by column
// pair) and shared by every panel and thread.
//
// A panel is filled straight from the compressed weight: sixteen rows' expanded
// 32-column words, transposed in registers, are sixteen column pairs of the panel.
// (Decompressing rows into a row-major tile first, then transposing it into the
// panel, wrote and read every weight twice more and kept a second tile-sized buffer
// in L2.)
#include <immintrin.h>
#include "store.h"

#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi2,avx512bf16,popcnt")

namespace {

#include "prefetch.h"
#include "expand16.h"

const int kNR = VS_TILE_PANEL_ROWS;
const int kMR = VS_TILE_BLOCK_M;

#include "nm24_records.h"

#include "transpose16.h"

// Sixteen panel rows' 32 columns from pair p on (r[i]: row i's 16 pairs), into the
// panel half whose first row is `half_row` (0 or 16).
inline void store_pairs(__m512i r[16], uint32_t* panel, int64_t p, int half_row) {
    transpose16(r);
    for (int j = 0; j < 16; j++) _mm512_storeu_si512(panel + (p + j) * kNR + half_row, r[j]);
}

// MR activation rows x the panel's 32 weight rows, accumulated over every pair.
// `ahead` advances every 64 pairs.
template <int MR>
void panel_block(const uint32_t* a, const uint32_t* panel, int64_t pairs, int64_t m0, int64_t row0, int64_t rows,
                 const VsGemm* g, RegionPrefetch* ahead) {
    __m512 acc[MR][2];
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int64_t p = 0; p < pairs; p++, a += MR, panel += kNR) {
        if ((p & 63) == 0) {
            ahead[0].advance();
            ahead[1].advance();
        }
        const __m512bh w0 = (__m512bh)_mm512_loadu_si512(panel);
        const __m512bh w1 = (__m512bh)_mm512_loadu_si512(panel + 16);
        for (int i = 0; i < MR; i++) {
            const __m512bh xv = (__m512bh)_mm512_set1_epi32((int)a[i]);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], xv, w0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], xv, w1);
        }
    }
    const __mmask16 valid0 = rows >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rows) - 1);
    const __mmask16 valid1 = rows >= 32 ? (__mmask16)0xffff : rows <= 16 ? 0 : (__mmask16)((1u << (rows - 16)) - 1);
    __m512 bias0 = _mm512_setzero_ps(), bias1 = _mm512_setzero_ps();
    if (g->bias) {
        bias0 = _mm512_maskz_loadu_ps(valid0, g->bias + row0);
        bias1 = _mm512_maskz_loadu_ps(valid1, g->bias + row0 + 16);
    }
    uint16_t* y = (uint16_t*)g->y + m0 * g->ldy + row0;
    for (int i = 0; i < MR; i++, y += g->ldy) {
        _mm256_mask_storeu_epi16(y, valid0, (__m256i)_mm512_cvtneps_pbh(_mm512_add_ps(acc[i][0], bias0)));
        _mm256_mask_storeu_epi16(y + 16, valid1, (__m256i)_mm512_cvtneps_pbh(_mm512_add_ps(acc[i][1], bias1)));
    }
}

typedef void (*PanelBlockFn)(const uint32_t*, const uint32_t*, int64_t, int64_t, int64_t, int64_t, const VsGemm*,
                             RegionPrefetch*);
const PanelBlockFn kPanelBlock[kMR + 1] = {
    nullptr,          panel_block<1>, panel_block<2>, panel_block<3>,  panel_block<4>,  panel_block<5>, panel_block<6>,
    panel_block<7>,   panel_block<8>, panel_block<9>, panel_block<10>, panel_block<11>, panel_block<12>};

}  // namespace

extern "C" void vs_pack_activations(const uint16_t* x, int64_t m, int64_t k, int64_t p_begin, int64_t p_end,
                                    uint32_t* xa) {
    const int64_t pairs = k / 2;
    const uint32_t* x32 = (const uint32_t*)x;  // row i's pair p is word i * pairs + p
    // 16 pairs of a block's rows at a time, transposed in registers: the block's words
    // for those pairs are one contiguous run of 16 x width. (A word at a time, the pack
    // had cost 1% of a call at M = 17-512 on the Llama shapes and up to 4-6% on
    // SmolLM2's 576x576: same-process A/B, 2026-12-05.)
    for (int64_t m0 = 0; m0 < m; m0 += kMR) {
        const int width = m - m0 < kMR ? (int)(m - m0) : kMR;
        const __mmask16 rows = (__mmask16)((1u << width) - 1);
        uint32_t* block = xa + m0 * pairs;
        for (int64_t p = p_begin; p < p_end; p += 16) {
            const int n = p_end - p < 16 ? (int)(p_end - p) : 16;
            const __mmask16 live = (__mmask16)((1u << n) - 1);
            __m512i r[16];
            for (int i = 0; i < 16; i++)
                r[i] = i < width ? _mm512_maskz_loadu_epi32(live, x32 + (m0 + i) * pairs + p) : _mm512_setzero_si512();
            transpose16(r);  // r[j] lane i: row m0 + i's pair p + j
            for (int j = 0; j < n; j++) _mm512_mask_storeu_epi32(block + (p + j) * width, rows, r[j]);
        }
    }
}

extern "C" void vs_panel_from_bitmap(const VsWeight* w, int64_t row0, int64_t rows, uint32_t* panel) {
    for (int half = 0; half < 2; half++) {
        const int64_t first = row0 + 16 * half;
        const int64_t live = rows - 16 * half < 0 ? 0 : rows - 16 * half < 16 ? rows - 16 * half : 16;
        const uint16_t* v[16];
        const uint32_t* bits[16];
        for (int i = 0; i < 16; i++) {
            const int64_t row = i < live ? first + i : row0;  // rows past the weight: zeros, below
            v[i] = (const uint16_t*)w->values + w->row_offsets[row];
            bits[i] = w->bitmap + row * w->words;
        }
        for (int64_t word = 0; word < w->words; word++) {
            __m512i r[16];
            for (int i = 0; i < 16; i++) {
                const uint32_t mask = i < live ? bits[i][word] : 0;
                r[i] = vs_expand16(mask, v[i]);
                v[i] += _mm_popcnt_u32(mask);
            }
            store_pairs(r, panel, word * 16, 16 * half);
        }
    }
}

extern "C" void vs_panel_from_nm24(const VsNM24Weight* w, int64_t row0, int64_t rows, uint32_t* panel) {
    const int64_t chunks = w->k / 64;
    const int64_t blocks = (w->n + kRows - 1) / kRows;
    for (int half = 0; half < 2; half++) {
        const int64_t first = row0 + 16 * half;
        const uint8_t* record[2];
        bool present[2];
        for (int b = 0; b < 2; b++) {
            const int64_t block = first / kRows + b;
            present[b] = block < blocks;  // blocks past the weight's rows: zeros, below
            record[b] = block_records(w, present[b] ? block : 0);
        }
        for (int64_t c = 0; c < chunks; c++) {
            uint64_t masks[16];
            for (int i = 0; i < 16; i++)
                masks[i] = present[i / kRows] ? selector_mask(record_selectors(record[i / kRows], i % kRows)) : 0;
            for (int part = 0; part < 2; part++) {  // columns 0-31, then 32-63 of the chunk
                __m512i r[16];
                for (int i = 0; i < 16; i++)
                    r[i] = _mm512_maskz_expandloadu_epi16((__mmask32)(uint32_t)(masks[i] >> (32 * part)),
                                                          record_values(record[i / kRows], i % kRows) + 16 * part);
                store_pairs(r, panel, c * 32 + 16 * part, 16 * half);
            }
            record[0] += kRecord;
            record[1] += kRecord;
        }
    }
}

extern "C" void vs_panel_multiply(const uint32_t* panel, int64_t rows, int64_t k, const uint32_t* xa, int64_t m,
                                  const VsGemm* g, int64_t row0, const VsRegion* next, int regions) {
    const int64_t pairs = k / 2;
    // The next panel's compressed bytes come into L2 over this panel's steps (one per
    // 64 pairs of each activation block): filling the next panel then reads no memory.
    const int64_t steps = (pairs / 64 + 1) * ((m + kMR - 1) / kMR);
    RegionPrefetch ahead[2] = {RegionPrefetch(nullptr, nullptr, 1), RegionPrefetch(nullptr, nullptr, 1)};
    for (int i = 0; i < regions && i < 2; i++) ahead[i] = RegionPrefetch(next[i].begin, next[i].end, steps);
    for (int64_t m0 = 0; m0 < m; m0 += kMR) {
        const int64_t width = m - m0 < kMR ? m - m0 : kMR;
        kPanelBlock[width](xa + m0 * pairs, panel, pairs, m0, row0, rows, g, ahead);
    }
}
