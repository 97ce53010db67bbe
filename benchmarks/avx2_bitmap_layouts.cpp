// The AVX2 one-row bf16 decode of the bitmap layout (the library's own
// vs_gemm_avx2, linked from csrc/) against the same weight laid out per block of 8
// rows as one contiguous run of records: per 64 (CW = 2) or 128 (CW = 4) columns, the
// 8 rows' 32-bit bitmap words, then the 8 rows' values, row after row.
//
//     c=vllm_sparse/kernels/cpu/csrc
//     g++ -O3 -march=native -fopenmp -I$c benchmarks/avx2_bitmap_layouts.cpp \
//         $c/gemm_avx2.cpp $c/gemm_scalar.cpp -o /tmp/layouts
//     OMP_NUM_THREADS=2 /tmp/layouts 4096 14336 0.5 20       # out, in, sparsity, calls
//     HOT=1 OMP_NUM_THREADS=1 /tmp/layouts 96 4096 0.7 200   # one copy, in L2
//
// Variants: prod (the library's kernel: 8 value pointers, 8 bitmap rows, the next 24
// rows brought into L2 while it multiplies); blocked2 / blocked4 (per-row pointers
// found from each record's bitmap words); blocked2+region (the same, with the next
// block brought into L2); rowwise2 / rowwise4 (one pointer walks each record's rows
// one after another). Every variant is checked against an fp64 reference first;
// weights sit on 2 MiB pages, cold runs cycle through copies over 200 MB, variants
// alternate call by call, and each line is the median. Findings in CPU_KERNELS.md
// ("one stream per block of rows").
#include <immintrin.h>
#include <omp.h>
#include <sys/mman.h>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <chrono>
#include <random>
#include <algorithm>

#include "spmm.h"
#include "prefetch.h"  // RegionPrefetch, as the library's kernels use it
#include "hsum256.h"   // the library's horizontal sum

alignas(64) static uint8_t widen_bf16[256][32];
static void init_tables() {
  for (int b = 0; b < 256; b++) { int rank = 0; for (int j = 0; j < 8; j++) {
    widen_bf16[b][4*j] = widen_bf16[b][4*j+1] = 0x80;
    if (b & (1<<j)) { widen_bf16[b][4*j+2] = 2*rank; widen_bf16[b][4*j+3] = 2*rank+1; rank++; }
    else widen_bf16[b][4*j+2] = widen_bf16[b][4*j+3] = 0x80; } }
}
static void* halloc(size_t n){ n=(n+(2<<20)-1)/(2<<20)*(2<<20); void* p=aligned_alloc(2<<20,n); madvise(p,n,MADV_HUGEPAGE); memset(p,0,n); return p; }
// One 32-column bitmap word of a row: each byte's packed values placed in its 8
// columns' fp32 lanes by one shuffle (as the library's one-row loop does), times the
// activations xq[byte], added into a; p moves past the word's values.
static inline __m256 word_dot(const char*& p, uint32_t mask, const __m256* xq, __m256 a) {
  const uint32_t offset[4] = {(mask << 5) & 0x1fe0u, (mask >> 3) & 0x1fe0u, (mask >> 11) & 0x1fe0u, (mask >> 19) & 0x1fe0u};
#pragma GCC unroll 4
  for (int q = 0; q < 4; q++) {
    const __m256i placed = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i*)p)),
                                               _mm256_load_si256((const __m256i*)((const char*)widen_bf16 + offset[q])));
    a = _mm256_fmadd_ps(_mm256_castsi256_ps(placed), xq[q], a);
    p += (int64_t)_mm_popcnt_u64(offset[q]) * 2;
  }
  return a;
}

// Blocked: group g of 8 rows starts at data + goff[g]; per chunk of CW words: uint32 bits[8][CW], then the 8 rows' values.
template <int CW, bool REGION>
__attribute__((noinline)) void blocked_group(const char* p, int64_t chunks, const float* x, float* y, RegionPrefetch* ahead) {
  __m256 acc[8];
#pragma GCC unroll 8
  for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();
  for (int64_t c = 0; c < chunks; c++) {
    const uint32_t* bits = (const uint32_t*)p;
    const char* v = p + 32 * CW;
    for (int k = 0; k < CW; k++) {
      if (REGION) ahead->advance();
      const float* xw = x + (c * CW + k) * 32;
      const __m256 xq[4] = {_mm256_loadu_ps(xw), _mm256_loadu_ps(xw + 8), _mm256_loadu_ps(xw + 16), _mm256_loadu_ps(xw + 24)};
      // rows' values for this word: row r's part of the chunk starts after rows < r (all CW words) and its own words < k
      const char* vr = v;
#pragma GCC unroll 8
      for (int r = 0; r < 8; r++) {
        const char* pr = vr;
        for (int kk = 0; kk < k; kk++) pr += (int64_t)_mm_popcnt_u32(bits[r * CW + kk]) * 2;
        int64_t rowcount = 0;
#pragma GCC unroll 4
        for (int kk = 0; kk < CW; kk++) rowcount += _mm_popcnt_u32(bits[r * CW + kk]);
        vr += rowcount * 2;
        acc[r] = word_dot(pr, bits[r * CW + k], xq, acc[r]);
      }
      if (k == CW - 1) p = vr;
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < 8; r++) y[r] = hsum(acc[r]);
}
// Variant: rows of the chunk walked one after another, all CW words of a row (one pointer, no prefix sums).
template <int CW>
__attribute__((noinline)) void blocked_group_rowwise(const char* p, int64_t chunks, const float* x, float* y) {
  __m256 acc[8];
#pragma GCC unroll 8
  for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();
  for (int64_t c = 0; c < chunks; c++) {
    const uint32_t* bits = (const uint32_t*)p;
    const char* pr = p + 32 * CW;
    const float* xc = x + c * CW * 32;
#pragma GCC unroll 8
    for (int r = 0; r < 8; r++) {
      __m256 a = acc[r];
#pragma GCC unroll 4
      for (int k = 0; k < CW; k++) {
        const float* xw = xc + k * 32;
        const __m256 xq[4] = {_mm256_loadu_ps(xw), _mm256_loadu_ps(xw + 8), _mm256_loadu_ps(xw + 16), _mm256_loadu_ps(xw + 24)};
        a = word_dot(pr, bits[r * CW + k], xq, a);
      }
      acc[r] = a;
    }
    p = pr;
  }
#pragma GCC unroll 8
  for (int r = 0; r < 8; r++) y[r] = hsum(acc[r]);
}

int main(int argc, char** argv) {
  init_tables();
  int64_t n = atoll(argv[1]), k = atoll(argv[2]); double s = atof(argv[3]); int iters = argc > 4 ? atoi(argv[4]) : 30;
  const int64_t words = k / 32;
  std::mt19937 rng(1); std::uniform_real_distribution<float> u(0, 1);
  std::vector<uint16_t> vals; std::vector<uint32_t> bits(n * words, 0); std::vector<int64_t> off(1, 0);
  for (int64_t r = 0; r < n; r++) { for (int64_t c = 0; c < k; c++) if (u(rng) >= s) { float val = u(rng) - 0.5f; uint32_t f; memcpy(&f, &val, 4);
        vals.push_back(f >> 16); bits[r * words + c / 32] |= 1u << (c % 32); } off.push_back(vals.size()); }
  vals.resize(vals.size() + 64, 0);
  auto build_blocked = [&](int CW, std::vector<uint8_t>& blk, std::vector<int64_t>& goff) {
    for (int64_t g = 0; g < n / 8; g++) { goff.push_back(blk.size());
      for (int64_t ch = 0; ch < words / CW; ch++) { size_t base = blk.size(); blk.resize(base + 32 * CW);
        for (int r = 0; r < 8; r++) for (int kk = 0; kk < CW; kk++) memcpy(&blk[base + (r * CW + kk) * 4], &bits[(g * 8 + r) * words + ch * CW + kk], 4);
        for (int r = 0; r < 8; r++) { int64_t before = 0; for (int64_t wd = 0; wd < ch * CW; wd++) before += __builtin_popcount(bits[(g * 8 + r) * words + wd]);
          int64_t cnt = 0; for (int kk = 0; kk < CW; kk++) cnt += __builtin_popcount(bits[(g * 8 + r) * words + ch * CW + kk]);
          size_t b = blk.size(); blk.resize(b + 2 * cnt); memcpy(&blk[b], vals.data() + off[g * 8 + r] + before, 2 * cnt); } } }
    goff.push_back(blk.size()); blk.resize(blk.size() + 256, 0); };
  std::vector<uint8_t> blk2, blk4; std::vector<int64_t> goff2, goff4;
  build_blocked(2, blk2, goff2); build_blocked(4, blk4, goff4);
  const size_t bytes = vals.size() * 2 + bits.size() * 4;
  const int copies = getenv("HOT") ? 1 : std::max<int64_t>(2, (int64_t)(200e6 / bytes) + 1);
  struct Copy { uint16_t* v; uint32_t* b; uint8_t* b2; uint8_t* b4; };
  std::vector<Copy> cs(copies);
  for (auto& c : cs) { c.v = (uint16_t*)halloc(vals.size() * 2); memcpy(c.v, vals.data(), vals.size() * 2);
    c.b = (uint32_t*)halloc(bits.size() * 4); memcpy(c.b, bits.data(), bits.size() * 4);
    c.b2 = (uint8_t*)halloc(blk2.size()); memcpy(c.b2, blk2.data(), blk2.size());
    c.b4 = (uint8_t*)halloc(blk4.size()); memcpy(c.b4, blk4.data(), blk4.size()); }
  std::vector<float> x(k), y(n), yref(n);
  for (auto& e : x) e = u(rng) - 0.5f;
  for (int64_t r = 0; r < n; r++) { double acc = 0; const uint16_t* rv = vals.data() + off[r];
    for (int64_t c = 0; c < k; c++) if (bits[r * words + c / 32] >> (c % 32) & 1) { uint32_t f = (uint32_t)(*rv++) << 16; float val; memcpy(&val, &f, 4); acc += val * x[c]; } yref[r] = acc; }
  const int64_t groups = n / 8;
  const char* names[] = {"prod", "blocked2", "blocked2+region", "blocked4", "rowwise2", "rowwise4"};
  const int nv = 6;
  auto run = [&](int v, const Copy& c, int t, int nt) {
    int64_t g0 = groups * t / nt, g1 = groups * (t + 1) / nt;
    switch (v) {
      case 0: {  // the library's kernel, on this thread's rows
        const VsWeight w = {c.v, c.b, off.data(), n, k, words, VS_BF16, 0};
        const VsGemm g = {x.data(), 1, nullptr, y.data(), n, VS_F32};
        vs_gemm_avx2(&w, &g, g0 * 8, g1 * 8);
        break;
      }
      case 1: for (int64_t g = g0; g < g1; g++) { RegionPrefetch a(nullptr, nullptr, 1); blocked_group<2, false>((const char*)c.b2 + goff2[g], words / 2, x.data(), y.data() + g * 8, &a); } break;
      case 2: for (int64_t g = g0; g < g1; g++) { int64_t ne = std::min(g + 2, groups); RegionPrefetch a((const char*)c.b2 + goff2[g + 1], (const char*)c.b2 + goff2[ne], words); blocked_group<2, true>((const char*)c.b2 + goff2[g], words / 2, x.data(), y.data() + g * 8, &a); } break;
      case 3: for (int64_t g = g0; g < g1; g++) { RegionPrefetch a(nullptr, nullptr, 1); blocked_group<4, false>((const char*)c.b4 + goff4[g], words / 4, x.data(), y.data() + g * 8, &a); } break;
      case 4: for (int64_t g = g0; g < g1; g++) blocked_group_rowwise<2>((const char*)c.b2 + goff2[g], words / 2, x.data(), y.data() + g * 8); break;
      case 5: for (int64_t g = g0; g < g1; g++) blocked_group_rowwise<4>((const char*)c.b4 + goff4[g], words / 4, x.data(), y.data() + g * 8); break;
    } };
  for (int v = 0; v < nv; v++) { std::fill(y.begin(), y.end(), NAN);
    #pragma omp parallel
    run(v, cs[0], omp_get_thread_num(), omp_get_num_threads());
    double e = 0; for (int64_t r = 0; r < n; r++) e = std::max(e, (double)fabs(y[r] - yref[r])); if (!(e < 1e-3)) { printf("%s wrong %g\n", names[v], e); return 1; } }
  std::vector<std::vector<double>> ts(nv); int copy = 0;
  for (int it = 0; it < iters; it++) for (int vi = 0; vi < nv; vi++) { int v = (it % 2) ? nv - 1 - vi : vi; const Copy& c = cs[copy++ % copies];
      auto t0 = std::chrono::steady_clock::now();
      #pragma omp parallel
      run(v, c, omp_get_thread_num(), omp_get_num_threads());
      ts[v].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()); }
  printf("%ldx%ld s=%.2f threads=%d copies=%d bytes %.1f MB\n", n, k, s, omp_get_max_threads(), copies, bytes / 1e6);
  double base = 0;
  for (int v = 0; v < nv; v++) { std::sort(ts[v].begin(), ts[v].end()); double med = ts[v][ts[v].size() / 2]; if (v == 0) base = med;
    printf("  %-16s %8.3f ms %6.1f GB/s %6.3f ns/bitmap byte/thread  vs prod %.3fx\n", names[v], med * 1e3, bytes / med / 1e9,
           med * 1e9 * omp_get_max_threads() / (n * k / 8.0), base / med); }
}
