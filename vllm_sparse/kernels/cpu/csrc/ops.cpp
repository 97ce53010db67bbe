// Torch ops over the per-ISA kernels (namespace vllm_sparse, CPU backend):
//   cpu_sparse_linear(x, values, bitmap, row_offsets, in_features, isa, max_direct_m, bias, sixteen_per_word)
//   cpu_sparse_unpack(values, bitmap, row_offsets, in_features, isa)
//   cpu_best_isa() -> int, cpu_amx_ready() -> bool
//   cpu_nm24_linear(x, blocks, out_features, in_features, isa, max_direct_m, bias), cpu_nm24_unpack(...)
//   cpu_dense_linear(x, weight, bias, isa): dense bf16, few rows (AVX-512 BF16 or AVX2)
// Threads: at::parallel_for over output rows, i.e. torch's own OpenMP pool (the
// threads vLLM's CPU worker sizes and pins).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "spmm.h"
#include "store.h"

namespace {

typedef void (*GemmFn)(const VsWeight*, const VsGemm*, int64_t, int64_t);
typedef void (*UnpackFn)(const VsWeight*, int64_t, int64_t, void*);

const GemmFn kGemm[] = {vs_gemm_scalar, vs_gemm_avx2, vs_gemm_avx512, vs_gemm_avx512_bf16};
const UnpackFn kUnpack[] = {vs_unpack_scalar, vs_unpack_avx2, vs_unpack_avx512, vs_unpack_avx512};
const char* const kIsaName[] = {"scalar", "avx2", "avx512", "avx512_bf16"};

// Weight bytes decompressed per tile on the large-M path: small enough to stay in
// the last-level cache between its decompression and the GEMM that reads it, large
// enough that torch's per-call GEMM overhead (~16 us) stays small.
int64_t tile_bytes() {
    static const int64_t bytes = [] {
        const char* env = getenv("VLLM_SPARSE_CPU_TILE_BYTES");
        return env ? std::max<int64_t>(4096, atoll(env)) : int64_t(2 << 20);
    }();
    return bytes;
}

// Does the large-M path of the AVX-512 BF16 ISA path multiply on AMX tiles here?
bool amx_ready() { return vs_amx_ready() != 0; }

bool isa_supported(int64_t isa) {
    __builtin_cpu_init();
    const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                        __builtin_cpu_supports("avx512vbmi2");
    switch (isa) {
        case VS_SCALAR: return true;
        case VS_AVX2: return avx2;
        case VS_AVX512: return avx512;
        case VS_AVX512_BF16: return avx512 && __builtin_cpu_supports("avx512bf16");
        default: return false;
    }
}

int64_t best_isa() {
    for (int64_t isa = VS_AVX512_BF16; isa > VS_SCALAR; isa--)
        if (isa_supported(isa)) return isa;
    return VS_SCALAR;
}

int dtype_code(at::ScalarType t) {
    switch (t) {
        case at::kFloat: return VS_F32;
        case at::kBFloat16: return VS_BF16;
        case at::kHalf: return VS_F16;
        default: TORCH_CHECK(false, "vllm_sparse CPU kernels take float32, bfloat16 or float16, got ", t);
    }
}

const int64_t kValuePadding = 64;  // layout.py's VALUE_PADDING

VsWeight check_weight(const at::Tensor& values, const at::Tensor& bitmap, const at::Tensor& row_offsets,
                      int64_t in_features) {
    TORCH_CHECK(values.device().is_cpu() && bitmap.device().is_cpu() && row_offsets.device().is_cpu(),
                "vllm_sparse CPU kernels need CPU tensors");
    TORCH_CHECK(values.dim() == 1 && values.is_contiguous(), "values must be a contiguous 1-D tensor");
    TORCH_CHECK(bitmap.dim() == 2 && bitmap.scalar_type() == at::kInt && bitmap.is_contiguous(),
                "bitmap must be a contiguous int32 [out_features, words] tensor");
    const int64_t words = (in_features + 31) / 32;
    TORCH_CHECK(in_features > 0 && bitmap.size(1) == words, "bitmap has ", bitmap.size(1), " words per row; ",
                in_features, " input features need ", words);
    const int64_t n = bitmap.size(0);
    TORCH_CHECK(row_offsets.dim() == 1 && row_offsets.scalar_type() == at::kLong && row_offsets.is_contiguous() &&
                    row_offsets.size(0) == n + 1,
                "row_offsets must be a contiguous int64 tensor of out_features + 1 entries");
    // The kernels load whole 64-byte vectors of values, up to 64 bytes past a row's
    // last (layout.py's VALUE_PADDING).
    const int64_t nnz = row_offsets.data_ptr<int64_t>()[n];
    TORCH_CHECK(nnz >= 0 && values.numel() >= nnz + kValuePadding, "values holds ", values.numel(),
                " entries; row_offsets ends at ", nnz, ", and ", kValuePadding, " entries of padding must follow");
    VsWeight w;
    w.values = values.data_ptr();
    w.bitmap = reinterpret_cast<const uint32_t*>(bitmap.data_ptr<int32_t>());
    w.row_offsets = row_offsets.data_ptr<int64_t>();
    w.n = n;
    w.k = in_features;
    w.words = words;
    w.dtype = dtype_code(values.scalar_type());
    w.sixteen_per_word = 0;
    return w;
}

void check_isa(int64_t isa) {
    TORCH_CHECK(isa >= VS_SCALAR && isa <= VS_AVX512_BF16, "unknown ISA code ", isa);
    TORCH_CHECK(isa_supported(isa), "this CPU cannot run the ", kIsaName[isa], " kernels");
}

void check_bias(const c10::optional<at::Tensor>& bias, int64_t n) {
    if (bias.has_value() && bias->defined())
        TORCH_CHECK(bias->dim() == 1 && bias->size(0) == n, "bias must have ", n, " entries");
}

// The fp32 copy of an optional bias that the kernels add (undefined when there is none).
at::Tensor float_bias(const c10::optional<at::Tensor>& bias) {
    return bias.has_value() && bias->defined() ? bias->to(at::kFloat).contiguous() : at::Tensor();
}

// The kernels' arguments for y [m, n] = x W^T (+ bias_f), x in the form the kernel reads.
VsGemm gemm_args(const void* x, int64_t m, const at::Tensor& bias_f, at::Tensor& y) {
    VsGemm g;
    g.x = x;
    g.m = m;
    g.bias = bias_f.defined() ? bias_f.data_ptr<float>() : nullptr;
    g.y = y.data_ptr();
    g.ldy = y.size(1);
    g.out_dtype = dtype_code(y.scalar_type());
    return g;
}

// One share per thread, of at least `minimum` items.
int64_t share(int64_t n, int64_t minimum) {
    const int64_t threads = at::get_num_threads();
    return std::max<int64_t>(minimum, (n + threads - 1) / threads);
}

int64_t row_grain(int64_t n) { return share(n, 8); }

at::Tensor unpack(const at::Tensor& values, const at::Tensor& bitmap, const at::Tensor& row_offsets,
                  int64_t in_features, int64_t isa) {
    check_isa(isa);
    VsWeight w = check_weight(values, bitmap, row_offsets, in_features);
    at::Tensor dense = at::empty({w.n, in_features}, values.options());
    const int64_t row_bytes = in_features * values.element_size();
    char* dst = static_cast<char*>(dense.data_ptr());
    at::parallel_for(0, w.n, row_grain(w.n), [&](int64_t begin, int64_t end) {
        kUnpack[isa](&w, begin, end, dst + begin * row_bytes);
    });
    return dense;
}

const uintptr_t kHugePage = uintptr_t(2) << 20;

// Memory the kernel may back with 2 MiB pages: a mapping of its own, aligned to 2 MiB,
// advised (MADV_HUGEPAGE, which the systems' default "madvise" mode of transparent
// huge pages honours) before anything touches it, since the advice only shapes page
// faults still to come. Only its whole 2 MiB pieces are advised, so a tail costs no
// extra memory. Freed by munmap(memory, length).
struct HugePageMemory {
    void* memory;
    uintptr_t length;
};

HugePageMemory map_huge_pages(uintptr_t bytes) {
    const uintptr_t kPage = 4096;
    bytes = std::max<uintptr_t>(bytes, 1);
    const uintptr_t length = (bytes + kPage - 1) / kPage * kPage;
    // Map a huge page more than needed, then unmap what lies outside the aligned span.
    void* mapped = mmap(nullptr, length + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(mapped != MAP_FAILED, "vllm_sparse: out of memory (", bytes, " bytes)");
    const uintptr_t raw = reinterpret_cast<uintptr_t>(mapped);
    const uintptr_t begin = (raw + kHugePage - 1) / kHugePage * kHugePage;
    const uintptr_t end = raw + length + kHugePage;
    if (begin > raw) munmap(mapped, begin - raw);
    if (end > begin + length) munmap(reinterpret_cast<void*>(begin + length), end - (begin + length));
    void* memory = reinterpret_cast<void*>(begin);
    const uintptr_t whole = bytes / kHugePage * kHugePage;
    if (whole) madvise(memory, whole, MADV_HUGEPAGE);  // advice only: ignored where unsupported
    return {memory, length};
}

// A thread's scratch memory, kept from call to call (a fresh multi-megabyte
// allocation costs a page fault per page on first touch, as much as the decompression
// itself) and grown on demand, in whole 2 MiB pages. The large-M paths stream their
// packed activations and decompressed tiles through the tile unit or the FMA units
// many times a call; on 4 KiB pages a span of 1.5-2 MiB already runs out of TLB reach
// (benchmarks/amx_tiles.c on a 2-core Emerald Rapids: 15.7 ns per tile multiply
// streaming 2 MiB on 4 KiB pages, 6.6 on 2 MiB pages).
class ScratchMemory {
  public:
    ScratchMemory() = default;
    ScratchMemory(const ScratchMemory&) = delete;
    ScratchMemory& operator=(const ScratchMemory&) = delete;
    ~ScratchMemory() {
        if (held_.memory) munmap(held_.memory, held_.length);
    }
    void* get(uintptr_t bytes) {
        if (bytes > held_.length) {
            if (held_.memory) munmap(held_.memory, held_.length);
            held_ = {nullptr, 0};
            held_ = map_huge_pages((bytes + kHugePage - 1) / kHugePage * kHugePage);
        }
        return held_.memory;
    }

  private:
    HugePageMemory held_{nullptr, 0};
};

// `numel` elements of the calling thread's scratch memory (valid until its next call).
at::Tensor tile_buffer(int64_t numel, const at::TensorOptions& options) {
    thread_local ScratchMemory scratch;
    return at::from_blob(scratch.get(numel * options.dtype().itemsize()), {numel}, options);
}

// The calling thread's packed activations for the AMX path (one pass's B tiles).
void* activation_scratch(uintptr_t bytes) {
    thread_local ScratchMemory scratch;
    return scratch.get(bytes);
}

// Which GEMM the large-M path multiplies its decompressed tiles with. bf16 on the
// AVX-512 BF16 path (k even) on a CPU with AMX-BF16: tile instructions on groups of
// 32 weight rows (gemm_amx_bf16.cpp) at every M. Without AMX, two of its own: row tiles
// (gemm_rowtile_bf16.cpp) up to M = 128 where M fills its vectors of 8 activation rows
// but for at most an eighth of their lanes (15, 16, 24, 32, 40, ..., 128), panels
// (gemm_tile_bf16.cpp) for the other M, whose rows they take 1 to 12 at a time. Row
// tiles over panels, same-process A/B on a 2-core EPYC (benchmarks/large_m_ab.py,
// 2026-12-05 19:44 UTC, Llama-3-8B and Llama-1B shapes, 2:4 / 50% / 70%, geometric
// means): 1.09x at M = 16, 1.06x at 24, 1.04x at 32 and 40, 1.03x at 64, 1.01x at 128;
// 0.99x at 512 (every 12-row tile streams all the activations, from L3 once they
// outgrow L2). Elsewhere torch's GEMM: on the tile as it is stored, or, for bf16 and
// fp16 tiles on the other ISA paths (CPUs without bf16 dot products), on the tile
// widened to fp32 (`kTorchFloat`): there torch's half-precision GEMM is a slow
// fallback. One thread of a 2-core AVX2-only EPYC (Zen 3), 2026-12-07, torch.mm on a
// 2 MiB tile: bf16 7-10 GFLOPS at M = 16..512, fp32 31-40 at M = 16 and 68-76 at
// M >= 64. VLLM_SPARSE_CPU_TILE_GEMM=torch, torch_fp32, amx, panels or rows forces one
// (read on every call: a large-M call takes a tenth of a millisecond or more;
// torch_fp32 only for bf16 and fp16 tiles; amx, panels and rows only for bf16 on the
// AVX-512 BF16 path, amx where the CPU has it).
enum class TileGemm { kTorch, kTorchFloat, kAmx, kPanels, kRows };

TileGemm tile_gemm(int64_t isa, at::ScalarType dtype, int64_t k, int64_t m) {
    const char* forced = getenv("VLLM_SPARSE_CPU_TILE_GEMM");
    const bool half = dtype == at::kBFloat16 || dtype == at::kHalf;
    if (forced && strcmp(forced, "torch") == 0) return TileGemm::kTorch;
    if (half && forced && strcmp(forced, "torch_fp32") == 0) return TileGemm::kTorchFloat;
    if (half && isa != VS_AVX512_BF16) return TileGemm::kTorchFloat;
    if (!(isa == VS_AVX512_BF16 && dtype == at::kBFloat16 && k % 2 == 0)) return TileGemm::kTorch;
    if (forced && strcmp(forced, "panels") == 0) return TileGemm::kPanels;
    if (forced && strcmp(forced, "rows") == 0) return TileGemm::kRows;
    if (vs_amx_ready()) return TileGemm::kAmx;
    const int64_t idle_lanes = (m + 7) / 8 * 8 - m;
    return m <= 128 && idle_lanes * 8 <= m ? TileGemm::kRows : TileGemm::kPanels;
}

// Each thread takes tiles of `tile` weight rows in turn: ``work(buffer, r0, rows, next,
// regions, chain)`` decompresses one into the thread's own cache-resident buffer
// (``buffer_words`` 32-bit words) and multiplies it with every activation row while
// the compressed bytes of the tile `lookahead` tiles on (``regions_of(r0, r1, out)``: at
// most two ranges, returns how many) are brought into L2. ``chain`` says whether the
// same thread ran the tile before (`prefilled`: a work that fills its next tile ahead
// may have) and how many rows the thread's next tile has (0: none).
template <class TileWork, class RegionsOf>
void for_each_tile(int64_t n, int64_t tile, int64_t buffer_words, const at::TensorOptions& options,
                   const TileWork& work, const RegionsOf& regions_of, int64_t lookahead = 1) {
    const int64_t tiles = (n + tile - 1) / tile;
    at::parallel_for(0, tiles, 1, [&](int64_t first, int64_t last) {
        at::Tensor buffer = tile_buffer(buffer_words, options.dtype(at::kInt));
        uint32_t* words = reinterpret_cast<uint32_t*>(buffer.data_ptr<int32_t>());
        for (int64_t t = first; t < last; t++) {
            const int64_t r0 = t * tile;
            const int64_t rows = std::min(tile, n - r0);
            VsRegion next[2];
            const int64_t ahead = r0 + lookahead * tile;
            const int regions = t + lookahead < last ? regions_of(ahead, std::min(n, ahead + tile), next) : 0;
            const VsAmxChain chain = {t > first, t + 1 < last ? std::min(tile, n - r0 - tile) : 0};
            work(words, r0, rows, next, regions, chain);
        }
    });
}

// Large M with gemm_tile_bf16.cpp: the activations are packed once (split over the
// threads), then each thread fills panels of 32 rows from the compressed weight
// (``fill_panel(r0, rows, panel)``) and multiplies each with every activation row.
template <class FillPanel, class RegionsOf>
at::Tensor panel_tiled_linear(const at::Tensor& x, int64_t n, int64_t k, const FillPanel& fill_panel,
                              const RegionsOf& regions_of, const c10::optional<at::Tensor>& bias) {
    const int64_t m = x.size(0);
    const int64_t pairs = k / 2;
    at::Tensor xa = at::empty({m * pairs}, x.options().dtype(at::kInt));
    const uint16_t* x16 = reinterpret_cast<const uint16_t*>(x.data_ptr());
    uint32_t* xa32 = reinterpret_cast<uint32_t*>(xa.data_ptr<int32_t>());
    at::parallel_for(0, pairs, share(pairs, 64), [&](int64_t p0, int64_t p1) {
        vs_pack_activations(x16, m, k, p0, p1, xa32);
    });
    const at::Tensor bias_f = float_bias(bias);
    at::Tensor y = at::empty({m, n}, x.options());
    const VsGemm g = gemm_args(x16, m, bias_f, y);
    // A fill writes whole 32-column words of pairs: up to 15 pairs past k / 2.
    const int64_t panel_words = (pairs + 16) * VS_TILE_PANEL_ROWS;
    auto fill_and_multiply = [&](uint32_t* panel, int64_t r0, int64_t rows, const VsRegion* next, int regions,
                                 const VsAmxChain&) {
        fill_panel(r0, rows, panel);
        vs_panel_multiply(panel, rows, k, xa32, m, &g, r0, next, regions);
    };
    for_each_tile(n, VS_TILE_PANEL_ROWS, panel_words, x.options(), fill_and_multiply, regions_of);
    return y;
}

// Large M with gemm_amx_bf16.cpp: the activations are packed as zero-padded B tiles,
// then each thread takes groups of 32 weight rows in turn:
// ``multiply_group(r0, rows, b, m, g, work, next, regions, part, chain)`` fills and multiplies
// one in its own `work` buffer (there is no separate fill step: the group fills a
// chunk of columns at a time between its multiplies).
//
// A group multiplies every activation row it is given, so each group streams all of
// their B tiles (2 K bytes per row) through the core. Where they outgrow L2 (2 MiB a
// core on the Xeon measured), they come from L3 once per group, and the tile unit
// waits on them: the rows go in passes of at most kAmxPassBytes of B tiles, each pass
// over every group (benchmarks/CPU_KERNELS.md, "AMX passes over the activation rows").
// Each pass fills every group again, so where a pass over all of K would hold fewer
// than kAmxPartRows rows (K = 4096 from M = 129, 8192 from 65, 14336 from 33), the
// pass takes that many rows over K in parts instead, each part's B tiles within
// kAmxPassBytes, the groups' fp32 sums carried from part to part: a group is filled
// once per pass, not once per 64 or 128 rows. Same-process A/B against passes over all
// of K, 2-core Emerald Rapids, 2026-12-06, cold weights, 2:4 and 70%, M = 96-512
// (benchmarks/CPU_KERNELS.md, "K in parts"): 1.1-1.5x on the cases it changes, the
// 2:4 layout at K = 14336 and M <= 128 excepted (0.93-0.94x with the next group
// prefetched whole, 1.07x without).
const int64_t kAmxPassBytes = 1 << 20;
const int64_t kAmxPartRows = 256;

// How a call is cut: passes of `rows` activation rows (a multiple of 32, or all m),
// each over K in parts of `part_steps` 32-column steps (all of K: one part).
struct AmxPlan {
    int64_t rows, part_steps;
};

AmxPlan amx_plan(int64_t m, int64_t steps) {
    const int64_t fit = kAmxPassBytes / (steps * 32 * 2) / 32 * 32;  // rows whose B tiles over all of K fit
    if (fit >= std::min(m, kAmxPartRows)) return {std::min(fit, m), steps};
    const int64_t rows = std::min(m, kAmxPartRows);
    const int64_t padded = (rows + 31) / 32 * 32;
    const int64_t part_steps = std::max<int64_t>(2, kAmxPassBytes / (padded * 32 * 2) / 2 * 2);  // even: whole 2:4 records
    return {rows, std::min(part_steps, steps)};
}

template <class MultiplyGroup, class RegionsOf>
at::Tensor amx_tiled_linear(const at::Tensor& x, int64_t n, int64_t k, const MultiplyGroup& multiply_group,
                            const RegionsOf& regions_of, const c10::optional<at::Tensor>& bias) {
    const int64_t m = x.size(0);
    const int64_t steps = (k + 31) / 32;
    const AmxPlan plan = amx_plan(m, steps);
    const bool in_parts = plan.part_steps < steps;
    const uint16_t* x16 = reinterpret_cast<const uint16_t*>(x.data_ptr());
    // One pass's B tiles at a time (one part's, in parts), packed just before they are
    // multiplied, in the calling thread's scratch on 2 MiB pages (at most about
    // kAmxPassBytes). Same-process A/B against all of M packed at once into memory from
    // torch's allocator (2-core Emerald Rapids, 2026-12-07, cold weights, 50%): M = 512
    // 1.00-1.07x on five Llama shapes, the 2:4 layout 1.04-1.07x on three; M = 64
    // 1.00-1.07x, M = 8 1.01-1.04x.
    const int64_t b_tiles = (plan.rows + 15) / 16 * plan.part_steps;
    uint16_t* b16 = static_cast<uint16_t*>(activation_scratch(b_tiles * 16 * 32 * sizeof(uint16_t)));
    auto pack = [&](const uint16_t* rows_x, int64_t rows, int64_t s0, int64_t part_steps) {
        const int64_t tiles = (rows + 15) / 16 * part_steps;
        at::parallel_for(0, tiles, share(tiles, 4), [&](int64_t t0, int64_t t1) {
            vs_amx_pack_activations(rows_x, rows, k, s0, part_steps, t0, t1, b16);
        });
    };
    // In parts: each group's carried sums, and each weight row's place in its values.
    const int64_t groups = (n + VS_TILE_PANEL_ROWS - 1) / VS_TILE_PANEL_ROWS;
    const int64_t carry_floats = vs_amx_carry_floats(plan.rows);
    at::Tensor carry = at::empty({in_parts ? groups * carry_floats : 0}, x.options().dtype(at::kFloat));
    at::Tensor row_values = at::empty({in_parts ? n : 0}, x.options().dtype(at::kLong));
    float* carry_base = carry.data_ptr<float>();
    int64_t* row_values_base = row_values.data_ptr<int64_t>();
    const at::Tensor bias_f = float_bias(bias);
    at::Tensor y = at::empty({m, n}, x.options());
    for (int64_t m0 = 0; m0 < m; m0 += plan.rows) {
        const int64_t rows_m = std::min(plan.rows, m - m0);
        // A group of one chunk of columns is filled whole while the group before it
        // multiplies (gemm_amx_bf16.cpp): bring in the bytes of the group after that.
        const int64_t lookahead = !in_parts && steps <= vs_amx_chunk_steps(rows_m) ? 2 : 1;
        at::Tensor y_pass = y.narrow(0, m0, rows_m);
        const VsGemm g = gemm_args(b16, rows_m, bias_f, y_pass);
        for (int64_t s0 = 0; s0 < steps; s0 += plan.part_steps) {
            const int64_t part_steps = std::min(plan.part_steps, steps - s0);
            pack(x16 + m0 * k, rows_m, s0, part_steps);  // the pass's B tiles over this part of K
            const bool first_part = s0 == 0, last_part = s0 + part_steps == steps;
            auto multiply = [&](uint32_t* work, int64_t r0, int64_t rows, const VsRegion* next, int regions,
                                const VsAmxChain& chain) {
                if (!in_parts) return multiply_group(r0, rows, b16, rows_m, &g, work, next, regions, nullptr, &chain);
                float* own = carry_base + r0 / VS_TILE_PANEL_ROWS * carry_floats;
                const VsAmxPart part = {s0, part_steps, first_part ? nullptr : own, last_part ? nullptr : own,
                                        row_values_base};
                // In parts, the next group's bytes are not brought in: its whole rows
                // would crowd L2 for a part's share of them (same-process A/B, parts with
                // against without: 1.01-1.46x without, most at K = 8192 and 14336). Nor is
                // the next group filled ahead, which would then read memory among the
                // tile instructions (2048 x 8192 50%, M = 512: 0.81x of oneDNN -> 0.76x).
                multiply_group(r0, rows, b16, rows_m, &g, work, next, 0, &part, nullptr);
            };
            for_each_tile(n, VS_TILE_PANEL_ROWS, vs_amx_work_bytes(rows_m) / 4, x.options(), multiply, regions_of,
                          lookahead);
        }
    }
    return y;
}

// Large M with gemm_rowtile_bf16.cpp: the activations are transposed once (split over
// the threads), then each thread decompresses VS_ROWTILE_ROWS weight rows at a time
// (``fill_rows(r0, rows, tile)``) and multiplies them with every activation row.
template <class FillRows, class RegionsOf>
at::Tensor row_tiled_linear(const at::Tensor& x, int64_t n, int64_t k, const FillRows& fill_rows,
                            const RegionsOf& regions_of, const VsWeight* bitmap,
                            const c10::optional<at::Tensor>& bias) {
    const int64_t m = x.size(0);
    const int64_t words = (k + 31) / 32;
    const int64_t blocks = (m + VS_ROWTILE_BLOCK_M - 1) / VS_ROWTILE_BLOCK_M;
    // 64-bit words (four bf16), 8 per 32-column word of each activation row.
    at::Tensor xa = at::empty({blocks * VS_ROWTILE_BLOCK_M * words * 8}, x.options().dtype(at::kLong));
    const uint16_t* x16 = reinterpret_cast<const uint16_t*>(x.data_ptr());
    uint64_t* xa64 = reinterpret_cast<uint64_t*>(xa.data_ptr<int64_t>());
    at::parallel_for(0, words, share(words, 4), [&](int64_t w0, int64_t w1) {
        vs_rowtile_pack_activations(x16, m, k, w0, w1, xa64);
    });
    const at::Tensor bias_f = float_bias(bias);
    at::Tensor y = at::empty({m, n}, x.options());
    const VsGemm g = gemm_args(x16, m, bias_f, y);
    const int64_t tile = VS_ROWTILE_ROWS, tile_words = words * 16 * VS_ROWTILE_ROWS;
    if (bitmap == nullptr) {  // 2:4 records: fill, then multiply
        auto fill_and_multiply = [&](uint32_t* buffer, int64_t r0, int64_t rows, const VsRegion* next, int regions,
                                     const VsAmxChain&) {
            fill_rows(r0, rows, buffer);
            vs_rowtile_multiply(buffer, rows, k, xa64, m, &g, r0, next, regions, nullptr);
        };
        for_each_tile(n, tile, tile_words, x.options(), fill_and_multiply, regions_of);
        return y;
    }
    // The bitmap's tiles: each thread fills its first, then fills each next one among
    // the dots of the one before (a fill as a pass of its own cost up to a quarter of
    // the call at M = 16), into a second buffer; the two trade places.
    const int64_t tiles = (n + tile - 1) / tile;
    at::parallel_for(0, tiles, 1, [&](int64_t first, int64_t last) {
        at::Tensor buffers = tile_buffer(2 * tile_words, x.options().dtype(at::kInt));
        uint32_t* current = reinterpret_cast<uint32_t*>(buffers.data_ptr<int32_t>());
        uint32_t* next_tile = current + tile_words;
        auto rows_at = [&](int64_t r0) { return std::min(tile, n - r0); };
        fill_rows(first * tile, rows_at(first * tile), current);
        for (int64_t t = first; t < last; t++) {
            const int64_t r0 = t * tile;
            VsRowtileFill fill;
            VsRowtileFill* filling = nullptr;
            if (t + 1 < last) {
                vs_rowtile_fill_begin(&fill, bitmap, r0 + tile, rows_at(r0 + tile), next_tile);
                filling = &fill;
            }
            // Into L2 meanwhile: the compressed bytes of the tile after the one filled.
            VsRegion next[2];
            const int regions = t + 2 < last ? regions_of(r0 + 2 * tile, std::min(n, r0 + 3 * tile), next) : 0;
            vs_rowtile_multiply(current, rows_at(r0), k, xa64, m, &g, r0, next, regions, filling);
            std::swap(current, next_tile);
        }
    });
    return y;
}

// Large M elsewhere: each thread decompresses a tile of rows into its own
// cache-resident buffer and multiplies it with torch's dense GEMM (the one dense
// layers use; inside the parallel region it runs on the calling thread); the dense
// weight never exists whole and a tile goes from decompression to GEMM without
// leaving the core's cache. ``unpack_rows(r0, r1, dst)`` writes dense rows [r0, r1)
// of the weight into dst.
template <class UnpackRows, class FillPanel, class FillRows, class AmxGroup, class RegionsOf>
at::Tensor tiled_linear(const at::Tensor& x, int64_t n, int64_t k, const at::TensorOptions& weight_options,
                        int64_t isa, const UnpackRows& unpack_rows, const FillPanel& fill_panel,
                        const FillRows& fill_rows, const AmxGroup& amx_group, const RegionsOf& regions_of,
                        const VsWeight* bitmap, const c10::optional<at::Tensor>& bias) {
    const at::ScalarType dtype = weight_options.dtype().toScalarType();
    const TileGemm gemm = x.scalar_type() == dtype ? tile_gemm(isa, dtype, k, x.size(0)) : TileGemm::kTorch;
    if (gemm == TileGemm::kAmx) return amx_tiled_linear(x, n, k, amx_group, regions_of, bias);
    if (gemm == TileGemm::kRows) return row_tiled_linear(x, n, k, fill_rows, regions_of, bitmap, bias);
    if (gemm == TileGemm::kPanels) return panel_tiled_linear(x, n, k, fill_panel, regions_of, bias);
    const bool widen = gemm == TileGemm::kTorchFloat;
    // The tile's size is the GEMM's operand: fp32 where widened.
    const int64_t es = widen ? 4 : c10::elementSize(dtype);
    const int64_t tile = std::min(n, std::max<int64_t>(16, tile_bytes() / (k * es) / 16 * 16));
    const int64_t tiles = (n + tile - 1) / tile;
    at::Tensor y = at::empty({x.size(0), n}, x.options());
    const at::Tensor xg = widen ? x.to(at::kFloat) : x;  // widened once, for every tile
    // Added to each tile's product before it is stored: in fp32 where widened (one rounding).
    const at::Tensor tile_bias = widen ? float_bias(bias) : bias.has_value() ? *bias : at::Tensor();
    // One scratch block a thread: the tile as unpacked, then (widened) its fp32 copy.
    const int64_t stored_words = (tile * k * c10::elementSize(dtype) + 3) / 4;
    // Torch ops run on the worker threads here: give them the caller's thread-local
    // state (inference mode, grad mode), or vLLM's inference tensors refuse the copy.
    const at::ThreadLocalState caller_state;
    at::parallel_for(0, tiles, 1, [&](int64_t first, int64_t last) {
        at::ThreadLocalStateGuard state_guard(caller_state);
        at::Tensor scratch = tile_buffer(stored_words + (widen ? tile * k : 0), weight_options.dtype(at::kFloat));
        at::Tensor buffer = at::from_blob(scratch.data_ptr(), {tile, k}, weight_options);
        at::Tensor widened = widen ? scratch.narrow(0, stored_words, tile * k).view({tile, k}) : buffer;
        for (int64_t t = first; t < last; t++) {
            const int64_t r0 = t * tile;
            const int64_t rows = std::min(tile, n - r0);
            unpack_rows(r0, r0 + rows, buffer.data_ptr());
            if (widen) widened.narrow(0, 0, rows).copy_(buffer.narrow(0, 0, rows));
            at::Tensor part = at::mm(xg, widened.narrow(0, 0, rows).t());
            if (tile_bias.defined()) part.add_(tile_bias.narrow(0, r0, rows));
            y.narrow(1, r0, rows).copy_(part);
        }
    });
    return y;
}

at::Tensor sparse_linear(const at::Tensor& x_in, const at::Tensor& values, const at::Tensor& bitmap,
                         const at::Tensor& row_offsets, int64_t in_features, int64_t isa, int64_t max_direct_m,
                         const c10::optional<at::Tensor>& bias, bool sixteen_per_word) {
    check_isa(isa);
    VsWeight w = check_weight(values, bitmap, row_offsets, in_features);
    // The caller's word (layout.py checks it against the bitmap); at least the count.
    TORCH_CHECK(!sixteen_per_word || w.row_offsets[w.n] == w.n * w.words * 16,
                "sixteen_per_word: the bitmap must mark 16 of every 32 columns");
    w.sixteen_per_word = sixteen_per_word ? 1 : 0;
    TORCH_CHECK(x_in.dim() == 2 && x_in.size(1) == in_features, "x must be [M, ", in_features, "], got ",
                x_in.sizes());
    TORCH_CHECK(x_in.scalar_type() == values.scalar_type(), "x is ", x_in.scalar_type(), " but the weight is ",
                values.scalar_type());
    check_bias(bias, w.n);
    const int64_t m = x_in.size(0);
    at::Tensor x = x_in.contiguous();
    if (m == 0) return at::empty({0, w.n}, x.options());
    if (m > max_direct_m) {
        auto unpack_rows = [&](int64_t r0, int64_t r1, void* dst) { kUnpack[isa](&w, r0, r1, dst); };
        const int64_t es = values.element_size();
        auto regions_of = [&](int64_t r0, int64_t r1, VsRegion* out) {
            const char* v = static_cast<const char*>(w.values);
            out[0] = {v + w.row_offsets[r0] * es, v + w.row_offsets[r1] * es};
            out[1] = {w.bitmap + r0 * w.words, w.bitmap + r1 * w.words};
            return 2;
        };
        auto fill_panel = [&](int64_t r0, int64_t rows, uint32_t* panel) { vs_panel_from_bitmap(&w, r0, rows, panel); };
        auto fill_rows = [&](int64_t r0, int64_t rows, uint32_t* tile) { vs_rowtile_from_bitmap(&w, r0, rows, tile); };
        auto amx_group = [&](int64_t r0, int64_t rows, const uint16_t* b, int64_t m, const VsGemm* g, void* work,
                             const VsRegion* next, int regions, const VsAmxPart* part, const VsAmxChain* chain) {
            vs_amx_bitmap_group(&w, r0, rows, b, m, g, work, next, regions, part, chain);
        };
        return tiled_linear(x, w.n, w.k, values.options(), isa, unpack_rows, fill_panel, fill_rows, amx_group,
                            regions_of, &w, bias);
    }

    // The kernels read whole 32-column words: pad the activations with zeros, in
    // the form the kernel multiplies (bf16 for the bf16-dot kernel, else fp32).
    const bool bf16_dot = isa == VS_AVX512_BF16 && w.dtype == VS_BF16;
    const at::ScalarType x_type = bf16_dot ? at::kBFloat16 : at::kFloat;
    const int64_t padded = w.words * 32;
    at::Tensor xp;
    if (padded == in_features && x.scalar_type() == x_type) {
        xp = x;
    } else {
        xp = at::zeros({m, padded}, x.options().dtype(x_type));
        xp.narrow(1, 0, in_features).copy_(x);
    }
    if (bf16_dot && m >= 8) {  // the kernel's passes of 8 rows, word by word (gemm_avx512_bf16.cpp)
        at::Tensor interleaved = at::empty_like(xp);
        const uint16_t* from = reinterpret_cast<const uint16_t*>(xp.data_ptr());
        uint16_t* to = reinterpret_cast<uint16_t*>(interleaved.data_ptr());
        at::parallel_for(0, w.words, share(w.words, 16), [&](int64_t w0, int64_t w1) {
            vs_interleave_bf16(from, m, padded, w0, w1, to);
        });
        xp = interleaved;
    }
    const at::Tensor bias_f = float_bias(bias);
    at::Tensor y = at::empty({m, w.n}, x.options());
    const VsGemm g = gemm_args(xp.data_ptr(), m, bias_f, y);
    at::parallel_for(0, w.n, row_grain(w.n), [&](int64_t begin, int64_t end) { kGemm[isa](&w, &g, begin, end); });
    return y;
}

// ---- 2:4 with selectors (gemm_nm24.cpp) -------------------------------------------

// The 2:4 kernel runs on AVX-512 (BW + VBMI + BF16: the gather kernel of
// gemm_nm24.cpp) or AVX2 (gemm_nm24_avx2.cpp); other ISA codes have none.
bool nm24_supported(int64_t isa) {
    if (isa == VS_AVX512_BF16) return isa_supported(VS_AVX512_BF16) && __builtin_cpu_supports("avx512vbmi");
    return isa == VS_AVX2 && isa_supported(VS_AVX2);
}

VsNM24Weight check_nm24(const at::Tensor& blocks, int64_t out_features, int64_t in_features, int64_t isa) {
    TORCH_CHECK(nm24_supported(isa), "this CPU cannot run the 2:4 kernel on ISA path ", isa,
                " (AVX-512 BW + VBMI + BF16, or AVX2)");
    TORCH_CHECK(in_features > 0 && in_features % 64 == 0, "the 2:4 kernel needs in_features % 64 == 0, got ",
                in_features);
    const int64_t block_count = (out_features + VS_NM24_BLOCK_ROWS - 1) / VS_NM24_BLOCK_ROWS;
    TORCH_CHECK(out_features > 0 && blocks.scalar_type() == at::kByte && blocks.is_contiguous() &&
                    blocks.dim() == 3 && blocks.size(0) == block_count && blocks.size(1) == in_features / 64 &&
                    blocks.size(2) == VS_NM24_RECORD_BYTES,
                "blocks must be a contiguous uint8 [ceil(out_features / ", VS_NM24_BLOCK_ROWS,
                "), in_features / 64, ", VS_NM24_RECORD_BYTES, "] tensor; got ", blocks.scalar_type(), " ",
                blocks.sizes(), " for ", out_features, " x ", in_features);
    VsNM24Weight w;
    w.blocks = blocks.data_ptr<uint8_t>();
    w.n = out_features;
    w.k = in_features;
    return w;
}

typedef void (*NM24GemmFn)(const VsNM24Weight*, const VsGemm*, int64_t, int64_t);
typedef void (*NM24UnpackFn)(const VsNM24Weight*, int64_t, int64_t, uint16_t*);

// The two 2:4 kernels, by ISA path (check_nm24 has refused any other).
NM24GemmFn nm24_gemm(int64_t isa) { return isa == VS_AVX512_BF16 ? vs_gemm_nm24_avx512 : vs_gemm_nm24_avx2; }
NM24UnpackFn nm24_unpack_fn(int64_t isa) {
    return isa == VS_AVX512_BF16 ? vs_unpack_nm24_avx512 : vs_unpack_nm24_avx2;
}

void unpack_nm24_rows(const VsNM24Weight& w, int64_t isa, int64_t begin, int64_t end, uint16_t* dst) {
    nm24_unpack_fn(isa)(&w, begin, end, dst);
}

at::Tensor nm24_unpack(const at::Tensor& blocks, int64_t out_features, int64_t in_features, int64_t isa) {
    VsNM24Weight w = check_nm24(blocks, out_features, in_features, isa);
    at::Tensor dense = at::empty({w.n, in_features}, at::TensorOptions().dtype(at::kBFloat16));
    uint16_t* dst = reinterpret_cast<uint16_t*>(dense.data_ptr());
    at::parallel_for(0, w.n, row_grain(w.n),
                     [&](int64_t b, int64_t e) { unpack_nm24_rows(w, isa, b, e, dst + b * w.k); });
    return dense;
}

// From this many activation rows the 2:4 layout's direct path on AVX-512 BF16 takes
// the kernel with the weight rows in the lanes (gemm_nm24_lanes_bf16.cpp). Same-process
// A/B, 2-core EPYC, 2026-12-05 (cold weights, 2 threads, Llama-3-8B / Llama-1B /
// SmolLM2 shapes): at M = 4 1.21-1.64x of oneDNN against the gather kernel's
// 1.19-1.42x (below it on three SmolLM2 shapes by at most 0.07), at M = 8 1.41-1.69x
// against 1.07-1.35x, and at M = 16 1.03-1.60x against the row tiles' 0.83-1.06x.
// Above a layer's max_direct_m (the table's: up to 128) the row tiles or panels run.
const int64_t kLanesFromM = 4;

at::Tensor nm24_linear(const at::Tensor& x_in, const at::Tensor& blocks, int64_t out_features, int64_t in_features,
                       int64_t isa, int64_t max_direct_m, const c10::optional<at::Tensor>& bias) {
    VsNM24Weight w = check_nm24(blocks, out_features, in_features, isa);
    TORCH_CHECK(x_in.dim() == 2 && x_in.size(1) == in_features && x_in.scalar_type() == at::kBFloat16,
                "x must be bf16 [M, ", in_features, "], got ", x_in.scalar_type(), " ", x_in.sizes());
    check_bias(bias, w.n);
    const int64_t m = x_in.size(0);
    at::Tensor x = x_in.contiguous();
    if (m == 0) return at::empty({0, w.n}, x.options());
    if (m > max_direct_m) {
        auto unpack_rows = [&](int64_t r0, int64_t r1, void* dst) {
            unpack_nm24_rows(w, isa, r0, r1, static_cast<uint16_t*>(dst));
        };
        // Panels are whole 8-row blocks (32 rows): their records are one range.
        auto regions_of = [&](int64_t r0, int64_t r1, VsRegion* out) {
            const int64_t record_bytes = (w.k / 64) * VS_NM24_RECORD_BYTES;
            const int64_t b1 = (r1 + VS_NM24_BLOCK_ROWS - 1) / VS_NM24_BLOCK_ROWS;
            out[0] = {w.blocks + r0 / VS_NM24_BLOCK_ROWS * record_bytes, w.blocks + b1 * record_bytes};
            return 1;
        };
        auto fill_panel = [&](int64_t r0, int64_t rows, uint32_t* panel) { vs_panel_from_nm24(&w, r0, rows, panel); };
        auto fill_rows = [&](int64_t r0, int64_t rows, uint32_t* tile) { vs_rowtile_from_nm24(&w, r0, rows, tile); };
        auto amx_group = [&](int64_t r0, int64_t rows, const uint16_t* b, int64_t m, const VsGemm* g, void* work,
                             const VsRegion* next, int regions, const VsAmxPart* part, const VsAmxChain* chain) {
            vs_amx_nm24_group(&w, r0, rows, b, m, g, work, next, regions, part, chain);
        };
        return tiled_linear(x, w.n, w.k, x.options(), isa, unpack_rows, fill_panel, fill_rows, amx_group, regions_of,
                            nullptr, bias);
    }
    // The x each kernel reads: the lanes kernel's chunk-major (the rows of a pass read
    // one contiguous run per 64-column chunk), the AVX2 kernel's fp32 (widened once).
    const bool lanes = isa == VS_AVX512_BF16 && m >= kLanesFromM;
    at::Tensor xk = lanes ? x.view({m, w.k / 64, 64}).transpose(0, 1).contiguous()
                    : isa == VS_AVX512_BF16 ? x : x.to(at::kFloat);
    at::Tensor y = at::empty({m, w.n}, x.options());  // bf16, as x
    const at::Tensor bias_f = float_bias(bias);
    const VsGemm g = gemm_args(xk.data_ptr(), m, bias_f, y);
    // Threads split the 8-row blocks.
    const int64_t block_count = blocks.size(0);
    const NM24GemmFn gemm = lanes ? vs_gemm_nm24_lanes : nm24_gemm(isa);
    at::parallel_for(0, block_count, share(block_count, 1), [&](int64_t b, int64_t e) { gemm(&w, &g, b, e); });
    return y;
}

// ---- dense bf16 GEMV (gemv_dense_bf16.cpp, gemv_dense_avx2.cpp) -------------------

// The AVX-512 BF16 path has its own kernel; AVX2 and AVX-512 without BF16 run the
// AVX2 one.
bool dense_gemv_supported(int64_t isa) { return isa >= VS_AVX2 && isa <= VS_AVX512_BF16 && isa_supported(isa); }

// x [m, k] bf16 as the AVX2 GEMV reads it: fp32, each 16 columns as their 8 even then
// their 8 odd values, rows padded with zeros to a multiple of 16.
at::Tensor split_even_odd(const at::Tensor& x) {
    const int64_t m = x.size(0), k = x.size(1), kx = (k + 15) / 16 * 16;
    at::Tensor out = at::zeros({m, kx}, x.options().dtype(at::kFloat));
    const uint16_t* src = reinterpret_cast<const uint16_t*>(x.data_ptr());
    float* dst = out.data_ptr<float>();
    for (int64_t i = 0; i < m; i++)
        for (int64_t c = 0; c < k; c++)
            dst[i * kx + c / 16 * 16 + vs_even_odd_slot(c % 16)] = vs_bf16_to_f32(src[i * k + c]);
    return out;
}

// y = x W^T (+ bias) for a dense bf16 weight and a few activation rows (the LM head
// of a sparse model at decode); threads split the output rows.
at::Tensor dense_linear(const at::Tensor& x_in, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                        int64_t isa) {
    TORCH_CHECK(dense_gemv_supported(isa), "the dense GEMV has no ", kIsaName[std::clamp<int64_t>(isa, 0, 3)],
                " kernel on this CPU (it needs AVX2 + FMA or AVX-512 BF16)");
    TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == at::kBFloat16 && weight.is_contiguous() &&
                    weight.device().is_cpu(),
                "weight must be a contiguous bf16 [out_features, in_features] CPU tensor, got ",
                weight.scalar_type(), " ", weight.sizes());
    const int64_t n = weight.size(0), k = weight.size(1);
    TORCH_CHECK(x_in.dim() == 2 && x_in.size(1) == k && x_in.scalar_type() == at::kBFloat16,
                "x must be bf16 [M, ", k, "], got ", x_in.scalar_type(), " ", x_in.sizes());
    check_bias(bias, n);
    at::Tensor x = x_in.contiguous();
    at::Tensor y = at::empty({x.size(0), n}, x.options());
    if (x.size(0) == 0) return y;
    const at::Tensor bias_f = float_bias(bias);
    const uint16_t* w = reinterpret_cast<const uint16_t*>(weight.data_ptr());
    if (isa == VS_AVX512_BF16) {
        const VsGemm g = gemm_args(x.data_ptr(), x.size(0), bias_f, y);
        at::parallel_for(0, n, share(n, 16), [&](int64_t b, int64_t e) { vs_dense_gemv_avx512_bf16(w, k, &g, b, e); });
    } else {
        const at::Tensor xs = split_even_odd(x);
        const VsGemm g = gemm_args(xs.data_ptr(), x.size(0), bias_f, y);
        at::parallel_for(0, n, share(n, 8), [&](int64_t b, int64_t e) { vs_dense_gemv_avx2(w, k, &g, b, e); });
    }
    return y;
}

// ---- read bandwidth (benchmarks) --------------------------------------------------

// Reads every byte of `data` once, each thread its own share as kStreams interleaved
// sequential streams (as a GEMV reads several weight rows at once; one stream per
// core leaves much of the memory bandwidth unused), each asking for its line 512 bytes
// ahead, as the kernels do (on the 2-core EPYC, 2026-12-05, 58-60 GB/s with the
// prefetch and 35 without, same minute; without it the kernels streamed more than this
// limit), and returns a checksum so the reads cannot be optimised away. The limit the
// kernels' GB/s are compared with.
int64_t stream_read(const at::Tensor& data) {
    TORCH_CHECK(data.is_contiguous() && data.device().is_cpu(), "data must be a contiguous CPU tensor");
    const int kStreams = 8;
    const int64_t kAheadWords = 64;  // 512 bytes
    const int64_t words = data.numel() * data.element_size() / 8;
    const uint64_t* p = static_cast<const uint64_t*>(data.data_ptr());
    std::atomic<uint64_t> total{0};
    at::parallel_for(0, words, share(words, 4096), [&](int64_t begin, int64_t end) {
        const int64_t len = (end - begin) / kStreams;
        uint64_t acc[kStreams] = {0};
        int64_t i = 0;
        for (; i + 8 <= len; i += 8)  // a 64-byte step of every stream
            for (int s = 0; s < kStreams; s++) {
                const uint64_t* q = p + begin + s * len + i;
                if (i + kAheadWords < len) __builtin_prefetch(q + kAheadWords);  // inside its own words
                acc[s] += q[0] + q[1] + q[2] + q[3] + q[4] + q[5] + q[6] + q[7];
            }
        for (; i < len; i++)
            for (int s = 0; s < kStreams; s++) acc[s] += p[begin + s * len + i];
        uint64_t sum = 0;
        for (int s = 0; s < kStreams; s++) sum += acc[s];
        for (int64_t i = begin + kStreams * len; i < end; i++) sum += p[i];
        total += sum;
    });
    return (int64_t)total.load();
}

// A copy of `src` on 2 MiB pages (map_huge_pages). A decode kernel streams each
// weight once per step: on 4 KiB pages it takes a TLB miss every 4 KiB.
//
// The memory is a mapping of its own: posix_memalign, used before, hands back heap
// memory that earlier, freed allocations had already faulted in on 4 KiB pages once
// glibc's mmap threshold has risen (it does after large frees), and there the advice
// changed nothing: of four 18 MiB copies of a 2:4 weight packed one after another,
// one lay on 2 MiB pages (2026-12-06, 2-core Xeon; now all four).
at::Tensor hugepage_copy(const at::Tensor& src) {
    TORCH_CHECK(src.is_contiguous() && src.device().is_cpu(), "hugepage_copy: a contiguous CPU tensor");
    const HugePageMemory mapped = map_huge_pages(src.nbytes());
    const uintptr_t length = mapped.length;
    at::Tensor out = at::from_blob(mapped.memory, src.sizes(), [length](void* p) { munmap(p, length); }, src.options());
    out.copy_(src);
    return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vllm_sparse, m) {
    m.def("cpu_sparse_linear(Tensor x, Tensor values, Tensor bitmap, Tensor row_offsets, int in_features, "
          "int isa, int max_direct_m, Tensor? bias, bool sixteen_per_word=False) -> Tensor");
    m.def("cpu_sparse_unpack(Tensor values, Tensor bitmap, Tensor row_offsets, int in_features, int isa) -> Tensor");
    m.def("cpu_best_isa() -> int", &best_isa);
    m.def("cpu_amx_ready() -> bool", &amx_ready);
    m.def("cpu_nm24_linear(Tensor x, Tensor blocks, int out_features, int in_features, int isa, "
          "int max_direct_m, Tensor? bias) -> Tensor");
    m.def("cpu_nm24_unpack(Tensor blocks, int out_features, int in_features, int isa) -> Tensor");
    m.def("cpu_nm24_supported(int isa) -> bool", &nm24_supported);
    m.def("cpu_dense_linear(Tensor x, Tensor weight, Tensor? bias, int isa) -> Tensor");
    m.def("cpu_dense_gemv_supported(int isa) -> bool", &dense_gemv_supported);
    m.def("cpu_stream_read(Tensor data) -> int", &stream_read);
    m.def("cpu_hugepage_copy(Tensor src) -> Tensor", &hugepage_copy);
}

TORCH_LIBRARY_IMPL(vllm_sparse, CPU, m) {
    m.impl("cpu_sparse_linear", &sparse_linear);
    m.impl("cpu_sparse_unpack", &unpack);
    m.impl("cpu_nm24_linear", &nm24_linear);
    m.impl("cpu_nm24_unpack", &nm24_unpack);
    m.impl("cpu_dense_linear", &dense_linear);
}
