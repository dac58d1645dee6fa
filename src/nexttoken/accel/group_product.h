// y = x @ w^T with w kept as 4- or 8-bit values and a float16 scale and minimum per group of 32
// inputs: w = minimum + q * scale, q in [0, 15] or [0, 255].
//
// Weights are laid out so that one AVX-512 register holds 16 output rows, and so that each thread
// reads one stream: for rows 16b..16b+15 and inputs 32g..32g+31, packed[b][g] is runs of 32 bytes,
// then the 16 rows' float16 scales and minimums. 4 bits: eight runs (320 bytes in all); byte 2r + j
// of run t holds q[16b + r][32g + 2t + j] in its low nibble and q[16b + r][32g + 16 + 2t + j] in its
// high one. 8 bits: sixteen runs (576 bytes); byte 2r + j of run t holds q[16b + r][32g + 2t + j].
// 4 bits: widened to 16-bit words, a nibble n or'ed with 0x4300 is exactly the bfloat16 128 + n, so
// each 32-byte run becomes two registers of bfloat16 pairs, and subtracting 128 * sum(x) afterwards
// removes the offset. 8 bits: each byte converts exactly to a bfloat16 (through float32), so each
// run becomes one register. vdpbf16ps multiplies a register by a broadcast pair of inputs: lane r
// gathers row r's sum over the group. The group's scale and minimum are then applied once per 16
// rows: y += scale * sum(x * q) + minimum * sum(x).
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "vector_math.h"

constexpr int64_t kGroup = 32;    // inputs per scale and minimum
constexpr int64_t kBlock = 16;    // output rows per register, one float32 lane each
constexpr int kMaxTile = 8;       // input rows that share one conversion of the weights (4: 20-30 % slower)
// how far ahead of its reads each thread asks for weights (_mm_prefetch), as matvec.cpp does: in
// SmolLM2's one-call int4 decode step (decode_blocks.cpp) the products went from 1.14 to 0.93 ms
// (alternating runs; 2 and 8 KiB gained less), though called one by one they had gained nothing
constexpr int64_t kPrefetchBytes = 4096;

// a group's bytes for 16 rows: the values, then the float16 scales and minimums
template <int Bits>
constexpr int64_t value_bytes = kBlock * kGroup * Bits / 8;
template <int Bits>
constexpr int64_t group_bytes = value_bytes<Bits> + 2 * kBlock * 2;

struct Inputs {
  const uint16_t* x;      // (M, K) bfloat16 bits
  const float* x_sums;    // (M, K / 32): each group's sum of x
  int64_t groups;         // K / 32
};

// x's pair of inputs at x, broadcast to every lane
inline __m512bh input_pair(const uint16_t* x) {
  int32_t pair;
  __builtin_memcpy(&pair, x, 4);
  return (__m512bh)_mm512_set1_epi32(pair);
}

// 16 bytes as float32 values
inline __m512 bytes_as_floats(const uint8_t* bytes) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(bytes))));
}

// 8 bits: a run's 32 bytes as bfloat16 pairs, lane r holding row r's; exact, as every integer below
// 256 is a bfloat16
inline __m512bh byte_pairs(const uint8_t* run) {
  return _mm512_cvtne2ps_pbh(bytes_as_floats(run + 16), bytes_as_floats(run));  // rows 8-15 above rows 0-7
}

template <int Bits, int Tile>
inline void block_product(const Inputs& in, int64_t row, const uint8_t* packed, float* out, int64_t out_stride) {
  const __m512i nibble = _mm512_set1_epi16(0x000f);
  const __m512i bf16_128 = _mm512_set1_epi16(0x4300);
  constexpr float offset = Bits == 4 ? 128.0f : 0.0f;  // each 4-bit value reads 128 too many
  const int64_t k = in.groups * kGroup;
  __m512 y[Tile];
  for (int m = 0; m < Tile; ++m) y[m] = _mm512_setzero_ps();
  for (int64_t g = 0; g < in.groups; ++g) {
    __m512 first[Tile], second[Tile];  // two dependency chains, not one: 11-17 % faster in cache
    for (int m = 0; m < Tile; ++m) first[m] = second[m] = _mm512_setzero_ps();
    const uint8_t* bytes = packed + g * group_bytes<Bits>;
    if (row == 0) {  // later tiles of rows (a prompt's) read the group again, from the cache
      for (int64_t line = 0; line < group_bytes<Bits>; line += 64)
        _mm_prefetch(reinterpret_cast<const char*>(bytes) + kPrefetchBytes + line, _MM_HINT_T0);
    }
    const uint16_t* x = in.x + row * k + g * kGroup;
    if constexpr (Bits == 4) {  // the low nibbles hold inputs 2t + j, the high ones 16 + 2t + j
      for (int t = 0; t < 8; ++t) {
        const __m256i run = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(bytes + 32 * t));
        const __m512i words = _mm512_cvtepu8_epi16(run);
        const __m512bh low = (__m512bh)_mm512_ternarylogic_epi32(words, nibble, bf16_128, 0xea);  // (w & 15) | 0x4300
        const __m512bh high = (__m512bh)_mm512_or_si512(_mm512_srli_epi16(words, 4), bf16_128);
        for (int m = 0; m < Tile; ++m) {
          first[m] = _mm512_dpbf16_ps(first[m], low, input_pair(x + m * k + 2 * t));
          second[m] = _mm512_dpbf16_ps(second[m], high, input_pair(x + m * k + kGroup / 2 + 2 * t));
        }
      }
    } else {  // run t holds inputs 2t + j
      for (int t = 0; t < 16; t += 2) {
        const __m512bh even = byte_pairs(bytes + 32 * t), odd = byte_pairs(bytes + 32 * (t + 1));
        for (int m = 0; m < Tile; ++m) {
          first[m] = _mm512_dpbf16_ps(first[m], even, input_pair(x + m * k + 2 * t));
          second[m] = _mm512_dpbf16_ps(second[m], odd, input_pair(x + m * k + 2 * t + 2));
        }
      }
    }
    const uint8_t* scales = bytes + value_bytes<Bits>;
    const __m512 s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales)));
    const __m512 lo = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + 32)));
    for (int m = 0; m < Tile; ++m) {
      const __m512 x_sum = _mm512_set1_ps(in.x_sums[(row + m) * in.groups + g]);
      const __m512 centred = _mm512_fnmadd_ps(_mm512_set1_ps(offset), x_sum, _mm512_add_ps(first[m], second[m]));
      y[m] = _mm512_fmadd_ps(lo, x_sum, _mm512_fmadd_ps(s, centred, y[m]));
    }
  }
  for (int m = 0; m < Tile; ++m) _mm512_storeu_ps(out + m * out_stride, y[m]);
}

// The sum of 32 bfloat16 values: each 32-bit lane holds two, whose float32 values are the lane
// shifted up by 16 bits and the lane with its low 16 bits cleared.
inline float sum_bfloat16(__m512i words) {
  const __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(words, 16));
  const __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(words, _mm512_set1_epi32(0xffff0000)));
  return _mm512_reduce_add_ps(_mm512_add_ps(even, odd));
}

// One group of 32 inputs rounded to bfloat16 (to nearest even) into bits; returns their sum.
// Vectorised, as this runs on one thread before the products start.
inline float round_group(const float* x, uint16_t* bits) {
  const __m512i rounded = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + 16), _mm512_loadu_ps(x));
  _mm512_storeu_si512(bits, rounded);
  return sum_bfloat16(rounded);
}

// x's `values` float32 values (whole groups) rounded to bfloat16 bits, and each group's sum of them
inline void round_inputs(const float* x, int64_t values, uint16_t* bits, float* sums) {
  for (int64_t i = 0; i < values / kGroup; ++i) sums[i] = round_group(x + i * kGroup, bits + i * kGroup);
}

// y's columns of blocks [begin, end) for every one of x's `rows` rows: y is (rows, n) float32
template <int Bits>
inline void block_range(const Inputs& in, int64_t rows, const uint8_t* weights, int64_t begin, int64_t end, float* y,
                        int64_t n) {
  for (int64_t b = begin; b < end; ++b) {
    for (int64_t row = 0; row < rows; row += kMaxTile) {
      const int tile = static_cast<int>(std::min<int64_t>(kMaxTile, rows - row));
      with_tile(tile, [&]<int Tile>() {
        block_product<Bits, Tile>(in, row, weights + b * in.groups * group_bytes<Bits>, y + row * n + b * kBlock, n);
      });
    }
  }
}
