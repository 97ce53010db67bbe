// SiLU(gate) * up for bf16 rows in one pass, with neuron-level dropping folded in.
//
// ATen runs SiLU and the multiply as two ops, each a pass over the activations; at
// decode batches on a small model (SmolLM2: 8 rows x 1536) the two cost ~30 us a layer
// on one thread, a tenth of the layer, and the split over threads that skip_mlp.cpp
// used before did not make them cheaper. Here each element is read once and written
// once, with the results of ATen's ops bit for bit: the same arithmetic (x / (1 +
// exp(-x)) in fp32 with the SLEEF exp ATen's vectorised loop calls for the host's
// capability, std::exp for the elements its loop leaves to the scalar tail: the last
// n mod (2 x vector width) of each row), rounded to bf16 as ATen rounds, then the
// product in fp32 rounded to bf16. Where a row drops neurons, a SiLU value whose
// magnitude is at most the threshold (compared in bf16, as ATen compares a bf16 tensor
// with a scalar; a NaN is kept) becomes zero before the multiply.
#include "silu_mul.h"

#include "bf16.h"

#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/library.h>
#include <immintrin.h>

#include <atomic>
#include <cmath>
#include <cstring>

extern "C" {
// SLEEF's exp (u10: 1.0 ULP), exported by libtorch_cpu: the functions ATen's
// Vectorized<float>::exp() calls on AVX-512 and on AVX2 hosts.
__attribute__((target("avx512f"))) __m512 Sleef_expf16_u10(__m512);
__attribute__((target("avx2"))) __m256 Sleef_expf8_u10(__m256);
}

namespace {

// One element as ATen's scalar loop computes it; counts a dropped SiLU value.
inline uint16_t silu_mul_one(uint16_t g, uint16_t u, bool drop, float bound, int64_t& dropped) {
    const float x = vs_bf16_to_float(g);
    float s = vs_round_bf16(x / (1.0f + std::exp(-x)));
    if (drop && std::fabs(s) <= bound) {
        s = 0.0f;
        dropped++;
    }
    return vs_float_to_bf16(s * vs_bf16_to_float(u));
}

// Each row function returns how many SiLU values it dropped (0 where drop is false).
int64_t row_scalar(const uint16_t* g, const uint16_t* u, uint16_t* out, int64_t n, bool drop, float bound) {
    int64_t dropped = 0;
    for (int64_t i = 0; i < n; i++) out[i] = silu_mul_one(g[i], u[i], drop, bound, dropped);
    return dropped;
}

// fp32 -> bf16, round to nearest even, NaN -> 0x7fc0 (c10's rounding, vectorised).
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) inline __m256i to_bf16_16(__m512 f) {
    const __m512i bits = _mm512_castps_si512(f);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __mmask16 nan = _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q);
    rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_set1_epi32(0x7fc0));
    return _mm512_cvtepi32_epi16(rounded);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) inline __m512 from_bf16_16(__m256i v) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,popcnt"))) int64_t row_avx512(const uint16_t* g,
                                                                              const uint16_t* u, uint16_t* out,
                                                                              int64_t n, bool drop, float bound) {
    const __m512 one = _mm512_set1_ps(1.0f), sign = _mm512_set1_ps(-0.0f), limit = _mm512_set1_ps(bound);
    const int64_t vector_end = n / 64 * 64;  // ATen's loop: 2 x 32 bf16 per step, the rest scalar
    int64_t i = 0, kept = 0;
    for (; i < vector_end; i += 16) {
        const __m512 x = from_bf16_16(_mm256_loadu_si256((const __m256i*)(g + i)));
        const __m512 e = Sleef_expf16_u10(_mm512_xor_ps(x, sign));
        __m512 s = from_bf16_16(to_bf16_16(_mm512_div_ps(x, _mm512_add_ps(one, e))));
        if (drop) {
            const __mmask16 keep = _mm512_cmp_ps_mask(_mm512_abs_ps(s), limit, _CMP_NLE_UQ);
            s = _mm512_maskz_mov_ps(keep, s);
            kept += _mm_popcnt_u32(keep);
        }
        const __m512 p = _mm512_mul_ps(s, from_bf16_16(_mm256_loadu_si256((const __m256i*)(u + i))));
        _mm256_storeu_si256((__m256i*)(out + i), to_bf16_16(p));
    }
    return (drop ? vector_end - kept : 0) + row_scalar(g + i, u + i, out + i, n - i, drop, bound);
}

// AVX2 (8 floats a vector; ATen's loop: 2 x 16 bf16 per step).
__attribute__((target("avx2,fma"))) inline __m128i to_bf16_8(__m256 f) {
    const __m256i bits = _mm256_castps_si256(f);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    const __m256 nan = _mm256_cmp_ps(f, f, _CMP_UNORD_Q);
    rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7fc0), _mm256_castps_si256(nan));
    // Values are < 2^16: pack without saturation effects.
    const __m128i lo = _mm256_castsi256_si128(rounded), hi = _mm256_extracti128_si256(rounded, 1);
    return _mm_packus_epi32(lo, hi);
}

__attribute__((target("avx2,fma"))) inline __m256 from_bf16_8(__m128i v) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}

__attribute__((target("avx2,fma,popcnt"))) int64_t row_avx2(const uint16_t* g, const uint16_t* u, uint16_t* out,
                                                            int64_t n, bool drop, float bound) {
    const __m256 one = _mm256_set1_ps(1.0f), sign = _mm256_set1_ps(-0.0f), limit = _mm256_set1_ps(bound);
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const int64_t vector_end = n / 32 * 32;
    int64_t i = 0, kept = 0;
    for (; i < vector_end; i += 8) {
        const __m256 x = from_bf16_8(_mm_loadu_si128((const __m128i*)(g + i)));
        const __m256 e = Sleef_expf8_u10(_mm256_xor_ps(x, sign));
        __m256 s = from_bf16_8(to_bf16_8(_mm256_div_ps(x, _mm256_add_ps(one, e))));
        if (drop) {
            const __m256 keep = _mm256_cmp_ps(_mm256_and_ps(s, abs_mask), limit, _CMP_NLE_UQ);
            s = _mm256_and_ps(s, keep);
            kept += _mm_popcnt_u32(_mm256_movemask_ps(keep));
        }
        const __m256 p = _mm256_mul_ps(s, from_bf16_8(_mm_loadu_si128((const __m128i*)(u + i))));
        _mm_storeu_si128((__m128i*)(out + i), to_bf16_8(p));
    }
    return (drop ? vector_end - kept : 0) + row_scalar(g + i, u + i, out + i, n - i, drop, bound);
}

using RowFn = int64_t (*)(const uint16_t*, const uint16_t*, uint16_t*, int64_t, bool, float);

// The row function matching the loop ATen runs on this host; null where ATen's loop
// is not one of these (other architectures), and the caller keeps ATen's ops.
RowFn row_function() {
#if defined(__x86_64__)
    const std::string capability = at::get_cpu_capability();  // "AVX512", "AVX2", "DEFAULT"
    if (capability == "AVX512") return row_avx512;
    if (capability == "AVX2") return row_avx2;
    if (capability == "DEFAULT") return row_scalar;
#endif
    return nullptr;
}

}  // namespace

bool silu_mul_bf16(const at::Tensor& gate_up, at::Tensor& act, const bool* drop_rows, double threshold,
                   int64_t* dropped) {
    static const RowFn row = row_function();
    if (row == nullptr || gate_up.scalar_type() != at::kBFloat16 || act.scalar_type() != at::kBFloat16 ||
        gate_up.stride(1) != 1 || !act.is_contiguous())
        return false;
    const int64_t rows = act.size(0), inter = act.size(1), ld = gate_up.stride(0);
    const uint16_t* base = reinterpret_cast<const uint16_t*>(gate_up.data_ptr());
    uint16_t* out = reinterpret_cast<uint16_t*>(act.data_ptr());
    // The threshold rounded to bf16, as ATen's comparison of a bf16 tensor with it.
    const float bound = vs_round_bf16(static_cast<float>(threshold));
    // Rows go to threads whole; one thread below ~32K elements, where waking the
    // others costs more than it saves (ATen's grain for these ops is 32768 too).
    const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(inter, 1));
    std::atomic<int64_t> total{0};
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
        int64_t mine = 0;
        for (int64_t r = r0; r < r1; r++)
            mine += row(base + r * ld, base + r * ld + inter, out + r * inter, inter,
                        drop_rows != nullptr && drop_rows[r], bound);
        total += mine;
    });
    if (dropped != nullptr) *dropped += total;
    return true;
}

namespace {

// The kernel alone, for its tests: (act = SiLU(gate_up[:, :I]) * gate_up[:, I:], the
// number of SiLU values dropped).
std::tuple<at::Tensor, int64_t> silu_mul_op(const at::Tensor& gate_up, const std::optional<at::Tensor>& drop_rows,
                                            double threshold) {
    TORCH_CHECK(gate_up.dim() == 2 && gate_up.size(1) % 2 == 0, "cpu_silu_mul: gate_up must be [rows, 2 * I]");
    at::Tensor act = at::empty({gate_up.size(0), gate_up.size(1) / 2}, gate_up.options());
    at::Tensor drop;
    if (drop_rows.has_value()) {
        drop = drop_rows->to(at::kBool).contiguous();
        TORCH_CHECK(drop.numel() == gate_up.size(0), "cpu_silu_mul: drop_rows must have one entry per row");
    }
    int64_t dropped = 0;
    TORCH_CHECK(silu_mul_bf16(gate_up, act, drop.defined() ? drop.data_ptr<bool>() : nullptr, threshold, &dropped),
                "cpu_silu_mul: needs bf16 rows with contiguous columns on an x86 host");
    return {act, dropped};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vllm_sparse, m) {
    m.def("cpu_silu_mul(Tensor gate_up, Tensor? drop_rows, float threshold) -> (Tensor, int)");
}

TORCH_LIBRARY_IMPL(vllm_sparse, CPU, m) {
    m.impl("cpu_silu_mul", &silu_mul_op);
}
