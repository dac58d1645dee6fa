// y = x @ w^T * scale (+ bias) with w kept as signed 8-bit integers and one float32 scale per output
// row, as an int8 file holds them (Marian's intgemm8: one multiplier per matrix), and x in float32.
// The integers are widened to float32 in registers and the sums are float32, so the result is the
// float32 product of the dequantized weight but for the order of the sums: where the group kernel
// (group_product.h) rounds x to bfloat16, which changed 2 of 40 of Marian's translations.
//
// Layout: for rows 16b..16b+15, the K inputs in order, each as 16 bytes, one per row:
// weight[b][k][r] = q[16b + r][k]. A register then holds one input's weights for 16 rows, multiplied
// by that input of x broadcast: no sums across lanes.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "vector_math.h"

constexpr int64_t kRowBlock = 16;  // output rows per register, one float32 lane each
constexpr int kMaxRowTile = 8;     // rows of x that share one widening of the weights
// how far ahead of its reads the product asks for weights, as group_product.h does
constexpr int64_t kRowPrefetchBytes = 2048;

// 16 signed bytes as float32 values
inline __m512 signed_bytes_as_floats(const int8_t* bytes) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes))));
}

// Tile rows of x (rows `x_stride` apart, k inputs) times one block of 16 weight rows: y's 16
// columns for each of the rows, `y_stride` apart, scaled and with the bias (or null) added.
template <int Tile>
inline void row_block_product(const float* x, int64_t x_stride, int64_t k, const int8_t* block, const float* scales,
                              const float* bias, float* y, int64_t y_stride) {
  __m512 even[Tile], odd[Tile];  // two dependency chains, not one
  for (int m = 0; m < Tile; ++m) even[m] = odd[m] = _mm512_setzero_ps();
  for (int64_t i = 0; i < k; i += 2) {
    if (i % 64 == 0) _mm_prefetch(reinterpret_cast<const char*>(block + i * kRowBlock) + kRowPrefetchBytes, _MM_HINT_T0);
    const __m512 first = signed_bytes_as_floats(block + i * kRowBlock);
    const __m512 second = signed_bytes_as_floats(block + (i + 1) * kRowBlock);
    for (int m = 0; m < Tile; ++m) {
      even[m] = _mm512_fmadd_ps(first, _mm512_set1_ps(x[m * x_stride + i]), even[m]);
      odd[m] = _mm512_fmadd_ps(second, _mm512_set1_ps(x[m * x_stride + i + 1]), odd[m]);
    }
  }
  const __m512 scale = _mm512_loadu_ps(scales);
  const __m512 shift = bias == nullptr ? _mm512_setzero_ps() : _mm512_loadu_ps(bias);
  for (int m = 0; m < Tile; ++m)
    _mm512_storeu_ps(y + m * y_stride, _mm512_fmadd_ps(_mm512_add_ps(even[m], odd[m]), scale, shift));
}

// A row-scaled int8 weight: its blocks of 16 rows, each row's scale, and the bias (or null).
struct RowWeight {
  const int8_t* blocks;  // (N / 16, K, 16)
  const float* scales;   // (N,)
  const float* bias;     // (N,) or null
  int64_t n, k;
};

// y's columns of blocks [first, last) for `rows` rows of x (rows x_stride apart): y is (rows, n)
inline void row_blocks(const RowWeight& w, const float* x, int64_t x_stride, int64_t rows, int64_t first,
                       int64_t last, float* y) {
  for (int64_t b = first; b < last; ++b) {
    const int8_t* block = w.blocks + b * w.k * kRowBlock;
    const float* bias = w.bias == nullptr ? nullptr : w.bias + b * kRowBlock;
    for (int64_t row = 0; row < rows; row += kMaxRowTile) {
      const int tile = static_cast<int>(std::min<int64_t>(kMaxRowTile, rows - row));
      with_tile(tile, [&]<int Tile>() {
        row_block_product<Tile>(x + row * x_stride, x_stride, w.k, block, w.scales + b * kRowBlock, bias,
                                y + row * w.n + b * kRowBlock, w.n);
      });
    }
  }
}
