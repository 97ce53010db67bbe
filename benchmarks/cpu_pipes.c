// What one core's vector pipes sustain for the instructions the CPU sparse kernels
// are made of, in loops on registers and on a few lines of L1 (no memory traffic):
// the ceiling on the work the kernels do per weight once the bytes read are no longer
// what sets the time.
//
//     cc -O2 -march=native benchmarks/cpu_pipes.c -o /tmp/cpu_pipes && /tmp/cpu_pipes
//
// Each line: nanoseconds per loop body on one core, best of 5 runs. The bodies are
// written in assembly, so the compiler can neither drop nor merge them. Needs AVX-512
// BF16 and VBMI2 (elsewhere it says so and stops). What the figures bound:
//   * a bf16 dot (vdpbf16ps) multiplies 32 weights with 32 activations of one row;
//     vLLM's dense GEMM and the bitmap kernel both issue one per 32 weights per
//     activation row, zeros included, so once a step is bound by its dots, sparse
//     weights save only what the expansion (vpexpandw) does not cost back;
//   * the large-M path fills a tile with one vpexpandw and one store per 32 weights,
//     beside M dots of another tile: the "vpexpandw + store" lines are its cost at
//     M = 16 and 32 once its bytes are in L1;
//   * skipping the zeros needs the activations gathered to the weights (vpermt2w, one
//     per dot saved, or vpermw from one register): the "gather + dot" lines say what
//     that pair costs.
#include <stdio.h>
#include <time.h>

#if defined(__AVX512BF16__) && defined(__AVX512VBMI2__)

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

enum { ITERS = 4000000, RUNS = 5 };

#define CLOBBERS "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31"

// Best of RUNS timings of ITERS iterations of BODY (assembly), in ns per iteration.
// zmm30 and zmm31 start at zero, k1 and k2 hold two expansion masks, and %1 points at
// BUF (64-byte aligned, at least 768 bytes: a few lines of L1).
#define TIME_LOOP(BUF, BODY)                                              \
    ({                                                                    \
        double best = 1e30;                                               \
        for (int run = 0; run < RUNS; run++) {                            \
            long n = ITERS;                                               \
            const double t = seconds();                                   \
            __asm__ volatile("vpxord %%zmm30, %%zmm30, %%zmm30\n"         \
                             "vpxord %%zmm31, %%zmm31, %%zmm31\n"         \
                             "mov $0x5a5a6996, %%eax\n"                   \
                             "kmovd %%eax, %%k1\n"                        \
                             "mov $0x0ff0c33c, %%eax\n"                   \
                             "kmovd %%eax, %%k2\n"                        \
                             "1:\n" BODY "dec %0\n"                       \
                             "jnz 1b\n"                                   \
                             : "+r"(n)                                    \
                             : "r"(BUF)                                   \
                             : "eax", "k1", "k2", "cc", "memory", CLOBBERS); \
            const double per = (seconds() - t) / ITERS * 1e9;             \
            best = per < best ? per : best;                               \
        }                                                                 \
        best;                                                             \
    })

// The loop bodies.
#define DOTS8 "vdpbf16ps %%zmm31, %%zmm30, %%zmm0\n" \
    "vdpbf16ps %%zmm31, %%zmm30, %%zmm1\n" \
    "vdpbf16ps %%zmm31, %%zmm30, %%zmm2\n" \
    "vdpbf16ps %%zmm31, %%zmm30, %%zmm3\n" \
    "vdpbf16ps %%zmm31, %%zmm30, %%zmm4\n" \
    "vdpbf16ps %%zmm31, %%zmm30, %%zmm5\n" \
    "vdpbf16ps %%zmm31, %%zmm30, %%zmm6\n" \
    "vdpbf16ps %%zmm31, %%zmm30, %%zmm7\n"
#define DOTS16 DOTS8 \
    "vdpbf16ps %%zmm31, %%zmm30, %%zmm8\n" \
    "vdpbf16ps %%zmm31, %%zmm30, %%zmm9\n" \
    "vdpbf16ps %%zmm31, %%zmm30, %%zmm10\n" \
    "vdpbf16ps %%zmm31, %%zmm30, %%zmm11\n" \
    "vdpbf16ps %%zmm31, %%zmm30, %%zmm12\n" \
    "vdpbf16ps %%zmm31, %%zmm30, %%zmm13\n" \
    "vdpbf16ps %%zmm31, %%zmm30, %%zmm14\n" \
    "vdpbf16ps %%zmm31, %%zmm30, %%zmm15\n"
#define EXPAND2 "vpexpandw %%zmm28, %%zmm20%{%%k1%}%{z%}\n" \
    "vpexpandw %%zmm29, %%zmm21%{%%k2%}%{z%}\n"
#define DOTS16_ON_EXPANDED "vdpbf16ps %%zmm20, %%zmm30, %%zmm0\n" \
    "vdpbf16ps %%zmm21, %%zmm30, %%zmm1\n" \
    "vdpbf16ps %%zmm20, %%zmm30, %%zmm2\n" \
    "vdpbf16ps %%zmm21, %%zmm30, %%zmm3\n" \
    "vdpbf16ps %%zmm20, %%zmm30, %%zmm4\n" \
    "vdpbf16ps %%zmm21, %%zmm30, %%zmm5\n" \
    "vdpbf16ps %%zmm20, %%zmm30, %%zmm6\n" \
    "vdpbf16ps %%zmm21, %%zmm30, %%zmm7\n" \
    "vdpbf16ps %%zmm20, %%zmm30, %%zmm8\n" \
    "vdpbf16ps %%zmm21, %%zmm30, %%zmm9\n" \
    "vdpbf16ps %%zmm20, %%zmm30, %%zmm10\n" \
    "vdpbf16ps %%zmm21, %%zmm30, %%zmm11\n" \
    "vdpbf16ps %%zmm20, %%zmm30, %%zmm12\n" \
    "vdpbf16ps %%zmm21, %%zmm30, %%zmm13\n" \
    "vdpbf16ps %%zmm20, %%zmm30, %%zmm14\n" \
    "vdpbf16ps %%zmm21, %%zmm30, %%zmm15\n"
#define DOTS16_FROM_L1 "vdpbf16ps 0(%1), %%zmm20, %%zmm0\n" \
    "vdpbf16ps 64(%1), %%zmm20, %%zmm1\n" \
    "vdpbf16ps 128(%1), %%zmm20, %%zmm2\n" \
    "vdpbf16ps 192(%1), %%zmm20, %%zmm3\n" \
    "vdpbf16ps 256(%1), %%zmm20, %%zmm4\n" \
    "vdpbf16ps 320(%1), %%zmm20, %%zmm5\n" \
    "vdpbf16ps 384(%1), %%zmm20, %%zmm6\n" \
    "vdpbf16ps 448(%1), %%zmm20, %%zmm7\n" \
    "vdpbf16ps 0(%1), %%zmm21, %%zmm8\n" \
    "vdpbf16ps 64(%1), %%zmm21, %%zmm9\n" \
    "vdpbf16ps 128(%1), %%zmm21, %%zmm10\n" \
    "vdpbf16ps 192(%1), %%zmm21, %%zmm11\n" \
    "vdpbf16ps 256(%1), %%zmm21, %%zmm12\n" \
    "vdpbf16ps 320(%1), %%zmm21, %%zmm13\n" \
    "vdpbf16ps 384(%1), %%zmm21, %%zmm14\n" \
    "vdpbf16ps 448(%1), %%zmm21, %%zmm15\n"
#define EXPAND2_FROM_L1 "vpexpandw 512(%1), %%zmm20%{%%k1%}%{z%}\n" \
    "vpexpandw 576(%1), %%zmm21%{%%k2%}%{z%}\n"
// The large-M path's fill (csrc/gemm_rowtile_bf16.cpp): one 32-column word expanded
// from L1 and stored to the tile, beside the dots of another, already filled word.
#define EXPAND_STORE "vpexpandw 512(%1), %%zmm20%{%%k1%}%{z%}\n" \
    "vmovdqu64 %%zmm20, 640(%1)\n"
#define GATHER_DOT16 "vpermt2w %%zmm25, %%zmm24, %%zmm16\n" \
    "vdpbf16ps %%zmm16, %%zmm26, %%zmm0\n" \
    "vpermt2w %%zmm25, %%zmm24, %%zmm17\n" \
    "vdpbf16ps %%zmm17, %%zmm26, %%zmm1\n" \
    "vpermt2w %%zmm25, %%zmm24, %%zmm18\n" \
    "vdpbf16ps %%zmm18, %%zmm26, %%zmm2\n" \
    "vpermt2w %%zmm25, %%zmm24, %%zmm19\n" \
    "vdpbf16ps %%zmm19, %%zmm26, %%zmm3\n" \
    "vpermt2w %%zmm25, %%zmm24, %%zmm20\n" \
    "vdpbf16ps %%zmm20, %%zmm26, %%zmm4\n" \
    "vpermt2w %%zmm25, %%zmm24, %%zmm21\n" \
    "vdpbf16ps %%zmm21, %%zmm26, %%zmm5\n" \
    "vpermt2w %%zmm25, %%zmm24, %%zmm22\n" \
    "vdpbf16ps %%zmm22, %%zmm26, %%zmm6\n" \
    "vpermt2w %%zmm25, %%zmm24, %%zmm23\n" \
    "vdpbf16ps %%zmm23, %%zmm26, %%zmm7\n" \
    "vpermt2w %%zmm25, %%zmm24, %%zmm16\n" \
    "vdpbf16ps %%zmm16, %%zmm26, %%zmm8\n" \
    "vpermt2w %%zmm25, %%zmm24, %%zmm17\n" \
    "vdpbf16ps %%zmm17, %%zmm26, %%zmm9\n" \
    "vpermt2w %%zmm25, %%zmm24, %%zmm18\n" \
    "vdpbf16ps %%zmm18, %%zmm26, %%zmm10\n" \
    "vpermt2w %%zmm25, %%zmm24, %%zmm19\n" \
    "vdpbf16ps %%zmm19, %%zmm26, %%zmm11\n" \
    "vpermt2w %%zmm25, %%zmm24, %%zmm20\n" \
    "vdpbf16ps %%zmm20, %%zmm26, %%zmm12\n" \
    "vpermt2w %%zmm25, %%zmm24, %%zmm21\n" \
    "vdpbf16ps %%zmm21, %%zmm26, %%zmm13\n" \
    "vpermt2w %%zmm25, %%zmm24, %%zmm22\n" \
    "vdpbf16ps %%zmm22, %%zmm26, %%zmm14\n" \
    "vpermt2w %%zmm25, %%zmm24, %%zmm23\n" \
    "vdpbf16ps %%zmm23, %%zmm26, %%zmm15\n"

#define PERMW_DOT16 "vpermw %%zmm25, %%zmm24, %%zmm16\n" \
    "vdpbf16ps %%zmm16, %%zmm26, %%zmm0\n" \
    "vpermw %%zmm25, %%zmm24, %%zmm17\n" \
    "vdpbf16ps %%zmm17, %%zmm26, %%zmm1\n" \
    "vpermw %%zmm25, %%zmm24, %%zmm18\n" \
    "vdpbf16ps %%zmm18, %%zmm26, %%zmm2\n" \
    "vpermw %%zmm25, %%zmm24, %%zmm19\n" \
    "vdpbf16ps %%zmm19, %%zmm26, %%zmm3\n" \
    "vpermw %%zmm25, %%zmm24, %%zmm20\n" \
    "vdpbf16ps %%zmm20, %%zmm26, %%zmm4\n" \
    "vpermw %%zmm25, %%zmm24, %%zmm21\n" \
    "vdpbf16ps %%zmm21, %%zmm26, %%zmm5\n" \
    "vpermw %%zmm25, %%zmm24, %%zmm22\n" \
    "vdpbf16ps %%zmm22, %%zmm26, %%zmm6\n" \
    "vpermw %%zmm25, %%zmm24, %%zmm23\n" \
    "vdpbf16ps %%zmm23, %%zmm26, %%zmm7\n" \
    "vpermw %%zmm25, %%zmm24, %%zmm16\n" \
    "vdpbf16ps %%zmm16, %%zmm26, %%zmm8\n" \
    "vpermw %%zmm25, %%zmm24, %%zmm17\n" \
    "vdpbf16ps %%zmm17, %%zmm26, %%zmm9\n" \
    "vpermw %%zmm25, %%zmm24, %%zmm18\n" \
    "vdpbf16ps %%zmm18, %%zmm26, %%zmm10\n" \
    "vpermw %%zmm25, %%zmm24, %%zmm19\n" \
    "vdpbf16ps %%zmm19, %%zmm26, %%zmm11\n" \
    "vpermw %%zmm25, %%zmm24, %%zmm20\n" \
    "vdpbf16ps %%zmm20, %%zmm26, %%zmm12\n" \
    "vpermw %%zmm25, %%zmm24, %%zmm21\n" \
    "vdpbf16ps %%zmm21, %%zmm26, %%zmm13\n" \
    "vpermw %%zmm25, %%zmm24, %%zmm22\n" \
    "vdpbf16ps %%zmm22, %%zmm26, %%zmm14\n" \
    "vpermw %%zmm25, %%zmm24, %%zmm23\n" \
    "vdpbf16ps %%zmm23, %%zmm26, %%zmm15\n"

#define PERMW_MEM_DOT16 "vpermw 0(%1), %%zmm24, %%zmm16\n" \
    "vdpbf16ps %%zmm16, %%zmm26, %%zmm0\n" \
    "vpermw 64(%1), %%zmm24, %%zmm17\n" \
    "vdpbf16ps %%zmm17, %%zmm26, %%zmm1\n" \
    "vpermw 128(%1), %%zmm24, %%zmm18\n" \
    "vdpbf16ps %%zmm18, %%zmm26, %%zmm2\n" \
    "vpermw 192(%1), %%zmm24, %%zmm19\n" \
    "vdpbf16ps %%zmm19, %%zmm26, %%zmm3\n" \
    "vpermw 256(%1), %%zmm24, %%zmm20\n" \
    "vdpbf16ps %%zmm20, %%zmm26, %%zmm4\n" \
    "vpermw 320(%1), %%zmm24, %%zmm21\n" \
    "vdpbf16ps %%zmm21, %%zmm26, %%zmm5\n" \
    "vpermw 384(%1), %%zmm24, %%zmm22\n" \
    "vdpbf16ps %%zmm22, %%zmm26, %%zmm6\n" \
    "vpermw 448(%1), %%zmm24, %%zmm23\n" \
    "vdpbf16ps %%zmm23, %%zmm26, %%zmm7\n" \
    "vpermw 0(%1), %%zmm24, %%zmm16\n" \
    "vdpbf16ps %%zmm16, %%zmm26, %%zmm8\n" \
    "vpermw 64(%1), %%zmm24, %%zmm17\n" \
    "vdpbf16ps %%zmm17, %%zmm26, %%zmm9\n" \
    "vpermw 128(%1), %%zmm24, %%zmm18\n" \
    "vdpbf16ps %%zmm18, %%zmm26, %%zmm10\n" \
    "vpermw 192(%1), %%zmm24, %%zmm19\n" \
    "vdpbf16ps %%zmm19, %%zmm26, %%zmm11\n" \
    "vpermw 256(%1), %%zmm24, %%zmm20\n" \
    "vdpbf16ps %%zmm20, %%zmm26, %%zmm12\n" \
    "vpermw 320(%1), %%zmm24, %%zmm21\n" \
    "vdpbf16ps %%zmm21, %%zmm26, %%zmm13\n" \
    "vpermw 384(%1), %%zmm24, %%zmm22\n" \
    "vdpbf16ps %%zmm22, %%zmm26, %%zmm14\n" \
    "vpermw 448(%1), %%zmm24, %%zmm23\n" \
    "vdpbf16ps %%zmm23, %%zmm26, %%zmm15\n"

int main(void) {
    static float buf[256] __attribute__((aligned(64)));
    const double dot8 = TIME_LOOP(buf, DOTS8) / 8;
    const double dot16 = TIME_LOOP(buf, DOTS16) / 16;
    const double expand2 = TIME_LOOP(buf, EXPAND2);
    const double expand2_dots16 = TIME_LOOP(buf, EXPAND2 DOTS16_ON_EXPANDED);
    const double dots16_mem = TIME_LOOP(buf, DOTS16_FROM_L1);
    const double expand2_mem_dots16_mem = TIME_LOOP(buf, EXPAND2_FROM_L1 DOTS16_FROM_L1);
    const double fill_dots16 = TIME_LOOP(buf, EXPAND_STORE DOTS16);
    const double fill_dots32 = TIME_LOOP(buf, EXPAND_STORE DOTS16 DOTS16);
    const double gather_dot = TIME_LOOP(buf, GATHER_DOT16) / 16;
    const double permw_dot = TIME_LOOP(buf, PERMW_DOT16) / 16;
    const double permw_mem_dot = TIME_LOOP(buf, PERMW_MEM_DOT16) / 16;
    printf("vdpbf16ps, 8 independent accumulators:  %.3f ns per dot\n", dot8);
    printf("vdpbf16ps, 16 independent accumulators: %.3f ns per dot\n", dot16);
    printf("2 vpexpandw:                            %.3f ns\n", expand2);
    printf("2 vpexpandw + 16 dots (M = 8, 2 rows):  %.3f ns = %.2fx the 16 dots alone\n", expand2_dots16,
           expand2_dots16 / (16 * dot16));
    printf("16 dots, activations from L1:           %.3f ns = %.2fx with them in registers\n", dots16_mem,
           dots16_mem / (16 * dot16));
    printf("2 vpexpandw from L1 + 16 dots from L1:  %.3f ns = %.2fx the 16 dots in registers\n",
           expand2_mem_dots16_mem, expand2_mem_dots16_mem / (16 * dot16));
    printf("vpexpandw + store + 16 dots (M = 16):   %.3f ns = %.2fx the 16 dots alone\n", fill_dots16,
           fill_dots16 / (16 * dot16));
    printf("vpexpandw + store + 32 dots (M = 32):   %.3f ns = %.2fx the 32 dots alone\n", fill_dots32,
           fill_dots32 / (32 * dot16));
    printf("vpermt2w gather + dot:                  %.3f ns = %.2fx a dot\n", gather_dot, gather_dot / dot16);
    printf("vpermw gather + dot:                    %.3f ns = %.2fx a dot\n", permw_dot, permw_dot / dot16);
    printf("vpermw gather from L1 + dot:            %.3f ns = %.2fx a dot\n", permw_mem_dot, permw_mem_dot / dot16);
    return 0;
}
#else
int main(void) {
    puts("cpu_pipes: no AVX-512 BF16 + VBMI2 in this build (compile with -march=native on such a CPU)");
    return 0;
}
#endif
