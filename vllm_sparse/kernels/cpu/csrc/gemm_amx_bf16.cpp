// Large M (and batched decode) on CPUs with AMX-BF16 (Sapphire Rapids and later): the
// weight, decompressed 32 rows and a chunk of columns at a time into a tile buffer in
// L1/L2, multiplied by tile instructions.
//
// Why its own GEMM: on a 2-core Xeon with AMX (2026-12-06) vLLM's dense GEMM is
// oneDNN on AMX, and the AVX-512 BF16 row tiles and panels ran 0.1-0.3x of it from
// M = 64 up, 0.4-0.6x at M = 16; handing decompressed tiles to torch's GEMM (oneDNN,
// which repacks each on every call) ran 0.5x at M = 64.
//
// The weight is the first operand (A: 16 rows x 32 columns, row-major), so its rows
// go from the compressed form to a tile by one expand per 32-column word, with no
// transpose: the buffer holds, per 32-column step, the 32 rows' 64-byte words one
// after the other (tile[(step * 32 + row) * 32 + j] = W[row0 + row, 32 step + j]), and
// a 16-row half of a step is one A tile (stride 64 bytes). (A first version filled
// gemm_tile_bf16.cpp's panels, laid out as the second operand wants a weight, with a
// 16 x 16 transpose per 16 words: a call at M = 1-16 on 4096 x 4096 at 50%, weights in
// L3, took 1.7-1.9 ms against 1.1-1.2 ms now.) The activations are the second operand,
// packed once per call: B tiles of 16 column pairs x 16 activation rows, 1 KiB each.
// C tiles hold y transposed (16 weight rows x 16 activation rows, fp32), transposed
// back in registers as they are stored.
#include <cpuid.h>
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <type_traits>
#include "store.h"

#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi2,avx512bf16,popcnt")

namespace {

#include "prefetch.h"
#include "expand16.h"
#include "nm24_records.h"
#include "transpose16.h"

const int kGroup = VS_TILE_PANEL_ROWS;   // 32 weight rows: two A tiles per step
const int64_t kTileElements = 16 * 32;  // bf16 elements of one A or B tile
const int kFillRows = 8;               // weight rows of a bitmap fill's unit
// Columns filled and multiplied at a time. Up to two activation blocks (M <= 64):
// 4 steps of 32, so that both fill buffers (8 KiB each) and the chunk's B tiles stay
// in L1 (48 KiB here) while the core stores into one and the tile unit reads the
// other; the sums stay in the C tiles where there is one block, else wait in a
// per-thread buffer. More blocks: 64 steps (fewer round trips of their sums through
// memory; the fill is spread over more tile work). Same-process A/B on a 2-core Xeon
// with AMX (Emerald Rapids, 2026-12-06, cold weights, 4096 x 4096 and 2048 x 8192 at
// 2:4 and 50%, bitmap layout): at M = 2-16, 16-step chunks (32 KiB buffers: two and
// the B tiles overflow L1) ran 0.84-0.98x of oneDNN, 8 steps 1.04-1.09x, 4 steps
// 1.06-1.19x, 2 steps 1.06-1.11x; the 2:4 layout 0.78-0.86x at 16 and 0.88-0.98x at 4
// (with 16384 x 2048). At M = 64, 4 steps ran 0.89-1.15x against 0.78-1.11x for 64;
// at M = 512, 4 steps 0.61-0.70x against 0.77-0.91x. The fill, not memory or the
// tile unit, bounds the path: without it the call ran at the read bandwidth.
const int64_t kChunkStepsFewBlocks = 4;
const int kFewBlocks = 2;
const int64_t kChunkStepsManyBlocks = 64;
// Does a call of m activation rows have few blocks (short steps: chunks of
// kChunkStepsFewBlocks, and a prefetch advance every step)?
inline bool few_blocks(int64_t m) { return (m + 31) / 32 <= kFewBlocks; }
const int64_t kChunkBytesMax = kChunkStepsManyBlocks * kGroup * 64;
const int64_t kBlockSums = 4 * 256;  // fp32 sums of a block's four C tiles (32 weight x 32 activation rows)

// Tiles: C (fp32 [16, 16]) for weight half a and activation half b is tile 2a + b;
// A (the weight) 4 and 5; B (the activations) 6 and 7. All are 16 rows of 64 bytes.
struct TileConfig {
    uint8_t palette;
    uint8_t start_row;
    uint8_t reserved[14];
    uint16_t bytes_per_row[16];
    uint8_t rows[16];
};

// The tile macros are inline assembly without a memory clobber: tell the compiler
// that memory changed across them where C code reads what a tile stored, and that
// ldtilecfg reads the whole config (its operand names only the first 8 bytes, so the
// other stores could sink below it: a zero row width, #GP).
inline void memory_barrier() { __asm__ volatile("" ::: "memory"); }

void configure_tiles() {
    alignas(64) TileConfig config;
    memset(&config, 0, sizeof(config));
    config.palette = 1;
    for (int t = 0; t < 8; t++) {
        config.bytes_per_row[t] = 64;
        config.rows[t] = 16;
    }
    memory_barrier();
    _tile_loadconfig(&config);
}

// A group's C tiles for activation block `block` (HALVES 16-row halves): zero, or
// the partial sums of the chunks before, from `partial` (4 tiles of fp32 [16, 16]).
template <int HALVES>
void begin_block(const float* partial, bool first) {
    if (first) {
        _tile_zero(0);
        _tile_zero(2);
        if (HALVES == 2) {
            _tile_zero(1);
            _tile_zero(3);
        }
        return;
    }
    memory_barrier();
    _tile_loadd(0, partial, 64);
    _tile_loadd(2, partial + 2 * 256, 64);
    if (HALVES == 2) {
        _tile_loadd(1, partial + 256, 64);
        _tile_loadd(3, partial + 3 * 256, 64);
    }
}

template <int HALVES>
void save_block(float* partial) {
    _tile_stored(0, partial, 64);
    _tile_stored(2, partial + 2 * 256, 64);
    if (HALVES == 2) {
        _tile_stored(1, partial + 256, 64);
        _tile_stored(3, partial + 3 * 256, 64);
    }
    memory_barrier();
}

// One C tile (weight rows row0 + 16a.., activation rows m0..) into y, transposed,
// plus bias, as bf16: `rows` weight rows of the group and `live_m` activation rows.
void store_tile(const float c[16][16], int a, int64_t m0, int64_t live_m, int64_t row0, int64_t rows,
                const VsGemm* g) {
    const int64_t live_n = rows - 16 * a;
    if (live_n <= 0) return;
    const __mmask16 valid = live_n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << live_n) - 1);
    const __m512 bias = g->bias ? _mm512_maskz_loadu_ps(valid, g->bias + row0 + 16 * a) : _mm512_setzero_ps();
    __m512i r[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_load_si512(c[i]);
    transpose16(r);  // r[j] lane i: weight row 16a + i, activation row m0 + j
    for (int j = 0; j < live_m && j < 16; j++) {
        uint16_t* y = (uint16_t*)g->y + (m0 + j) * g->ldy + row0 + 16 * a;
        const __m512 v = _mm512_add_ps(_mm512_castsi512_ps(r[j]), bias);
        _mm256_mask_storeu_epi16(y, valid, (__m256i)_mm512_cvtneps_pbh(v));
    }
}

// A block's finished sums, left by save_block in its slot of the work buffer, written
// to y a C tile at a time among the next block's tile instructions (`write_some`), or
// at once (`finish`), so that the tile unit does not wait while the core transposes.
// Same-process A/B against writing each block's tiles as it ends (2-core Emerald
// Rapids, 2026-12-07, cold weights, 50%): M = 512 on five Llama-1B / Llama-3-8B /
// SmolLM2 shapes 1.01-1.04x, M = 64 on three 1.02-1.07x (the most where K is short:
// 576, 18 steps a block).
struct PendingStore {
    const float* c = nullptr;
    int written = 0, tiles = 0;  // 2 per live 16-row half of the block
    int64_t m0 = 0, live_m = 0, row0 = 0, rows = 0;
    const VsGemm* g = nullptr;
    void write_some(int count) {
        for (; count > 0 && written < tiles; count--, written++) {
            const int half = written / 2, a = written % 2;
            store_tile((const float(*)[16])(c + (2 * a + half) * 256), a, m0 + 16 * half, live_m - 16 * half, row0,
                       rows, g);
        }
    }
    void finish() { write_some(tiles); }
};

// How a chunk's fill is spread over the steps: `units` units every `every` steps,
// evenly over all of them. (Same-process A/B against `ceil(units / steps)` a step,
// which ends the fill within the first block where units are fewer than steps:
// M = 512, 50%, three Llama shapes 1.04-1.06x; M = 64, four 0.99-1.02x, 2:4 on three
// 0.96-0.99x.)
struct FillPace {
    int64_t units = 0, every = 1, countdown = 1;
    FillPace() = default;
    FillPace(int64_t total_units, int64_t total_steps) {
        if (total_units <= 0) return;
        if (total_units >= total_steps) units = (total_units + total_steps - 1) / total_steps;
        else units = 1, every = countdown = total_steps / total_units;
    }
};

// The chunk's weight rows (two A tiles per step, `tile` step-major) x HALVES (1 or 2)
// blocks of 16 activation rows (their B tiles of the chunk's first step at b, the
// second block's `steps` tiles after the first's), over the chunk's steps (s0 .. s1 of
// the group's), into the C tiles. Among the tile instructions, the steps also fill
// the chunk filled meanwhile (`rows_of`, at `pace`) and write the block before's
// results (`pending`): the tile unit works on while the core expands and transposes.
// `ahead` advances on the steps whose bits under `every_mask` are clear (every 2^n
// steps: a mask, not a division, in the step loop).
template <int HALVES, class Rows>
void accumulate(const uint16_t* tile, const uint16_t* b, int64_t steps, int64_t s0, int64_t s1,
                RegionPrefetch* ahead, int64_t every_mask, Rows& rows_of, FillPace& pace, PendingStore& pending) {
    const uint16_t* b_second = b + steps * kTileElements;
    for (int64_t s = 0; s < s1 - s0; s++, tile += 2 * kTileElements) {
        if (((s0 + s) & every_mask) == 0) {  // a few lines at a time: in bursts they slowed the fill
            ahead[0].advance();
            ahead[1].advance();
        }
        _tile_loadd(4, tile, 64);
        _tile_loadd(5, tile + kTileElements, 64);
        _tile_loadd(6, b + s * kTileElements, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(2, 5, 6);
        if (HALVES == 2) {
            _tile_loadd(7, b_second + s * kTileElements, 64);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(3, 5, 7);
        }
        if (pending.written < pending.tiles) pending.write_some(1);
        if (pace.units && --pace.countdown == 0) {
            rows_of.fill_some(pace.units);
            pace.countdown = pace.every;
        }
    }
}

// A row's `words` 32-column words from its values at `v` into the tile at `out`
// (word q at out + q * kGroup * 32); returns where the row's values continue.
inline const uint16_t* expand_words(const uint32_t* bits, const uint16_t* v, int words, uint16_t* out) {
    for (int q = 0; q < words; q++) {
        _mm512_storeu_si512(out + q * kGroup * 32, vs_expand16(bits[q], v));
        v += _mm_popcnt_u32(bits[q]);
    }
    return v;
}

// The same for a weight whose every word holds 16 values (a 2:4 weight in the bitmap
// layout): no popcount, and one 64-byte load serves two words.
inline const uint16_t* expand_half_full_words(const uint32_t* bits, const uint16_t* v, int words, uint16_t* out) {
    int q = 0;
    for (; q + 2 <= words; q += 2, v += 32) {
        const __m512i pair = _mm512_loadu_si512(v);
        _mm512_storeu_si512(out + q * kGroup * 32, _mm512_maskz_expand_epi16((__mmask32)bits[q], pair));
        _mm512_storeu_si512(out + (q + 1) * kGroup * 32,
                            _mm512_maskz_expand_epi16((__mmask32)bits[q + 1], _mm512_shuffle_i64x2(pair, pair, 0xEE)));
    }
    if (q < words) {
        const __m512i half = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)v));
        _mm512_storeu_si512(out + q * kGroup * 32, _mm512_maskz_expand_epi16((__mmask32)bits[q], half));
        v += 16;
    }
    return v;
}

// Where each of a bitmap group's rows continues: a chunk's fill starts where the last
// one stopped (a row's values are packed, so a position is a sum of popcounts). A
// unit is kFillSteps words of kFillRows rows, row by row: each row's words are one run
// of its values and of its bitmap row. Same-process A/B against a unit of one word of
// the 8 rows (2-core Emerald Rapids, 2026-12-06, cold weights, M = 8, Llama-1B and
// Llama-3-8B shapes): 50% 1.21x -> 1.29-1.31x of oneDNN; 2:4 1.16-1.20x -> 1.24-1.33x,
// and 1.35-1.46x with the 16-values-a-word fill (the 2:4 layout's own AMX path:
// 1.46-1.47x in the same hour).
const int kFillSteps = 4;

// A group's fill as a cursor: begin(s0, s1, tile) sets up steps [s0, s1) into `tile`
// (step-major from s0); fill_some(units) does the next `units` units of it. A unit
// is kFillSteps steps of kFillRows rows (bitmap) or one record of an 8-row block
// (2:4, two steps).

struct FillCursor {
    int64_t row0;
    int live;
    int64_t base = 0;                  // the weight's step of the part's step 0
    int64_t s0 = 0, s1 = 0, step = 0;  // the steps filled, and the next one (in the part)
    int r0 = 0;                        // the first of the rows being filled
    uint16_t* tile = nullptr;

    FillCursor(int64_t first, int64_t rows) : row0(first), live((int)rows) {}
    void begin(int64_t first_step, int64_t end_step, uint16_t* out) {
        s0 = step = first_step;
        s1 = end_step;
        r0 = 0;
        tile = out;
    }
};

struct BitmapRows : FillCursor {
    const VsWeight* w;
    const uint16_t* v[kGroup];

    BitmapRows(const VsWeight* weight, int64_t first, int64_t rows, const VsAmxPart* part)
        : FillCursor(first, rows), w(weight) {
        const bool resume = part && part->step0 > 0;
        base = part ? part->step0 : 0;
        for (int i = 0; i < live; i++)
            v[i] = (const uint16_t*)w->values + (resume ? part->row_values[row0 + i] : w->row_offsets[row0 + i]);
    }
    // Where each row's values continue after the part (all of it filled by now).
    void save(const VsAmxPart* part) const {
        if (part && part->row_values)
            for (int i = 0; i < live; i++) part->row_values[row0 + i] = v[i] - (const uint16_t*)w->values;
    }
    int64_t units(int64_t steps) const {
        return (live + kFillRows - 1) / kFillRows * ((steps + kFillSteps - 1) / kFillSteps);
    }
    void fill_some(int64_t units) {
        while (units > 0 && r0 < live) {
            const int n = live - r0 < kFillRows ? live - r0 : kFillRows;
            for (; units > 0 && step < s1; units--, step += kFillSteps) {
                const int words = s1 - step < kFillSteps ? (int)(s1 - step) : kFillSteps;
                uint16_t* out = tile + ((step - s0) * kGroup + r0) * 32;
                const uint32_t* bits = w->bitmap + (row0 + r0) * w->words + base + step;
                // (A whole unit's count passed as the constant, so that its words unroll.)
                for (int i = 0; i < n; i++, bits += w->words) {
                    const uint16_t*& row = v[r0 + i];
                    if (w->sixteen_per_word)
                        row = words == kFillSteps ? expand_half_full_words(bits, row, kFillSteps, out + i * 32)
                                                  : expand_half_full_words(bits, row, words, out + i * 32);
                    else
                        row = words == kFillSteps ? expand_words(bits, row, kFillSteps, out + i * 32)
                                                  : expand_words(bits, row, words, out + i * 32);
                }
            }
            if (step >= s1) {
                r0 += kFillRows;
                step = s0;
            }
        }
    }
};

// The 64-column masks of a 2:4 record's 8 rows at once (row i's in masks[i]): each
// selector byte holds the four selectors of two groups of 4 columns, and a nibble's
// two selectors become its group's 4-bit mask by one in-lane table lookup. (Looking
// each byte up in a 256-entry table, 64 scalar lookups a record, the 2:4 layout's AMX
// path ran 0.88-0.98x of oneDNN at M = 2-16 where the bitmap layout's ran 1.06-1.19x;
// same-process A/B against it, Emerald Rapids, cold weights, three Llama-1B/8B shapes:
// 1.22-1.48x -> 1.31-1.96x at M = 2-16, 0.75-1.29x -> 0.89-1.59x at M = 64.)
inline void record_masks(const uint8_t* record, uint64_t* masks) {
    // nibble n (selectors n & 3 and n >> 2) -> (1 << (n & 3)) | (1 << (n >> 2)), as selector_mask's table
    const __m512i nibble_masks = _mm512_broadcast_i32x4(
        _mm_setr_epi8(0x1, 0x3, 0x5, 0x9, 0x3, 0x2, 0x6, 0xa, 0x5, 0x6, 0x4, 0xc, 0x9, 0xa, 0xc, 0x8));
    const __m512i low = _mm512_set1_epi8(0x0f);
    const __m512i selectors = _mm512_loadu_si512(record);
    const __m512i lo = _mm512_shuffle_epi8(nibble_masks, _mm512_and_si512(selectors, low));
    const __m512i hi = _mm512_shuffle_epi8(nibble_masks, _mm512_and_si512(_mm512_srli_epi16(selectors, 4), low));
    _mm512_store_si512(masks, _mm512_or_si512(lo, _mm512_slli_epi16(hi, 4)));
}

// A 2:4 group's rows: step s of row r is half of record s / 2 of its 8-row block.
// Its steps begun are both even: whole records. A row's 32 values of a record are its
// 16 of each 32-column half, so each half is one expand with no popcount.
//
// Each block's records are one stream, read a record per unit: the record
// kFillRecordsAhead on is asked for as each is filled (as the 2:4 decode kernels ask
// for theirs ~2 KiB ahead). Without it the group's four streams waited on memory among
// the tile instructions even with the group brought into L2 ahead: same-process A/B,
// 2-core Xeon with AMX (480 MiB L3 reported), 2026-12-08, cold weights, against the
// region prefetch alone: M = 2 1.34-1.51x -> 1.77-2.13x of oneDNN, M = 8 1.22-1.51x ->
// 1.76-2.11x, M = 64 1.15-1.90x -> 1.42-2.14x, M = 512 0.78-1.04x -> 0.83-1.13x on
// five Llama-1B / Llama-3-8B shapes (K = 2048-14336).
const int kFillRecordsAhead = 4;
// Where a row of a block is at most this many records (K <= 1024, as SmolLM2's 576:
// nine records), the lead misses a quarter or more of each stream, and the next group
// still comes into L2 as the bitmap layout's does. Same-process A/B, same host, both
// against the records alone: K = 576 M = 2 1.19-1.24x -> 1.24-1.33x of oneDNN, M = 64
// 1.07-1.11x -> 1.16-1.23x, M = 512 0.80-0.84x -> 0.77-0.92x; K = 1536-8192 at
// M = 2-64 0.70-0.94x of the records alone.
const int64_t kRegionMaxRecords = 4 * kFillRecordsAhead;

struct NM24Rows : FillCursor {
    const VsNM24Weight* w;

    NM24Rows(const VsNM24Weight* weight, int64_t first, int64_t rows, const VsAmxPart* part)
        : FillCursor(first, rows), w(weight) {
        base = part ? part->step0 : 0;  // even: parts are whole records
    }
    void save(const VsAmxPart*) const {}
    int64_t units(int64_t steps) const { return (live + kRows - 1) / kRows * (steps / 2); }
    void fill_some(int64_t units) {
        alignas(64) uint64_t masks[kRows];
        while (units > 0 && r0 < live) {
            const int n = live - r0 < kRows ? live - r0 : kRows;
            const uint8_t* block = block_records(w, (row0 + r0) / kRows);
            for (; units > 0 && step < s1; units--, step += 2) {
                const uint8_t* record = block + (base + step) / 2 * kRecord;
                prefetch_record(record, kFillRecordsAhead);
                uint16_t* out = tile + ((step - s0) * kGroup + r0) * 32;
                record_masks(record, masks);
                for (int i = 0; i < n; i++) {
                    __mmask32* halves = (__mmask32*)&masks[i];  // the row's two 32-column masks
                    const __m256i* values = (const __m256i*)record_values(record, i);
                    const __m512i first = _mm512_castsi256_si512(_mm256_loadu_si256(values));
                    const __m512i second = _mm512_castsi256_si512(_mm256_loadu_si256(values + 1));
                    _mm512_storeu_si512(out + i * 32, _mm512_maskz_expand_epi16(_load_mask32(halves), first));
                    _mm512_storeu_si512(out + (kGroup + i) * 32,
                                        _mm512_maskz_expand_epi16(_load_mask32(halves + 1), second));
                }
            }
            if (step >= s1) {
                r0 += kRows;
                step = s0;
            }
        }
    }
};

// Rows `from`..31 of a chunk of `steps` steps: zeros (rows past the weight).
void zero_rows(uint16_t* tile, int64_t steps, int64_t from) {
    for (int64_t s = 0; s < steps; s++)
        for (int64_t r = from; r < kGroup; r++) _mm512_storeu_si512(tile + (s * kGroup + r) * 32, _mm512_setzero_si512());
}

// One group of weight rows times every activation row, chunk by chunk of columns:
// each chunk (L1/L2-sized) is multiplied with every activation block while the next
// chunk is filled among its tile instructions, into the other of two buffers (same-
// process A/B against filling each chunk before its multiply, 2-core Xeon with AMX,
// 2026-12-06, 50% and 2:4 on six Llama-3-8B / Llama-1B / SmolLM2 shapes, M = 2-512:
// 1.02-1.12x on most cases, two at 0.83 and 0.89x, the median 1.04x); a
// block's sums stay in the C tiles from chunk to chunk where there is one block, else
// wait in `partial` (4 KiB per block).
//
// The group's last chunk fills the first chunk of the thread's next group
// (`next_of`, null where there is none), so that a group of one chunk (K up to 2048
// from M = 65) fills while the tile unit works too, from bytes brought into L2 while
// the group before multiplied (ops.cpp looks two groups ahead there: a fill that waits
// on memory holds up the tile instructions behind it). Same-process A/B against each
// group filling its first chunk on its own (2-core Emerald Rapids, 2026-12-07, cold
// weights, M = 512): 50% on five Llama shapes 1.01-1.10x, 2:4 in its layout on three
// 1.03-1.05x; at M = 64 (chunks of 4 steps) 1.00-1.02x. `*first_buffer`: in, the
// buffer (0 or 1) the group before left this group's first chunk in, or -1 where it
// did not (this group fills it on its own); out, the buffer of the next group's.
template <class Rows>
void multiply_group(Rows& rows_of, Rows* next_of, int* first_buffer, int64_t rows, const uint16_t* b, int64_t m,
                    int64_t kp, const VsGemm* g, int64_t row0, void* work, const VsRegion* next, int regions,
                    const VsAmxPart* part) {
    if (part) kp = part->steps * 32;
    const float* carry_in = part ? part->carry_in : nullptr;
    float* carry_out = part ? part->carry_out : nullptr;
    configure_tiles();
    const int64_t steps = kp / 32, blocks = (m + 31) / 32;
    const int64_t chunk_steps = vs_amx_chunk_steps(m);
    uint16_t* buffers[2] = {(uint16_t*)work, (uint16_t*)work + chunk_steps * kGroup * 32};  // side by side
    const int first_chunk_buffer = *first_buffer >= 0 ? *first_buffer : 0;
    auto buffer_of = [&](int64_t chunk) { return buffers[(chunk + first_chunk_buffer) & 1]; };
    float* partial = (float*)((char*)work + 2 * kChunkBytesMax);
    // The next group's compressed bytes come into L2 over this group's steps (one
    // advance per `prefetch_every` steps of each activation block): filling the next
    // group then reads no memory. With few blocks a step is short, and an advance every
    // step keeps the bursts small (same-process A/B, Emerald Rapids, cold weights: every
    // step against every 4 at M = 2-16, 50% bitmap 1.03-1.20x -> 1.28-1.31x of oneDNN,
    // the 2:4 layout 0.88-0.92x -> 1.07-1.14x, M = 64 0.82-1.01x -> 0.95-1.07x; at M =
    // 512 every 4 steps stayed ahead, 0.97-1.19x against 0.92-0.99x).
    const int64_t prefetch_every = few_blocks(m) ? 1 : 4;  // a power of two
    const int64_t advances = blocks * ((steps + prefetch_every - 1) / prefetch_every);
    RegionPrefetch ahead[2] = {RegionPrefetch(nullptr, nullptr, 1), RegionPrefetch(nullptr, nullptr, 1)};
    for (int i = 0; i < regions && i < 2; i++) ahead[i] = RegionPrefetch(next[i].begin, next[i].end, advances);
    auto end_of = [&](int64_t s0) { return steps - s0 < chunk_steps ? steps : s0 + chunk_steps; };
    if (*first_buffer < 0) {
        rows_of.begin(0, end_of(0), buffer_of(0));
        rows_of.fill_some(rows_of.units(end_of(0)));
    }
    for (int64_t s0 = 0, c = 0; s0 < steps; s0 += chunk_steps, c++) {
        const int64_t s1 = end_of(s0);
        uint16_t* tile = buffer_of(c);
        if (rows < kGroup) zero_rows(tile, s1 - s0, rows);
        memory_barrier();  // the chunk was just filled
        // The chunk filled meanwhile (this group's next, or the next group's first),
        // its units spread over this chunk's steps of every block.
        Rows* filler = s1 < steps ? &rows_of : next_of;
        const int64_t fill_from = s1 < steps ? s1 : 0;
        FillPace pace;
        PendingStore pending;
        if (filler) {
            filler->begin(fill_from, end_of(fill_from), buffer_of(c + 1));
            pace = FillPace(filler->units(end_of(fill_from) - fill_from), blocks * (s1 - s0));
        }
        const bool first = s0 == 0, last = s1 == steps;
        for (int64_t j = 0; j < blocks; j++) {
            const int64_t m0 = 32 * j, live_m = m - m0 < 32 ? m - m0 : 32;
            const uint16_t* block = b + m0 * kp + s0 * kTileElements;  // 2j blocks of `steps` B tiles before it
            float* sums = partial + j * kBlockSums;
            // The parts of K before this one left their sums in carry_in; this part's
            // last chunk leaves them in carry_out, or (the last part) writes y.
            const float* start = first && carry_in ? carry_in + j * kBlockSums : sums;
            const bool from_zero = first && !carry_in;
            auto multiply_block = [&](auto halves) {  // halves: 1 or 2 live 16-row halves
                constexpr int H = decltype(halves)::value;
                if (blocks > 1 || first) begin_block<H>(start, from_zero);
                accumulate<H>(tile, block, steps, s0, s1, ahead, prefetch_every - 1, filler ? *filler : rows_of,
                              pace, pending);
                if (last && carry_out) {
                    save_block<H>(carry_out + j * kBlockSums);
                } else if (last) {
                    pending.finish();  // the block before's, if any tile is left
                    save_block<H>(sums);
                    pending = PendingStore{sums, 0, 2 * H, m0, live_m, row0, rows, g};
                } else if (blocks > 1) {
                    save_block<H>(sums);
                }
            };
            if (live_m > 16) multiply_block(std::integral_constant<int, 2>());
            else multiply_block(std::integral_constant<int, 1>());
        }
        pending.finish();
        if (filler) filler->fill_some(filler->units(end_of(fill_from) - fill_from));  // whatever the steps left over
        if (last) *first_buffer = (int)((c + 1 + first_chunk_buffer) & 1);
    }
    _tile_release();
    rows_of.save(part);
}

// Where a thread's work buffer keeps the next group's fill cursor between calls
// (after the chunk buffers and the blocks' sums).
struct KeptFill {
    int buffer;  // which chunk buffer holds the group's first chunk
    alignas(8) unsigned char cursor[512];
};
static_assert(sizeof(BitmapRows) <= sizeof(KeptFill::cursor) && sizeof(NM24Rows) <= sizeof(KeptFill::cursor),
              "a fill cursor must fit the kept space");

KeptFill* kept_fill(void* work, int64_t m) {
    return (KeptFill*)((char*)work + 2 * kChunkBytesMax + (m + 31) / 32 * kBlockSums * (int64_t)sizeof(float));
}

// The fill cursor the group before kept for this one.
template <class Rows>
Rows kept_cursor(const KeptFill* kept) {
    alignas(Rows) unsigned char bytes[sizeof(Rows)];
    memcpy(bytes, kept->cursor, sizeof(Rows));
    return *reinterpret_cast<const Rows*>(bytes);  // trivially copyable: its bytes are the cursor
}

// A group of a thread's run: its cursor as the group before left it, or a new one;
// the next group's cursor kept for the next call.
template <class Rows, class Weight>
void multiply_chained(const Weight* w, int64_t row0, int64_t rows, const uint16_t* b, int64_t m, int64_t kp,
                      const VsGemm* g, void* work, const VsRegion* next, int regions, const VsAmxPart* part,
                      const VsAmxChain* chain) {
    static_assert(std::is_trivially_copyable<Rows>::value, "a cursor is kept by its bytes");
    KeptFill* kept = kept_fill(work, m);
    const bool prefilled = chain && chain->prefilled;
    Rows rows_of = prefilled ? kept_cursor<Rows>(kept) : Rows(w, row0, rows, part);
    int first_buffer = prefilled ? kept->buffer : -1;
    const bool has_next = chain && chain->next_rows > 0;
    Rows next_of(w, row0 + kGroup, has_next ? chain->next_rows : 0, part);
    multiply_group(rows_of, has_next ? &next_of : nullptr, &first_buffer, rows, b, m, kp, g, row0, work, next,
                   regions, part);
    if (has_next) {
        memcpy(kept->cursor, (const void*)&next_of, sizeof(Rows));
        kept->buffer = first_buffer;
    }
}

bool request_tile_data() {
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    const bool amx_bf16 = (edx >> 22) & 1, amx_tile = (edx >> 24) & 1;
    if (!amx_bf16 || !amx_tile) return false;
    // Linux hands out the tile registers' state only on request (once per process).
    const long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

}  // namespace

extern "C" int vs_amx_ready(void) {
    static const int ready = request_tile_data() ? 1 : 0;
    return ready;
}

extern "C" void vs_amx_pack_activations(const uint16_t* x, int64_t m, int64_t k, int64_t step0, int64_t part_steps,
                                        int64_t tile_begin, int64_t tile_end, uint16_t* b) {
    // A B tile is 16 rows' 16 column pairs transposed: r[i] = row i's pairs, then
    // r[p] lane i = row i's pair p. Pairs past k and rows past m are zeros.
    const int64_t pairs = k / 2;
    const uint32_t* x32 = (const uint32_t*)x;
    for (int64_t t = tile_begin; t < tile_end; t++) {
        const int64_t block = t / part_steps, step = step0 + t % part_steps;
        const int64_t p0 = step * 16, live_pairs = pairs - p0 < 16 ? pairs - p0 : 16;
        const __mmask16 live = (__mmask16)((1u << live_pairs) - 1);
        __m512i r[16];
        for (int i = 0; i < 16; i++) {
            const int64_t row = block * 16 + i;
            r[i] = row < m ? _mm512_maskz_loadu_epi32(live, x32 + row * pairs + p0) : _mm512_setzero_si512();
        }
        transpose16(r);
        uint16_t* out = b + t * kTileElements;
        for (int p = 0; p < 16; p++) _mm512_storeu_si512(out + p * 32, r[p]);
    }
}

extern "C" int64_t vs_amx_work_bytes(int64_t m) {
    return 2 * kChunkBytesMax + (m + 31) / 32 * kBlockSums * (int64_t)sizeof(float) + (int64_t)sizeof(KeptFill);
}

extern "C" int64_t vs_amx_chunk_steps(int64_t m) {
    return few_blocks(m) ? kChunkStepsFewBlocks : kChunkStepsManyBlocks;
}

extern "C" int64_t vs_amx_carry_floats(int64_t m) { return (m + 31) / 32 * kBlockSums; }

extern "C" void vs_amx_bitmap_group(const VsWeight* w, int64_t row0, int64_t rows, const uint16_t* b, int64_t m,
                                    const VsGemm* g, void* work, const VsRegion* next, int regions,
                                    const VsAmxPart* part, const VsAmxChain* chain) {
    multiply_chained<BitmapRows>(w, row0, rows, b, m, w->words * 32, g, work, next, regions, part, chain);
}

extern "C" void vs_amx_nm24_group(const VsNM24Weight* w, int64_t row0, int64_t rows, const uint16_t* b, int64_t m,
                                  const VsGemm* g, void* work, const VsRegion* next, int regions,
                                  const VsAmxPart* part, const VsAmxChain* chain) {
    const bool short_rows = (w->k + 63) / 64 <= kRegionMaxRecords;  // records in a row of a block
    multiply_chained<NM24Rows>(w, row0, rows, b, m, w->k, g, work, next, short_rows ? regions : 0, part, chain);
}
