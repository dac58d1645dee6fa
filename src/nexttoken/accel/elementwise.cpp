// The per-value steps between a layer's products (elementwise.h), over every row of a tensor.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "elementwise.h"

namespace {

constexpr int64_t kValuesPerTask = 16384;  // below this much work, a call stays on one thread

int64_t rows_per_task(int64_t row_size) { return std::max<int64_t>(1, kValuesPerTask / row_size); }

// bfloat16 tensors are read through their bits
template <typename T> const auto* values_of(const at::Tensor& t) {
  if constexpr (std::is_same_v<T, float>) return t.const_data_ptr<float>();
  else return reinterpret_cast<const uint16_t*>(t.const_data_ptr<at::BFloat16>());
}
template <typename T> auto* values_of(at::Tensor& t) {
  if constexpr (std::is_same_v<T, float>) return t.data_ptr<float>();
  else return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>());
}

template <typename X, typename W>
void rms_norm_rows(const at::Tensor& x, const at::Tensor& weight, double eps, at::Tensor& out) {
  const int64_t n = x.size(-1), rows = x.numel() / n;
  const auto* xs = values_of<X>(x);
  const auto* ws = values_of<W>(weight);
  auto* ys = values_of<X>(out);
  at::parallel_for(0, rows, rows_per_task(n), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) rms_norm_row(xs + row * n, ws, n, eps, ys + row * n);
  });
}

template <typename X>
void silu_mul_rows(const at::Tensor& gate_up, at::Tensor& out) {
  const int64_t n = out.size(-1), rows = out.numel() / n;
  const auto* in = values_of<X>(gate_up);
  auto* ys = values_of<X>(out);
  at::parallel_for(0, rows, rows_per_task(n), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) silu_mul_row(in + row * 2 * n, n, ys + row * n);
  });
}

template <typename X>
void rotate_rows(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& out) {
  const int64_t heads = x.size(1), positions = x.size(2), d = x.size(3);
  const auto* xs = values_of<X>(x);
  const auto* coss = values_of<X>(cos);
  const auto* sins = values_of<X>(sin);
  auto* ys = values_of<X>(out);
  at::parallel_for(0, x.size(0) * heads * positions, rows_per_task(d), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / (heads * positions), h = row / positions % heads, t = row % positions;
      const auto* in = xs + b * x.stride(0) + h * x.stride(1) + t * x.stride(2);
      rotate_row(in, coss + (b * positions + t) * d, sins + (b * positions + t) * d, d, ys + row * d);
    }
  });
}

bool is_float_or_bfloat16(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16;
}

// x: (..., N); weight: (N). Returns x / sqrt(mean(x^2) + eps) * weight, in x's dtype.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  TORCH_CHECK(is_float_or_bfloat16(x) && is_float_or_bfloat16(weight),
              "rms_norm: x and weight must be float32 or bfloat16");
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == x.size(-1),
              "rms_norm: weight of ", weight.sizes(), " for x of ", x.sizes());
  const at::Tensor input = x.contiguous(), w = weight.contiguous();
  at::Tensor out = at::empty_like(input);
  const bool x32 = x.scalar_type() == at::kFloat, w32 = weight.scalar_type() == at::kFloat;
  if (x32 && w32) rms_norm_rows<float, float>(input, w, eps, out);
  else if (x32) rms_norm_rows<float, uint16_t>(input, w, eps, out);
  else if (w32) rms_norm_rows<uint16_t, float>(input, w, eps, out);
  else rms_norm_rows<uint16_t, uint16_t>(input, w, eps, out);
  return out;
}

// gate_up: (..., 2F), the gate's F values then up's. Returns silu(gate) * up: (..., F).
at::Tensor silu_mul(const at::Tensor& gate_up) {
  TORCH_CHECK(is_float_or_bfloat16(gate_up) && gate_up.size(-1) % 2 == 0,
              "silu_mul: gate_up must be float32 or bfloat16, of an even size");
  const at::Tensor input = gate_up.contiguous();
  std::vector<int64_t> shape = input.sizes().vec();
  shape.back() /= 2;
  at::Tensor out = at::empty(shape, input.options());
  if (input.scalar_type() == at::kFloat) silu_mul_rows<float>(input, out);
  else silu_mul_rows<uint16_t>(input, out);
  return out;
}

// x: (B, H, T, D), each row contiguous; cos, sin: (B, 1, T, D) in x's dtype. Returns the rotated x,
// (B, H, T, D) contiguous.
at::Tensor rotary(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  TORCH_CHECK(is_float_or_bfloat16(x) && cos.scalar_type() == x.scalar_type() && sin.scalar_type() == x.scalar_type(),
              "rotary: x must be float32 or bfloat16, and cos and sin of its dtype");
  TORCH_CHECK(x.dim() == 4 && x.stride(3) == 1 && x.size(3) % 2 == 0,
              "rotary: x must be (B, H, T, D), rows contiguous");
  TORCH_CHECK(cos.sizes() == sin.sizes() && cos.dim() == 4 && cos.size(0) == x.size(0) && cos.size(1) == 1 &&
              cos.size(2) == x.size(2) && cos.size(3) == x.size(3),
              "rotary: cos and sin of ", cos.sizes(), " for x of ", x.sizes());
  const at::Tensor c = cos.contiguous(), s = sin.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  if (x.scalar_type() == at::kFloat) rotate_rows<float>(x, c, s, out);
  else rotate_rows<uint16_t>(x, c, s, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nexttoken, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  m.def("silu_mul(Tensor gate_up) -> Tensor");
  m.def("rotary(Tensor x, Tensor cos, Tensor sin) -> Tensor");
}

TORCH_LIBRARY_IMPL(nexttoken, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("silu_mul", &silu_mul);
  m.impl("rotary", &rotary);
}
