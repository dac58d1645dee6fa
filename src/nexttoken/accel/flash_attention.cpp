// Attention of a prompt's queries in bfloat16 or float32, a block of keys at a time with a running
// softmax (Dao et al., 2022, "FlashAttention"), so the scores of a block never leave the cache.
//
// bfloat16 products are vdpbf16ps: a broadcast pair of bfloat16 values times 16 pairs gives 16
// float32 sums. So keys are first packed so that one register holds 16 keys' values at the same
// pair of dimensions, and values so that one register holds 16 dimensions of the same pair of keys.
// float32 products are fused multiply-adds of one broadcast value: keys are packed so that one
// register holds 16 keys' values at the same dimension, and values keep their rows.
// Scores, the softmax and the output's sums stay in float32; in bfloat16 the softmax weights are
// rounded to bfloat16 for their product with the values, as PyTorch's own bfloat16 kernel does.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <type_traits>

#include "vector_math.h"

namespace {

constexpr int kQueries = 32;  // query rows per task
constexpr int kKeys = 32;     // keys per block: two registers of 16
constexpr int kScoreRows = 8; // query rows whose scores are computed together (16 registers)

inline __m512bh as_pairs(__m512i v) { return (__m512bh)v; }
inline __m512i broadcast_pair(const uint16_t* pair) {
  return _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(pair));
}

// T: the element, uint16_t (bfloat16 bits) or float
template <typename T>
constexpr bool is_float = std::is_same_v<T, float>;
template <typename T>
using Scalar = std::conditional_t<is_float<T>, float, at::BFloat16>;  // what the tensors hold
template <typename T>
const T* elements(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.const_data_ptr<Scalar<T>>());
}

struct Shapes {
  int64_t batch, heads, kv_heads, queries, keys, key_blocks;
  int64_t past;  // keys before the first query: causal query i sees keys up to past + i
  bool causal;
  float scale;
  const bool* mask;  // null, or whether query t of row b may see key j: mask[b * batch_step + t * query_step + j]
  int64_t mask_batch_step, mask_query_step;
};

// bit j: whether the mask lets `query` of row b see key block * 32 + j (0 past the last key)
uint32_t allowed_keys(const Shapes& s, int64_t b, int64_t query, int64_t block) {
  const int64_t start = block * kKeys;
  const int64_t count = std::min<int64_t>(kKeys, s.keys - start);
  const bool* row = s.mask + b * s.mask_batch_step + query * s.mask_query_step + start;
  const __m256i bytes = _mm256_maskz_loadu_epi8(count == kKeys ? 0xffffffffu : (1u << count) - 1, row);
  return _mm256_test_epi8_mask(bytes, bytes);
}

// float32: (B, H_kv, S, D) keys -> (B, H_kv, S/32, D, 32): block, dimension, key; values ->
// (B, H_kv, S/32, 32, D), their rows. Keys and values past S are zero (their scores are masked,
// their weights are 0).
void pack_keys_values(const at::Tensor& k, const at::Tensor& v, const Shapes& s, int64_t d, float* keys,
                      float* values) {
  const float* k_data = k.const_data_ptr<float>();
  const float* v_data = v.const_data_ptr<float>();
  const int64_t block_size = kKeys * d;
  at::parallel_for(0, s.batch * s.kv_heads * s.key_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t block = task % s.key_blocks, head = task / s.key_blocks % s.kv_heads;
      const int64_t b = task / s.key_blocks / s.kv_heads;
      const int64_t present = std::min<int64_t>(kKeys, s.keys - block * kKeys);  // the rest stay zero
      for (int j = 0; j < present; ++j) {
        const int64_t key = block * kKeys + j;
        const float* k_row = k_data + b * k.stride(0) + head * k.stride(1) + key * k.stride(2);
        for (int64_t i = 0; i < d; ++i) keys[task * block_size + i * kKeys + j] = k_row[i];
        const float* v_row = v_data + b * v.stride(0) + head * v.stride(1) + key * v.stride(2);
        std::copy_n(v_row, d, values + task * block_size + j * d);
      }
    }
  });
}

// bfloat16: (B, H_kv, S, D) keys -> (B, H_kv, S/32, D/2, 32, 2): block, dimension pair, key, the
// pair's two values; values -> (B, H_kv, S/32, 16, D, 2): block, key pair, dimension, the pair's two
// keys. Keys and values past S are zero.
void pack_keys_values(const at::Tensor& k, const at::Tensor& v, const Shapes& s, int64_t d, uint16_t* keys,
                      uint16_t* values) {
  const uint16_t* k_data = elements<uint16_t>(k);
  const uint16_t* v_data = elements<uint16_t>(v);
  const int64_t block_size = kKeys * d;
  __m512i first_half, second_half;  // where vpermt2w finds the words of a's and b's first and last 16 values
  alignas(64) uint16_t first_index[32], second_index[32];
  for (int i = 0; i < 32; ++i) {
    first_index[i] = (i % 2) * 32 + i / 2;
    second_index[i] = first_index[i] + 16;
  }
  first_half = _mm512_load_si512(first_index);
  second_half = _mm512_load_si512(second_index);
  at::parallel_for(0, s.batch * s.kv_heads * s.key_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t block = task % s.key_blocks, head = task / s.key_blocks % s.kv_heads;
      const int64_t b = task / s.key_blocks / s.kv_heads;
      auto* key_pairs = reinterpret_cast<uint32_t*>(keys + task * block_size);
      uint16_t* value_out = values + task * block_size;
      const int64_t present = std::min<int64_t>(kKeys, s.keys - block * kKeys);  // the rest stay zero
      for (int j = 0; j < present; ++j) {
        const int64_t key = block * kKeys + j;
        const uint16_t* k_values = k_data + b * k.stride(0) + head * k.stride(1) + key * k.stride(2);
        const auto* k_row = reinterpret_cast<const uint32_t*>(k_values);
        for (int pair = 0; pair < d / 2; ++pair) key_pairs[pair * kKeys + j] = k_row[pair];
      }
      for (int j = 0; j < present; j += 2) {
        const int64_t key = block * kKeys + j;
        const uint16_t* a = v_data + b * v.stride(0) + head * v.stride(1) + key * v.stride(2);
        const uint16_t* next = a + v.stride(2);
        for (int r = 0; r < d / 32; ++r) {
          const __m512i a_words = _mm512_loadu_si512(a + r * 32);
          const __m512i b_words = j + 1 < present ? _mm512_loadu_si512(next + r * 32) : _mm512_setzero_si512();
          uint16_t* out = value_out + (j / 2) * d * 2 + r * 64;
          _mm512_storeu_si512(out, _mm512_permutex2var_epi16(a_words, first_half, b_words));
          _mm512_storeu_si512(out + 32, _mm512_permutex2var_epi16(a_words, second_half, b_words));
        }
      }
    }
  });
}

// scores[i][j] = scale * q[i] . key j of the block, for kScoreRows query rows and the block's 32 keys
template <typename T, int D>
void block_scores(const T* q, const T* keys, float scale, float* scores) {
  __m512 sums[kScoreRows][2];
  for (auto& row : sums) row[0] = row[1] = _mm512_setzero_ps();
  if constexpr (is_float<T>) {
    for (int d = 0; d < D; ++d) {
      const __m512 low = _mm512_loadu_ps(keys + d * kKeys), high = _mm512_loadu_ps(keys + d * kKeys + 16);
      for (int i = 0; i < kScoreRows; ++i) {
        const __m512 q_value = _mm512_set1_ps(q[i * D + d]);
        sums[i][0] = _mm512_fmadd_ps(q_value, low, sums[i][0]);
        sums[i][1] = _mm512_fmadd_ps(q_value, high, sums[i][1]);
      }
    }
  } else {
    for (int pair = 0; pair < D / 2; ++pair) {
      const __m512i low = _mm512_loadu_si512(keys + pair * kKeys * 2);
      const __m512i high = _mm512_loadu_si512(keys + pair * kKeys * 2 + 32);
      for (int i = 0; i < kScoreRows; ++i) {
        const __m512i q_pair = broadcast_pair(q + i * D + pair * 2);
        sums[i][0] = _mm512_dpbf16_ps(sums[i][0], as_pairs(q_pair), as_pairs(low));
        sums[i][1] = _mm512_dpbf16_ps(sums[i][1], as_pairs(q_pair), as_pairs(high));
      }
    }
  }
  const __m512 scale_v = _mm512_set1_ps(scale);
  for (int i = 0; i < kScoreRows; ++i) {
    _mm512_storeu_ps(scores + i * kKeys, _mm512_mul_ps(sums[i][0], scale_v));
    _mm512_storeu_ps(scores + i * kKeys + 16, _mm512_mul_ps(sums[i][1], scale_v));
  }
}

// out[i] = carry[i] * out[i] + weights[i] @ block values, for Rows rows (D / 16 registers each)
template <typename T, int D, int Rows>
void add_weighted_values(const T* weights, const T* values, const float* carry, float* out) {
  constexpr int V = D / 16;
  __m512 sums[Rows][V];
  for (int i = 0; i < Rows; ++i) {
    const __m512 c = _mm512_set1_ps(carry[i]);
    for (int r = 0; r < V; ++r) sums[i][r] = _mm512_mul_ps(c, _mm512_loadu_ps(out + i * D + r * 16));
  }
  if constexpr (is_float<T>) {
    for (int j = 0; j < kKeys; ++j) {
      __m512 value[V];
      for (int r = 0; r < V; ++r) value[r] = _mm512_loadu_ps(values + j * D + r * 16);
      for (int i = 0; i < Rows; ++i) {
        const __m512 w = _mm512_set1_ps(weights[i * kKeys + j]);
        for (int r = 0; r < V; ++r) sums[i][r] = _mm512_fmadd_ps(w, value[r], sums[i][r]);
      }
    }
  } else {
    for (int pair = 0; pair < kKeys / 2; ++pair) {
      __m512i value_pairs[V];
      for (int r = 0; r < V; ++r) value_pairs[r] = _mm512_loadu_si512(values + pair * D * 2 + r * 32);
      for (int i = 0; i < Rows; ++i) {
        const __m512i w_pair = broadcast_pair(weights + i * kKeys + pair * 2);
        for (int r = 0; r < V; ++r) {
          sums[i][r] = _mm512_dpbf16_ps(sums[i][r], as_pairs(w_pair), as_pairs(value_pairs[r]));
        }
      }
    }
  }
  for (int i = 0; i < Rows; ++i) {
    for (int r = 0; r < V; ++r) _mm512_storeu_ps(out + i * D + r * 16, sums[i][r]);
  }
}

// One task: kQueries query rows of one head, against every key block they may see.
template <typename T, int D>
void attend(const at::Tensor& q, const Shapes& s, const T* keys, const T* values, int64_t b, int64_t head,
            int64_t first, T* out) {
  alignas(64) T q_rows[kQueries * D] = {};  // rows past the last query stay zero
  alignas(64) float scores[kQueries * kKeys];
  alignas(64) T weights[kQueries * kKeys];
  alignas(64) float sums[kQueries * D] = {};
  float running_max[kQueries], carry[kQueries];
  __m512 totals[kQueries];  // each row's softmax denominator, in 16 partial sums: added up once, at the end
  std::fill(totals, totals + kQueries, _mm512_setzero_ps());
  std::fill(running_max, running_max + kQueries, -std::numeric_limits<float>::infinity());

  const int rows = static_cast<int>(std::min<int64_t>(kQueries, s.queries - first));
  const int active = (rows + kScoreRows - 1) / kScoreRows * kScoreRows;  // rows computed: whole tiles
  const T* q_data = elements<T>(q);
  for (int i = 0; i < rows; ++i) {
    std::copy_n(q_data + b * q.stride(0) + head * q.stride(1) + (first + i) * q.stride(2), D, q_rows + i * D);
  }
  const int64_t kv_head = head / (s.heads / s.kv_heads);
  const int64_t last_key = s.causal ? std::min(s.keys, s.past + first + rows) : s.keys;  // exclusive
  const int64_t blocks = (last_key + kKeys - 1) / kKeys;
  const T* head_keys = keys + (b * s.kv_heads + kv_head) * s.key_blocks * kKeys * D;
  const T* head_values = values + (b * s.kv_heads + kv_head) * s.key_blocks * kKeys * D;
  const __m512 minus_infinity = _mm512_set1_ps(-std::numeric_limits<float>::infinity());

  for (int64_t block = 0; block < blocks; ++block) {
    for (int i = 0; i < active; i += kScoreRows) {
      block_scores<T, D>(q_rows + i * D, head_keys + block * kKeys * D, s.scale, scores + i * kKeys);
    }
    for (int i = 0; i < active; ++i) {
      const int64_t seen = s.causal ? std::min(s.keys, s.past + first + i + 1) : s.keys;  // keys row i sees
      const int64_t visible = std::clamp<int64_t>(seen - block * kKeys, 0, kKeys);
      uint32_t keep = visible == kKeys ? 0xffffffffu : (1u << visible) - 1;
      if (s.mask != nullptr) keep &= allowed_keys(s, b, std::min<int64_t>(first + i, s.queries - 1), block);
      __m512 low = _mm512_mask_mov_ps(minus_infinity, keep & 0xffff, _mm512_loadu_ps(scores + i * kKeys));
      __m512 high = _mm512_mask_mov_ps(minus_infinity, keep >> 16, _mm512_loadu_ps(scores + i * kKeys + 16));
      const float block_max = _mm512_reduce_max_ps(_mm512_max_ps(low, high));
      const float new_max = std::max(running_max[i], block_max);
      if (new_max == -std::numeric_limits<float>::infinity()) {  // no key seen yet: all padding so far
        carry[i] = 1.0f;
        std::fill_n(weights + i * kKeys, kKeys, T{});
        continue;
      }
      carry[i] = new_max == running_max[i] ? 1.0f : std::exp(running_max[i] - new_max);
      running_max[i] = new_max;
      low = vector_exp(_mm512_sub_ps(low, _mm512_set1_ps(new_max)));
      high = vector_exp(_mm512_sub_ps(high, _mm512_set1_ps(new_max)));
      totals[i] = _mm512_fmadd_ps(totals[i], _mm512_set1_ps(carry[i]), _mm512_add_ps(low, high));
      if constexpr (is_float<T>) {
        _mm512_storeu_ps(weights + i * kKeys, low);
        _mm512_storeu_ps(weights + i * kKeys + 16, high);
      } else {
        _mm512_storeu_si512(weights + i * kKeys, (__m512i)_mm512_cvtne2ps_pbh(high, low));
      }
    }
    constexpr int rows_per_call = 16 / (D / 16);  // 16 registers of sums; divides kScoreRows
    for (int i = 0; i < active; i += rows_per_call) {
      add_weighted_values<T, D, rows_per_call>(weights + i * kKeys, head_values + block * kKeys * D, carry + i,
                                               sums + i * D);
    }
  }
  for (int i = 0; i < rows; ++i) {
    const __m512 inverse = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(totals[i]));
    T* row = out + ((b * s.queries + first + i) * s.heads + head) * D;
    for (int r = 0; r < D / 16; ++r) store16(row + r * 16, _mm512_mul_ps(load16(sums + i * D + r * 16), inverse));
  }
}

template <typename T, int D>
void run(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Shapes& s, at::Tensor& out) {
  const at::Tensor keys = at::zeros({s.batch, s.kv_heads, s.key_blocks, kKeys * D}, k.options());
  const at::Tensor values = at::zeros({s.batch, s.kv_heads, s.key_blocks, kKeys * D}, k.options());
  T* key_data = reinterpret_cast<T*>(keys.data_ptr<Scalar<T>>());
  T* value_data = reinterpret_cast<T*>(values.data_ptr<Scalar<T>>());
  pack_keys_values(k, v, s, D, key_data, value_data);
  const int64_t query_blocks = (s.queries + kQueries - 1) / kQueries;
  T* out_data = reinterpret_cast<T*>(out.data_ptr<Scalar<T>>());
  at::parallel_for(0, s.batch * s.heads * query_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t block = task % query_blocks, head = task / query_blocks % s.heads;
      attend<T, D>(q, s, key_data, value_data, task / query_blocks / s.heads, head, block * kQueries, out_data);
    }
  });
}

template <typename T>
void run_for_head_size(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const Shapes& s,
                       at::Tensor& out) {
  switch (q.size(3)) {
    case 32: return run<T, 32>(q, k, v, s, out);
    case 64: return run<T, 64>(q, k, v, s, out);
    case 128: return run<T, 128>(q, k, v, s, out);
    default: TORCH_CHECK(false, "flash_attention: head size must be 32, 64 or 128, not ", q.size(3));
  }
}

// q: (B, H, T, D), k and v: (B, H_kv, S, D), all bfloat16 or all float32, each row contiguous; S >= T. With `causal`,
// the queries are the last T of the S positions. `mask`, as SDPA takes a bool one: (B, 1, T or 1, S),
// true where a query may see a key (with `causal` too, both must allow it). Returns (B, H, T, D), a
// view of a (B, T, H, D) tensor.
at::Tensor flash_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           const std::optional<at::Tensor>& mask, bool causal, double scale) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4 && k.sizes() == v.sizes(),
              "flash_attention: q, k and v must be (B, H, T, D), k and v of one shape");
  TORCH_CHECK((q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kFloat) &&
                  k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(),
              "flash_attention: q, k and v must be all bfloat16 or all float32");
  TORCH_CHECK(q.stride(3) == 1 && k.stride(3) == 1 && v.stride(3) == 1, "flash_attention: rows must be contiguous");
  const int64_t head_dim = q.size(3);
  TORCH_CHECK(q.size(0) == k.size(0) && k.size(3) == head_dim && q.size(1) % k.size(1) == 0 && k.size(2) >= q.size(2),
              "flash_attention: q ", q.sizes(), " does not fit keys ", k.sizes());
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK(m.scalar_type() == at::kBool && m.dim() == 4 && m.size(0) == q.size(0) && m.size(1) == 1 &&
                (m.size(2) == 1 || m.size(2) == q.size(2)) && m.size(3) == k.size(2) && m.stride(3) == 1,
                "flash_attention: the mask must be bool (B, 1, T or 1, S), each row contiguous; got ", m.sizes());
  }
  const bool* mask_data = mask.has_value() ? mask->const_data_ptr<bool>() : nullptr;
  const int64_t mask_query_step = mask.has_value() && mask->size(2) > 1 ? mask->stride(2) : 0;
  const Shapes s{q.size(0), q.size(1), k.size(1), q.size(2), k.size(2), (k.size(2) + kKeys - 1) / kKeys,
                 k.size(2) - q.size(2), causal, static_cast<float>(scale), mask_data,
                 mask.has_value() ? mask->stride(0) : 0, mask_query_step};
  at::Tensor out = at::empty({s.batch, s.queries, s.heads, head_dim}, q.options());
  if (q.scalar_type() == at::kFloat) {
    run_for_head_size<float>(q, k, v, s, out);
  } else {
    run_for_head_size<uint16_t>(q, k, v, s, out);
  }
  return out.transpose(1, 2);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nexttoken, m) {
  m.def("flash_attention(Tensor q, Tensor k, Tensor v, Tensor? mask, bool causal, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(nexttoken, CPU, m) {
  m.impl("flash_attention", &flash_attention);
}
