// y = x @ w^T * scale (+ bias) with w kept as signed 8-bit integers and a float32 scale per output
// row, x and y float32 (the layout and the product: int8_rows.h), for any number of rows of x.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "int8_rows.h"

namespace {

RowWeight row_weight_of(const at::Tensor& blocks, const at::Tensor& scales, const std::optional<at::Tensor>& bias,
                        const char* name) {
  TORCH_CHECK(blocks.scalar_type() == at::kChar && blocks.dim() == 3 && blocks.size(2) == kRowBlock &&
              blocks.size(1) % 2 == 0 && blocks.is_contiguous(),
              name, ": the weight must be a contiguous (N/16, K, 16) int8 tensor, K even");
  const int64_t n = blocks.size(0) * kRowBlock;
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.is_contiguous() && scales.numel() == n, name,
              ": scales must be ", n, " contiguous float32 values");
  const bool has_bias = bias.has_value() && bias->defined();
  TORCH_CHECK(!has_bias || (bias->scalar_type() == at::kFloat && bias->is_contiguous() && bias->numel() == n), name,
              ": the bias must be ", n, " contiguous float32 values");
  return {blocks.const_data_ptr<int8_t>(), scales.const_data_ptr<float>(),
          has_bias ? bias->const_data_ptr<float>() : nullptr, n, blocks.size(1)};
}

// x: (M, K) float32. Returns (M, N) float32.
at::Tensor int8_rows_matmul(const at::Tensor& x, const at::Tensor& blocks, const at::Tensor& scales,
                            const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kFloat,
              "int8_rows_matmul: x must be a contiguous float32 matrix");
  const RowWeight w = row_weight_of(blocks, scales, bias, "int8_rows_matmul");
  TORCH_CHECK(x.size(1) == w.k, "int8_rows_matmul: x has ", x.size(1), " inputs, the weight ", w.k);
  const int64_t rows = x.size(0);
  at::Tensor result = at::empty({rows, w.n}, x.options());
  float* y = result.data_ptr<float>();
  const float* inputs = x.const_data_ptr<float>();
  // a thread's share is worth starting it for from about this many products on: a decode step's
  // few rows through a small matrix stay on one thread
  constexpr int64_t kProductsPerThread = 1 << 18;
  const int64_t grain = std::max<int64_t>(1, kProductsPerThread / (kRowBlock * w.k * std::max<int64_t>(rows, 1)));
  at::parallel_for(0, w.n / kRowBlock, grain, [&](int64_t begin, int64_t end) {
    row_blocks(w, inputs, w.k, rows, begin, end, y);
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nexttoken, m) {
  m.def("int8_rows_matmul(Tensor x, Tensor blocks, Tensor scales, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(nexttoken, CPU, m) {
  m.impl("int8_rows_matmul", &int8_rows_matmul);
}
