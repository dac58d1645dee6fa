// Attention of one query per row over the cached keys and values: a decode step (the method:
// one_query.h).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "one_query.h"

namespace {

struct Shapes {
  int64_t heads, kv_heads, keys;
  float scale;
  const bool* mask;     // (B, S) rows `mask_stride` apart, or null
  int64_t mask_stride;
};

template <int Chunks, typename Q, typename KV>
void run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Shapes& s, at::Tensor& out) {
  const int group = static_cast<int>(s.heads / s.kv_heads);
  const int64_t batch = q.size(0), heads = batch * s.kv_heads, head_dim = 16 * Chunks;
  const int64_t n_spans = span_count(heads, s.keys, group, at::get_num_threads());
  const int64_t span_keys = (s.keys + n_spans - 1) / n_spans;
  std::vector<float> partial_sums(heads * n_spans * group * head_dim);
  std::vector<Partial> partials(heads * n_spans * group);  // (head, span, query of the group)
  for (size_t i = 0; i < partials.size(); ++i) partials[i].sums = partial_sums.data() + i * head_dim;
  const Q* q_data = reinterpret_cast<const Q*>(q.const_data_ptr());
  const KV* k_data = reinterpret_cast<const KV*>(k.const_data_ptr());
  const KV* v_data = reinterpret_cast<const KV*>(v.const_data_ptr());
  const bool shared = threaded(heads, s.keys, group);
  at::parallel_for(0, heads * n_spans, shared ? 1 : heads * n_spans, [&](int64_t begin, int64_t end) {
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
    case 256: return run<16, Q, KV>(q, k, v, s, out);
    default: TORCH_CHECK(false, "one_query_attention: head size must be 32, 64, 128 or 256, not ", q.size(3));
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
