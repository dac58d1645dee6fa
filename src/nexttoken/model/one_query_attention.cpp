// Attention of one query per row over the cached keys and values: a decode step. Each key/value
// head is read once for its whole group of query heads, with no packing, where the prompt kernel
// (flash_attention.cpp) packs keys and values for blocks of 32 queries first. With many keys, each
// head's keys are split into spans that the threads share, and the spans' softmax sums combined
// after (as in "flash-decoding"): a batch of one has too few heads to keep two threads busy.
//
// float32 or bfloat16 inputs, or float32 queries over float16 keys and values (the cache of a
// quantized model); scores, the softmax and the sums are float32 (16-bit values are widened on
// load), and the output is rounded to the queries' dtype once, at the end.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <vector>

#include "vector_math.h"

namespace {

constexpr int kMaxGroup = 16;          // query heads per key/value head
constexpr int kSumRegisters = 16;      // registers that hold the queries' weighted sums of values
// query-key pairs below which one thread does all: in a decode step the cached rows come from
// memory, not from the cache, and two threads read them faster from about 30 of SmolLM2's
// positions on (at 80 positions, 12.5 -> 9.5 µs a layer), though starting them costs 2.4 µs
constexpr int64_t kSerialWork = 256;

struct Shapes {
  int64_t heads, kv_heads, keys;
  float scale;
  const bool* mask;     // (B, S) rows `mask_stride` apart, or null
  int64_t mask_stride;
};

// Row `row` of 16 * Chunks values as float32 registers.
template <int Chunks, typename T>
void load_row(const T* row, __m512* out) {
  for (int c = 0; c < Chunks; ++c) out[c] = load16(row + 16 * c);
}

// What one span of keys gives a query: its highest score, the sum of its softmax weights taken
// against that score, and the weighted sum of its values (head_dim floats, unnormalized).
struct Partial {
  float best;
  float total;
  float* sums;
};

// Each of `Queries` queries' weighted sum of the values [first, first + n), from their softmax
// weights (rows n apart): the queries' sums stay in registers. For a runtime number of queries
// GCC kept them in memory, a load and a store at every step: a SmolLM2 layer over 560 cached
// positions took 18.4 instead of 16.0 µs in cache, and 28.7 instead of 24.5 from memory (float16).
template <int Chunks, int Queries, typename KV>
void weighted_values(const KV* v, int64_t row_step, const bool* mask, int64_t first, int64_t n, const float* weights,
                     Partial* partials) {
  __m512 sums[Queries][Chunks];
  for (int g = 0; g < Queries; ++g)
    for (int c = 0; c < Chunks; ++c) sums[g][c] = _mm512_setzero_ps();
  for (int64_t t = 0; t < n; ++t) {
    if (mask != nullptr && !mask[first + t]) continue;
    __m512 value[Chunks];
    load_row<Chunks>(v + (first + t) * row_step, value);
    for (int g = 0; g < Queries; ++g) {
      const __m512 weight = _mm512_set1_ps(weights[g * n + t]);
      for (int c = 0; c < Chunks; ++c) sums[g][c] = _mm512_fmadd_ps(weight, value[c], sums[g][c]);
    }
  }
  for (int g = 0; g < Queries; ++g)
    for (int c = 0; c < Chunks; ++c) _mm512_storeu_ps(partials[g].sums + 16 * c, sums[g][c]);
}

// The `group` queries of one key/value head (rows `q_step` apart) over keys and values [first,
// last) (rows `row_step` apart): scores into `scores` (group x (last - first)), then softmax
// weights, then each query's Partial.
template <int Chunks, typename Q, typename KV>
void one_span(const Q* q, int64_t q_step, const KV* k, const KV* v, int64_t row_step, const bool* mask,
              int64_t first, int64_t last, float scale, int group, float* scores, Partial* partials) {
  const int64_t n = last - first;
  __m512 queries[kMaxGroup][Chunks];
  for (int g = 0; g < group; ++g) load_row<Chunks>(q + g * q_step, queries[g]);
  const float minus_infinity = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < n; ++t) {
    if (mask != nullptr && !mask[first + t]) {
      for (int g = 0; g < group; ++g) scores[g * n + t] = minus_infinity;
      continue;
    }
    __m512 key[Chunks];
    load_row<Chunks>(k + (first + t) * row_step, key);
    for (int g = 0; g < group; ++g) {
      __m512 sum = _mm512_mul_ps(queries[g][0], key[0]);
      for (int c = 1; c < Chunks; ++c) sum = _mm512_fmadd_ps(queries[g][c], key[c], sum);
      scores[g * n + t] = _mm512_reduce_add_ps(sum) * scale;
    }
  }
  for (int g = 0; g < group; ++g) {
    float* row = scores + g * n;
    const float best = *std::max_element(row, row + n);
    __m512 total = _mm512_setzero_ps();
    for (int64_t t = 0; t < n; t += 16) {
      const int count = static_cast<int>(std::min<int64_t>(16, n - t));
      const __mmask16 lanes = static_cast<__mmask16>((1u << count) - 1);
      // a span whose keys are all masked gets weights of 0, not NaN
      const __m512 weights = best == minus_infinity ? _mm512_setzero_ps()
          : _mm512_maskz_mov_ps(lanes, vector_exp(_mm512_sub_ps(load16(row + t, count), _mm512_set1_ps(best))));
      store16(row + t, weights, count);
      total = _mm512_add_ps(total, weights);
    }
    partials[g].best = best;
    partials[g].total = _mm512_reduce_add_ps(total);
  }
  for (int g = 0; g < group; g += kSumRegisters / Chunks) {
    with_tile(std::min(group - g, kSumRegisters / Chunks), [&]<int Queries>() {
      if constexpr (Queries * Chunks <= kSumRegisters)
        weighted_values<Chunks, Queries>(v, row_step, mask, first, n, scores + g * n, partials + g);
    });
  }
}

// One query's output from its spans' Partials: each span's weights rescaled to the highest score
// of all (Milakov and Gimelshein, 2018, "Online normalizer calculation for softmax").
template <int Chunks, typename T>
void combine(const Partial* spans, int n_spans, int64_t span_step, T* out) {
  float best = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < n_spans; ++i) best = std::max(best, spans[i * span_step].best);
  __m512 sums[Chunks];
  for (int c = 0; c < Chunks; ++c) sums[c] = _mm512_setzero_ps();
  float total = 0;
  for (int i = 0; i < n_spans; ++i) {
    const Partial& span = spans[i * span_step];
    if (span.total == 0) continue;  // every key of the span masked
    const float factor = std::exp(span.best - best);
    total += factor * span.total;
    for (int c = 0; c < Chunks; ++c)
      sums[c] = _mm512_fmadd_ps(_mm512_set1_ps(factor), _mm512_loadu_ps(span.sums + 16 * c), sums[c]);
  }
  const __m512 inverse = _mm512_set1_ps(total > 0 ? 1.0f / total : 0.0f);  // a query that sees no key: 0
  for (int c = 0; c < Chunks; ++c) store16(out + 16 * c, _mm512_mul_ps(sums[c], inverse));
}

template <int Chunks, typename Q, typename KV>
void run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Shapes& s, at::Tensor& out) {
  const int group = static_cast<int>(s.heads / s.kv_heads);
  const int64_t batch = q.size(0), heads = batch * s.kv_heads, head_dim = 16 * Chunks;
  // above kSerialWork, enough spans of keys a head that every thread has two tasks or more
  const bool threaded = heads * s.keys * group >= kSerialWork;
  const int64_t n_spans = threaded ? std::min<int64_t>(s.keys, (2 * at::get_num_threads() + heads - 1) / heads) : 1;
  const int64_t span_keys = (s.keys + n_spans - 1) / n_spans;
  std::vector<float> partial_sums(heads * n_spans * group * head_dim);
  std::vector<Partial> partials(heads * n_spans * group);  // (head, span, query of the group)
  for (size_t i = 0; i < partials.size(); ++i) partials[i].sums = partial_sums.data() + i * head_dim;
  const Q* q_data = reinterpret_cast<const Q*>(q.const_data_ptr());
  const KV* k_data = reinterpret_cast<const KV*>(k.const_data_ptr());
  const KV* v_data = reinterpret_cast<const KV*>(v.const_data_ptr());
  at::parallel_for(0, heads * n_spans, threaded ? 1 : heads * n_spans, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(group * span_keys);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t head = task / n_spans, span = task % n_spans;
      const int64_t b = head / s.kv_heads, h = head % s.kv_heads;
      const int64_t first = span * span_keys, last = std::min(s.keys, first + span_keys);
      one_span<Chunks>(q_data + b * q.stride(0) + h * group * q.stride(1), q.stride(1),
                       k_data + b * k.stride(0) + h * k.stride(1), v_data + b * v.stride(0) + h * v.stride(1),
                       k.stride(2), s.mask == nullptr ? nullptr : s.mask + b * s.mask_stride, first, last, s.scale,
                       group, scores.data(), partials.data() + task * group);
    }
  });
  Q* out_data = reinterpret_cast<Q*>(out.data_ptr());
  for (int64_t head = 0; head < heads; ++head) {
    const int64_t b = head / s.kv_heads, first_query = head % s.kv_heads * group;
    for (int g = 0; g < group; ++g)
      combine<Chunks>(partials.data() + head * n_spans * group + g, static_cast<int>(n_spans), group,
                      out_data + b * out.stride(0) + (first_query + g) * out.stride(1));
  }
}

template <typename Q, typename KV>
void run_for_head_size(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Shapes& s, at::Tensor& out) {
  switch (q.size(3)) {
    case 32: return run<2, Q, KV>(q, k, v, s, out);
    case 64: return run<4, Q, KV>(q, k, v, s, out);
    case 128: return run<8, Q, KV>(q, k, v, s, out);
    default: TORCH_CHECK(false, "one_query_attention: head size must be 32, 64 or 128, not ", q.size(3));
  }
}

// q: (B, H, 1, D), k and v: (B, H_kv, S, D), all float32, all bfloat16, or q float32 with k and v
// float16; each row contiguous, and k and v with the same strides. `mask`: none, or bool
// (B, 1, 1, S), true where the query may see a key. Returns (B, H, 1, D) in q's dtype.
at::Tensor one_query_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const std::optional<at::Tensor>& mask, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && k.sizes() == v.sizes() && k.strides() == v.strides() && q.size(2) == 1,
              "one_query_attention: q must be (B, H, 1, D), k and v (B, H_kv, S, D) of one shape and layout");
  const bool float16_cache = q.scalar_type() == at::kFloat && k.scalar_type() == at::kHalf;
  TORCH_CHECK(k.scalar_type() == v.scalar_type() && (q.scalar_type() == k.scalar_type() || float16_cache) &&
              (q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16),
              "one_query_attention: q, k and v must all be float32 or all bfloat16, or q float32 with k and v float16");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1, "one_query_attention: rows must be contiguous");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(3) == k.size(3) && q.size(1) % k.size(1) == 0 &&
              q.size(1) / k.size(1) <= kMaxGroup && k.size(2) > 0,
              "one_query_attention: q ", q.sizes(), " does not fit keys ", k.sizes());
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK(m.scalar_type() == at::kBool && m.dim() == 4 && m.size(0) == q.size(0) && m.size(1) == 1 &&
                m.size(2) == 1 && m.size(3) == k.size(2) && m.stride(3) == 1,
                "one_query_attention: the mask must be bool (B, 1, 1, S), each row contiguous; got ", m.sizes());
  }
  const Shapes s{q.size(1), k.size(1), k.size(2), static_cast<float>(scale),
                 mask.has_value() ? mask->const_data_ptr<bool>() : nullptr, mask.has_value() ? mask->stride(0) : 0};
  at::Tensor out = at::empty({q.size(0), 1, q.size(1), q.size(3)}, q.options()).transpose(1, 2);
  if (float16_cache) {
    run_for_head_size<float, c10::Half>(q, k, v, s, out);
  } else if (q.scalar_type() == at::kFloat) {
    run_for_head_size<float, float>(q, k, v, s, out);
  } else {
    run_for_head_size<uint16_t, uint16_t>(q, k, v, s, out);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nexttoken, m) {
  m.def("one_query_attention(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(nexttoken, CPU, m) {
  m.impl("one_query_attention", &one_query_attention);
}
