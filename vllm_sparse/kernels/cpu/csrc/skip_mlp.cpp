// One decoder layer's skip-aware MLP for FFN skipping, as one op (namespace
// vllm_sparse, CPU backend):
//
//   cpu_skip_mlp(x, residual, row_kind, countdown, counts!, decisions!,
//                gate_up_kind, gate_up_tensors, gate_up_ints,
//                down_kind, down_tensors, down_ints, params,
//                neuron_gate?, neuron_up_down?) -> (out, countdown)
//
// params (float64 [5]: hot, check, threshold, skip_layers, neuron_threshold) is data,
// not constants (neuron_gate / neuron_up_down: the layer's bf16 weights for the
// one-row neuron-level kernel, neuron_mlp.cpp);
// a compiled graph cached on disk and loaded by an engine with another skip profile
// must still apply that profile.
//
// The skip rule, the countdowns and the MLP all run here, so a compiled graph holds
// one node per layer and nothing reads a decision back into Python (vllm_sparse/skip/
// decision.py states the rule; this is the same rule on tensors):
//   * row r skips iff the layer is hot, row_kind[r] == kMaySkip and countdown[r] > 0;
//   * a skipped row's output is exactly zero and its countdown drops by one;
//   * a computed row's countdown is reset, or set to skip_layers when the layer is
//     checked and the row may skip and cosine(h, h + mlp(h)) > threshold.
// The MLP is gate_up -> SiLU(gate) * up -> down, each projection run by the kernel
// the layer already has (a "linear kind" plus its tensors and ints, see run_linear),
// on the computed rows (at decode batches on all rows while any computes, see
// kDecodeRows). counts[0 / 1] add the skipped / computed rows that are counted
// (row_kind != kUncounted), counts[2 / 3] the intermediate neurons dropped / kept by
// neuron-level skipping in the computed rows that may skip; decisions[r] = 1 where
// row r skipped (the rows that fit). row_kind: 0 never skips (prompt, warm-up), 1 may
// skip, 2 never skips and is not counted (padding rows, dummy runs).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "neuron_mlp.h"
#include "silu_mul.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

namespace {

enum RowKind : int8_t { kCompute = 0, kMaySkip = 1, kUncounted = 2 };

// Up to this many rows a projection costs what reading its weights costs, whatever
// the number of rows: while any row computes, all do (and the skipped ones are
// zeroed), which saves gathering and scattering rows. Above it, only the computed
// rows run. So at decode batches a layer's work is saved when every row skips it.
constexpr int64_t kDecodeRows = 16;

// How a projection runs. The numbers are mirrored in vllm_sparse/skip/cpu_mlp.py.
enum LinearKind : int64_t {
    kDenseWeight = 0,  // tensors [weight]: at::linear
    kOneDnn = 1,       // tensors [handler], ints [out_features]: vLLM's _C::onednn_mm
    kBitmap = 2,       // tensors [values, bitmap, row_offsets], ints [in_features, isa, max_direct_m, sixteen_per_word]
    kNm24 = 3,         // tensors [blocks], ints [out_features, in_features, isa, max_direct_m]
};

c10::OperatorHandle op_handle(const char* name) {
    return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

// Boxed calls: they depend on the op's argument order only, not on how its C++
// signature spells mutable or optional arguments.
at::Tensor call_returning(const c10::OperatorHandle& op, torch::jit::Stack stack) {
    op.callBoxed(&stack);
    return stack.back().toTensor();
}

at::Tensor run_linear(const at::Tensor& x, int64_t kind, const std::vector<at::Tensor>& t,
                      c10::IntArrayRef ints) {
    switch (kind) {
        case kDenseWeight:
            TORCH_CHECK(t.size() == 1, "cpu_skip_mlp: a dense projection takes [weight]");
            return at::linear(x, t[0]);
        case kOneDnn: {
            TORCH_CHECK(t.size() == 1 && ints.size() == 1, "cpu_skip_mlp: a oneDNN projection takes [handler], [out]");
            static const c10::OperatorHandle onednn = op_handle("_C::onednn_mm");
            at::Tensor out = at::empty({x.size(0), ints[0]}, x.options());
            torch::jit::Stack stack{out, x, c10::IValue(), t[0]};
            onednn.callBoxed(&stack);
            return out;
        }
        case kBitmap: {
            TORCH_CHECK(t.size() == 3 && ints.size() == 4, "cpu_skip_mlp: a bitmap projection takes 3 tensors, 4 ints");
            static const c10::OperatorHandle bitmap = op_handle("vllm_sparse::cpu_sparse_linear");
            return call_returning(bitmap, {x, t[0], t[1], t[2], ints[0], ints[1], ints[2], c10::IValue(), ints[3] != 0});
        }
        case kNm24: {
            TORCH_CHECK(t.size() == 1 && ints.size() == 4, "cpu_skip_mlp: a 2:4 projection takes [blocks], 4 ints");
            static const c10::OperatorHandle nm24 = op_handle("vllm_sparse::cpu_nm24_linear");
            return call_returning(nm24, {x, t[0], ints[0], ints[1], ints[2], ints[3], c10::IValue()});
        }
    }
    TORCH_CHECK(false, "cpu_skip_mlp: unknown projection kind ", kind);
}

// Zero the entries of act (a column slice of [rows, intermediate]) with |value| <=
// threshold in the rows where drop_rows[r] is set. The comparison is
// made in act's dtype, as ATen compares a tensor with a scalar (the threshold rounded
// to bf16 for bf16), so the transformers path and the one-row kernel drop the same.
int64_t drop_neurons(at::Tensor& act, const bool* drop, double threshold) {
    const int64_t rows = act.size(0), width = act.size(1), stride = act.stride(0);
    int64_t dropped = 0;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, act.scalar_type(), "drop_neurons", [&] {
        const scalar_t limit = static_cast<scalar_t>(threshold);
        const float bound = static_cast<float>(limit);
        scalar_t* base = act.data_ptr<scalar_t>();
        for (int64_t r = 0; r < rows; r++) {
            if (!drop[r]) continue;
            scalar_t* row = base + r * stride;
            for (int64_t c = 0; c < width; c++) {
                if (std::fabs(static_cast<float>(row[c])) <= bound) {
                    row[c] = scalar_t(0);
                    dropped++;
                }
            }
        }
    });
    return dropped;
}

struct Projections {
    int64_t gu_kind;
    const std::vector<at::Tensor>& gu_t;
    c10::IntArrayRef gu_ints;
    int64_t down_kind;
    const std::vector<at::Tensor>& down_t;
    c10::IntArrayRef down_ints;
};

// gate_up -> SiLU(gate) * up -> down. The activation gives what vLLM's SiluAndMul on
// x86 CPUs gives (forward_native: ATen's silu and mul), bit for bit: bf16 through one
// fused pass (silu_mul.cpp), other dtypes through those ATen ops.
// Neuron-level skipping: in the rows where drop_rows[r] is set (null: none), the
// neurons with |SiLU(gate)| <= neuron_threshold are zeroed before the multiply;
// neurons[0 / 1] add how many were dropped / kept in those rows.
at::Tensor run_mlp(const at::Tensor& x, const Projections& p, double neuron_threshold,
                   const bool* drop_rows, int64_t* neurons) {
    at::Tensor gate_up = run_linear(x, p.gu_kind, p.gu_t, p.gu_ints);
    const int64_t rows = gate_up.size(0), inter = gate_up.size(1) / 2;
    at::Tensor act = at::empty({rows, inter}, gate_up.options());
    const bool drop = neuron_threshold > 0 && drop_rows != nullptr;
    int64_t dropped = 0;
    const int64_t considered = drop ? inter * std::count(drop_rows, drop_rows + rows, true) : 0;
    auto tally = [&] {
        neurons[0] += dropped;
        neurons[1] += considered - dropped;
    };
    // bf16: one fused pass (silu_mul.cpp), the same values as the ATen ops below.
    if (silu_mul_bf16(gate_up, act, drop ? drop_rows : nullptr, neuron_threshold, &dropped)) {
        tally();
        return run_linear(act, p.down_kind, p.down_t, p.down_ints);
    }
    // ATen runs an elementwise op this small on one thread; split the columns over the
    // pool in chunks of whole vectors (the same values as one call: each element is
    // computed alone, and no chunk boundary moves an element off the vector loop).
    const int64_t chunks_per_task = std::max<int64_t>(1, 4096 / (64 * gate_up.size(0)));  // >= 4096 elements
    // Torch ops on the worker threads need the caller's thread-local state (inference
    // mode), or vLLM's inference tensors refuse the in-place multiply.
    const at::ThreadLocalState caller_state;
    std::atomic<int64_t> chunks_dropped{0};
    at::parallel_for(0, (inter + 63) / 64, chunks_per_task, [&](int64_t begin, int64_t end) {
        at::ThreadLocalStateGuard state_guard(caller_state);
        const int64_t c0 = begin * 64, width = std::min(end * 64, inter) - c0;
        at::Tensor out = act.narrow(1, c0, width);
        at::silu_out(out, gate_up.narrow(1, c0, width));
        if (drop) chunks_dropped += drop_neurons(out, drop_rows, neuron_threshold);
        out.mul_(gate_up.narrow(1, inter + c0, width));
    });
    dropped = chunks_dropped;
    tally();
    return run_linear(act, p.down_kind, p.down_t, p.down_ints);
}

// cosine(h, h + u) of one row, clamped to [-1, 1] (as skip/decision.py:dot_cosine).
// Eight independent partial sums so the compiler can vectorise the loop; inlined into
// per-ISA copies below, since this file's own flags allow SSE2 only (measured: 13 us
// a layer for 8 rows x 576 there, a tenth of the MLP of a small model at batch 8).
template <typename T>
__attribute__((always_inline)) inline double cosine_sums(const T* h, const T* u, int64_t n) {
    constexpr int kLanes = 8;
    double hh[kLanes] = {0}, uu[kLanes] = {0}, hu[kLanes] = {0};
    int64_t i = 0;
    for (; i + kLanes <= n; i += kLanes) {
        for (int l = 0; l < kLanes; l++) {
            const double a = static_cast<float>(h[i + l]), b = static_cast<float>(u[i + l]);
            hh[l] += a * a;
            uu[l] += b * b;
            hu[l] += a * b;
        }
    }
    for (; i < n; i++) {
        const double a = static_cast<float>(h[i]), b = static_cast<float>(u[i]);
        hh[0] += a * a;
        uu[0] += b * b;
        hu[0] += a * b;
    }
    double shh = 0, suu = 0, shu = 0;
    for (int l = 0; l < kLanes; l++) {
        shh += hh[l];
        suu += uu[l];
        shu += hu[l];
    }
    const double cosine = (shh + shu) / std::sqrt(std::max(shh * (shh + 2 * shu + suu), 1e-24));
    return std::min(1.0, std::max(-1.0, cosine));
}

template <typename T>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) double cosine_avx512(const T* h, const T* u,
                                                                                   int64_t n) {
    return cosine_sums(h, u, n);
}

template <typename T>
__attribute__((target("avx2,fma"))) double cosine_avx2(const T* h, const T* u, int64_t n) {
    return cosine_sums(h, u, n);
}

template <typename T>
double cosine_generic(const T* h, const T* u, int64_t n) {
    return cosine_sums(h, u, n);
}

// The same sums in the same order on every path (each lane's own; the ISO -std=c++17
// of build.py keeps GCC from contracting them into fused multiply-adds), so a decision
// does not depend on the host.
template <typename T>
double residual_cosine(const T* h, const T* u, int64_t n) {
    static const int level = __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                                     __builtin_cpu_supports("avx512vl")
                                 ? 2
                                 : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? 1 : 0;
    if (level == 2) return cosine_avx512(h, u, n);
    if (level == 1) return cosine_avx2(h, u, n);
    return cosine_generic(h, u, n);
}

std::tuple<at::Tensor, at::Tensor> skip_mlp(
    const at::Tensor& x, const at::Tensor& residual, const at::Tensor& row_kind, const at::Tensor& countdown,
    at::Tensor& counts, at::Tensor& decisions, int64_t gu_kind, std::vector<at::Tensor> gu_t,
    c10::IntArrayRef gu_ints, int64_t down_kind, std::vector<at::Tensor> down_t, c10::IntArrayRef down_ints,
    const at::Tensor& params, const std::optional<at::Tensor>& neuron_gate,
    const std::optional<at::Tensor>& neuron_up_down) {
    TORCH_CHECK(x.dim() == 2 && residual.sizes() == x.sizes() && residual.scalar_type() == x.scalar_type(),
                "cpu_skip_mlp: x and residual must be [rows, hidden] of one dtype");
    const int64_t rows = x.size(0);
    TORCH_CHECK(row_kind.scalar_type() == at::kChar && row_kind.numel() == rows && row_kind.is_contiguous(),
                "cpu_skip_mlp: row_kind must be int8 [rows]");
    TORCH_CHECK(countdown.scalar_type() == at::kInt && countdown.numel() == rows && countdown.is_contiguous(),
                "cpu_skip_mlp: countdown must be int32 [rows]");
    TORCH_CHECK(counts.scalar_type() == at::kLong && counts.numel() == 4 && counts.is_contiguous(),
                "cpu_skip_mlp: counts must be int64 [4] (rows skipped, computed; neurons dropped, kept)");
    TORCH_CHECK(decisions.scalar_type() == at::kByte && decisions.is_contiguous(),
                "cpu_skip_mlp: decisions must be uint8");
    TORCH_CHECK(params.scalar_type() == at::kDouble && params.numel() == 5 && params.is_contiguous(),
                "cpu_skip_mlp: params must be float64 [hot, check, threshold, skip_layers, neuron_threshold]");
    const double* p = params.data_ptr<double>();
    const bool hot = p[0] != 0, check = p[1] != 0;
    const double threshold = p[2];
    const int32_t skip_layers = static_cast<int32_t>(p[3]);
    const double neuron_threshold = p[4];
    const Projections proj{gu_kind, gu_t, gu_ints, down_kind, down_t, down_ints};
    const int8_t* kind = row_kind.data_ptr<int8_t>();
    const int32_t* count_in = countdown.data_ptr<int32_t>();

    std::vector<int64_t> computed;
    computed.reserve(rows);
    std::vector<uint8_t> skip(rows, 0);
    for (int64_t r = 0; r < rows; r++) {
        skip[r] = hot && kind[r] == kMaySkip && count_in[r] > 0;
        if (!skip[r]) computed.push_back(r);
    }
    const int64_t n_computed = static_cast<int64_t>(computed.size());

    // Rows that drop neurons (neuron-level skipping): the ones that may skip and
    // compute (a skipped row's output is zeroed whatever it drops, and its neurons are
    // not counted). (Plain arrays, not tensors: an ATen comparison here cost ~17 us a
    // layer.)
    std::unique_ptr<bool[]> drops;
    if (neuron_threshold > 0) {
        drops.reset(new bool[rows]);
        for (int64_t r = 0; r < rows; r++) drops[r] = kind[r] == kMaySkip && !skip[r];
    }
    int64_t* totals = counts.data_ptr<int64_t>();

    // One decoding row that computes and drops neurons: read only its active neurons.
    static const bool neuron_kernel = neuron_mlp_decode_supported();
    const bool neuron_decode = neuron_kernel && rows == 1 && n_computed == 1 && neuron_threshold > 0 &&
                               kind[0] == kMaySkip && neuron_gate.has_value() && neuron_up_down.has_value() &&
                               x.scalar_type() == at::kBFloat16;

    at::Tensor out;
    if (neuron_decode) {
        int64_t dropped = 0;
        out = neuron_mlp_decode(x.contiguous(), *neuron_gate, *neuron_up_down, neuron_threshold, &dropped);
        totals[2] += dropped;
        totals[3] += neuron_gate->size(0) - dropped;
    } else if (n_computed == rows || (n_computed > 0 && rows <= kDecodeRows)) {
        out = run_mlp(x.contiguous(), proj, neuron_threshold, drops.get(), totals + 2);
        if (n_computed < rows) {  // computed for nothing: a skipped row's output is exactly zero
            const int64_t row_bytes = out.size(1) * out.element_size();
            char* base = static_cast<char*>(out.data_ptr());
            for (int64_t r = 0; r < rows; r++)
                if (skip[r]) std::memset(base + r * row_bytes, 0, row_bytes);
        }
    } else {
        out = at::zeros_like(x);
        if (n_computed > 0) {
            at::Tensor index = at::tensor(computed, at::TensorOptions().dtype(at::kLong));
            std::unique_ptr<bool[]> drop_rows;
            if (drops) {
                drop_rows.reset(new bool[n_computed]);
                for (int64_t i = 0; i < n_computed; i++) drop_rows[i] = drops[computed[i]];
            }
            out.index_copy_(0, index,
                            run_mlp(x.index_select(0, index), proj, neuron_threshold, drop_rows.get(), totals + 2));
        }
    }

    at::Tensor count_out = at::empty_like(countdown);
    int32_t* next = count_out.data_ptr<int32_t>();
    const at::Tensor h = residual.contiguous();
    const int64_t hidden = x.size(1);
    int64_t skipped = 0, counted = 0;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "cpu_skip_mlp", [&] {
        const scalar_t* hp = h.data_ptr<scalar_t>();
        const scalar_t* up = out.data_ptr<scalar_t>();
        for (int64_t r = 0; r < rows; r++) {
            if (skip[r]) {
                next[r] = count_in[r] - 1;
            } else if (check && kind[r] == kMaySkip) {
                const double cosine = residual_cosine(hp + r * hidden, up + r * hidden, hidden);
                next[r] = cosine > threshold ? skip_layers : 0;
            } else {
                next[r] = 0;
            }
            if (kind[r] != kUncounted) {
                counted++;
                skipped += skip[r];
            }
        }
    });
    totals[0] += skipped;
    totals[1] += counted - skipped;
    uint8_t* log = decisions.data_ptr<uint8_t>();
    for (int64_t r = 0; r < std::min(rows, decisions.numel()); r++) log[r] = skip[r];
    return {out, count_out};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(vllm_sparse, m) {
    m.def("cpu_skip_mlp(Tensor x, Tensor residual, Tensor row_kind, Tensor countdown, Tensor(a!) counts, "
          "Tensor(b!) decisions, int gate_up_kind, Tensor[] gate_up_tensors, int[] gate_up_ints, int down_kind, "
          "Tensor[] down_tensors, int[] down_ints, Tensor params, Tensor? neuron_gate=None, "
          "Tensor? neuron_up_down=None) "
          "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vllm_sparse, CPU, m) {
    m.impl("cpu_skip_mlp", &skip_mlp);
}
