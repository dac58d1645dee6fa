// y = x @ w^T for a few rows of x (the output head of a decode step), with w kept in float16:
// each weight row is widened to float32 sixteen values at a time (vcvtph2ps) and multiplied by
// x in float32, so x is never rounded. Each thread reads one contiguous run of rows.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <immintrin.h>

namespace {

constexpr int64_t kRowsPerTask = 64;

float row_dot(const uint16_t* w, const float* x, int64_t k) {
  __m512 even = _mm512_setzero_ps(), odd = _mm512_setzero_ps();  // two chains of fused adds
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    even = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i))),
                           _mm512_loadu_ps(x + i), even);
    odd = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i + 16))),
                          _mm512_loadu_ps(x + i + 16), odd);
  }
  float sum = _mm512_reduce_add_ps(_mm512_add_ps(even, odd));
  for (; i < k; ++i) sum += _cvtsh_ss(w[i]) * x[i];
  return sum;
}

// x: (M, K) float32 or bfloat16; w: (N, K) float16. Returns (M, N) in x's dtype.
at::Tensor half_matmul(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && w.is_contiguous() && w.scalar_type() == at::kHalf,
              "half_matmul: x must be a matrix and w a contiguous float16 matrix");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "half_matmul: x must be float32 or bfloat16");
  TORCH_CHECK(x.size(1) == w.size(1), "half_matmul: x has ", x.size(1), " inputs, the weight ", w.size(1));
  const at::Tensor x32 = x.to(at::kFloat).contiguous();
  const int64_t rows = x32.size(0), k = x32.size(1), n = w.size(0);
  at::Tensor result = at::empty({rows, n}, x32.options());
  const float* xs = x32.const_data_ptr<float>();
  const uint16_t* weights = reinterpret_cast<const uint16_t*>(w.const_data_ptr<at::Half>());
  float* y = result.data_ptr<float>();
  at::parallel_for(0, n, kRowsPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t m = 0; m < rows; ++m) y[m * n + r] = row_dot(weights + r * k, xs + m * k, k);
    }
  });
  return x.scalar_type() == at::kFloat ? result : result.to(at::kBFloat16);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nexttoken, m) {
  m.def("half_matmul(Tensor x, Tensor w) -> Tensor");
}

TORCH_LIBRARY_IMPL(nexttoken, CPU, m) {
  m.impl("half_matmul", &half_matmul);
}
