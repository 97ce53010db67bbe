// Large M (and batched decode) on CPUs with AMX-BF16 (Sapphire Rapids and later): the
// weight, decompressed 32 rows at a time into the same cache-resident panel as
// gemm_tile_bf16.cpp fills, multiplied by tile instructions.
//
// Why its own GEMM: on a 2-core Xeon with AMX (2026-12-06) vLLM's dense GEMM is
// oneDNN on AMX, and the AVX-512 BF16 row tiles and panels ran 0.1-0.3x of it from
// M = 64 up, 0.4-0.6x at M = 16; handing decompressed tiles to torch's GEMM (oneDNN,
// which repacks each on every call) ran 0.5x at M = 64.
//
// The panel's layout is already the one a tile multiply reads its second operand in:
// panel[p * 32 + n] = (W[n, 2p], W[n, 2p + 1]), so 16 column pairs x 16 weight rows is
// one B tile, loaded with a stride of 32 words. The activations are packed once per
// call as A tiles, each 16 rows x 32 columns contiguous (1 KiB), zero-padded to whole
// tiles. (Loaded from the activation matrix itself, a tile's 16 rows lie k * 2 bytes
// apart, 8 KiB at k = 4096: all in one L1 set.) A block of up to 32 activation rows x
// the panel's 32 weight rows accumulates in four C tiles over every column.
#include <cpuid.h>
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "store.h"

#pragma GCC target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")

namespace {

#include "prefetch.h"

const int kNR = VS_TILE_PANEL_ROWS;  // 32 weight rows: two B tiles side by side
const int64_t kATileElements = 16 * 32;  // bf16: 16 activation rows x 32 columns

// Tiles: C (fp32 [16, 16]) for activation half a and weight half b is tile 2a + b;
// A (activations) 4 and 5; B (the panel) 6 and 7. All are 16 rows of 64 bytes.
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

// HALVES (1 or 2) blocks of 16 activation rows (their tiles from `a` on, one block's
// after the other's `steps` tiles) x the panel, over `steps` steps of 32 columns,
// into the C tiles. `ahead` advances every 4 steps.
template <int HALVES>
void accumulate(const uint16_t* a, const uint32_t* panel, int64_t steps, RegionPrefetch* ahead) {
    _tile_zero(0);
    _tile_zero(1);
    if (HALVES == 2) {
        _tile_zero(2);
        _tile_zero(3);
    }
    const uint16_t* a_second = a + steps * kATileElements;
    for (int64_t s = 0; s < steps; s++, panel += 16 * kNR) {
        if ((s & 3) == 0) {
            ahead[0].advance();
            ahead[1].advance();
        }
        _tile_loadd(6, panel, kNR * 4);
        _tile_loadd(7, panel + 16, kNR * 4);
        _tile_loadd(4, a + s * kATileElements, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        if (HALVES == 2) {
            _tile_loadd(5, a_second + s * kATileElements, 64);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
    }
}

// The C tiles of a block (activation rows from m0, `live_m` of them) into y's
// columns row0 .. row0 + rows, plus bias, as bf16.
template <int HALVES>
void store_block(int64_t m0, int64_t live_m, int64_t row0, int64_t rows, const VsGemm* g) {
    alignas(64) float c[4][16][16];
    _tile_stored(0, c[0], 64);
    _tile_stored(1, c[1], 64);
    if (HALVES == 2) {
        _tile_stored(2, c[2], 64);
        _tile_stored(3, c[3], 64);
    }
    memory_barrier();
    const __mmask16 valid[2] = {
        rows >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << rows) - 1),
        rows >= 32 ? (__mmask16)0xffff : rows <= 16 ? (__mmask16)0 : (__mmask16)((1u << (rows - 16)) - 1)};
    __m512 bias[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    if (g->bias)
        for (int b = 0; b < 2; b++) bias[b] = _mm512_maskz_loadu_ps(valid[b], g->bias + row0 + 16 * b);
    for (int i = 0; i < live_m && i < 16 * HALVES; i++) {
        uint16_t* y = (uint16_t*)g->y + (m0 + i) * g->ldy + row0;
        for (int b = 0; b < 2; b++) {
            const __m512 v = _mm512_add_ps(_mm512_load_ps(c[2 * (i / 16) + b][i % 16]), bias[b]);
            _mm256_mask_storeu_epi16(y + 16 * b, valid[b], (__m256i)_mm512_cvtneps_pbh(v));
        }
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

extern "C" void vs_amx_panel_multiply(const uint32_t* panel, int64_t rows, const uint16_t* a, int64_t m,
                                      int64_t kp, const VsGemm* g, int64_t row0, const VsRegion* next,
                                      int regions) {
    configure_tiles();
    const int64_t steps = kp / 32;
    const int64_t blocks = (m + 31) / 32;
    // The next panel's compressed bytes come into L2 over this panel's steps (one per
    // 4 steps of each activation block): filling the next panel then reads no memory.
    const int64_t advances = ((steps + 3) / 4) * blocks;
    RegionPrefetch ahead[2] = {RegionPrefetch(nullptr, nullptr, 1), RegionPrefetch(nullptr, nullptr, 1)};
    for (int i = 0; i < regions && i < 2; i++) ahead[i] = RegionPrefetch(next[i].begin, next[i].end, advances);
    memory_barrier();  // the panel was just filled
    for (int64_t m0 = 0; m0 < m; m0 += 32) {
        const int64_t live_m = m - m0 < 32 ? m - m0 : 32;
        if (live_m > 16) {
            accumulate<2>(a + m0 * kp, panel, steps, ahead);
            store_block<2>(m0, live_m, row0, rows, g);
        } else {
            accumulate<1>(a + m0 * kp, panel, steps, ahead);
            store_block<1>(m0, live_m, row0, rows, g);
        }
    }
    _tile_release();
}
