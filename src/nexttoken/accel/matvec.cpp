// y = x @ w^T for a few rows of x (a decode step), with w kept in float32, float16 or bfloat16: each
// weight row is read sixteen values at a time, widened to float32 (vcvtph2ps, or a shift for
// bfloat16) and multiplied by up to 8 rows of x in float32, so x is never rounded. Each thread reads
// one contiguous run of rows.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "vector_math.h"

namespace {

constexpr int64_t kRowsPerTask = 64;
constexpr int kMaxTile = 8;  // rows of x that share one widening of each weight row
// how far ahead of its reads each thread asks for weights (_mm_prefetch): the hardware prefetcher
// starts over at each of a decode step's ~120 products; SmolLM2's bfloat16 products, their weights
// from memory, 5.42 -> 5.10 ms (medians of three alternating runs; the int4 kernel gained nothing)
constexpr int64_t kPrefetchBytes = 4096;

// out[m * out_stride] = w . x[m] for the Tile rows of x (k apart), rounded to Out (float, or
// c10::BFloat16 to nearest even, as PyTorch rounds): each 32 weights are widened once
// and multiplied into every row, each row keeping two chains of fused adds. The loops over rows
// are unrolled on request (#pragma): left to itself, GCC kept the sums in memory and stored them at
// every step, which made 8 rows 4.3 times as slow (225 against 52 µs for a 960 × 576 weight).
template <typename Weight, int Tile, typename Out>
void tile_dot(const Weight* w, const float* x, int64_t k, Out* out, int64_t out_stride) {
  __m512 even[Tile], odd[Tile];
#pragma GCC unroll 8
  for (int m = 0; m < Tile; ++m) even[m] = odd[m] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= k; i += 32) {
    const char* ahead = reinterpret_cast<const char*>(w + i) + kPrefetchBytes;
    _mm_prefetch(ahead, _MM_HINT_T0);
    if constexpr (sizeof(Weight) == 4) _mm_prefetch(ahead + 64, _MM_HINT_T0);  // 32 weights: two lines
    const __m512 w_even = load16(w + i), w_odd = load16(w + i + 16);
#pragma GCC unroll 8
    for (int m = 0; m < Tile; ++m) {
      even[m] = _mm512_fmadd_ps(w_even, _mm512_loadu_ps(x + m * k + i), even[m]);
      odd[m] = _mm512_fmadd_ps(w_odd, _mm512_loadu_ps(x + m * k + i + 16), odd[m]);
    }
  }
  for (; i < k; i += 16) {  // the last 1 to 31 inputs
    const int count = static_cast<int>(std::min<int64_t>(16, k - i));
    const __m512 w_part = load16(w + i, count);
#pragma GCC unroll 8
    for (int m = 0; m < Tile; ++m) even[m] = _mm512_fmadd_ps(w_part, load16(x + m * k + i, count), even[m]);
  }
#pragma GCC unroll 8
  for (int m = 0; m < Tile; ++m) out[m * out_stride] = Out(_mm512_reduce_add_ps(_mm512_add_ps(even[m], odd[m])));
}

// x: (M, K) float32 or bfloat16; w: (N, K) float32, float16 or bfloat16. Returns (M, N) in x's dtype.
at::Tensor matvec(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && w.is_contiguous() &&
              (w.scalar_type() == at::kFloat || w.scalar_type() == at::kHalf || w.scalar_type() == at::kBFloat16),
              "matvec: x must be a matrix and w a contiguous float32, float16 or bfloat16 matrix");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
              "matvec: x must be float32 or bfloat16");
  TORCH_CHECK(x.size(1) == w.size(1), "matvec: x has ", x.size(1), " inputs, the weight ", w.size(1));
  const at::Tensor x_rows = x.contiguous();
  const int64_t rows = x_rows.size(0), k = x_rows.size(1), n = w.size(0);
  // a bfloat16 x is widened here and its result rounded as it is stored, where two more operators
  // around each call cost a bfloat16 model's decode step 242 calls and 0.3 ms
  thread_local std::vector<float> widened;
  const float* xs = x_rows.scalar_type() == at::kFloat ? x_rows.const_data_ptr<float>() : nullptr;
  if (xs == nullptr) {
    const at::BFloat16* values = x_rows.const_data_ptr<at::BFloat16>();
    widened.assign(values, values + rows * k);  // exactly
    xs = widened.data();
  }
  at::Tensor result = at::empty({rows, n}, x.options());
  // Weight: float, c10::Half, or uint16_t for bfloat16; Out: float or at::BFloat16, as x
  const auto multiply = [&]<typename Weight, typename Out>(Weight, Out* y) {
    const auto* weights = static_cast<const Weight*>(w.const_data_ptr());
    at::parallel_for(0, n, kRowsPerTask, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t m = 0; m < rows; m += kMaxTile) {
          const int tile = static_cast<int>(std::min<int64_t>(kMaxTile, rows - m));
          with_tile(tile, [&]<int Tile>() {
            tile_dot<Weight, Tile>(weights + r * k, xs + m * k, k, y + m * n + r, n);
          });
        }
      }
    });
  };
  const auto multiply_into = [&]<typename Out>(Out* y) {
    switch (w.scalar_type()) {
      case at::kFloat: return multiply(float{}, y);
      case at::kHalf: return multiply(c10::Half{}, y);
      default: return multiply(uint16_t{}, y);
    }
  };
  if (x.scalar_type() == at::kFloat) {
    multiply_into(result.data_ptr<float>());
  } else {
    multiply_into(result.data_ptr<at::BFloat16>());
  }
  return result;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nexttoken, m) {
  m.def("matvec(Tensor x, Tensor w) -> Tensor");
}

TORCH_LIBRARY_IMPL(nexttoken, CPU, m) {
  m.impl("matvec", &matvec);
}
