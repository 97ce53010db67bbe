// Plain-C interface between the torch-facing op (ops.cpp) and the per-ISA kernels.
//
// The ISA files are compiled with `#pragma GCC target(...)` and include no torch or
// standard-library templates, so no inline function compiled for AVX-512 can be
// picked by the linker for code that runs on an AVX2-only CPU.
#pragma once
#include <stdint.h>

enum VsDtype { VS_F32 = 0, VS_BF16 = 1, VS_F16 = 2 };
enum VsIsa { VS_SCALAR = 0, VS_AVX2 = 1, VS_AVX512 = 2, VS_AVX512_BF16 = 3 };

// A weight W [N, K] in the CPU bitmap layout: row r's non-zeros, in column order,
// start at values[row_offsets[r]]; bit j of bitmap[r * words + w] says whether column
// 32 w + j holds one. values is followed by at least 64 zero elements (vector loads
// may read past the last value; the bits mask what they read).
struct VsWeight {
    const void* values;
    const uint32_t* bitmap;
    const int64_t* row_offsets;
    int64_t n;       // out_features
    int64_t k;       // in_features
    int64_t words;   // ceil(k / 32)
    int dtype;       // VsDtype of values
    int sixteen_per_word;  // every word of every row holds exactly 16 values (a 2:4 weight)
};

// y[m, r] = sum_k W[r, k] x[m, k] (+ bias[r]) for rows [row_begin, row_end).
// x is [m, words * 32], zero past k, fp32 except for the bf16-dot kernel (bf16).
// y is [m, ldy] of out_dtype; bias (fp32) may be null.
struct VsGemm {
    const void* x;
    int64_t m;
    const float* bias;
    void* y;
    int64_t ldy;
    int out_dtype;
};

// A 2:4 weight [N, K], K a multiple of 64, in blocks of 8 rows: block b holds rows
// 8b .. 8b+7 (rows past N are zeros) as K/64 records of 576 bytes, one per 64-column
// chunk: first the 8 rows' selectors (uint64 each: bits 2l, 2l+1 give the column,
// 0..3 within its group of four, of value l), then the 8 rows' 32 bf16 values (two
// per group, zero-padded where a group holds fewer). A block is one contiguous run.
enum { VS_NM24_BLOCK_ROWS = 8, VS_NM24_RECORD_BYTES = 64 + 8 * 64 };
struct VsNM24Weight {
    const uint8_t* blocks;
    int64_t n;
    int64_t k;
};

#ifdef __cplusplus
extern "C" {
#endif
// x is bf16 [m, k] (no padding needed); blocks [block_begin, block_end).
void vs_gemm_nm24_avx512(const VsNM24Weight* w, const VsGemm* g, int64_t block_begin, int64_t block_end);
// The same with the weight rows in the vector lanes (gemm_nm24_lanes_bf16.cpp), for
// several activation rows: x chunk-major (element (c * m + i) * 64 + j is x[i, 64 c + j]),
// y bf16.
void vs_gemm_nm24_lanes(const VsNM24Weight* w, const VsGemm* g, int64_t block_begin, int64_t block_end);
// Dense rows [row_begin, row_end) into dst [row_end - row_begin, k].
void vs_unpack_nm24_avx512(const VsNM24Weight* w, int64_t row_begin, int64_t row_end, uint16_t* dst);
// The same on AVX2; its x is fp32 [m, k].
void vs_gemm_nm24_avx2(const VsNM24Weight* w, const VsGemm* g, int64_t block_begin, int64_t block_end);
void vs_unpack_nm24_avx2(const VsNM24Weight* w, int64_t row_begin, int64_t row_end, uint16_t* dst);

void vs_gemm_scalar(const VsWeight* w, const VsGemm* g, int64_t row_begin, int64_t row_end);
void vs_gemm_avx2(const VsWeight* w, const VsGemm* g, int64_t row_begin, int64_t row_end);
void vs_gemm_avx512(const VsWeight* w, const VsGemm* g, int64_t row_begin, int64_t row_end);
// The bf16 kernel of the AVX-512 BF16 path takes x with each group of 8 rows (from
// row 0; the rows after the last whole group as they are) interleaved word by word:
// vs_interleave_bf16 writes words [word_begin, word_end) of x [m, ldx] so into out.
void vs_gemm_avx512_bf16(const VsWeight* w, const VsGemm* g, int64_t row_begin, int64_t row_end);
void vs_interleave_bf16(const uint16_t* x, int64_t m, int64_t ldx, int64_t word_begin, int64_t word_end,
                        uint16_t* out);

// Dense rows [row_begin, row_end) of W, in W's dtype, into dst [row_end - row_begin, k].
void vs_unpack_scalar(const VsWeight* w, int64_t row_begin, int64_t row_end, void* dst);
void vs_unpack_avx2(const VsWeight* w, int64_t row_begin, int64_t row_end, void* dst);
void vs_unpack_avx512(const VsWeight* w, int64_t row_begin, int64_t row_end, void* dst);

// Large M on AVX-512 BF16 (gemm_tile_bf16.cpp), bf16 only, k even. The activations
// x [m, k] are packed once per call by column pair in blocks of VS_TILE_BLOCK_M rows:
// block j (rows from m0 = j * VS_TILE_BLOCK_M, `width` of them) starts at xa[m0 * k / 2]
// and holds xa[m0 * k / 2 + p * width + i] = (x[m0 + i, 2p], x[m0 + i, 2p + 1]);
// vs_pack_activations writes pairs [p_begin, p_end) of every block.
enum { VS_TILE_PANEL_ROWS = 32, VS_TILE_BLOCK_M = 12 };
void vs_pack_activations(const uint16_t* x, int64_t m, int64_t k, int64_t p_begin, int64_t p_end, uint32_t* xa);
// A panel of VS_TILE_PANEL_ROWS weight rows from row0 (`rows` of them; the rest
// zero) laid out by column pair: panel[p * VS_TILE_PANEL_ROWS + n] = (W[row0 + n, 2p],
// W[row0 + n, 2p + 1]). The bitmap fill writes words * 16 pairs, the 2:4 fill k / 2
// (rows past the weight are zero in, or past, its last 8-row block: it reads no `rows`).
void vs_panel_from_bitmap(const VsWeight* w, int64_t row0, int64_t rows, uint32_t* panel);
void vs_panel_from_nm24(const VsNM24Weight* w, int64_t row0, int64_t rows, uint32_t* panel);
// y[:, row0 .. row0 + rows) = x W[row0 .. row0 + rows)^T (+ bias) from a filled panel
// and the packed activations xa. Meanwhile the `regions` memory ranges in `next` (the
// next panel's compressed bytes) are brought into L2.
typedef struct { const void* begin; const void* end; } VsRegion;
void vs_panel_multiply(const uint32_t* panel, int64_t rows, int64_t k, const uint32_t* xa, int64_t m,
                       const VsGemm* g, int64_t row0, const VsRegion* next, int regions);

// Large M on AVX-512 BF16, row tiles (gemm_rowtile_bf16.cpp, which gives the layouts):
// VS_ROWTILE_ROWS weight rows at a time, decompressed by 32-column word, times blocks
// of VS_ROWTILE_BLOCK_M activation rows transposed by 64-bit word. The packing writes
// 32-column words [word_begin, word_end) of every block; the fills need k / 2 pairs
// (bitmap) or k / 64 records (2:4) per row and zero the tile's rows past `rows`.
enum { VS_ROWTILE_ROWS = 12, VS_ROWTILE_BLOCK_M = 32 };
void vs_rowtile_pack_activations(const uint16_t* x, int64_t m, int64_t k, int64_t word_begin, int64_t word_end,
                                 uint64_t* xa);
void vs_rowtile_from_bitmap(const VsWeight* w, int64_t row0, int64_t rows, uint32_t* tile);
// A bitmap tile's fill done a few words at a time inside the multiply of the tile
// before it (vs_rowtile_multiply's `fill`); vs_rowtile_fill_begin sets one up.
typedef struct {
    const VsWeight* w;
    uint32_t* tile;
    int64_t row0, rows;
    int64_t n, word;  // the next word to expand: tile row n, 32-column word `word`
    const uint16_t* v;
} VsRowtileFill;
void vs_rowtile_fill_begin(VsRowtileFill* fill, const VsWeight* w, int64_t row0, int64_t rows, uint32_t* tile);
void vs_rowtile_from_nm24(const VsNM24Weight* w, int64_t row0, int64_t rows, uint32_t* tile);
void vs_rowtile_multiply(const uint32_t* tile, int64_t rows, int64_t k, const uint64_t* xa, int64_t m,
                         const VsGemm* g, int64_t row0, const VsRegion* next, int regions, VsRowtileFill* fill);

// Large M on CPUs with AMX-BF16 whose OS grants the tile registers (vs_amx_ready,
// which asks once), bf16 only (gemm_amx_bf16.cpp, which gives the layouts). With
// kp = k rounded up to 32, b holds the activations x [m, k] as B tiles, zero past m
// rows and k columns: element (((i / 16) * (kp / 32) + j / 32) * 16 + (j % 32) / 2) * 32
// + (i % 16) * 2 + j % 2 is x[i, j] (vs_amx_pack_activations writes B tiles
// [tile_begin, tile_end), k even). A group call writes y[:, row0 .. row0 + rows) (+ bias)
// for up to VS_TILE_PANEL_ROWS weight rows from row0, in `work` (vs_amx_work_bytes(m),
// the thread's own), and meanwhile brings the `regions` ranges in `next` into L2.
//
// A part of K (long rows go in parts, fp32 partial sums carried between them): the
// weight's 32-column steps [step0, step0 + steps); b then holds only those steps' B
// tiles (kp = steps * 32 above; vs_amx_pack_activations packs steps from step0).
// carry_in: the group's sums of the parts before (nullptr on the first part),
// carry_out: where to leave them (nullptr on the last part, which writes y); both
// vs_amx_carry_floats(m) floats per group. row_values (bitmap layout): each weight
// row's offset into values at step0, advanced past the part (read from step0 > 0 on).
typedef struct {
    int64_t step0, steps;
    const float* carry_in;
    float* carry_out;
    int64_t* row_values;
} VsAmxPart;
// A thread's groups one after another: the thread's group before this one filled
// this group's first chunk of columns into `work` (prefilled), and this group fills
// the next one's while it multiplies its own last chunk (next_rows > 0: the rows of
// the group VS_TILE_PANEL_ROWS rows on, which the thread takes next).
typedef struct {
    int prefilled;
    int64_t next_rows;
} VsAmxChain;
int vs_amx_ready(void);
void vs_amx_pack_activations(const uint16_t* x, int64_t m, int64_t k, int64_t step0, int64_t steps,
                             int64_t tile_begin, int64_t tile_end, uint16_t* b);
int64_t vs_amx_work_bytes(int64_t m);
int64_t vs_amx_chunk_steps(int64_t m);  // 32-column steps a group fills and multiplies at a time
int64_t vs_amx_carry_floats(int64_t m);
void vs_amx_bitmap_group(const VsWeight* w, int64_t row0, int64_t rows, const uint16_t* b, int64_t m,
                         const VsGemm* g, void* work, const VsRegion* next, int regions, const VsAmxPart* part,
                         const VsAmxChain* chain);
void vs_amx_nm24_group(const VsNM24Weight* w, int64_t row0, int64_t rows, const uint16_t* b, int64_t m,
                       const VsGemm* g, void* work, const VsRegion* next, int regions, const VsAmxPart* part,
                       const VsAmxChain* chain);

// Dense bf16 W [N, k] (row-major, contiguous) on AVX-512 BF16 (gemv_dense_bf16.cpp):
// rows [row_begin, row_end) of y = x W^T (+ bias), x bf16 [m, k] contiguous, y bf16.
void vs_dense_gemv_avx512_bf16(const uint16_t* w, int64_t k, const VsGemm* g, int64_t row_begin, int64_t row_end);
// The same on AVX2 + FMA (gemv_dense_avx2.cpp), x fp32 [m, ceil(k / 16) * 16] with each
// 16 columns laid out as their 8 even then their 8 odd values.
void vs_dense_gemv_avx2(const uint16_t* w, int64_t k, const VsGemm* g, int64_t row_begin, int64_t row_end);
#ifdef __cplusplus
}
#endif
