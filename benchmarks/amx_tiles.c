// What one core's AMX tile unit sustains for the large-M path's inner loop
// (csrc/gemm_amx_bf16.cpp: per 32-column step two weight tiles and two activation
// tiles loaded, four tdpbf16ps into four C tiles), by where the loaded tiles live.
//
//     cc -O2 -pthread -mamx-tile -mamx-bf16 benchmarks/amx_tiles.c -o /tmp/amx_tiles && /tmp/amx_tiles [threads]
//
// Each line: nanoseconds per tile multiply (16 x 16 fp32 += 16 x 32 bf16 times
// 32 x 16 bf16: 16384 flops), best of 5 runs, one thread. "span" is the bytes the
// loads cycle over; "4 KiB" and "2 MiB" the pages backing them (2 MiB: madvise, as
// the weights' copies; the line says when the kernel refused). Needs AMX-BF16 and a
// Linux that grants the tile state (elsewhere it says so and stops). With a thread
// count, the last lines time the 1 MiB span (2 MiB pages, all four loads streamed) on
// one thread, then on that many threads at once, each over its own span: what the
// large-M path's threads can get from their cores' tile units together.
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__)
#include <immintrin.h>

struct TileConfig {
    uint8_t palette, start_row, reserved[14];
    uint16_t bytes_per_row[16];
    uint8_t rows[16];
};

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

enum { ITERS = 1000000, RUNS = 5, TILE_BYTES = 1024, STEP_BYTES = 4 * TILE_BYTES };
enum Source { IN_REGISTERS, BOTH_STREAMED, WEIGHT_IN_L1 };

// ns per tile multiply: ITERS steps of 2 x 2 tiles, loads as `source` says.
static double time_steps(const char* buf, size_t span, enum Source source) {
    double best = 1e30;
    for (int run = 0; run < RUNS; run++) {
        size_t off = 0;
        const double t = seconds();
        for (long i = 0; i < ITERS; i++) {
            if (source != IN_REGISTERS) {
                // the weight's two tiles: from the span, or from the same 2 KiB (L1)
                const char* a = source == WEIGHT_IN_L1 ? buf : buf + off;
                _tile_loadd(4, a, 64);
                _tile_loadd(5, a + TILE_BYTES, 64);
                _tile_loadd(6, buf + off + 2 * TILE_BYTES, 64);
                _tile_loadd(7, buf + off + 3 * TILE_BYTES, 64);
                off = off + 2 * STEP_BYTES > span ? 0 : off + STEP_BYTES;
            }
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
        const double per = (seconds() - t) / ITERS / 4 * 1e9;
        best = per < best ? per : best;
    }
    return best;
}

static char* span_memory(size_t bytes, int huge);
static void configure(void);

struct Shared {
    pthread_barrier_t start;
    double wall;
};

// One thread's share: its own tile state and span, every thread starting together.
static void* stream_span(void* arg) {
    struct Shared* shared = (struct Shared*)arg;
    const size_t span = (size_t)1 << 20;
    configure();
    char* buf = span_memory(span, 1);
    pthread_barrier_wait(&shared->start);
    const double t = seconds();
    for (int run = 0; run < RUNS; run++) time_steps(buf, span, BOTH_STREAMED);
    shared->wall = seconds() - t;  // the same for every thread but the last to finish
    free(buf);
    _tile_release();
    return NULL;
}

// Nanoseconds per tile multiply of all `threads` threads together (wall time over the
// multiplies of every thread), each streaming its own 1 MiB span.
static double together(int threads) {
    pthread_t ids[64];
    struct Shared shared;
    pthread_barrier_init(&shared.start, NULL, (unsigned)threads);
    const double t = seconds();
    for (int i = 0; i < threads; i++) pthread_create(&ids[i], NULL, stream_span, &shared);
    for (int i = 0; i < threads; i++) pthread_join(ids[i], NULL);
    const double wall = seconds() - t;
    pthread_barrier_destroy(&shared.start);
    return wall / ((double)threads * RUNS * RUNS * ITERS * 4) * 1e9;
}

static char* span_memory(size_t bytes, int huge) {
    const size_t page = (size_t)2 << 20;
    const size_t rounded = (bytes + page - 1) / page * page;
    char* memory = NULL;
    if (posix_memalign((void**)&memory, page, rounded) != 0) return NULL;
    if (huge && madvise(memory, rounded, MADV_HUGEPAGE) != 0) printf("  (madvise refused: 4 KiB pages)\n");
    memset(memory, 0, rounded);  // bf16 zeros: the values do not change the timing
    return memory;
}

static void configure(void) {
    struct TileConfig config;
    memset(&config, 0, sizeof(config));
    config.palette = 1;
    for (int t = 0; t < 8; t++) {
        config.bytes_per_row[t] = 64;
        config.rows[t] = 16;
    }
    // ldtilecfg's operand names only the first bytes: keep the other stores above it.
    __asm__ volatile("" ::: "memory");
    _tile_loadconfig(&config);
    _tile_zero(0);  // tile numbers are immediates
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
}

int main(int argc, char** argv) {
    const long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) {
        printf("the kernel does not grant the AMX tile state here\n");
        return 1;
    }
    const int threads = argc > 1 ? atoi(argv[1]) : 0;
    if (threads < 0 || threads > 64) {
        printf("threads: 1 to 64\n");
        return 1;
    }
    configure();
    char* small = span_memory(STEP_BYTES, 0);
    _tile_loadd(4, small, 64);
    _tile_loadd(5, small, 64);
    _tile_loadd(6, small, 64);
    _tile_loadd(7, small, 64);
    printf("tiles in registers:                    %6.2f ns per tile multiply\n", time_steps(small, 0, IN_REGISTERS));
    const size_t spans[] = {32 << 10, 256 << 10, 1 << 20, 3 << 19, 2 << 20, 4 << 20};
    for (int huge = 0; huge < 2; huge++) {
        for (size_t i = 0; i < sizeof(spans) / sizeof(spans[0]); i++) {
            char* buf = span_memory(spans[i], huge);
            if (!buf) return 1;
            const double both = time_steps(buf, spans[i], BOTH_STREAMED);
            const double weight_l1 = time_steps(buf, spans[i], WEIGHT_IN_L1);
            printf("span %5zu KiB, %s pages: all four loads streamed %6.2f ns, weight tiles from L1 %6.2f ns\n",
                   spans[i] >> 10, huge ? "2 MiB" : "4 KiB", both, weight_l1);
            free(buf);
        }
    }
    free(small);
    _tile_release();
    if (threads > 0) {
        const double one = together(1), all = together(threads);
        printf("1 MiB span, 2 MiB pages, streamed: one thread %6.2f ns per tile multiply; %d threads at once %6.2f ns "
               "(%.2fx the one thread's rate)\n", one, threads, all, one / all);
    }
    return 0;
}
#else
int main(void) {
    printf("built without AMX-BF16 (compile with -mamx-tile -mamx-bf16 on a CPU that has it)\n");
    return 1;
}
#endif
