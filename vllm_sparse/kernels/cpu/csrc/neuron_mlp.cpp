// Neuron-level skipping at decode (one token row, bf16 weights, AVX-512 BF16): the
// MLP reads the gate rows in full, then only the up_proj rows and down_proj columns of
// the neurons whose |SiLU(gate)| is above the layer's threshold. The weights come as
// gate [intermediate, hidden] and up_down [intermediate, 2 * hidden]: neuron j's up
// row followed by its down_proj column, one contiguous 4 * hidden bytes to fetch.
//
// Rounding follows the dense path (skip_mlp.cpp: run_mlp) step by step: gate and up
// rounded to bf16 as a GEMM would write them, SiLU rounded to bf16, the product
// rounded to bf16; the order of the fp32 sums and the exp (libm, not ATen's SLEEF)
// differ, so results agree to rounding, not bit for bit.
#include "neuron_mlp.h"

#include "bf16.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

typedef uint16_t bf16_t;


__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) float dot_bf16(const bf16_t* w, const bf16_t* x,
                                                                       int64_t n) {
    // Four independent sums: one would wait on each multiply-add's latency.
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    int64_t k = 0;
    for (; k + 128 <= n; k += 128)
        for (int i = 0; i < 4; i++)
            acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)_mm512_loadu_si512(w + k + 32 * i),
                                      (__m512bh)_mm512_loadu_si512(x + k + 32 * i));
    for (; k < n; k += 32) {
        const __mmask32 m = n - k >= 32 ? ~__mmask32(0) : (__mmask32(1) << (n - k)) - 1;
        acc[0] = _mm512_dpbf16_ps(acc[0], (__m512bh)_mm512_maskz_loadu_epi16(m, w + k),
                                  (__m512bh)_mm512_maskz_loadu_epi16(m, x + k));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

// acc[0:n] += sum_i scale[i] * rows[i][0:n] for `count` (1..4) rows.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void axpy_bf16(float* acc, const bf16_t* const* rows,
                                                                       const float* scale, int count, int64_t n) {
    int64_t k = 0;
    for (; k < n; k += 16) {
        const __mmask16 m = n - k >= 16 ? ~__mmask16(0) : (__mmask16(1) << (n - k)) - 1;
        __m512 a = _mm512_maskz_loadu_ps(m, acc + k);
        for (int i = 0; i < count; i++) {
            const __m256i raw = _mm256_maskz_loadu_epi16(m, rows[i] + k);
            const __m512 w = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
            a = _mm512_fmadd_ps(_mm512_set1_ps(scale[i]), w, a);
        }
        _mm512_mask_storeu_ps(acc + k, m, a);
    }
}

float silu(float g) { return g / (1.0f + std::exp(-g)); }

constexpr size_t kAhead = 2;  // neurons ahead whose rows are prefetched

void prefetch_row(const bf16_t* row, int64_t n) {
    const char* p = reinterpret_cast<const char*>(row);
    for (int64_t b = 0; b < n * 2; b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
}

}  // namespace

bool neuron_mlp_decode_supported() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bf16");
}

at::Tensor neuron_mlp_decode(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up_down,
                             double threshold, int64_t* dropped) {
    const int64_t hidden = x.size(1), inter = gate.size(0);
    TORCH_CHECK(x.size(0) == 1 && x.scalar_type() == at::kBFloat16 && x.is_contiguous(),
                "neuron_mlp_decode: x must be one contiguous bf16 row");
    TORCH_CHECK(gate.scalar_type() == at::kBFloat16 && gate.is_contiguous() && gate.size(1) == hidden,
                "neuron_mlp_decode: gate must be contiguous bf16 [intermediate, hidden]");
    TORCH_CHECK(up_down.scalar_type() == at::kBFloat16 && up_down.is_contiguous() && up_down.size(0) == inter &&
                    up_down.size(1) == 2 * hidden,
                "neuron_mlp_decode: up_down must be contiguous bf16 [intermediate, 2 * hidden]");
    const bf16_t* xp = reinterpret_cast<const bf16_t*>(x.data_ptr());
    const bf16_t* wg = reinterpret_cast<const bf16_t*>(gate.data_ptr());
    const bf16_t* wud = reinterpret_cast<const bf16_t*>(up_down.data_ptr());

    // Compared in bf16, as the masked path's ATen comparison of a bf16 tensor with the
    // threshold does (the threshold rounded to bf16).
    const float limit = vs_round_bf16(static_cast<float>(threshold));
    // One parallel region: each task takes a range of neurons, reads their gate rows,
    // then the up rows and down columns of the active ones among them, and sums into
    // its own fp32 row; the rows are added at the end.
    const int tasks = std::max<int>(1, std::min<int64_t>(at::get_num_threads(), inter / 64));
    std::vector<float> partial(static_cast<size_t>(tasks) * hidden, 0.0f);
    std::atomic<int64_t> n_dropped{0};
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; t++) {
            const int64_t first = inter * t / tasks, last = inter * (t + 1) / tasks;
            std::vector<std::pair<int64_t, float>> active;  // (neuron, SiLU(gate))
            active.reserve(last - first);
            for (int64_t j = first; j < last; j++) {
                const float act = vs_round_bf16(silu(vs_round_bf16(dot_bf16(wg + j * hidden, xp, hidden))));
                if (std::fabs(act) > limit) active.emplace_back(j, act);
            }
            n_dropped += (last - first) - static_cast<int64_t>(active.size());
            float* acc = partial.data() + t * hidden;
            const bf16_t* rows[4];
            float scale[4];
            int count = 0;
            for (size_t i = 0; i < active.size(); i++) {
                if (i + kAhead < active.size())  // rows of scattered neurons: fetch them early
                    prefetch_row(wud + active[i + kAhead].first * 2 * hidden, 2 * hidden);
                const bf16_t* row = wud + active[i].first * 2 * hidden;  // [up_j | down column j]
                const float up = vs_round_bf16(dot_bf16(row, xp, hidden));
                scale[count] = vs_round_bf16(active[i].second * up);
                rows[count++] = row + hidden;
                if (count == 4) {  // four down columns added in one pass over the sums
                    axpy_bf16(acc, rows, scale, count, hidden);
                    count = 0;
                }
            }
            if (count) axpy_bf16(acc, rows, scale, count, hidden);
        }
    });
    if (dropped != nullptr) *dropped += n_dropped;
    at::Tensor out = at::empty({1, hidden}, x.options());
    bf16_t* op = reinterpret_cast<bf16_t*>(out.data_ptr());
    for (int64_t k = 0; k < hidden; k++) {
        float sum = 0;
        for (int t = 0; t < tasks; t++) sum += partial[static_cast<size_t>(t) * hidden + k];
        op[k] = vs_float_to_bf16(sum);
    }
    return out;
}
