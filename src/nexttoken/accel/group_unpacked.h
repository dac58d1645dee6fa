// y = x @ w^T for a prompt's many rows, with w in the groups of group_product.h: each thread unpacks
// up to four blocks of 16 rows at a time into bfloat16 weights, minimum + q * scale rounded to
// nearest even, in a buffer it keeps and reuses (a few hundred KiB, never a copy of the model), and
// multiplies every row of x it owns by them. block_product converts the weights again for every
// tile of 8 rows and scales each group's sums; here the conversion is paid once per block for the
// whole prompt and nearly every instruction of the product is a vdpbf16ps, as in a bfloat16 matrix
// product. The weights are rounded to bfloat16 as a bfloat16 model's are; x is rounded as
// block_product rounds it, and the sums are float32.
//
// The unpacked buffer holds, for each pair p of inputs and each of its `count` blocks b, one register
// of 32 bfloat16 values whose lane r is row 16b + r's pair (w[2p], w[2p + 1]), the layout vdpbf16ps
// multiplies by a broadcast pair of x.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "group_product.h"

constexpr int kUnpackedBlocks = 4;  // blocks unpacked together: 4 weight registers per pair of inputs
constexpr int kUnpackedRows = 6;    // rows of x per tile: 6 x 4 sums, 4 weights and x's pair in 32 registers

// run.template operator()<Size>() for the compile-time Size equal to size (1 to Max)
template <int Max, typename Run>
inline void with_size(int size, Run&& run) {
  if constexpr (Max > 1) {
    if (size < Max) return with_size<Max - 1>(size, run);
  }
  run.template operator()<Max>();
}

// 16 bytes, byte 2r + j holding (after `shift` and the mask) row r's value j, as float32 weights:
// lane 2r + j is minimum_r + q * scale_r, with scale and minimum repeated for each row's pair
inline __m512 scaled_values(__m512i bytes, int shift, int bits, __m512 scale, __m512 minimum) {
  const __m512i q = _mm512_and_si512(_mm512_srli_epi32(bytes, shift), _mm512_set1_epi32((1 << bits) - 1));
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), scale, minimum);
}

// One block's (16 rows') weights, all its groups, as bfloat16 pairs: pair p goes to out + p * stride.
template <int Bits>
inline void unpack_block(const uint8_t* block, int64_t groups, uint16_t* out, int64_t stride) {
  // lane 2r + j of the first 16 bytes of a run is row r (rows 0-7), of the second 16 row 8 + r
  const __m512i first_rows = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
  const __m512i second_rows = _mm512_add_epi32(first_rows, _mm512_set1_epi32(8));
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* bytes = block + g * group_bytes<Bits>;
    const uint8_t* scales = bytes + value_bytes<Bits>;
    const __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales)));
    const __m512 lo = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + 32)));
    const __m512 s_first = _mm512_permutexvar_ps(first_rows, s), s_second = _mm512_permutexvar_ps(second_rows, s);
    const __m512 lo_first = _mm512_permutexvar_ps(first_rows, lo), lo_second = _mm512_permutexvar_ps(second_rows, lo);
    // one run's (32 bytes') values after `shift` -> the bfloat16 pairs of inputs 2p, 2p + 1
    auto store_pair = [&](const uint8_t* run, int shift, int64_t p) {
      const __m512i first = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(run)));
      const __m512i second = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(run + 16)));
      const __m512bh pair = _mm512_cvtne2ps_pbh(scaled_values(second, shift, Bits, s_second, lo_second),
                                                scaled_values(first, shift, Bits, s_first, lo_first));
      _mm512_storeu_si512(out + p * stride, (__m512i)pair);
    };
    const int64_t first_pair = g * kGroup / 2;
    if constexpr (Bits == 4) {  // run t: low nibbles inputs 2t + j, high ones 16 + 2t + j
      for (int t = 0; t < 8; ++t) {
        store_pair(bytes + 32 * t, 0, first_pair + t);
        store_pair(bytes + 32 * t, 4, first_pair + 8 + t);
      }
    } else {  // run t: inputs 2t + j
      for (int t = 0; t < 16; ++t) store_pair(bytes + 32 * t, 0, first_pair + t);
    }
  }
}

// Rows x Blocks outputs of 16: y[m][16b + r] = sum over pairs p of x[m] . w's pair p of row 16b + r.
// x is (Rows, k) bfloat16 bits; w is the unpacked buffer of Blocks blocks; y's rows are n apart.
template <int Rows, int Blocks>
inline void unpacked_tile(const uint16_t* x, int64_t k, const uint16_t* w, float* y, int64_t n) {
  __m512 sums[Rows][Blocks];
  for (int m = 0; m < Rows; ++m)
    for (int b = 0; b < Blocks; ++b) sums[m][b] = _mm512_setzero_ps();
  for (int64_t p = 0; p < k / 2; ++p) {
    __m512bh weights[Blocks];
    for (int b = 0; b < Blocks; ++b) weights[b] = (__m512bh)_mm512_loadu_si512(w + (p * Blocks + b) * 32);
    for (int m = 0; m < Rows; ++m) {
      const __m512bh pair = input_pair(x + m * k + 2 * p);
      for (int b = 0; b < Blocks; ++b) sums[m][b] = _mm512_dpbf16_ps(sums[m][b], weights[b], pair);
    }
  }
  for (int m = 0; m < Rows; ++m)
    for (int b = 0; b < Blocks; ++b) _mm512_storeu_ps(y + m * n + b * kBlock, sums[m][b]);
}

// y's columns of blocks [begin, end) for every one of x's `rows` rows (x: (rows, k) bfloat16 bits,
// y: (rows, n) float32), a few blocks unpacked at a time into this thread's buffer
template <int Bits>
inline void unpacked_range(const uint16_t* x, int64_t rows, int64_t groups, const uint8_t* weights, int64_t begin,
                           int64_t end, float* y, int64_t n) {
  const int64_t k = groups * kGroup;
  thread_local std::vector<uint16_t> unpacked;
  unpacked.resize(kUnpackedBlocks * kBlock * k);
  for (int64_t b = begin; b < end; b += kUnpackedBlocks) {
    const int count = static_cast<int>(std::min<int64_t>(kUnpackedBlocks, end - b));
    for (int i = 0; i < count; ++i) {
      unpack_block<Bits>(weights + (b + i) * groups * group_bytes<Bits>, groups, unpacked.data() + i * 32,
                         count * 32);
    }
    with_size<kUnpackedBlocks>(count, [&]<int Blocks>() {
      for (int64_t row = 0; row < rows; row += kUnpackedRows) {
        const int tile = static_cast<int>(std::min<int64_t>(kUnpackedRows, rows - row));
        with_size<kUnpackedRows>(tile, [&]<int Rows>() {
          unpacked_tile<Rows, Blocks>(x + row * k, k, unpacked.data(), y + row * n + b * kBlock, n);
        });
      }
    });
  }
}
