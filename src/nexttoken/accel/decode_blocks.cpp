// A decode step through the pre-norm Llama blocks of a quantized model, in one call. Each block:
// RMSNorm, the fused q/k/v product, the rotation, the new key and value written to the float16
// cache, attention of the one query, the output product and the residual; RMSNorm, the fused
// gate/up product, SwiGLU, the down product and the residual. The same steps as the block's
// operators, called one by one (group_product.h, elementwise.h, one_query.h), so the result is
// theirs bit for bit; but the threads start once for the step, not once for each of a block's
// five parallel operators, and meet at a spin barrier between the steps that need each other's
// results (six a block). The steps between products are small, and each thread does them whole
// where that saves a barrier: both normalise and round every product's input themselves.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "elementwise.h"
#include "group_product.h"
#include "one_query.h"
#include "spin_barrier.h"

namespace {

// A product's weight: its packed bytes, and what they hold.
struct Weight {
  const uint8_t* bytes;
  int64_t blocks, groups;  // output rows / 16, inputs / 32
  int bits;
};

Weight weight_of(const at::Tensor& packed, int64_t inputs, const char* name) {
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 3 && packed.is_contiguous() &&
              (packed.size(2) == group_bytes<4> || packed.size(2) == group_bytes<8>) &&
              packed.size(1) * kGroup == inputs,
              "decode_blocks: ", name, " must be an int4 or int8 packed weight of ", inputs, " inputs");
  return {packed.const_data_ptr<uint8_t>(), packed.size(0), packed.size(1), packed.size(2) == group_bytes<4> ? 4 : 8};
}

// This thread's share of the blocks of y = x @ w^T: x as bfloat16 bits with each group's sum,
// y (rows, n) float32.
void product_share(const Weight& w, const uint16_t* x_bits, const float* x_sums, int64_t rows, float* y, int tid,
                   int team) {
  const Inputs in{x_bits, x_sums, w.groups};
  const Share blocks = share(w.blocks, tid, team);
  if (w.bits == 4) block_range<4>(in, rows, w.bytes, blocks.first, blocks.last, y, w.blocks * kBlock);
  else block_range<8>(in, rows, w.bytes, blocks.first, blocks.last, y, w.blocks * kBlock);
}

// 16 float32 values rounded to float16 (to nearest even, as PyTorch's copy into a float16 tensor)
void store_half(c10::Half* out, __m512 values) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm512_cvtps_ph(values, _MM_FROUND_TO_NEAREST_INT));
}

// What every block of the step shares: its input and output, shapes and positions.
struct Step {
  const float* x;  // (B, d)
  const float *cos, *sin;  // (B, D): each row's rotation
  int64_t rows, d, heads, kv_heads, ff;
  int64_t position;  // where the new keys and values go; attention reads [0, position]
  int64_t spans;  // of each key/value head's keys, as one_query_attention splits them
  int64_t cache_strides[3];
  double eps;
  float scale;
  float* out;  // (B, d)
};

struct Block {
  const float *attn_norm, *mlp_norm;
  Weight qkv, o, gate_up, down;
  c10::Half *keys, *values;  // (B, H_kv, S, D), rows `cache_strides` apart
};

// Buffers every thread reads: the products' outputs, the rotated queries and attention's partial results.
struct Shared {
  std::vector<float> qkv, queries, o, gate_up, down, partial_sums;
  std::vector<float> stream[2];  // the blocks' outputs, but the last's: the residual stream
  std::vector<Partial> partials;
};

// One block: x (B, d) in, out (B, d) written by the threads' shares, after the last barrier.
template <int Chunks>
void run_block(const Step& step, const Block& w, const float* x, float* out, Shared& shared, SpinBarrier& barrier,
               int tid, int team) {
  constexpr int64_t D = 16 * Chunks;
  const int64_t B = step.rows, d = step.d, H = step.heads, H_kv = step.kv_heads, group = H / H_kv;
  const int64_t qkv_n = (H + 2 * H_kv) * D;
  const int64_t widest = std::max({d, H * D, step.ff});
  thread_local std::vector<float> inputs, residual, scores;
  thread_local std::vector<uint16_t> bits;
  thread_local std::vector<float> sums;
  inputs.resize(B * widest);
  residual.resize(B * d);
  bits.resize(B * widest);
  sums.resize(B * widest / kGroup);
  // each thread rounds the inputs of every product itself: no barrier, and a few hundred values
  auto round = [&](int64_t n) { round_inputs(inputs.data(), B * n, bits.data(), sums.data()); };

  for (int64_t b = 0; b < B; ++b) rms_norm_row(x + b * d, w.attn_norm, d, step.eps, inputs.data() + b * d);
  round(d);
  product_share(w.qkv, bits.data(), sums.data(), B, shared.qkv.data(), tid, team);
  barrier.wait();

  // rotate the queries and keys, and store the keys and values in the cache: a row of D values each
  const Share heads = share(B * (H + 2 * H_kv), tid, team);
  for (int64_t task = heads.first; task < heads.last; ++task) {
    const int64_t b = task / (H + 2 * H_kv), head = task % (H + 2 * H_kv);
    const float* in = shared.qkv.data() + b * qkv_n + head * D;
    if (head < H) {
      rotate_row(in, step.cos + b * D, step.sin + b * D, D, shared.queries.data() + (b * H + head) * D);
      continue;
    }
    const bool key = head < H + H_kv;
    const int64_t kv_head = key ? head - H : head - H - H_kv;
    float rotated[D];
    if (key) rotate_row(in, step.cos + b * D, step.sin + b * D, D, rotated);
    c10::Half* row = (key ? w.keys : w.values) + b * step.cache_strides[0] + kv_head * step.cache_strides[1] +
                     step.position * step.cache_strides[2];
    for (int64_t i = 0; i < D; i += 16) store_half(row + i, _mm512_loadu_ps((key ? rotated : in) + i));
  }
  barrier.wait();

  // attention over positions [0, position]: tasks of a span of one key/value head's keys, as
  // one_query_attention shares them, so that the sums come out as its do
  const int64_t keys = step.position + 1, kv_rows = B * H_kv, n_spans = step.spans;
  const int64_t span_keys = (keys + n_spans - 1) / n_spans;
  scores.resize(group * span_keys);
  const Share tasks = share(kv_rows * n_spans, tid, team);
  for (int64_t task = tasks.first; task < tasks.last; ++task) {
    const int64_t head = task / n_spans, span = task % n_spans, b = head / H_kv, h = head % H_kv;
    const int64_t first = span * span_keys, last = std::min(keys, first + span_keys);
    const int64_t cache_offset = b * step.cache_strides[0] + h * step.cache_strides[1];
    one_span<Chunks>(shared.queries.data() + (b * H + h * group) * D, D, w.keys + cache_offset,
                     w.values + cache_offset, step.cache_strides[2], nullptr, first, last, step.scale,
                     static_cast<int>(group), scores.data(), shared.partials.data() + task * group);
  }
  barrier.wait();

  for (int64_t head = 0; head < kv_rows; ++head) {
    for (int64_t g = 0; g < group; ++g)
      combine<Chunks>(shared.partials.data() + head * n_spans * group + g, static_cast<int>(n_spans), group,
                      inputs.data() + (head * group + g) * D);  // (B, H, D): query heads in order
  }
  round(H * D);
  product_share(w.o, bits.data(), sums.data(), B, shared.o.data(), tid, team);
  barrier.wait();

  for (int64_t i = 0; i < B * d; ++i) residual[i] = x[i] + shared.o[i];
  for (int64_t b = 0; b < B; ++b) rms_norm_row(residual.data() + b * d, w.mlp_norm, d, step.eps, inputs.data() + b * d);
  round(d);
  product_share(w.gate_up, bits.data(), sums.data(), B, shared.gate_up.data(), tid, team);
  barrier.wait();

  for (int64_t b = 0; b < B; ++b)
    silu_mul_row(shared.gate_up.data() + b * 2 * step.ff, step.ff, inputs.data() + b * step.ff);
  round(step.ff);
  product_share(w.down, bits.data(), sums.data(), B, shared.down.data(), tid, team);
  barrier.wait();

  const Share outputs = share(B * d, tid, team);
  for (int64_t i = outputs.first; i < outputs.last; ++i) out[i] = residual[i] + shared.down[i];
}

template <int Chunks>
void run_blocks(const Step& step, const std::vector<Block>& blocks, Shared& shared, SpinBarrier& barrier, int tid,
                int team) {
  const size_t last = blocks.size() - 1;
  for (size_t i = 0; i <= last; ++i) {
    const float* x = i == 0 ? step.x : shared.stream[(i - 1) % 2].data();
    run_block<Chunks>(step, blocks[i], x, i == last ? step.out : shared.stream[i % 2].data(), shared, barrier, tid,
                      team);
    if (i < last) barrier.wait();  // the next block reads all of this one's output; the last's, the caller
  }
}

Block block_of(const at::Tensor& attn_norm, const at::Tensor& qkv, const at::Tensor& o, const at::Tensor& mlp_norm,
               const at::Tensor& gate_up, const at::Tensor& down, at::Tensor& keys, at::Tensor& values,
               const at::Tensor& first_keys, int64_t d, int64_t heads) {
  TORCH_CHECK(attn_norm.scalar_type() == at::kFloat && mlp_norm.scalar_type() == at::kFloat &&
              attn_norm.is_contiguous() && mlp_norm.is_contiguous() && attn_norm.numel() == d && mlp_norm.numel() == d,
              "decode_blocks: the norms' weights must be float32 of ", d, " values");
  TORCH_CHECK(keys.scalar_type() == at::kHalf && keys.sizes() == first_keys.sizes() &&
              keys.strides() == first_keys.strides() && values.scalar_type() == at::kHalf &&
              values.sizes() == keys.sizes() && values.strides() == keys.strides(),
              "decode_blocks: every block's keys and values must be float16 tensors of one shape and layout");
  const int64_t H_kv = keys.size(1), D = keys.size(3);
  const Weight qkv_weight = weight_of(qkv, d, "qkv"), gate_up_weight = weight_of(gate_up, d, "gate_up");
  const int64_t ff = gate_up_weight.blocks * kBlock / 2;
  const Weight o_weight = weight_of(o, heads * D, "o"), down_weight = weight_of(down, ff, "down");
  TORCH_CHECK(qkv_weight.blocks * kBlock == (heads + 2 * H_kv) * D && o_weight.blocks * kBlock == d &&
              down_weight.blocks * kBlock == d, "decode_blocks: the weights' shapes do not fit a block of ", heads,
              " heads of ", D);
  return {attn_norm.const_data_ptr<float>(), mlp_norm.const_data_ptr<float>(), qkv_weight, o_weight, gate_up_weight,
          down_weight, keys.data_ptr<c10::Half>(), values.data_ptr<c10::Half>()};
}

// x: (B, 1, d) float32; for each block, its norms' weights (d) float32, its products' packed int4
// or int8 weights (kernels.pack: qkv, o, gate_up, down) and its float16 cache, keys and values
// (B, H_kv, S, D) with rows contiguous, written at `position` and read over [0, position]; cos,
// sin: (B, 1, 1, D) float32, the rotation of each row's position. Returns the last block's
// output, (B, 1, d) float32.
at::Tensor decode_blocks(const at::Tensor& x, at::TensorList attn_norms, at::TensorList qkvs, at::TensorList os,
                         at::TensorList mlp_norms, at::TensorList gate_ups, at::TensorList downs, const at::Tensor& cos,
                         const at::Tensor& sin, at::TensorList keys, at::TensorList values, int64_t position,
                         int64_t heads, double eps, double scale) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.dim() == 3 && x.size(1) == 1 && x.is_contiguous(),
              "decode_blocks: x must be a contiguous float32 (B, 1, d) tensor");
  const size_t n = qkvs.size();
  TORCH_CHECK(n > 0 && attn_norms.size() == n && os.size() == n && mlp_norms.size() == n && gate_ups.size() == n &&
              downs.size() == n && keys.size() == n && values.size() == n,
              "decode_blocks: every list must hold one tensor per block");
  const at::Tensor& first_keys = keys[0];
  const int64_t B = x.size(0), d = x.size(2);
  TORCH_CHECK(first_keys.dim() == 4 && first_keys.stride(3) == 1 && first_keys.size(0) == B,
              "decode_blocks: keys and values must be (B, H_kv, S, D), rows contiguous");
  const int64_t H_kv = first_keys.size(1), D = first_keys.size(3);
  TORCH_CHECK(D == 32 || D == 64 || D == 128, "decode_blocks: head size must be 32, 64 or 128, not ", D);
  TORCH_CHECK(0 <= position && position < first_keys.size(2), "decode_blocks: position ", position,
              " is outside the cache");
  TORCH_CHECK(heads % H_kv == 0 && heads / H_kv <= kMaxGroup, "decode_blocks: ", heads, " query heads for ", H_kv,
              " key/value heads");
  TORCH_CHECK(cos.scalar_type() == at::kFloat && sin.scalar_type() == at::kFloat && cos.is_contiguous() &&
              sin.is_contiguous() && cos.numel() == B * D && sin.numel() == B * D,
              "decode_blocks: cos and sin must be float32 (B, 1, 1, D)");
  std::vector<Block> blocks;
  blocks.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    at::Tensor block_keys = keys[i], block_values = values[i];
    blocks.push_back(block_of(attn_norms[i], qkvs[i], os[i], mlp_norms[i], gate_ups[i], downs[i], block_keys,
                              block_values, first_keys, d, heads));
  }
  const int64_t ff = blocks[0].gate_up.blocks * kBlock / 2;
  const bool one_size = std::all_of(blocks.begin(), blocks.end(),
                                    [&](const Block& b) { return b.gate_up.blocks == blocks[0].gate_up.blocks; });
  TORCH_CHECK(one_size, "decode_blocks: every block's MLP must be of one size");
  at::Tensor out = at::empty({B, 1, d}, x.options());
  const int64_t group = heads / H_kv, kv_rows = B * H_kv;
  // counted here: inside the parallel region at::get_num_threads() counts 1
  const int64_t n_spans = span_count(kv_rows, position + 1, group, at::get_num_threads());
  const Step step{x.const_data_ptr<float>(), cos.const_data_ptr<float>(), sin.const_data_ptr<float>(), B, d, heads,
                  H_kv, ff, position, n_spans, {first_keys.stride(0), first_keys.stride(1), first_keys.stride(2)},
                  eps, static_cast<float>(scale), out.data_ptr<float>()};

  thread_local Shared calls_buffers;
  Shared& shared = calls_buffers;  // the caller's, named so: the lambda below would name each thread's own
  shared.qkv.resize(B * (heads + 2 * H_kv) * D);
  shared.queries.resize(B * heads * D);
  shared.o.resize(B * d);
  shared.gate_up.resize(B * 2 * ff);
  shared.down.resize(B * d);
  shared.stream[0].resize(B * d);
  shared.stream[1].resize(B * d);
  shared.partial_sums.resize(kv_rows * n_spans * group * D);
  shared.partials.resize(kv_rows * n_spans * group);
  for (size_t i = 0; i < shared.partials.size(); ++i) shared.partials[i].sums = shared.partial_sums.data() + i * D;

  // one task per thread; where the threads do not start (one thread, or a call from inside a
  // parallel region), the one call that gets every task runs the step alone
  const int64_t threads = at::get_num_threads();
  SpinBarrier barrier(static_cast<int>(threads));
  SpinBarrier alone(1);
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    const bool by_itself = end - begin != 1;
    if (by_itself && begin != 0) return;
    SpinBarrier& meet = by_itself ? alone : barrier;
    const int tid = by_itself ? 0 : static_cast<int>(begin), team = by_itself ? 1 : static_cast<int>(threads);
    if (D == 32) run_blocks<2>(step, blocks, shared, meet, tid, team);
    else if (D == 64) run_blocks<4>(step, blocks, shared, meet, tid, team);
    else run_blocks<8>(step, blocks, shared, meet, tid, team);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(nexttoken, m) {
  m.def("decode_blocks(Tensor x, Tensor[] attn_norms, Tensor[] qkvs, Tensor[] os, Tensor[] mlp_norms, "
        "Tensor[] gate_ups, Tensor[] downs, Tensor cos, Tensor sin, Tensor(a!)[] keys, Tensor(b!)[] values, "
        "int position, int heads, float eps, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(nexttoken, CPU, m) {
  m.impl("decode_blocks", &decode_blocks);
}
