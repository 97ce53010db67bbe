// Portable fallback: visits only the stored values (work ~ non-zeros), any CPU.
#include "store.h"

namespace {

const int kMaxBlock = 8;  // activation rows accumulated per pass over a weight row

void row_block(const VsWeight* w, const VsGemm* g, int64_t r, int64_t m0, int mb) {
    const float* x = (const float*)g->x;
    const int64_t ldx = w->words * 32;
    float acc[kMaxBlock] = {0};
    int64_t v = w->row_offsets[r];
    const uint32_t* bits = w->bitmap + r * w->words;
    for (int64_t word = 0; word < w->words; word++) {
        uint32_t mask = bits[word];
        while (mask) {
            int j = __builtin_ctz(mask);
            mask &= mask - 1;
            float value = vs_load_value(w->values, w->dtype, v++);
            const float* xc = x + m0 * ldx + word * 32 + j;
            for (int i = 0; i < mb; i++) acc[i] += value * xc[i * ldx];
        }
    }
    for (int i = 0; i < mb; i++) vs_store_out(g, m0 + i, r, acc[i]);
}

}  // namespace

extern "C" void vs_gemm_scalar(const VsWeight* w, const VsGemm* g, int64_t row_begin, int64_t row_end) {
    for (int64_t r = row_begin; r < row_end; r++) {
        for (int64_t m0 = 0; m0 < g->m; m0 += kMaxBlock) {
            int64_t left = g->m - m0;
            row_block(w, g, r, m0, left < kMaxBlock ? (int)left : kMaxBlock);
        }
    }
}

extern "C" void vs_unpack_scalar(const VsWeight* w, int64_t row_begin, int64_t row_end, void* dst) {
    const int size = w->dtype == VS_F32 ? 4 : 2;
    char* out = (char*)dst;
    const char* values = (const char*)w->values;
    for (int64_t r = row_begin; r < row_end; r++) {
        char* row = out + (r - row_begin) * w->k * size;
        memset(row, 0, w->k * size);
        int64_t v = w->row_offsets[r];
        const uint32_t* bits = w->bitmap + r * w->words;
        for (int64_t word = 0; word < w->words; word++) {
            uint32_t mask = bits[word];
            while (mask) {
                int j = __builtin_ctz(mask);
                mask &= mask - 1;
                memcpy(row + (word * 32 + j) * size, values + (v++) * size, size);
            }
        }
    }
}
