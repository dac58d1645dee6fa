// y = x @ w^T with w kept as 4- or 8-bit values and a float16 scale and minimum per group of 32
// inputs (the layout and the products: group_product.h), for any number of rows of x: a decode
// step's few rows convert the weights in registers as they go; a prompt's, from `unpacked_min_rows`
// on, multiply weights unpacked to bfloat16 a few blocks at a time (group_unpacked.h).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <vector>

#include "group_product.h"
#include "group_unpacked.h"

namespace {

// tiles of rows a thread needs before threads split rows rather than blocks: unpacking is paid
// again by every thread, so each should own enough rows to spread it over
constexpr int64_t kTilesPerThread = 4;

// x: (M, K) float32 or bfloat16; packed: (N / 16, K / 32, group_bytes) uint8. Returns (M, N) in x's dtype.
template <int Bits>
at::Tensor group_matmul(const at::Tensor& x, const at::Tensor& packed, int64_t unpacked_min_rows, const char* name) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), name, ": x must be a contiguous matrix");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, name,
              ": x must be float32 or bfloat16");
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 3 && packed.size(2) == group_bytes<Bits> &&
              packed.is_contiguous(),
              name, ": packed must be a contiguous (N/16, K/32, ", group_bytes<Bits>, ") uint8 tensor");
  const int64_t rows = x.size(0), groups = packed.size(1), blocks = packed.size(0);
  TORCH_CHECK(x.size(1) == groups * kGroup, name, ": x has ", x.size(1), " inputs, the weight ", groups * kGroup);
  const int64_t k = groups * kGroup, n = blocks * kBlock;

  thread_local std::vector<uint16_t> x_bits;
  thread_local std::vector<float> x_sums;
  x_bits.resize(rows * k);
  x_sums.resize(rows * groups);
  if (x.scalar_type() == at::kFloat) {
    round_inputs(x.const_data_ptr<float>(), rows * k, x_bits.data(), x_sums.data());
  } else {
    const uint16_t* values = reinterpret_cast<const uint16_t*>(x.const_data_ptr<at::BFloat16>());
    std::copy(values, values + rows * k, x_bits.begin());
    for (int64_t i = 0; i < rows * groups; ++i) x_sums[i] = sum_bfloat16(_mm512_loadu_si512(&x_bits[i * kGroup]));
  }
  const Inputs in{x_bits.data(), x_sums.data(), groups};

  at::Tensor result = at::empty({rows, n}, x.options().dtype(at::kFloat));
  float* y = result.data_ptr<float>();
  const uint8_t* weights = packed.const_data_ptr<uint8_t>();
  const int64_t tiles = (rows + kUnpackedRows - 1) / kUnpackedRows;
  if (rows >= unpacked_min_rows && tiles >= kTilesPerThread * at::get_num_threads()) {
    // threads split x's rows, each unpacking every block for its own: given a share of the
    // blocks instead, each thread would read all of x again for every few blocks it unpacks
    at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
      const int64_t first = begin * kUnpackedRows, last = std::min(rows, end * kUnpackedRows);
      unpacked_range<Bits>(in.x + first * k, last - first, groups, weights, 0, blocks, y + first * n, n);
    });
  } else {
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      if (rows >= unpacked_min_rows) unpacked_range<Bits>(in.x, rows, groups, weights, begin, end, y, n);
      else block_range<Bits>(in, rows, weights, begin, end, y, n);
    });
  }
  return x.scalar_type() == at::kFloat ? result : result.to(at::kBFloat16);
}

at::Tensor int4_matmul(const at::Tensor& x, const at::Tensor& packed, int64_t unpacked_min_rows) {
  return group_matmul<4>(x, packed, unpacked_min_rows, "int4_matmul");
}
at::Tensor int8_matmul(const at::Tensor& x, const at::Tensor& packed, int64_t unpacked_min_rows) {
  return group_matmul<8>(x, packed, unpacked_min_rows, "int8_matmul");
}

}  // namespace

TORCH_LIBRARY(nexttoken, m) {
  m.def("int4_matmul(Tensor x, Tensor packed, int unpacked_min_rows) -> Tensor");
  m.def("int8_matmul(Tensor x, Tensor packed, int unpacked_min_rows) -> Tensor");
}

TORCH_LIBRARY_IMPL(nexttoken, CPU, m) {
  m.impl("int4_matmul", &int4_matmul);
  m.impl("int8_matmul", &int8_matmul);
}
