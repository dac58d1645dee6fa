// Attention of one query per row over the cached keys and values: a decode step. Each key/value
// head is read once for its whole group of query heads, with no packing, where the prompt kernel
// (flash_attention.cpp) packs keys and values for blocks of 32 queries first. With many keys, each
// head's keys are split into spans that the threads share, and the spans' softmax sums combined
// after (as in "flash-decoding"): a batch of one has too few heads to keep two threads busy.
//
// float32 or bfloat16 inputs, or float32 queries over float16 keys and values (the cache of a
// quantized model); scores, the softmax and the sums are float32 (16-bit values are widened on
// load), and the output is rounded to the queries' dtype once, at the end.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "vector_math.h"

constexpr int kMaxGroup = 16;          // query heads per key/value head
constexpr int kSumRegisters = 16;      // registers that hold the queries' weighted sums of values
// query-key pairs below which one thread does all: in a decode step the cached rows come from
// memory, not from the cache, and two threads read them faster from about 30 of SmolLM2's
// positions on (at 80 positions, 12.5 -> 9.5 µs a layer), though starting them costs 2.4 µs
constexpr int64_t kSerialWork = 256;

// Row `row` of 16 * Chunks values as float32 registers.
template <int Chunks, typename T>
inline void load_row(const T* row, __m512* out) {
  for (int c = 0; c < Chunks; ++c) out[c] = load16(row + 16 * c);
}

// What one span of keys gives a query: its highest score, the sum of its softmax weights taken
// against that score, and the weighted sum of its values (head_dim floats, unnormalized).
struct Partial {
  float best;
  float total;
  float* sums;
};

// Each of `Queries` queries' weighted sum of the values [first, first + n), from their softmax
// weights (rows n apart): the queries' sums stay in registers. For a runtime number of queries
// GCC kept them in memory, a load and a store at every step: a SmolLM2 layer over 560 cached
// positions took 18.4 instead of 16.0 µs in cache, and 28.7 instead of 24.5 from memory (float16).
template <int Chunks, int Queries, typename KV>
inline void weighted_values(const KV* v, int64_t row_step, const bool* mask, int64_t first, int64_t n,
                            const float* weights, Partial* partials) {
  __m512 sums[Queries][Chunks];
  for (int g = 0; g < Queries; ++g)
    for (int c = 0; c < Chunks; ++c) sums[g][c] = _mm512_setzero_ps();
  for (int64_t t = 0; t < n; ++t) {
    if (mask != nullptr && !mask[first + t]) continue;
    __m512 value[Chunks];
    load_row<Chunks>(v + (first + t) * row_step, value);
    for (int g = 0; g < Queries; ++g) {
      const __m512 weight = _mm512_set1_ps(weights[g * n + t]);
      for (int c = 0; c < Chunks; ++c) sums[g][c] = _mm512_fmadd_ps(weight, value[c], sums[g][c]);
    }
  }
  for (int g = 0; g < Queries; ++g)
    for (int c = 0; c < Chunks; ++c) _mm512_storeu_ps(partials[g].sums + 16 * c, sums[g][c]);
}

// How many rows ahead of the key being scored its kernel asks for keys (_mm_prefetch), along with
// that key's value row, which the weighted sums read next: the rows of a decode step's cache come
// from memory, and a span's are too few for the hardware's prefetcher to get going. SmolLM2's int4
// decode step over 500-odd positions, attention in all 30 layers: 400-410 -> 290-345 µs
// (alternating runs; 8 or 32 rows ahead gained less).
constexpr int64_t kPrefetchRows = 16;

// Asks for the cache lines of one row of 16 * Chunks values.
template <int Chunks, typename T>
inline void prefetch_row(const T* row) {
  const char* bytes = reinterpret_cast<const char*>(row);
  for (size_t line = 0; line < 16 * Chunks * sizeof(T); line += 64) _mm_prefetch(bytes + line, _MM_HINT_T0);
}

// The sum of each of 16 vectors' lanes, as one vector: lane j holds the sum of v[j]'s lanes. Four
// rounds of adding lanes pairwise, each halving the vectors: 45 instructions for 16 sums, where
// _mm512_reduce_add_ps takes about 9 for one.
inline __m512 sums_of_16(const __m512* v) {
  __m512 pairs[8], quads[4], halves[2];
  for (int i = 0; i < 8; ++i)  // in each 128-bit lane: a0 + a2, b0 + b2, a1 + a3, b1 + b3
    pairs[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // in each 128-bit lane: the lane's sums of v[4i], ..., v[4i + 3]
    const __m512d low = _mm512_castps_pd(pairs[2 * i]), high = _mm512_castps_pd(pairs[2 * i + 1]);
    quads[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(low, high)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(low, high)));
  }
  for (int i = 0; i < 2; ++i)  // 128-bit lanes 0 + 1 and 2 + 3 of quads 2i, then of quads 2i + 1
    halves[i] = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], 0x88),
                              _mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], 0xdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(halves[0], halves[1], 0x88),
                       _mm512_shuffle_f32x4(halves[0], halves[1], 0xdd));
}

// The `group` queries of one key/value head (rows `q_step` apart) over keys and values [first,
// last) (rows `row_step` apart): scores into `scores` (group x (last - first)), 16 keys at a time,
// then softmax weights, then each query's Partial.
template <int Chunks, typename Q, typename KV>
inline void one_span(const Q* q, int64_t q_step, const KV* k, const KV* v, int64_t row_step, const bool* mask,
                     int64_t first, int64_t last, float scale, int group, float* scores, Partial* partials) {
  const int64_t n = last - first;
  __m512 queries[kMaxGroup][Chunks];
  for (int g = 0; g < group; ++g) load_row<Chunks>(q + g * q_step, queries[g]);
  const float minus_infinity = -std::numeric_limits<float>::infinity();
  const __m512 unseen = _mm512_set1_ps(minus_infinity);  // the score of a masked key
  __m512 products[kMaxGroup][16];  // each query's products with 16 keys, lanes not yet summed
  __m512 highest[kMaxGroup];
  for (int g = 0; g < group; ++g) highest[g] = unseen;
  for (int64_t t0 = 0; t0 < n; t0 += 16) {
    const int count = static_cast<int>(std::min<int64_t>(16, n - t0));
    __mmask16 seen = 0;  // the keys of the 16 that exist and are not masked
    for (int j = 0; j < 16; ++j) {
      if (j >= count || (mask != nullptr && !mask[first + t0 + j])) {
        for (int g = 0; g < group; ++g) products[g][j] = _mm512_setzero_ps();
        continue;
      }
      seen |= static_cast<__mmask16>(1u << j);
      prefetch_row<Chunks>(k + std::min(first + t0 + j + kPrefetchRows, last - 1) * row_step);
      prefetch_row<Chunks>(v + (first + t0 + j) * row_step);
      __m512 key[Chunks];
      load_row<Chunks>(k + (first + t0 + j) * row_step, key);
      for (int g = 0; g < group; ++g) {
        __m512 sum = _mm512_mul_ps(queries[g][0], key[0]);
        for (int c = 1; c < Chunks; ++c) sum = _mm512_fmadd_ps(queries[g][c], key[c], sum);
        products[g][j] = sum;
      }
    }
    for (int g = 0; g < group; ++g) {
      const __m512 row = _mm512_mask_blend_ps(seen, unseen,
                                              _mm512_mul_ps(sums_of_16(products[g]), _mm512_set1_ps(scale)));
      highest[g] = _mm512_max_ps(highest[g], row);
      store16(scores + g * n + t0, row, count);
    }
  }
  for (int g = 0; g < group; ++g) {
    float* row = scores + g * n;
    const float best = _mm512_reduce_max_ps(highest[g]);
    __m512 total = _mm512_setzero_ps();
    for (int64_t t = 0; t < n; t += 16) {
      const int count = static_cast<int>(std::min<int64_t>(16, n - t));
      const __mmask16 lanes = static_cast<__mmask16>((1u << count) - 1);
      // a span whose keys are all masked gets weights of 0, not NaN
      const __m512 weights = best == minus_infinity ? _mm512_setzero_ps()
          : _mm512_maskz_mov_ps(lanes, vector_exp(_mm512_sub_ps(load16(row + t, count), _mm512_set1_ps(best))));
      store16(row + t, weights, count);
      total = _mm512_add_ps(total, weights);
    }
    partials[g].best = best;
    partials[g].total = _mm512_reduce_add_ps(total);
  }
  for (int g = 0; g < group; g += kSumRegisters / Chunks) {
    with_tile(std::min(group - g, kSumRegisters / Chunks), [&]<int Queries>() {
      if constexpr (Queries * Chunks <= kSumRegisters)
        weighted_values<Chunks, Queries>(v, row_step, mask, first, n, scores + g * n, partials + g);
    });
  }
}

// One query's output from its spans' Partials: each span's weights rescaled to the highest score
// of all (Milakov and Gimelshein, 2018, "Online normalizer calculation for softmax").
template <int Chunks, typename T>
inline void combine(const Partial* spans, int n_spans, int64_t span_step, T* out) {
  float best = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < n_spans; ++i) best = std::max(best, spans[i * span_step].best);
  __m512 sums[Chunks];
  for (int c = 0; c < Chunks; ++c) sums[c] = _mm512_setzero_ps();
  float total = 0;
  for (int i = 0; i < n_spans; ++i) {
    const Partial& span = spans[i * span_step];
    if (span.total == 0) continue;  // every key of the span masked
    const float factor = std::exp(span.best - best);
    total += factor * span.total;
    for (int c = 0; c < Chunks; ++c)
      sums[c] = _mm512_fmadd_ps(_mm512_set1_ps(factor), _mm512_loadu_ps(span.sums + 16 * c), sums[c]);
  }
  const __m512 inverse = _mm512_set1_ps(total > 0 ? 1.0f / total : 0.0f);  // a query that sees no key: 0
  for (int c = 0; c < Chunks; ++c) store16(out + 16 * c, _mm512_mul_ps(sums[c], inverse));
}

// Whether `heads` heads (rows times key/value heads) of `group` queries over `keys` keys are worth
// sharing between threads.
inline bool threaded(int64_t heads, int64_t keys, int64_t group) { return heads * keys * group >= kSerialWork; }

// How many spans each head's keys are split into for `threads` threads: one, unless threaded; then
// enough that every thread has two tasks or more.
inline int64_t span_count(int64_t heads, int64_t keys, int64_t group, int64_t threads) {
  return threaded(heads, keys, group) ? std::min<int64_t>(keys, (2 * threads + heads - 1) / heads) : 1;
}
