// Helpers our kernels share: e^x, loads of 16 float32, bfloat16 or float16 values as float32 and
// stores of 16 float32 or bfloat16 values, and the dispatch of a tile of rows to its compile-time size.
#pragma once

#include <c10/util/Half.h>
#include <immintrin.h>

#include <cstdint>

// e^x, 16 at a time: x = n ln 2 + r with |r| <= ln 2 / 2, e^r by its Taylor series to r^7
// (relative error below 1e-8), scaled by 2^n. Below -104 the result is 0, as in float32; above 88.7
// it stays at e^88.7 instead of overflowing.
inline __m512 vector_exp(__m512 x) {
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(88.7f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln 2 in two parts, so
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);     // n ln 2 is exact enough
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  for (const float c : {1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) {
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  }
  return _mm512_scalef_ps(p, n);
}

// 16 bfloat16 values as float32: each one's bits are the high half of the float's
inline __m512 widen_bfloat16(__m256i bits) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

// up to 16 values from `count` (1..16) at `values`, widened to float32; the other lanes are 0
inline __m512 load16(const float* values, int count = 16) {
  return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << count) - 1), values);
}
inline __m512 load16(const uint16_t* bfloat16_bits, int count = 16) {
  return widen_bfloat16(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << count) - 1), bfloat16_bits));
}
inline __m512 load16(const c10::Half* values, int count = 16) {
  return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << count) - 1), values));
}

// the first `count` of 16 values, rounded to nearest even where bfloat16
inline void store16(float* out, __m512 values, int count = 16) {
  _mm512_mask_storeu_ps(out, static_cast<__mmask16>((1u << count) - 1), values);
}
inline void store16(uint16_t* out, __m512 values, int count = 16) {
  _mm256_mask_storeu_epi16(out, static_cast<__mmask16>((1u << count) - 1), (__m256i)_mm512_cvtneps_pbh(values));
}

// the nearest bfloat16 values, widened back to float32
inline __m512 round_to_bfloat16(__m512 values) { return widen_bfloat16((__m256i)_mm512_cvtneps_pbh(values)); }

// run.template operator()<Tile>() for the compile-time Tile equal to tile (1 to 8): a tile's rows
// keep their sums in registers, so each size is its own instantiation
template <typename Run>
inline void with_tile(int tile, Run&& run) {
  switch (tile) {
    case 1: return run.template operator()<1>();
    case 2: return run.template operator()<2>();
    case 3: return run.template operator()<3>();
    case 4: return run.template operator()<4>();
    case 5: return run.template operator()<5>();
    case 6: return run.template operator()<6>();
    case 7: return run.template operator()<7>();
    default: return run.template operator()<8>();
  }
}
