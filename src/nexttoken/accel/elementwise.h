// The per-value steps between a layer's products, each one pass over memory in float32 whatever the
// tensors' dtype (float32 or bfloat16): RMSNorm, SwiGLU's silu(gate) * up (GeGLU's, float32 only,
// for the one-call decode step), and the rotation of
// queries and keys by their positions. PyTorch runs each as several operations, each reading and
// writing the whole tensor, and widening bfloat16 each time.
// Results are rounded where PyTorch's operations round them: a bfloat16 silu(gate) is rounded
// before the product with up, as in transformers' bfloat16 Llama. Rounded once instead, SmolLM2's
// bfloat16 top-1 agreement with float32 fell from 97.6 to 97.0 % over a 2,000-token text.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "vector_math.h"

// values as a tensor of X holds them: rounded to bfloat16 where X is (uint16_t)
template <typename X> __m512 rounded_as(__m512 values) {
  if constexpr (std::is_same_v<X, float>) return values;
  else return round_to_bfloat16(values);
}

// out = in / sqrt(mean(in^2) + eps) * weight, for one row of n values
template <typename X, typename W>
inline void rms_norm_row(const X* in, const W* weight, int64_t n, double eps, X* out) {
  __m512 squares = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 v = load16(in + i, static_cast<int>(std::min<int64_t>(16, n - i)));
    squares = _mm512_fmadd_ps(v, v, squares);
  }
  const float mean = _mm512_reduce_add_ps(squares) / static_cast<float>(n);
  const __m512 inverse_rms = _mm512_set1_ps(1.0f / std::sqrt(mean + static_cast<float>(eps)));
  for (int64_t i = 0; i < n; i += 16) {
    const int count = static_cast<int>(std::min<int64_t>(16, n - i));
    const __m512 normed = _mm512_mul_ps(load16(in + i, count), inverse_rms);
    store16(out + i, _mm512_mul_ps(normed, load16(weight + i, count)), count);
  }
}

// out = silu(gate) * up, for one row: n gate values, then n up values
template <typename X>
inline void silu_mul_row(const X* gate_up, int64_t n, X* out) {
  for (int64_t i = 0; i < n; i += 16) {
    const int count = static_cast<int>(std::min<int64_t>(16, n - i));
    const __m512 gate = load16(gate_up + i, count);
    const __m512 up = load16(gate_up + n + i, count);
    const __m512 exp_minus = vector_exp(_mm512_sub_ps(_mm512_setzero_ps(), gate));
    const __m512 silu = rounded_as<X>(_mm512_div_ps(gate, _mm512_add_ps(_mm512_set1_ps(1.0f), exp_minus)));
    store16(out + i, _mm512_mul_ps(silu, up), count);
  }
}

// out = gelu(gate) * up with GELU's tanh form (Gemma's GeGLU), for one row of float32: n gate values,
// then n up values. 0.5 x (1 + tanh(u)) is x / (1 + exp(-2u)), u = sqrt(2 / pi) (x + 0.044715 x^3):
// one exponential, as SiLU takes; PyTorch's tanh rounds otherwise, so the two agree to float32's
// last bits, not bit for bit.
inline void gelu_tanh_mul_row(const float* gate_up, int64_t n, float* out) {
  const __m512 minus_two_root = _mm512_set1_ps(-2.0f * 0.7978845608028654f), cubic = _mm512_set1_ps(0.044715f);
  for (int64_t i = 0; i < n; i += 16) {
    const int count = static_cast<int>(std::min<int64_t>(16, n - i));
    const __m512 gate = load16(gate_up + i, count);
    const __m512 up = load16(gate_up + n + i, count);
    const __m512 inner = _mm512_fmadd_ps(_mm512_mul_ps(cubic, gate), _mm512_mul_ps(gate, gate), gate);
    const __m512 exp_minus = vector_exp(_mm512_mul_ps(minus_two_root, inner));
    const __m512 gelu = _mm512_div_ps(gate, _mm512_add_ps(_mm512_set1_ps(1.0f), exp_minus));
    store16(out + i, _mm512_mul_ps(gelu, up), count);
  }
}

// One row of d values with each (i, i + d/2) pair rotated by its position's angle. Each product
// and the sum are rounded as PyTorch rounds x * cos + rotate_half(x) * sin, three operations in
// x's dtype.
template <typename X>
inline void rotate_row(const X* in, const X* cos_row, const X* sin_row, int64_t d, X* out) {
  const int64_t half = d / 2;
  for (int64_t i = 0; i < half; i += 16) {
    const int count = static_cast<int>(std::min<int64_t>(16, half - i));
    const __m512 first = load16(in + i, count), second = load16(in + half + i, count);
    const __m512 cos_first = load16(cos_row + i, count), cos_second = load16(cos_row + half + i, count);
    const __m512 sin_first = load16(sin_row + i, count), sin_second = load16(sin_row + half + i, count);
    const __m512 new_first = _mm512_sub_ps(rounded_as<X>(_mm512_mul_ps(first, cos_first)),
                                           rounded_as<X>(_mm512_mul_ps(second, sin_first)));
    const __m512 new_second = _mm512_add_ps(rounded_as<X>(_mm512_mul_ps(second, cos_second)),
                                            rounded_as<X>(_mm512_mul_ps(first, sin_second)));
    store16(out + i, new_first, count);
    store16(out + half + i, new_second, count);
  }
}
